use keybrake_crds::Vendor;
use keybrake_ledger::{Refusal as Decision, Rule};

use super::*;
use crate::adapters::BadRequest;

fn decision(rule: Rule) -> Decision {
    Decision {
        rule,
        limit: Some(500_000_000),
        spent: Some(490_000_000),
        estimate: 12_500_000,
        vault_key: "billing/run-1".into(),
        policy: "billing/stripe".into(),
    }
}

fn ledger(rule: Rule, path: &str) -> Refusal {
    from_ledger(&decision(rule), "POST", path, &[])
}

fn s(v: &str) -> String {
    v.to_owned()
}

/// One refusal of every variant (and of every adapter refusal). The match below stops the
/// build when a variant is added without an example here, so the docs table test sees it.
fn one_of_each() -> Vec<Refusal> {
    let all = vec![
        Refusal::BadCredential(s("no vault key in the request")),
        Refusal::UnknownKey {
            rule: Rule::BadSecret,
        },
        Refusal::PolicyGone,
        Refusal::PolicyMismatch,
        Refusal::Revoked {
            vault_key: s("a/b"),
        },
        Refusal::Deleted {
            vault_key: s("a/b"),
        },
        Refusal::Expired {
            vault_key: s("a/b"),
        },
        Refusal::EndpointNotAllowed {
            method: s("POST"),
            path: s("/v1/refunds"),
            vault_key: s("a/b"),
        },
        Refusal::AccountMismatch,
        Refusal::ObjectNotOwned {
            object: s("cus_1"),
            vault_key: s("a/b"),
            method: s("POST"),
            path: s("/v1/customers/cus_1"),
        },
        Refusal::ListingNotOwned {
            method: s("GET"),
            path: s("/v1/customers"),
        },
        Refusal::CommitmentOutlivesKey {
            method: s("POST"),
            path: s("/v1/subscriptions"),
            until_ms: Some(2_000_000_000_000),
            key_expires_ms: None,
            vault_key: s("a/b"),
        },
        Refusal::Request(BadRequest::Invalid("amount", s("not an integer"))),
        Refusal::Request(BadRequest::Duplicate(s("amount"))),
        Refusal::Request(BadRequest::Body("JSON", s("trailing bytes"))),
        Refusal::Request(BadRequest::Name(s("Amount"), "snake_case")),
        Refusal::Request(BadRequest::Placement("a GET carries no body")),
        Refusal::Request(BadRequest::ContentType(s("text/plain"), "a form")),
        Refusal::Request(BadRequest::Header(s("Stripe-Account"), "is refused")),
        Refusal::Request(BadRequest::NoRate(s("jpy"))),
        Refusal::Request(BadRequest::Unbounded(s("POST /v1/credit_notes"))),
        Refusal::Request(BadRequest::Refused(s("payment links"))),
        Refusal::Request(BadRequest::NotAllowed {
            parameter: s("on_behalf_of"),
            endpoint: s("POST /v1/payment_intents"),
            grant: Some(s("on_behalf_of")),
        }),
        ledger(Rule::DailyCap, "/v1/payment_intents"),
        Refusal::InvalidPath(s("the request target must be a path starting with /")),
        Refusal::InvalidBody(s("connection reset")),
        Refusal::BodyTimeout,
        Refusal::CostUnreadable {
            path: s("/v1/prices/price_1"),
            why: s("the vendor answered 404"),
        },
        Refusal::IdempotencyKeyInUse,
        Refusal::IdempotencyOutcomeUnknown {
            method: s("POST"),
            path: s("/emails"),
        },
        Refusal::IdempotencyResponseNotKept,
        Refusal::BodyTooLarge { limit: 1024 },
        Refusal::ObjectBusy { object: s("pi_1") },
        Refusal::accounting(),
        Refusal::IdempotencyKeyInFlight,
        Refusal::PolicyUnusable(s("its Secret is missing")),
        Refusal::UpstreamUnreachable {
            upstream: s("https://api.stripe.com"),
            detail: s("refused"),
        },
        Refusal::CostUpstreamUnreachable {
            path: s("/v1/prices/price_1"),
            upstream: s("https://api.stripe.com"),
            detail: s("refused"),
        },
        Refusal::UpstreamOutcomeUnknown {
            upstream: s("https://api.stripe.com"),
            detail: s("reset"),
        },
        Refusal::Internal,
    ];
    for r in &all {
        #[deny(unreachable_patterns)]
        match r {
            Refusal::BadCredential(_)
            | Refusal::UnknownKey { .. }
            | Refusal::PolicyGone
            | Refusal::PolicyMismatch
            | Refusal::Revoked { .. }
            | Refusal::Deleted { .. }
            | Refusal::Expired { .. }
            | Refusal::EndpointNotAllowed { .. }
            | Refusal::AccountMismatch
            | Refusal::ObjectNotOwned { .. }
            | Refusal::ListingNotOwned { .. }
            | Refusal::CommitmentOutlivesKey { .. }
            | Refusal::CapExhausted(_)
            | Refusal::InvalidPath(_)
            | Refusal::InvalidBody(_)
            | Refusal::BodyTimeout
            | Refusal::CostUnreadable { .. }
            | Refusal::IdempotencyKeyInUse
            | Refusal::IdempotencyOutcomeUnknown { .. }
            | Refusal::IdempotencyResponseNotKept
            | Refusal::BodyTooLarge { .. }
            | Refusal::ObjectBusy { .. }
            | Refusal::AccountingUnavailable(_)
            | Refusal::IdempotencyKeyInFlight
            | Refusal::PolicyUnusable(_)
            | Refusal::UpstreamUnreachable { .. }
            | Refusal::CostUpstreamUnreachable { .. }
            | Refusal::UpstreamOutcomeUnknown { .. }
            | Refusal::Internal => {}
            Refusal::Request(e) => match e {
                BadRequest::Invalid(..)
                | BadRequest::Duplicate(_)
                | BadRequest::Body(..)
                | BadRequest::Name(..)
                | BadRequest::Placement(_)
                | BadRequest::ContentType(..)
                | BadRequest::Header(..)
                | BadRequest::NoRate(_)
                | BadRequest::Unbounded(_)
                | BadRequest::Refused(_)
                | BadRequest::NotAllowed { .. } => {}
            },
        }
    }
    all
}

#[test]
fn cap_hits_name_the_cap_and_the_key_and_stop_retries() {
    let r = ledger(Rule::DailyCap, "/v1/payment_intents");
    assert!(r.message().starts_with("cap_exhausted: the daily cap of $500.00 on VaultKey billing/run-1 is spent ($490.00 today; this call needs $12.50)"), "{}", r.message());
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
    let cap = ledger(Rule::DailyCap, "/emails");
    let (_, _, body) = render(Vendor::Resend, &cap);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["statusCode"].as_u64(), v["name"].as_str()),
        (Some(429), Some("daily_quota_exceeded"))
    );
    let total = ledger(Rule::TotalCap, "/emails");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&render(Vendor::Resend, &total).2).unwrap()["name"],
        "rate_limit_exceeded"
    );
    let (status, _, body) = render(Vendor::Twilio, &ledger(Rule::Revoked, "/x"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, v["code"].as_u64(), v["status"].as_u64()),
        (401, Some(20003), Some(401))
    );
    assert!(v.get("type").is_none() && v.get("title").is_none());
    let (status, _, body) = render(Vendor::Stripe, &ledger(Rule::Endpoint, "/v1/refunds"));
    assert_eq!(status, 403);
    assert!(
        String::from_utf8_lossy(&body)
            .contains("POST /v1/refunds is not in the allowedEndpoints of VaultKey billing/run-1")
    );
}

#[test]
fn no_policy_decision_is_a_retryable_status() {
    for rule in Rule::ALL {
        let status = render(Vendor::Stripe, &ledger(*rule, "/v1/x")).0;
        assert!(status != 409 && status < 500, "{rule:?} answered {status}");
    }
}

#[test]
fn the_ledger_names_the_object_at_the_position_it_reports() {
    let owned = [s("cus_1"), s("pi_2")];
    let mut d = decision(Rule::ObjectNotOwned);
    d.limit = Some(2);
    let r = from_ledger(&d, "POST", "/v1/payment_intents/pi_2", &owned);
    assert!(
        r.message()
            .starts_with("object_not_owned: pi_2 was not created"),
        "{}",
        r.message()
    );
    d.limit = Some(3);
    let r = from_ledger(&d, "POST", "/v1/x", &owned);
    assert!(r.message().contains("an object the call names"));
    let mut d = decision(Rule::CommitmentOutlivesKey);
    (d.spent, d.limit) = (Some(1_700_000_000_000), Some(0));
    let r = from_ledger(&d, "POST", "/v1/subscriptions", &[]);
    assert!(
        r.message()
            .contains("but VaultKey billing/run-1 never expires"),
        "{}",
        r.message()
    );
}

#[test]
fn every_message_starts_with_its_code_once() {
    for r in one_of_each() {
        let m = r.message();
        let code = r.code();
        assert!(m.starts_with(&format!("{code}: ")), "{m}");
        assert!(!m[code.len() + 2..].starts_with(code), "code twice: {m}");
        assert!(!r.rule().is_empty());
    }
}

/// The codes and statuses of `docs/metering.md`'s table of refusals, and those of this type,
/// are the same set: a refusal added here without a line there (or the other way) fails.
#[test]
fn the_docs_list_every_refusal() {
    use std::collections::BTreeSet;
    let docs = include_str!("../../../docs/metering.md");
    let section = docs
        .split("## Every refusal")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/metering.md has a section `## Every refusal`");
    let documented: BTreeSet<(String, u16)> = section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((code.to_owned(), cells.get(2)?.parse().ok()?))
        })
        .collect();
    let refused: BTreeSet<(String, u16)> = one_of_each()
        .iter()
        .map(|r| (r.code().to_owned(), r.kind().status()))
        .collect();
    assert_eq!(
        documented, refused,
        "docs/metering.md's `## Every refusal` table and proxy/src/refusal differ"
    );
}
