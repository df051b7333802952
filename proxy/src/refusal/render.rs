//! A refusal in the vendor's own error shape, the one place where the shapes live.

use bytes::Bytes;
use keybrake_crds::Vendor;
use serde_json::json;

use super::catalog::{Kind, Refusal};

/// The response for a refusal: status, headers, body.
pub fn render(vendor: Vendor, r: &Refusal) -> (u16, Vec<(&'static str, String)>, Bytes) {
    let (kind, code, rule) = (r.kind(), r.code(), r.rule());
    let status = kind.status();
    let message = r.message();
    let mut headers = vec![
        ("content-type", "application/json".to_owned()),
        ("x-keybrake-rule", rule.to_owned()),
    ];
    if kind == Kind::Cap {
        headers.push(("x-keybrake-cap-hit", "true".to_owned()));
    }
    let body = match vendor {
        Vendor::Stripe => {
            // Should-Retry false: no Stripe SDK retries a policy decision.
            if !matches!(kind, Kind::Unavailable | Kind::Conflict) {
                headers.push(("stripe-should-retry", "false".to_owned()));
            }
            let type_ = match kind {
                Kind::Cap => "rate_limit_error",
                Kind::IdempotencyMismatch => "idempotency_error",
                Kind::Unavailable => "api_error",
                _ => "invalid_request_error",
            };
            json!({"error": {"type": type_, "code": code, "message": message}})
        }
        Vendor::Twilio => {
            // Only code/message/more_info/status: with `type` and `title` the Python SDK would
            // raise an exception outside TwilioRestException.
            let number = match kind {
                Kind::Cap => 20429,
                Kind::Auth => 20003,
                Kind::Forbidden => 20403,
                Kind::Unavailable => 20503,
                Kind::TooLarge => 20413,
                Kind::BadRequest | Kind::IdempotencyMismatch => 20001,
                Kind::Conflict => 20409,
            };
            json!({"code": number, "message": message, "more_info": format!("https://keybrake.com/docs/errors#{code}"), "status": status})
        }
        Vendor::Resend => {
            let name = match (kind, rule) {
                (Kind::Cap, "daily_cap" | "policy_daily_budget") => "daily_quota_exceeded",
                (Kind::Cap, _) => "rate_limit_exceeded",
                (Kind::Auth, _) => "invalid_api_key",
                (Kind::Forbidden, _) => "restricted_api_key",
                (Kind::Unavailable, _) => "application_error",
                _ => "validation_error",
            };
            json!({"statusCode": status, "name": name, "message": message})
        }
    };
    (status, headers, Bytes::from(body.to_string()))
}
