//! Stripe: form-encoded requests under `/v1`. A PaymentIntent or Charge costs its amount when it
//! is created, whether or not it is confirmed then (it can be confirmed later without the proxy);
//! confirming, capturing or raising an object this key already counted costs only the excess.
//! Refunds, transfers, payouts and top-ups cost their amount; invoices and subscriptions cost what
//! the objects they charge say, read first with the real key.
//!
//! One file per family of endpoints, named for its objects (`payments.rs`, `refunds.rs`,
//! `invoices.rs`, `subscriptions.rs`, `prices.rs`, `customers.rs`), the table rows in
//! `endpoints.rs`, and what they all read from requests and objects in `fields.rs`. This module
//! only sends each write to its family's cost rule and costs the responses.

mod customers;
mod endpoints;
mod fields;
mod invoices;
mod payments;
mod prices;
mod refunds;
mod subscriptions;

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

pub use endpoints::ENDPOINTS;
pub use subscriptions::{commitment, outlives_the_key};

use crate::adapters::{
    error::BadRequest,
    request::{Plan, Request, Settled},
    table::{Entry, Rule},
};

/// Costs a Stripe write under its table entry: one arm per costed endpoint, so the cost rule of
/// each is found beside the others.
pub fn plan(entry: &Entry, call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    match (entry.method, entry.path) {
        (
            "POST",
            "/v1/payment_intents" | "/v1/charges" | "/v1/transfers" | "/v1/payouts" | "/v1/topups",
        ) => payments::create(call, pricing),
        ("POST", "/v1/payment_intents/{id}") => payments::update(call, pricing),
        ("POST", "/v1/payment_intents/{id}/confirm") => payments::confirm(call, pricing),
        ("POST", "/v1/payment_intents/{id}/capture") => payments::capture(call, pricing),
        ("POST", "/v1/payment_intents/{id}/increment_authorization") => {
            payments::increment_authorization(call, pricing)
        }
        ("POST", "/v1/charges/{id}/capture") => payments::capture_charge(call, pricing),
        ("POST", "/v1/refunds") => refunds::create(call, pricing),
        ("POST", "/v1/invoices/{id}/pay") => invoices::pay(call, pricing),
        ("POST", "/v1/invoices/{id}/finalize") => invoices::finalize(call, pricing),
        ("POST", "/v1/invoices") => invoices::create(call),
        ("POST", "/v1/invoiceitems") => invoices::item(call, pricing).map(Plan::Known),
        ("POST", "/v1/subscriptions") => {
            subscriptions::create(call, pricing, std::time::SystemTime::now())
        }
        ("POST", "/v1/subscriptions/{id}") => subscriptions::update(call),
        ("DELETE", "/v1/subscriptions/{id}") => subscriptions::delete(call),
        ("POST", "/v1/prices" | "/v1/prices/{id}" | "/v1/products/{id}") => prices::edit(call),
        ("POST", "/v1/customers" | "/v1/customers/{id}") => customers::edit(call),
        _ if entry.rule == Rule::Free => Ok(Plan::Known(Usd::ZERO)),
        _ => Err(BadRequest::Refused(format!(
            "{} {} has no cost rule",
            entry.method, entry.path
        ))),
    }
}

/// A refused PaymentIntent that still exists: Stripe answers a declined card with 402 but keeps
/// the PaymentIntent (`error.payment_intent`), which can then be confirmed client-side without
/// the proxy. Its reservation stays counted, for that object.
pub fn declined(call: &Request, status: u16, v: Option<&Value>, reserved: Usd) -> Option<Settled> {
    let segs = call.segments();
    if call.method == "POST"
        && matches!(segs.as_slice(), ["v1", "invoices", _, "pay"])
        && status == 402
    {
        // A declined invoice payment leaves the invoice open and payable without the proxy.
        return Some(Settled {
            usd: reserved,
            object: None,
        });
    }
    let creates = matches!(
        (call.method.as_str(), segs.as_slice()),
        (
            "POST",
            ["v1", "payment_intents"] | ["v1", "payment_intents", _, "confirm"]
        )
    );
    let id = v?
        .pointer("/error/payment_intent/id")
        .and_then(Value::as_str)
        .and_then(|id| fields::object_id("id", id).ok())?;
    (creates && status == 402).then(|| Settled {
        usd: reserved,
        object: Some(id.to_owned()),
    })
}

/// Costs a 2xx Stripe response: never below what was reserved (a PaymentIntent counts its amount
/// whatever its status), above it when the response shows more; and the object the money
/// belongs to, so a later confirm or capture by this key costs only the excess.
pub fn actual(call: &Request, v: Option<&Value>, pricing: &Pricing, reserved: Usd) -> Settled {
    let segs = call.segments();
    let shown = |field: &str| {
        v.and_then(|v| fields::usd_of(v, field, pricing).ok().flatten())
            .unwrap_or(Usd::ZERO)
    };
    let response_id = || {
        v.and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .and_then(|id| fields::object_id("id", id).ok())
            .map(str::to_owned)
    };
    let (usd, object) = match (call.method.as_str(), segs.as_slice()) {
        ("POST", ["v1", "payment_intents" | "charges"]) => {
            (reserved.max(shown("amount")), response_id())
        }
        ("POST", ["v1", "payment_intents", id, ..] | ["v1", "charges", id, "capture"]) => {
            (reserved, Some((*id).to_owned()))
        }
        ("POST", ["v1", "invoices", _, "pay"]) => (reserved.max(shown("amount_paid")), None),
        ("POST", ["v1", "refunds" | "transfers" | "payouts" | "topups"]) => {
            (reserved.max(shown("amount")), None)
        }
        _ => (reserved, None),
    };
    Settled { usd, object }
}

/// What the families' tests share: a call costed the way the proxy costs it.
#[cfg(test)]
mod testing {
    use keybrake_crds::{Usd, Vendor};
    use serde_json::Value;

    pub use crate::adapters::testing::{call, pricing, try_call};
    use crate::adapters::{BadRequest, Plan, plan as plan_call};

    pub fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    pub fn cost(method: &str, path: &str, params: &str) -> Result<Plan, BadRequest> {
        plan_call(&try_call(Vendor::Stripe, method, path, params)?, &pricing())
    }

    pub fn known(method: &str, path: &str, params: &str) -> Usd {
        match cost(method, path, params) {
            Ok(Plan::Known(u)) => u,
            other => panic!("{method} {path} {params}: {other:?}"),
        }
    }

    /// Runs a prefetch plan against objects as the vendor would return them.
    pub fn prefetched(
        method: &str,
        path: &str,
        params: &str,
        objects: &[Value],
        counted: &str,
    ) -> Result<Usd, BadRequest> {
        match cost(method, path, params)? {
            Plan::Prefetch(p) => (p.cost)(objects, usd(counted)),
            Plan::Known(u) => panic!("known {u}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use keybrake_crds::Vendor;
    use serde_json::json;

    use super::{testing::*, *};

    #[test]
    fn declined_payment_intents_stay_counted() {
        let c = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=100&currency=usd&confirm=true",
        );
        let body = json!({"error": {"type": "card_error", "payment_intent": {"id": "pi_5"}}});
        assert_eq!(
            declined(&c, 402, Some(&body), usd("1")).and_then(|s| s.object),
            Some("pi_5".to_owned())
        );
        assert_eq!(declined(&c, 400, Some(&body), usd("1")), None);
        let ch = call(
            Vendor::Stripe,
            "POST",
            "/v1/charges",
            "amount=100&currency=usd",
        );
        assert_eq!(declined(&ch, 402, Some(&body), usd("1")), None);
    }

    #[test]
    fn free_calls_and_their_refused_parameters() {
        assert_eq!(known("POST", "/v1/customers", "email=a@b.c"), Usd::ZERO);
        assert!(cost("POST", "/v1/customers/cus_1", "balance=100000").is_err());
        assert!(
            cost(
                "POST",
                "/v1/customers",
                "cash_balance[settings][reconciliation_mode]=manual"
            )
            .is_err()
        );
        assert_eq!(
            known("POST", "/v1/payment_intents/pi_1/cancel", ""),
            Usd::ZERO
        );
        assert!(cost("POST", "/v1/invoices", "customer=cus_1").is_err());
        assert_eq!(
            known("POST", "/v1/invoices", "customer=cus_1&auto_advance=false"),
            Usd::ZERO
        );
        assert!(cost("DELETE", "/v1/subscriptions/sub_1", "invoice_now=true").is_err());
        assert!(cost("DELETE", "/v1/subscriptions/sub_1", "invoice_now=1").is_err());
        assert!(cost("POST", "/v1/customers", "account_balance=100").is_err());
        assert!(
            cost(
                "POST",
                "/v1/prices/price_1",
                "currency_options[eur][unit_amount]=9"
            )
            .is_err()
        );
        assert!(
            cost(
                "POST",
                "/v1/prices",
                "lookup_key=gold&transfer_lookup_key=true"
            )
            .is_err()
        );
        assert!(cost("POST", "/v1/products/prod_1", "default_price=price_9").is_err());
        assert_eq!(
            known(
                "POST",
                "/v1/prices",
                "unit_amount=100&currency=usd&product=prod_1"
            ),
            Usd::ZERO
        );
        assert!(cost("POST", "/v1/customers", "plan=gold&quantity=1000").is_err());
        assert_eq!(known("DELETE", "/v1/subscriptions/sub_1", ""), Usd::ZERO);
        assert!(cost("DELETE", "/v1/subscriptions/sub_1", "prorate=true").is_err());
        assert!(matches!(
            cost("POST", "/v1/subscriptions/sub_1", "items[0][price]=p"),
            Err(BadRequest::Refused(_))
        ));
    }

    #[test]
    fn actual_never_below_the_reservation() {
        let p = pricing();
        let c = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=1250&currency=usd",
        );
        let body = json!({"id": "pi_9", "amount": 1250, "currency": "usd", "status": "requires_payment_method"});
        assert_eq!(
            actual(&c, Some(&body), &p, usd("12.50")),
            Settled {
                usd: usd("12.50"),
                object: Some("pi_9".into())
            }
        );
        let confirm = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents/pi_9/confirm",
            "",
        );
        assert_eq!(
            actual(&confirm, None, &p, usd("3")).object.as_deref(),
            Some("pi_9")
        );
        let pay = call(Vendor::Stripe, "POST", "/v1/invoices/in_1/pay", "");
        assert_eq!(
            actual(
                &pay,
                Some(&json!({"amount_paid": 2000, "currency": "usd"})),
                &p,
                usd("5")
            )
            .usd,
            usd("20")
        );
        assert_eq!(actual(&pay, None, &p, usd("5")).usd, usd("5"));
    }
}
