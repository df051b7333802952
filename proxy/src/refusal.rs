//! Every refusal in the vendor's own error shape, so each official SDK raises its own
//! exception type: a cap hit is a 429 rate-limit error with code `cap_exhausted` (never 409 or
//! 5xx, which the SDKs retry); revoked, expired and unknown keys are 401; a disallowed endpoint
//! is 403. Every message says which rule refused and how to act on it.

use bytes::Bytes;
use keybrake_crds::{Usd, Vendor};
use keybrake_ledger::{Refusal as LedgerRefusal, Rule};
use serde_json::json;

/// What kind of refusal, which fixes the status and the vendor's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A spending cap or budget: 429.
    Cap,
    /// No usable vault key: 401.
    Auth,
    /// Not allowed for this key: 403.
    Forbidden,
    /// A request that cannot be costed or read: 400.
    BadRequest,
    /// An Idempotency-Key reused with other parameters: 400.
    IdempotencyMismatch,
    /// A body or header over the limits: 413.
    TooLarge,
    /// The proxy cannot account for the call (Redis unreachable, policy not loaded): 503.
    Unavailable,
    /// Another call on the same vendor object is being costed and sent: 409, as Stripe answers
    /// for an object locked by a concurrent request (its SDKs retry it, which is safe here).
    Conflict,
}

impl Kind {
    fn status(self) -> u16 {
        match self {
            Kind::Cap => 429,
            Kind::Auth => 401,
            Kind::Forbidden => 403,
            Kind::BadRequest | Kind::IdempotencyMismatch => 400,
            Kind::TooLarge => 413,
            Kind::Unavailable => 503,
            Kind::Conflict => 409,
        }
    }
}

/// A refusal: the kind, a machine code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind.
    pub kind: Kind,
    /// Machine-readable code (`cap_exhausted`, `vault_key_revoked`, ...).
    pub code: &'static str,
    /// The rule that refused (for the `X-Keybrake-Rule` header and metrics).
    pub rule: &'static str,
    /// What happened and what to do.
    pub message: String,
}

impl Refusal {
    /// A refusal of `kind`.
    pub fn new(
        kind: Kind,
        code: &'static str,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Refusal {
        Refusal {
            kind,
            code,
            rule,
            message: message.into(),
        }
    }
}

fn usd(micros: Option<u64>) -> String {
    micros
        .and_then(Usd::from_micros)
        .map_or_else(|| "?".into(), |u| format!("${u}"))
}

/// A request the adapter could not read or cost exactly as the vendor would.
pub fn unreadable(e: &crate::adapters::BadRequest) -> Refusal {
    let kind = if e.is_policy() {
        Kind::Forbidden
    } else {
        Kind::BadRequest
    };
    let rule = match e {
        crate::adapters::BadRequest::Header(..) => "header",
        crate::adapters::BadRequest::Unbounded(_) | crate::adapters::BadRequest::Refused(_) => {
            "cost"
        }
        crate::adapters::BadRequest::NoRate(_) => "currency",
        crate::adapters::BadRequest::NotAllowed { .. } => "parameter",
        _ => "bad_request",
    };
    Refusal::new(kind, e.code(), rule, format!("{}: {e}", e.code()))
}

/// The proxy cannot account for the call now (Redis unreachable or slow): nothing was sent.
pub fn accounting_unavailable() -> Refusal {
    Refusal::new(
        Kind::Unavailable,
        "accounting_unavailable",
        "redis",
        "accounting_unavailable: spend cannot be checked right now, so the call was not sent; retry shortly",
    )
}

/// The refusal of a call naming `object`, which the ledger found is not the key's own.
pub fn not_owned(object: &str, vault_key: &str, method: &str, path: &str) -> Refusal {
    Refusal::new(
        Kind::Forbidden,
        "object_not_owned",
        "object_not_owned",
        format!(
            "object_not_owned: {object} was not created through the proxy by VaultKey {vault_key} (or by its run, where the SpendPolicy sets spec.scope.objects: Run); nothing was sent. To let keys act on objects they did not create through {method} {path}, list it in the SpendPolicy's spec.scope.existingObjects; for customers and their saved payment methods, set spec.scope.customers: Any"
        ),
    )
}

/// Words the ledger's decision for a person.
pub fn from_ledger(r: &LedgerRefusal, method: &str, path: &str) -> Refusal {
    let key = if r.vault_key.is_empty() {
        "the VaultKey".to_owned()
    } else {
        format!("VaultKey {}", r.vault_key)
    };
    let (limit, spent, est) = (usd(r.limit), usd(r.spent), usd(Some(r.estimate)));
    let cap = |what: String| {
        Refusal::new(
            Kind::Cap,
            "cap_exhausted",
            r.rule.as_str(),
            format!("cap_exhausted: {what}"),
        )
    };
    match r.rule {
        Rule::DailyCap => cap(format!(
            "the daily cap of {limit} on {key} is spent ({spent} today; this call needs {est}); it resets at 00:00 UTC"
        )),
        Rule::TotalCap => cap(format!(
            "the total cap of {limit} on {key} is spent ({spent} so far; this call needs {est})"
        )),
        Rule::PerCallCap => cap(format!(
            "this call costs {est}, above the per-call cap of {limit} on {key}"
        )),
        Rule::PolicyDailyBudget => cap(format!(
            "the daily budget of {limit} on SpendPolicy {} is spent ({spent} today; this call needs {est})",
            r.policy
        )),
        Rule::PolicyTotalBudget => cap(format!(
            "the total budget of {limit} on SpendPolicy {} is spent ({spent} so far; this call needs {est})",
            r.policy
        )),
        Rule::Revoked => Refusal::new(
            Kind::Auth,
            "vault_key_revoked",
            "revoked",
            format!("vault_key_revoked: {key} was revoked; issue a new key"),
        ),
        Rule::Expired => Refusal::new(
            Kind::Auth,
            "vault_key_expired",
            "expired",
            format!("vault_key_expired: {key} has expired; issue a new key"),
        ),
        Rule::UnknownKey | Rule::BadSecret => Refusal::new(
            Kind::Auth,
            "vault_key_invalid",
            r.rule.as_str(),
            "vault_key_invalid: no such vault key, or its secret does not match (it may have been deleted or rotated)",
        ),
        Rule::Endpoint => Refusal::new(
            Kind::Forbidden,
            "endpoint_not_allowed",
            "endpoint",
            format!(
                "endpoint_not_allowed: {method} {path} is not in the allowedEndpoints of {key}"
            ),
        ),
        Rule::IdempotencyMismatch => Refusal::new(
            Kind::IdempotencyMismatch,
            "idempotency_key_in_use",
            "idempotency_mismatch",
            "idempotency_key_in_use: keys for idempotent requests can only be used with the same parameters they were first used with",
        ),
        // The proxy names the object (it knows the list the ledger's position points into).
        Rule::ObjectNotOwned => not_owned("an object the call names", &r.vault_key, method, path),
        Rule::CommitmentOutlivesKey => {
            let at = |ms: Option<u64>| {
                ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms as i64).ok())
                    .map_or_else(|| "never".to_owned(), |t| t.to_string())
            };
            let expires = if r.limit == Some(0) {
                "never expires".to_owned()
            } else {
                format!("expires at {}", at(r.limit))
            };
            Refusal::new(
                Kind::Forbidden,
                "commitment_outlives_key",
                "commitment_outlives_key",
                format!(
                    "commitment_outlives_key: {method} {path} commits money until {} (cancel_at), but {key} {expires}; nothing the key starts may charge after it is gone: send a cancel_at no later than its expiry",
                    at(r.spent)
                ),
            )
        }
        Rule::IdempotencyOutcomeUnknown => Refusal::new(
            Kind::IdempotencyMismatch,
            "idempotency_outcome_unknown",
            "idempotency_outcome_unknown",
            format!(
                "idempotency_outcome_unknown: an earlier {method} {path} with this Idempotency-Key may have reached the vendor (its cost stays counted), and the vendor does not deduplicate on the key, so it is not sent again; check the vendor, then use a new key to send again"
            ),
        ),
    }
}

/// The response for a refusal: status, headers, body.
pub fn render(vendor: Vendor, r: &Refusal) -> (u16, Vec<(&'static str, String)>, Bytes) {
    let status = r.kind.status();
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-keybrake-rule", r.rule.to_owned()),
    ];
    if r.kind == Kind::Cap {
        headers.push(("x-keybrake-cap-hit", "true".to_owned()));
    }
    let body = match vendor {
        Vendor::Stripe => {
            // Should-Retry false: no Stripe SDK retries a policy decision.
            if !matches!(r.kind, Kind::Unavailable | Kind::Conflict) {
                headers.push(("stripe-should-retry", "false".to_owned()));
            }
            let type_ = match r.kind {
                Kind::Cap => "rate_limit_error",
                Kind::IdempotencyMismatch => "idempotency_error",
                Kind::Unavailable => "api_error",
                _ => "invalid_request_error",
            };
            json!({"error": {"type": type_, "code": r.code, "message": r.message}})
        }
        Vendor::Twilio => {
            // Only code/message/more_info/status: with `type` and `title` the Python SDK would
            // raise an exception outside TwilioRestException.
            let code = match r.kind {
                Kind::Cap => 20429,
                Kind::Auth => 20003,
                Kind::Forbidden => 20403,
                Kind::Unavailable => 20503,
                Kind::TooLarge => 20413,
                Kind::BadRequest | Kind::IdempotencyMismatch => 20001,
                Kind::Conflict => 20409,
            };
            json!({"code": code, "message": r.message, "more_info": format!("https://keybrake.com/docs/errors#{}", r.code), "status": status})
        }
        Vendor::Resend => {
            let name = match (r.kind, r.rule) {
                (Kind::Cap, "daily_cap" | "policy_daily_budget") => "daily_quota_exceeded",
                (Kind::Cap, _) => "rate_limit_exceeded",
                (Kind::Auth, _) => "invalid_api_key",
                (Kind::Forbidden, _) => "restricted_api_key",
                (Kind::Unavailable, _) => "application_error",
                _ => "validation_error",
            };
            json!({"statusCode": status, "name": name, "message": r.message})
        }
    };
    (status, headers, Bytes::from(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(rule: Rule) -> LedgerRefusal {
        LedgerRefusal {
            rule,
            limit: Some(500_000_000),
            spent: Some(490_000_000),
            estimate: 12_500_000,
            vault_key: "billing/run-1".into(),
            policy: "billing/stripe".into(),
        }
    }

    #[test]
    fn cap_hits_name_the_cap_and_the_key_and_stop_retries() {
        let r = from_ledger(&ledger(Rule::DailyCap), "POST", "/v1/payment_intents");
        assert!(r.message.starts_with("cap_exhausted: the daily cap of $500.00 on VaultKey billing/run-1 is spent ($490.00 today; this call needs $12.50)"), "{}", r.message);
        let (status, headers, body) = render(Vendor::Stripe, &r);
        assert_eq!(status, 429);
        assert!(headers.contains(&("stripe-should-retry", "false".into())));
        assert!(headers.contains(&("x-keybrake-cap-hit", "true".into())));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["error"]["type"].as_str(), v["error"]["code"].as_str()),
            (Some("rate_limit_error"), Some("cap_exhausted"))
        );
    }

    #[test]
    fn each_vendor_gets_its_own_shape() {
        let cap = from_ledger(&ledger(Rule::DailyCap), "POST", "/emails");
        let (_, _, body) = render(Vendor::Resend, &cap);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["statusCode"].as_u64(), v["name"].as_str()),
            (Some(429), Some("daily_quota_exceeded"))
        );
        let total = from_ledger(&ledger(Rule::TotalCap), "POST", "/emails");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&render(Vendor::Resend, &total).2).unwrap()
                ["name"],
            "rate_limit_exceeded"
        );
        let (status, _, body) = render(
            Vendor::Twilio,
            &from_ledger(&ledger(Rule::Revoked), "POST", "/x"),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (status, v["code"].as_u64(), v["status"].as_u64()),
            (401, Some(20003), Some(401))
        );
        assert!(v.get("type").is_none() && v.get("title").is_none());
        let (status, _, body) = render(
            Vendor::Stripe,
            &from_ledger(&ledger(Rule::Endpoint), "POST", "/v1/refunds"),
        );
        assert_eq!(status, 403);
        assert!(
            String::from_utf8_lossy(&body).contains(
                "POST /v1/refunds is not in the allowedEndpoints of VaultKey billing/run-1"
            )
        );
    }

    #[test]
    fn no_policy_decision_is_a_retryable_status() {
        for rule in [
            Rule::DailyCap,
            Rule::TotalCap,
            Rule::PerCallCap,
            Rule::PolicyDailyBudget,
            Rule::Revoked,
            Rule::Expired,
            Rule::UnknownKey,
            Rule::Endpoint,
            Rule::IdempotencyMismatch,
        ] {
            let status = render(Vendor::Stripe, &from_ledger(&ledger(rule), "POST", "/v1/x")).0;
            assert!(status != 409 && status < 500, "{rule:?} answered {status}");
        }
    }
}
