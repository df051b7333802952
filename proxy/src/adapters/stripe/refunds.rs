//! Refunds: a refund costs its `amount`, or without one what the PaymentIntent or Charge it
//! names received, read first.

use keybrake_crds::spend_policy::Pricing;

use super::fields::{amount_of_object, first_usd, in_currency_of, object_id};
use crate::adapters::{
    error::BadRequest,
    request::{Plan, Prefetch, Request},
};

/// A refund of one PaymentIntent or Charge.
pub(super) fn create(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let read = match (call.field("payment_intent"), call.field("charge")) {
        (Some(pi), None) => format!("/v1/payment_intents/{}", object_id("payment_intent", pi)?),
        (None, Some(ch)) => format!("/v1/charges/{}", object_id("charge", ch)?),
        _ => {
            return Err(BadRequest::Invalid(
                "payment_intent",
                "a refund names exactly one of payment_intent or charge".into(),
            ));
        }
    };
    let amount = amount_of_object(call, "amount")?;
    let pricing = pricing.clone();
    Ok(Plan::Prefetch(Prefetch {
        reads: vec![read],
        object: None,
        cost: Box::new(move |objects, _| {
            let obj = objects.first().ok_or_else(|| {
                BadRequest::Refused("the object to cost the refund from was not read".into())
            })?;
            match amount {
                Some(a) => in_currency_of(obj, a, &pricing),
                None => first_usd(
                    obj,
                    &["amount_received", "amount_captured", "amount"],
                    &pricing,
                ),
            }
        }),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{super::testing::*, *};

    #[test]
    fn refunds_count_and_name_one_object() {
        let pi = json!({"amount": 1000, "amount_received": 1000, "currency": "usd"});
        assert_eq!(
            prefetched(
                "POST",
                "/v1/refunds",
                "payment_intent=pi_1",
                std::slice::from_ref(&pi),
                "0"
            )
            .unwrap(),
            usd("10")
        );
        assert_eq!(
            prefetched(
                "POST",
                "/v1/refunds",
                "payment_intent=pi_1&amount=250",
                &[pi],
                "0"
            )
            .unwrap(),
            usd("2.50")
        );
        for bad in [
            "",
            "payment_intent=pi_1&charge=ch_1",
            "payment_intent=../v1/accounts",
            "charge=ch_1%2F..%2Fx",
        ] {
            assert!(cost("POST", "/v1/refunds", bad).is_err(), "{bad}");
        }
        match cost("POST", "/v1/refunds", "charge=ch_9").unwrap() {
            Plan::Prefetch(p) => assert_eq!(p.reads, ["/v1/charges/ch_9"]),
            other => panic!("{other:?}"),
        }
    }
}
