//! The body of `POST /vault/keys`, in Keybrake's field names, read strictly: unknown fields,
//! duplicate keys, fractional cents past micro-dollars and negative amounts are refused with the
//! field named.

use jiff::Timestamp;
use keybrake_crds::{EndpointPattern, KubeDuration, Usd, Vendor, validate::Violations};
use serde_json::{Map, Value};

use super::error::ApiError;

/// Fields `POST /vault/keys` accepts.
const FIELDS: [&str; 12] = [
    "vendor",
    "policy",
    "namespace",
    "name",
    "daily_usd_cap",
    "total_usd_cap",
    "per_call_usd_cap",
    "allowed_endpoints",
    "expires_in",
    "expires_at",
    "agent_run_label",
    "run_label",
];

/// A request to issue a key.
#[derive(Debug, Clone, PartialEq)]
pub struct IssueRequest {
    /// `stripe`, `twilio` or `resend`.
    pub vendor: Vendor,
    /// The SpendPolicy to draw on; needed when the namespace has several for the vendor.
    pub policy: Option<String>,
    /// The namespace (default: the caller ServiceAccount's).
    pub namespace: Option<String>,
    /// The VaultKey name (default: derived from the run label).
    pub name: Option<String>,
    /// Daily cap.
    pub daily_usd_cap: Option<Usd>,
    /// Total cap.
    pub total_usd_cap: Option<Usd>,
    /// Per-call cap.
    pub per_call_usd_cap: Option<Usd>,
    /// Allowed endpoints (default: the policy's).
    pub allowed_endpoints: Option<Vec<EndpointPattern>>,
    /// How long the key lives (`expiresIn`); default: the policy's.
    pub expires_in: Option<KubeDuration>,
    /// Absolute expiry.
    pub expires_at: Option<Timestamp>,
    /// The run label for the audit trail.
    pub run_label: Option<String>,
}

fn string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::field(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

/// Dollars as a JSON number (`500`, `12.5`) or string (`"12.50"`): the number's shortest exact
/// decimal form is parsed, never a binary float, so `0.1` is 100000 micro-dollars.
fn usd(obj: &Map<String, Value>, field: &str) -> Result<Option<Usd>, ApiError> {
    let text = match obj.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::field(
                field,
                format!("must be dollars as a number or string, got {other}"),
            ));
        }
    };
    // serde_json writes large or tiny floats with an exponent; money never needs one.
    if text.contains(['e', 'E']) {
        return Err(ApiError::field(
            field,
            format!("{text} is not a plain decimal amount of dollars"),
        ));
    }
    text.parse::<Usd>()
        .map(Some)
        .map_err(|e| ApiError::field(field, e.to_string()))
}

impl IssueRequest {
    /// Parses and checks a request body: one check per field, in the order of the API, so the
    /// function is as long as the request.
    pub fn parse(body: &[u8]) -> Result<IssueRequest, ApiError> {
        if body.is_empty() {
            return Err(ApiError::new(
                hyper::StatusCode::BAD_REQUEST,
                "the request body is empty; send a JSON object with at least vendor and a cap",
            ));
        }
        let value = crate::adapters::json::strict(body)
            .map_err(|e| ApiError::new(hyper::StatusCode::BAD_REQUEST, e.to_string()))?;
        let Value::Object(obj) = value else {
            return Err(ApiError::new(
                hyper::StatusCode::BAD_REQUEST,
                "the request body must be a JSON object",
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(ApiError::field(
                unknown,
                format!("unknown field; accepted fields are {}", FIELDS.join(", ")),
            ));
        }
        let vendor = match string(&obj, "vendor")? {
            None => {
                return Err(ApiError::field(
                    "vendor",
                    "required (stripe, twilio or resend)",
                ));
            }
            Some(v) => v
                .parse::<Vendor>()
                .map_err(|e| ApiError::field("vendor", e.to_string()))?,
        };
        let allowed_endpoints = match obj.get("allowed_endpoints") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let field = format!("allowed_endpoints[{i}]");
                        item.as_str()
                            .ok_or_else(|| {
                                ApiError::field(
                                    &field,
                                    "must be a string like \"POST /v1/payment_intents\"",
                                )
                            })?
                            .parse::<EndpointPattern>()
                            .map_err(|e| ApiError::field(&field, e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(other) => {
                return Err(ApiError::field(
                    "allowed_endpoints",
                    format!("must be a list of strings, got {other}"),
                ));
            }
        };
        let expires_in = match obj.get("expires_in") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => Some(
                n.as_u64()
                    .and_then(KubeDuration::from_secs)
                    .ok_or_else(|| {
                        ApiError::field(
                            "expires_in",
                            format!("{n} is not a whole, positive number of seconds"),
                        )
                    })?,
            ),
            Some(Value::String(s)) => Some(
                s.parse::<KubeDuration>()
                    .map_err(|e| ApiError::field("expires_in", e.to_string()))?,
            ),
            Some(other) => {
                return Err(ApiError::field(
                    "expires_in",
                    format!("must be a duration like \"2h\" or seconds, got {other}"),
                ));
            }
        };
        let expires_at = string(&obj, "expires_at")?
            .map(|s| {
                s.parse::<Timestamp>().map_err(|_| {
                    ApiError::field("expires_at", format!("{s:?} is not an RFC 3339 time"))
                })
            })
            .transpose()?;
        if expires_in.is_some() && expires_at.is_some() {
            return Err(ApiError::field(
                "expires_at",
                "set expires_in or expires_at, not both",
            ));
        }
        let agent_label = string(&obj, "agent_run_label")?;
        let plain_label = string(&obj, "run_label")?;
        if agent_label.is_some() && plain_label.is_some() {
            return Err(ApiError::field(
                "run_label",
                "set agent_run_label or run_label, not both",
            ));
        }
        let req = IssueRequest {
            vendor,
            policy: string(&obj, "policy")?,
            namespace: string(&obj, "namespace")?,
            name: string(&obj, "name")?,
            daily_usd_cap: usd(&obj, "daily_usd_cap")?,
            total_usd_cap: usd(&obj, "total_usd_cap")?,
            per_call_usd_cap: usd(&obj, "per_call_usd_cap")?,
            allowed_endpoints,
            expires_in,
            expires_at,
            run_label: agent_label.or(plain_label),
        };
        if req.daily_usd_cap.is_none() && req.total_usd_cap.is_none() {
            return Err(ApiError::field(
                "daily_usd_cap",
                "set daily_usd_cap or total_usd_cap (or both): a key without a cap could spend without limit",
            ));
        }
        Ok(req)
    }
}

/// The API's name for a VaultKey spec field in a violation (`spec.dailyUsdCap` → `daily_usd_cap`).
pub fn api_field(spec_field: &str) -> String {
    let field = spec_field.strip_prefix("spec.").unwrap_or(spec_field);
    let (head, rest) = field
        .find(['[', '.'])
        .map_or((field, ""), |i| field.split_at(i));
    let name = match head {
        "dailyUsdCap" => "daily_usd_cap",
        "totalUsdCap" => "total_usd_cap",
        "perCallUsdCap" => "per_call_usd_cap",
        "allowedEndpoints" => "allowed_endpoints",
        "ttl" => "expires_in",
        "expiresAt" => "expires_at",
        "runLabel" => "agent_run_label",
        "policyRef" => "policy",
        "metadata" => "name",
        other => other,
    };
    format!("{name}{rest}")
}

/// A 422 for violations, naming the first field in the API's words.
pub fn violations_error(v: &Violations) -> ApiError {
    let first = v.0.first();
    let field = first.map_or_else(|| "spec".to_owned(), |x| api_field(&x.field));
    let message =
        v.0.iter()
            .map(|x| format!("{}: {}", api_field(&x.field), x.message))
            .collect::<Vec<_>>()
            .join("; ");
    ApiError {
        status: hyper::StatusCode::UNPROCESSABLE_ENTITY,
        message,
        field: Some(field),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<IssueRequest, ApiError> {
        IssueRequest::parse(body.as_bytes())
    }

    #[test]
    fn reads_the_seeds_requests() {
        let r = parse(r#"{"vendor":"stripe","daily_usd_cap":500,"allowed_endpoints":["POST /v1/payment_intents"],"expires_in":"2h","agent_run_label":"hatchet/billing-agent/run-1"}"#).unwrap();
        assert_eq!(r.vendor, Vendor::Stripe);
        assert_eq!(r.daily_usd_cap.unwrap().micros(), 500_000_000);
        assert_eq!(r.expires_in.unwrap().as_secs(), 7200);
        assert_eq!(r.run_label.as_deref(), Some("hatchet/billing-agent/run-1"));
        // Haystack's seed sends a Python float.
        let r = parse(r#"{"vendor":"stripe","daily_usd_cap":500.0,"expires_in":"1h"}"#).unwrap();
        assert_eq!(r.daily_usd_cap.unwrap().micros(), 500_000_000);
        let r = parse(r#"{"vendor":"resend","total_usd_cap":0.1,"expires_in":90}"#).unwrap();
        assert_eq!(r.total_usd_cap.unwrap().micros(), 100_000);
        assert_eq!(r.expires_in.unwrap().as_secs(), 90);
    }

    #[test]
    fn names_the_bad_field() {
        let field = |body: &str| parse(body).unwrap_err().field;
        assert_eq!(
            field(r#"{"vendor":"paypal","daily_usd_cap":1}"#).as_deref(),
            Some("vendor")
        );
        assert_eq!(field(r#"{"daily_usd_cap":1}"#).as_deref(), Some("vendor"));
        assert_eq!(
            field(r#"{"vendor":"stripe"}"#).as_deref(),
            Some("daily_usd_cap")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":-5}"#).as_deref(),
            Some("daily_usd_cap")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":0.0000001}"#).as_deref(),
            Some("daily_usd_cap")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":1e300}"#).as_deref(),
            Some("daily_usd_cap")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":true}"#).as_deref(),
            Some("daily_usd_cap")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":1,"expires_in":"2 hours"}"#).as_deref(),
            Some("expires_in")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":1,"expires_in":-1}"#).as_deref(),
            Some("expires_in")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":["FETCH /x"]}"#)
                .as_deref(),
            Some("allowed_endpoints[0]")
        );
        assert_eq!(
            field(r#"{"vendor":"stripe","daily_usd_cap":1,"budget":5}"#).as_deref(),
            Some("budget")
        );
        assert!(
            parse(r#"{"vendor":"stripe","vendor":"twilio","daily_usd_cap":1}"#)
                .unwrap_err()
                .message
                .contains("duplicate")
        );
        assert!(parse("[1]").is_err());
        assert!(parse("").is_err());
        assert!(parse("{").is_err());
    }

    #[test]
    fn maps_spec_fields_to_api_fields() {
        assert_eq!(api_field("spec.dailyUsdCap"), "daily_usd_cap");
        assert_eq!(
            api_field("spec.allowedEndpoints[2]"),
            "allowed_endpoints[2]"
        );
        assert_eq!(api_field("spec.ttl"), "expires_in");
    }

    use proptest::strategy::Strategy;

    proptest::proptest! {
        /// Arbitrary bytes and arbitrary JSON objects are refused with a message or parsed into a
        /// request that has a vendor and a cap; never a panic.
        #[test]
        fn any_body_is_refused_or_a_capped_request(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            match IssueRequest::parse(&bytes) {
                Ok(r) => proptest::prop_assert!(r.daily_usd_cap.is_some() || r.total_usd_cap.is_some()),
                Err(e) => proptest::prop_assert!(!e.message.is_empty()),
            }
        }

        #[test]
        fn json_fields_of_any_type_are_refused_or_read(
            key in proptest::sample::select(FIELDS.to_vec()),
            value in proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(|n| n.to_string()),
                proptest::prelude::any::<f64>().prop_map(|n| if n.is_finite() { n.to_string() } else { "0".into() }),
                "\"\\PC{0,20}\"",
                proptest::strategy::Just("null".to_owned()),
                proptest::strategy::Just("[1,\"a\"]".to_owned()),
                proptest::strategy::Just("{}".to_owned()),
            ],
        ) {
            let body = format!(r#"{{"vendor":"stripe","daily_usd_cap":10,"{key}":{value}}}"#);
            if let Err(e) = IssueRequest::parse(body.as_bytes()) {
                proptest::prop_assert!(e.field.is_some() || e.status == hyper::StatusCode::BAD_REQUEST, "{:?}", e);
            }
        }
    }
}
