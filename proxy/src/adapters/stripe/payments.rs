//! Payment intents and charges, and the other creates that move their amount (transfers,
//! payouts, top-ups). A create costs its amount whether or not it is confirmed then (it can be
//! confirmed later without the proxy); updating, confirming, capturing or raising an object this
//! key already counted costs only the excess, read from the object first.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::fields::{
    amount_in, amount_of_object, excess, first_usd, in_currency_of, path_id, required,
};
use crate::adapters::{
    error::BadRequest,
    money,
    request::{Plan, Request},
};

/// A create that moves its `amount` in `currency`.
pub(super) fn create(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    amount_in(call, "amount", pricing).map(Plan::Known)
}

/// A PaymentIntent update: free unless it changes the amount or the currency.
pub(super) fn update(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let amount = amount_of_object(call, "amount")?;
    let currency = call.field("currency").map(str::to_owned);
    if amount.is_none() && currency.is_none() {
        return Ok(Plan::Known(Usd::ZERO));
    }
    let id = path_id(call);
    // What the PaymentIntent could move after the update: its amount in its currency,
    // either or both as updated.
    Ok(excess(
        format!("/v1/payment_intents/{id}"),
        &id,
        pricing,
        move |pi, p| {
            let amount = match amount {
                Some(a) => a,
                None => pi.get("amount").and_then(Value::as_u64).ok_or_else(|| {
                    BadRequest::Invalid("amount", "the PaymentIntent has no amount".into())
                })?,
            };
            match currency {
                Some(c) => money::minor_to_usd(amount, &c, p),
                None => in_currency_of(pi, amount, p),
            }
        },
    ))
}

/// A PaymentIntent confirmation: its amount.
pub(super) fn confirm(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let id = path_id(call);
    Ok(excess(
        format!("/v1/payment_intents/{id}"),
        &id,
        pricing,
        |pi, p| first_usd(pi, &["amount"], p),
    ))
}

/// A PaymentIntent capture: `amount_to_capture`, or what it can capture.
pub(super) fn capture(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let to_capture = amount_of_object(call, "amount_to_capture")?;
    let id = path_id(call);
    Ok(excess(
        format!("/v1/payment_intents/{id}"),
        &id,
        pricing,
        move |pi, p| match to_capture {
            Some(a) => in_currency_of(pi, a, p),
            // localstripe has no amount_capturable: the amount bounds it.
            None => first_usd(pi, &["amount_capturable", "amount"], p),
        },
    ))
}

/// A raised authorization: the new `amount`, in the PaymentIntent's currency.
pub(super) fn increment_authorization(
    call: &Request,
    pricing: &Pricing,
) -> Result<Plan, BadRequest> {
    let amount = money::parse_amount("amount", required(call, "amount")?)?;
    let id = path_id(call);
    Ok(excess(
        format!("/v1/payment_intents/{id}"),
        &id,
        pricing,
        move |pi, p| in_currency_of(pi, amount, p),
    ))
}

/// A charge capture: `amount`, or the charge's.
pub(super) fn capture_charge(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let amount = amount_of_object(call, "amount")?;
    let id = path_id(call);
    Ok(excess(
        format!("/v1/charges/{id}"),
        &id,
        pricing,
        move |ch, p| match amount {
            Some(a) => in_currency_of(ch, a, p),
            None => first_usd(ch, &["amount"], p),
        },
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;

    #[test]
    fn money_moving_creates_cost_their_amount() {
        assert_eq!(
            known(
                "POST",
                "/v1/payment_intents",
                "amount=1250&currency=usd&metadata[run]=r1"
            ),
            usd("12.50")
        );
        assert_eq!(
            known("POST", "/v1/charges", "amount=1000&currency=eur"),
            usd("10.80")
        );
        assert_eq!(
            known(
                "POST",
                "/v1/transfers",
                "amount=500&currency=usd&destination=acct_1"
            ),
            usd("5")
        );
        assert_eq!(
            known("POST", "/v1/payouts", "amount=500&currency=usd"),
            usd("5")
        );
        assert_eq!(
            known("POST", "/v1/topups", "amount=500&currency=usd"),
            usd("5")
        );
        for (path, params) in [
            ("/v1/payment_intents", "currency=usd"),
            ("/v1/payment_intents", "amount=1&currency=chf"),
            ("/v1/payment_intents", "amount=-5&currency=usd"),
            ("/v1/payment_intents", "amount=12.5&currency=usd"),
            (
                "/v1/payment_intents",
                "amount=99999999999999999999999&currency=usd",
            ),
            ("/v1/transfers", "amount=5"),
        ] {
            assert!(cost("POST", path, params).is_err(), "{path} {params}");
        }
    }

    #[test]
    fn changing_a_payment_intents_currency_costs_what_it_would_then_move() {
        let jpy = json!({"amount": 10000, "currency": "jpy"});
        // ¥10,000 counted as $67; as $100.00 it would move $33 more.
        assert_eq!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1",
                "currency=usd",
                std::slice::from_ref(&jpy),
                "67"
            )
            .unwrap(),
            usd("33")
        );
        assert!(
            prefetched(
                "POST",
                "/v1/payment_intents/pi_1",
                "currency=chf",
                std::slice::from_ref(&jpy),
                "0"
            )
            .is_err()
        );
    }
}
