//! What the Stripe adapter reads from a request and from the objects it fetches: object ids,
//! required fields and amounts in dollars; and [`excess`], the plan of a call on an object this
//! key may already have counted. Shared by every endpoint family.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use crate::adapters::{
    error::BadRequest,
    money,
    request::{Plan, Prefetch, Request},
};

/// A Stripe object id as the API issues them (`pi_3N...`, `cus_...`); nothing else is ever
/// put into a path the proxy reads.
pub(super) fn object_id<'a>(field: &'static str, v: &'a str) -> Result<&'a str, BadRequest> {
    let ok = v.split_once('_').is_some_and(|(prefix, rest)| {
        !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_lowercase())
            && !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }) && v.len() <= 255;
    if ok {
        Ok(v)
    } else {
        Err(BadRequest::Invalid(
            field,
            format!("{v:?} is not a Stripe object id"),
        ))
    }
}

/// A plan or price id chosen by a person (`gold-monthly`): letters, digits, `_` and `-` only.
pub(super) fn chosen_id<'a>(field: &'static str, v: &'a str) -> Result<&'a str, BadRequest> {
    if !v.is_empty()
        && v.len() <= 255
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(v)
    } else {
        Err(BadRequest::Invalid(
            field,
            format!("{v:?} is not an id the proxy can read"),
        ))
    }
}

pub(super) fn required<'a>(call: &'a Request, name: &'static str) -> Result<&'a str, BadRequest> {
    call.field(name)
        .ok_or_else(|| BadRequest::Invalid(name, "is required to cost the call".into()))
}

/// `amount` in `currency` from the request.
pub(super) fn amount_in(
    call: &Request,
    amount_field: &'static str,
    pricing: &Pricing,
) -> Result<Usd, BadRequest> {
    let amount = money::parse_amount(amount_field, required(call, amount_field)?)?;
    money::minor_to_usd(amount, required(call, "currency")?, pricing)
}

/// An integer amount field of a fetched object, in dollars; `None` when absent.
pub(super) fn usd_of(v: &Value, field: &str, pricing: &Pricing) -> Result<Option<Usd>, BadRequest> {
    let Some(amount) = v.get(field).filter(|a| !a.is_null()) else {
        return Ok(None);
    };
    let amount = amount.as_u64().ok_or_else(|| {
        BadRequest::Invalid(
            "amount",
            format!("the vendor object's {field} is not a whole number"),
        )
    })?;
    let currency = v.get("currency").and_then(Value::as_str).ok_or_else(|| {
        BadRequest::Invalid("currency", "the vendor object has no currency".into())
    })?;
    money::minor_to_usd(amount, currency, pricing).map(Some)
}

pub(super) fn first_usd(v: &Value, fields: &[&str], pricing: &Pricing) -> Result<Usd, BadRequest> {
    for f in fields {
        if let Some(u) = usd_of(v, f, pricing)? {
            return Ok(u);
        }
    }
    Err(BadRequest::Invalid(
        "amount",
        format!("the vendor object has none of {}", fields.join(", ")),
    ))
}

/// A cost read from one object, less what this key counted for it.
pub(super) fn excess(
    read: String,
    object: &str,
    pricing: &Pricing,
    exposure: impl FnOnce(&Value, &Pricing) -> Result<Usd, BadRequest> + Send + 'static,
) -> Plan {
    let pricing = pricing.clone();
    Plan::Prefetch(Prefetch {
        reads: vec![read],
        object: Some(object.to_owned()),
        cost: Box::new(move |objects, counted| {
            let obj = objects.first().ok_or_else(|| {
                BadRequest::Refused("the object to cost the call from was not read".into())
            })?;
            Ok(exposure(obj, &pricing)?.saturating_sub(counted))
        }),
    })
}

/// The amount of a request field in the currency of the object read.
pub(super) fn amount_of_object(
    call: &Request,
    field: &'static str,
) -> Result<Option<u64>, BadRequest> {
    call.field(field)
        .map(|a| money::parse_amount(field, a))
        .transpose()
}

pub(super) fn in_currency_of(
    obj: &Value,
    amount: u64,
    pricing: &Pricing,
) -> Result<Usd, BadRequest> {
    let currency = obj.get("currency").and_then(Value::as_str).ok_or_else(|| {
        BadRequest::Invalid("currency", "the vendor object has no currency".into())
    })?;
    money::minor_to_usd(amount, currency, pricing)
}

/// The object id in a call's path (`/v1/<objects>/{id}/...`).
pub(super) fn path_id(call: &Request) -> String {
    call.segments()
        .get(2)
        .copied()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{super::testing::*, *};

    #[test]
    fn calls_on_existing_objects_cost_what_the_object_says_less_what_was_counted() {
        let pi =
            json!({"id": "pi_1", "amount": 40000, "amount_capturable": 30000, "currency": "eur"});
        assert_eq!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1/confirm",
                "",
                std::slice::from_ref(&pi),
                "0"
            )
            .unwrap(),
            usd("432")
        );
        assert_eq!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1/confirm",
                "",
                std::slice::from_ref(&pi),
                "432"
            )
            .unwrap(),
            Usd::ZERO
        );
        assert_eq!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1/capture",
                "",
                std::slice::from_ref(&pi),
                "0"
            )
            .unwrap(),
            usd("324")
        );
        assert_eq!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1/capture",
                "amount_to_capture=100",
                std::slice::from_ref(&pi),
                "0"
            )
            .unwrap(),
            usd("1.08")
        );
        assert_eq!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1/increment_authorization",
                "amount=50000",
                std::slice::from_ref(&pi),
                "432"
            )
            .unwrap(),
            usd("108")
        );
        assert_eq!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1",
                "amount=50000",
                std::slice::from_ref(&pi),
                "0"
            )
            .unwrap(),
            usd("540")
        );
        assert_eq!(
            known("POST", "/v1/payment_intents/pi_1", "description=x"),
            Usd::ZERO
        );
        let chf = json!({"amount": 100, "currency": "chf"});
        assert_eq!(
            prefetched("POST", "/v1/payment_intents/pi_1/confirm", "", &[chf], "0").unwrap_err(),
            BadRequest::NoRate("chf".into())
        );
        assert!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1/confirm",
                "",
                &[json!({})],
                "0"
            )
            .is_err()
        );
        let inv = json!({"amount_remaining": 2000, "amount_due": 2500, "currency": "usd", "collection_method": "charge_automatically"});
        assert_eq!(
            prefetched(
                "POST",
                "/v1/invoices/in_1/pay",
                "",
                std::slice::from_ref(&inv),
                "0"
            )
            .unwrap(),
            usd("20")
        );
        assert_eq!(
            prefetched("POST", "/v1/invoices/in_1/finalize", "", &[inv], "0").unwrap(),
            usd("25")
        );
        let send =
            json!({"amount_due": 2500, "currency": "usd", "collection_method": "send_invoice"});
        assert_eq!(
            prefetched("POST", "/v1/invoices/in_1/finalize", "", &[send], "0").unwrap(),
            Usd::ZERO
        );
    }
}
