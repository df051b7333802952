//! Resend: JSON. An email costs one unit per recipient (to + cc + bcc, each address of a list or
//! of a comma-separated string); a batch sums its emails. Broadcasts go to an audience the request
//! does not show and need the policy's opt-in worst case.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{
    error::BadRequest,
    request::{Params, Plan, Request},
    table::{Entry, Rule, e},
};

/// Every Resend endpoint the proxy meters or knows to move no money.
pub const ENDPOINTS: &[Entry] = &[
    e(
        "POST",
        "/emails",
        Rule::Priced,
        "`emailUsd` per recipient: every address in `to`, `cc` and `bcc`",
    ),
    e(
        "POST",
        "/emails/batch",
        Rule::Priced,
        "the sum over the emails of the batch",
    ),
    e(
        "PATCH",
        "/emails/{id}",
        Rule::Free,
        "rescheduling sends nothing",
    ),
    e(
        "POST",
        "/emails/{id}/cancel",
        Rule::Free,
        "cancelling sends nothing",
    ),
    e(
        "POST",
        "/broadcasts",
        Rule::WorstCase,
        "sends to a whole audience when `send` is set",
    ),
    e(
        "POST",
        "/broadcasts/{id}/send",
        Rule::WorstCase,
        "sends to a whole audience",
    ),
    e("POST", "/audiences", Rule::Free, "moves no money"),
    e(
        "POST",
        "/audiences/{id}/contacts",
        Rule::WorstCase,
        "a new contact can start an Automation that sends mail",
    ),
    e(
        "PATCH",
        "/audiences/{id}/contacts/{id}",
        Rule::Free,
        "moves no money",
    ),
];

/// The fields of an email the proxy reads; another field could be a recipient it did not count.
const EMAIL_FIELDS: [&str; 13] = [
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "html",
    "text",
    "reply_to",
    "headers",
    "attachments",
    "tags",
    "scheduled_at",
    "topic_id",
];

fn addresses(field: &str, v: &str) -> Result<u64, BadRequest> {
    // A comma-separated string is read as several addresses (a quoted comma over-counts, never under).
    let n = v.split([',', ';']).filter(|a| !a.trim().is_empty()).count() as u64;
    if n == 0 {
        return Err(BadRequest::Invalid(
            "to",
            format!("{field} holds no address"),
        ));
    }
    Ok(n)
}

fn recipients(email: &Value) -> Result<u64, BadRequest> {
    let Value::Object(map) = email else {
        return Err(BadRequest::Body(
            "JSON",
            "an email must be a JSON object".into(),
        ));
    };
    if let Some(k) = map.keys().find(|k| !EMAIL_FIELDS.contains(&k.as_str())) {
        return Err(BadRequest::Name(
            k.clone(),
            "an email field Resend documents, in snake_case",
        ));
    }
    // Recipient headers would be recipients the proxy did not count.
    if let Some(Value::Object(h)) = map.get("headers")
        && let Some(k) = h.keys().find(|k| {
            let k = k.to_ascii_lowercase();
            matches!(k.as_str(), "to" | "cc" | "bcc") || k.starts_with("resent-")
        })
    {
        return Err(BadRequest::Invalid(
            "headers",
            format!("the {k} header would add recipients; use to, cc and bcc"),
        ));
    }
    let mut n = 0u64;
    for field in ["to", "cc", "bcc"] {
        n += match map.get(field) {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) => addresses(field, s)?,
            Some(Value::Array(a)) => {
                let mut k = 0;
                for item in a {
                    let Value::String(s) = item else {
                        return Err(BadRequest::Invalid(
                            "to",
                            format!("{field} must list addresses as strings"),
                        ));
                    };
                    k += addresses(field, s)?;
                }
                k
            }
            Some(_) => {
                return Err(BadRequest::Invalid(
                    "to",
                    format!("{field} must be an address or a list of addresses"),
                ));
            }
        };
    }
    if n == 0 {
        return Err(BadRequest::Invalid(
            "to",
            "an email needs a recipient".into(),
        ));
    }
    Ok(n)
}

/// Costs a Resend write under its table entry.
pub fn plan(entry: &Entry, call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let Params::Json(body) = &call.params else {
        return Err(BadRequest::Body("JSON", "Resend takes JSON bodies".into()));
    };
    let count = match (entry.method, entry.path) {
        ("POST", "/emails") => recipients(body)?,
        ("POST", "/emails/batch") => match body {
            Value::Array(emails) if !emails.is_empty() => {
                emails.iter().map(recipients).sum::<Result<u64, _>>()?
            }
            _ => {
                return Err(BadRequest::Body(
                    "JSON",
                    "a batch must be a non-empty JSON array of emails".into(),
                ));
            }
        },
        _ if entry.rule == Rule::Free => return Ok(Plan::Known(Usd::ZERO)),
        _ => {
            return Err(BadRequest::Refused(format!(
                "{} {} has no cost rule",
                entry.method, entry.path
            )));
        }
    };
    let price = pricing.email_usd.ok_or_else(|| {
        BadRequest::Unbounded(
            "an email cannot be costed: the SpendPolicy sets no pricing.emailUsd".into(),
        )
    })?;
    price
        .checked_mul(count)
        .map(Plan::Known)
        .ok_or_else(|| BadRequest::Invalid("to", "too many recipients to cost".into()))
}

#[cfg(test)]
mod tests {
    use keybrake_crds::Vendor;

    use super::{
        super::{plan as plan_call, testing},
        *,
    };

    fn cost(path: &str, body: &str) -> Result<Plan, BadRequest> {
        plan_call(
            &testing::try_call(Vendor::Resend, "POST", path, body)?,
            &testing::pricing(),
        )
    }

    fn known(path: &str, body: &str) -> Usd {
        match cost(path, body) {
            Ok(Plan::Known(u)) => u,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn counts_every_recipient() {
        assert_eq!(
            known(
                "/emails",
                r#"{"from":"a@x.io","to":"b@y.io","subject":"hi","html":"<p>x</p>"}"#
            ),
            "0.0009".parse().unwrap()
        );
        assert_eq!(
            known(
                "/emails",
                r#"{"from":"a@x.io","to":["b@y.io","c@y.io"],"cc":"d@y.io","bcc":["e@y.io"]}"#
            ),
            "0.0036".parse().unwrap()
        );
        assert_eq!(
            known("/emails", r#"{"to":"a@y.io, b@y.io;c@y.io"}"#),
            "0.0027".parse().unwrap()
        );
        assert_eq!(
            known(
                "/emails/batch",
                r#"[{"to":"a@x.io"},{"to":["b@x.io","c@x.io"]}]"#
            ),
            "0.0027".parse().unwrap()
        );
    }

    #[test]
    fn refuses_ambiguous_bodies() {
        for (path, body) in [
            ("/emails", r#"{"to":"a@x.io","to":["b","c","d"]}"#),
            ("/emails", r#"{"to":5}"#),
            ("/emails", r#"{"To":["a","b"],"to":"c"}"#),
            ("/emails", r#"{"to":"a","recipients":["b"]}"#),
            ("/emails", r#"{"to":[["a","b"]]}"#),
            ("/emails", r#"{"subject":"no one"}"#),
            ("/emails", r#"{"to":"a@x.io","headers":{"Bcc":"b@y.io"}}"#),
            ("/emails/batch", r#"{"to":"a"}"#),
            ("/emails/batch", "[]"),
        ] {
            assert!(cost(path, body).is_err(), "{body}");
        }
        assert!(matches!(
            cost(
                "/broadcasts/4ef9a417-02e9-4d39-ad75-9611e0fcc33c/send",
                "{}"
            ),
            Err(BadRequest::Unbounded(_))
        ));
        assert!(matches!(
            cost("/domains", "{}"),
            Err(BadRequest::Unbounded(_))
        ));
    }
}
