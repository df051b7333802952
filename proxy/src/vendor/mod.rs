//! Vendor adapters: how each vendor's calls are costed before they are sent and after they
//! return, and how request bodies are read. One module per vendor; pure functions, so every
//! parser and estimator is tested without a network.

pub mod money;
pub mod resend;
pub mod stripe;
pub mod twilio;

use keybrake_crds::{Usd, Vendor, spend_policy::Pricing};

/// A request the proxy will not forward because it cannot cost it safely; the message names the
/// problem so the caller can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// A field with a value that cannot be used.
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// A field sent twice, which would let the vendor and the proxy read different values.
    #[error("{0} is sent more than once; send it once")]
    Duplicate(String),
    /// A body that is not what the content type says.
    #[error("the request body is not valid {0}: {1}")]
    Body(&'static str, String),
    /// A currency the policy has no exchange rate for.
    #[error(
        "no exchange rate for currency {0:?} in the SpendPolicy's pricing.currencyUsdRates; the call cannot be costed"
    )]
    NoRate(String),
}

/// What a call will cost, as far as the request tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimate {
    /// The cost is known from the request (0 for calls that move no money).
    Known(Usd),
    /// The request does not say: the policy's `unknownCallUsd` is reserved.
    Unknown,
}

/// Costs a request before it is sent.
pub fn estimate(
    vendor: Vendor,
    method: &str,
    path: &str,
    body: &[u8],
    pricing: &Pricing,
) -> Result<Estimate, BadRequest> {
    match vendor {
        Vendor::Stripe => stripe::estimate(method, path, body, pricing),
        Vendor::Twilio => twilio::estimate(method, path, body, pricing),
        Vendor::Resend => resend::estimate(method, path, body, pricing),
    }
}

/// Costs a successful (2xx) response; `reserved` is what was reserved for it, kept when the
/// response does not say better.
pub fn actual(
    vendor: Vendor,
    method: &str,
    path: &str,
    body: &[u8],
    pricing: &Pricing,
    reserved: Usd,
) -> Usd {
    match vendor {
        Vendor::Stripe => stripe::actual(method, path, body, pricing, reserved),
        Vendor::Twilio => twilio::actual(method, path, body, pricing, reserved),
        Vendor::Resend => resend::actual(method, path, body, pricing, reserved),
    }
}

/// `path` split into segments (the proxy has already made it canonical).
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Parses a form body, refusing non-UTF-8 and repeated scalar keys (`amount=1&amount=99999`).
/// Array keys (`expand[]`, `MediaUrl`) may repeat.
fn form(body: &[u8], repeatable: &[&str]) -> Result<Vec<(String, String)>, BadRequest> {
    let text = std::str::from_utf8(body)
        .map_err(|_| BadRequest::Body("form data", "it is not UTF-8".into()))?;
    let pairs: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
        .into_owned()
        .collect();
    let mut seen = std::collections::HashSet::new();
    for (k, _) in &pairs {
        if !k.ends_with("[]") && !repeatable.contains(&k.as_str()) && !seen.insert(k.as_str()) {
            return Err(BadRequest::Duplicate(k.clone()));
        }
    }
    Ok(pairs)
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parses JSON, refusing duplicate object keys (which parsers resolve differently).
pub fn json_no_duplicates(body: &[u8]) -> Result<serde_json::Value, BadRequest> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

    struct Strict;
    impl<'de> Visitor<'de> for Strict {
        type Value = serde_json::Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value_seed(StrictSeed)?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                }
            }
            Ok(serde_json::Value::Object(out))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(StrictSeed)? {
                out.push(v);
            }
            Ok(serde_json::Value::Array(out))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(serde_json::Number::from_f64(v)
                .map_or(serde_json::Value::Null, serde_json::Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
    }
    struct StrictSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for StrictSeed {
        type Value = serde_json::Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Strict)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de
        .deserialize_any(Strict)
        .map_err(|e| BadRequest::Body("JSON", e.to_string()))?;
    de.end()
        .map_err(|e| BadRequest::Body("JSON", e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_refuse_repeated_scalars_but_not_arrays() {
        assert_eq!(
            form(b"amount=1&amount=99999", &[]).unwrap_err(),
            BadRequest::Duplicate("amount".into())
        );
        assert!(
            form(
                b"expand[]=a&expand[]=b&MediaUrl=x&MediaUrl=y",
                &["MediaUrl"]
            )
            .is_ok()
        );
        assert!(matches!(
            form(b"amount=\xff", &[]),
            Err(BadRequest::Body(..))
        ));
    }

    #[test]
    fn json_refuses_duplicate_keys_at_any_depth() {
        assert!(json_no_duplicates(br#"{"to":"a","to":"b"}"#).is_err());
        assert!(json_no_duplicates(br#"[{"a":{"b":1,"b":2}}]"#).is_err());
        assert_eq!(
            json_no_duplicates(br#"{"a":[1,{"b":null}]}"#).unwrap()["a"][1]["b"],
            serde_json::Value::Null
        );
        assert!(json_no_duplicates(b"{} trailing").is_err());
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn pricing() -> Pricing {
        let mut p = Pricing {
            sms_segment_usd: Some("0.0083".parse().unwrap()),
            mms_usd: Some("0.022".parse().unwrap()),
            email_usd: Some("0.0009".parse().unwrap()),
            unknown_call_usd: Some("1".parse().unwrap()),
            ..Default::default()
        };
        p.currency_usd_rates
            .insert("eur".into(), "1.08".parse().unwrap());
        p.currency_usd_rates
            .insert("jpy".into(), "1000".parse().unwrap());
        p
    }

    fn paths() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/v1/payment_intents",
            "/v1/charges",
            "/v1/payment_intents/pi_1/confirm",
            "/v1/invoices/in_1/pay",
            "/2010-04-01/Accounts/AC1/Messages.json",
            "/emails",
            "/emails/batch",
            "/",
        ])
    }

    proptest! {
        #[test]
        fn estimators_never_panic_or_overflow(
            vendor in prop::sample::select(Vendor::ALL.to_vec()),
            method in prop::sample::select(vec!["GET", "POST", "DELETE", "PATCH"]),
            path in paths(),
            body in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(Estimate::Known(usd)) = estimate(vendor, method, path, &body, &pricing()) {
                prop_assert!(usd <= Usd::MAX);
            }
            let a = actual(vendor, method, path, &body, &pricing(), Usd::ZERO);
            prop_assert!(a <= Usd::MAX);
        }

        #[test]
        fn stripe_amounts_cost_exactly_or_are_refused(amount in any::<u64>(), currency in prop::sample::select(vec!["usd", "eur", "jpy", "chf"])) {
            let body = format!("amount={amount}&currency={currency}");
            match estimate(Vendor::Stripe, "POST", "/v1/charges", body.as_bytes(), &pricing()) {
                Ok(Estimate::Known(usd)) => prop_assert!(usd <= Usd::MAX),
                Ok(Estimate::Unknown) => prop_assert!(false, "an amount and currency are always known"),
                Err(_) => {}
            }
        }

        #[test]
        fn forms_of_any_text_never_panic(text in "\\PC{0,100}") {
            let _ = estimate(Vendor::Twilio, "POST", "/2010-04-01/Accounts/AC1/Messages.json", text.as_bytes(), &pricing());
            let _ = twilio::sms_segments(&text);
        }
    }
}
