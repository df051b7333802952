//! Resend: JSON. An email costs one unit per recipient (to + cc + bcc); a batch sums its emails.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{BadRequest, Estimate, json_no_duplicates, segments};

fn recipients(email: &Value) -> Result<u64, BadRequest> {
    let Value::Object(map) = email else {
        return Err(BadRequest::Body(
            "JSON",
            "an email must be a JSON object".into(),
        ));
    };
    let mut n = 0u64;
    for field in ["to", "cc", "bcc"] {
        n += match map.get(field) {
            None | Some(Value::Null) => 0,
            Some(Value::String(_)) => 1,
            Some(Value::Array(a)) => a.len() as u64,
            Some(_) => {
                return Err(BadRequest::Invalid(
                    "to",
                    format!("{field} must be an address or a list of addresses"),
                ));
            }
        };
    }
    Ok(n)
}

/// Costs a Resend request before it is sent.
pub fn estimate(
    method: &str,
    path: &str,
    body: &[u8],
    pricing: &Pricing,
) -> Result<Estimate, BadRequest> {
    if matches!(method, "GET" | "HEAD") {
        return Ok(Estimate::Known(Usd::ZERO));
    }
    let segs = segments(path);
    let count = match (method, segs.as_slice()) {
        ("POST", ["emails"]) => recipients(&json_no_duplicates(body)?)?,
        ("POST", ["emails", "batch"]) => match json_no_duplicates(body)? {
            Value::Array(emails) => emails.iter().map(recipients).sum::<Result<u64, _>>()?,
            _ => {
                return Err(BadRequest::Body(
                    "JSON",
                    "a batch must be a JSON array of emails".into(),
                ));
            }
        },
        // Rescheduling or cancelling a scheduled email sends nothing.
        ("PATCH", ["emails", _]) | ("POST", ["emails", _, "cancel"]) => {
            return Ok(Estimate::Known(Usd::ZERO));
        }
        _ => return Ok(Estimate::Unknown),
    };
    let Some(price) = pricing.email_usd else {
        return Ok(Estimate::Unknown);
    };
    price
        .checked_mul(count)
        .map(Estimate::Known)
        .ok_or_else(|| BadRequest::Invalid("to", "too many recipients to cost".into()))
}

/// Resend's response carries only ids: a sent email costs what was reserved.
pub fn actual(_method: &str, _path: &str, _body: &[u8], _pricing: &Pricing, reserved: Usd) -> Usd {
    reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing() -> Pricing {
        Pricing {
            email_usd: Some("0.0009".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn counts_every_recipient() {
        let p = pricing();
        let one = br#"{"from":"a@x.io","to":"b@y.io","subject":"hi","html":"<p>x</p>"}"#;
        assert_eq!(
            estimate("POST", "/emails", one, &p).unwrap(),
            Estimate::Known("0.0009".parse().unwrap())
        );
        let many = br#"{"from":"a@x.io","to":["b@y.io","c@y.io"],"cc":"d@y.io","bcc":["e@y.io"]}"#;
        assert_eq!(
            estimate("POST", "/emails", many, &p).unwrap(),
            Estimate::Known("0.0036".parse().unwrap())
        );
        let batch = br#"[{"to":"a@x.io"},{"to":["b@x.io","c@x.io"]}]"#;
        assert_eq!(
            estimate("POST", "/emails/batch", batch, &p).unwrap(),
            Estimate::Known("0.0027".parse().unwrap())
        );
    }

    #[test]
    fn refuses_ambiguous_bodies() {
        let p = pricing();
        assert!(
            estimate(
                "POST",
                "/emails",
                br#"{"to":"a@x.io","to":["b","c","d"]}"#,
                &p
            )
            .is_err()
        );
        assert!(estimate("POST", "/emails", br#"{"to":5}"#, &p).is_err());
        assert!(estimate("POST", "/emails/batch", br#"{"to":"a"}"#, &p).is_err());
        assert!(estimate("POST", "/emails", b"not json", &p).is_err());
        assert_eq!(
            estimate("POST", "/emails", br#"{"to":"a"}"#, &Pricing::default()).unwrap(),
            Estimate::Unknown
        );
        assert_eq!(
            estimate("POST", "/domains", br#"{}"#, &p).unwrap(),
            Estimate::Unknown
        );
    }
}
