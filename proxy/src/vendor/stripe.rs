//! Stripe: form-encoded requests under `/v1`. Money moves on PaymentIntents, Charges and
//! invoice payments; refunds give money back (cost 0); creating customers and the like is free.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{BadRequest, Estimate, field, form, money, segments};

/// Objects whose create, update, delete and cancel move no money.
const FREE: [&str; 9] = [
    "customers",
    "payment_methods",
    "setup_intents",
    "products",
    "prices",
    "plans",
    "refunds",
    "tokens",
    "sources",
];

fn amount_estimate(
    body: &[u8],
    pricing: &Pricing,
    amount_field: &'static str,
) -> Result<Estimate, BadRequest> {
    let pairs = form(body, &[])?;
    let (Some(amount), Some(currency)) = (field(&pairs, amount_field), field(&pairs, "currency"))
    else {
        return Ok(Estimate::Unknown);
    };
    let minor = money::parse_amount(amount_field, amount)?;
    Ok(Estimate::Known(money::minor_to_usd(
        minor, currency, pricing,
    )?))
}

/// Costs a Stripe request before it is sent.
pub fn estimate(
    method: &str,
    path: &str,
    body: &[u8],
    pricing: &Pricing,
) -> Result<Estimate, BadRequest> {
    let segs = segments(path);
    if matches!(method, "GET" | "HEAD" | "DELETE") {
        // Reads, and DELETEs (which cancel or remove), move no money.
        if method == "DELETE" {
            form(body, &[])?;
        }
        return Ok(Estimate::Known(Usd::ZERO));
    }
    match segs.as_slice() {
        ["v1", "payment_intents"] | ["v1", "charges"] => amount_estimate(body, pricing, "amount"),
        // Counted when authorised (creation); confirm may move an amount the request does not name.
        ["v1", "payment_intents", _, "confirm"] => {
            form(body, &[])?;
            Ok(Estimate::Unknown)
        }
        ["v1", "payment_intents", _]
        | ["v1", "payment_intents", _, "capture" | "cancel"]
        | ["v1", "charges", _, "capture"] => {
            form(body, &[])?;
            Ok(Estimate::Known(Usd::ZERO))
        }
        ["v1", object, ..] if FREE.contains(object) => {
            form(body, &[])?;
            Ok(Estimate::Known(Usd::ZERO))
        }
        _ => {
            form(body, &[])?;
            Ok(Estimate::Unknown)
        }
    }
}

/// For calls whose amount lives on an existing object (confirming a PaymentIntent, paying an
/// invoice): the object to read first, and its field holding the amount that will move. The
/// proxy reads it with the real key and reserves that exact amount instead of `unknownCallUsd`,
/// so such a call cannot move more than a cap allows.
pub fn prefetch(method: &str, path: &str) -> Option<(String, &'static str)> {
    match (method, segments(path).as_slice()) {
        ("POST", ["v1", "payment_intents", id, "confirm"]) => {
            Some((format!("/v1/payment_intents/{id}"), "amount"))
        }
        ("POST", ["v1", "invoices", id, "pay"]) => {
            Some((format!("/v1/invoices/{id}"), "amount_remaining"))
        }
        _ => None,
    }
}

/// The amount in `field` of a fetched object, in dollars.
pub fn prefetched_cost(body: &[u8], field: &str, pricing: &Pricing) -> Option<Usd> {
    usd_of(&serde_json::from_slice::<Value>(body).ok()?, field, pricing)
}

fn usd_of(v: &Value, amount_field: &str, pricing: &Pricing) -> Option<Usd> {
    let amount = v.get(amount_field)?.as_u64()?;
    let currency = v.get("currency")?.as_str()?;
    money::minor_to_usd(amount, currency, pricing).ok()
}

/// Costs a 2xx Stripe response: what actually moved, or the reservation when it does not say.
pub fn actual(method: &str, path: &str, body: &[u8], pricing: &Pricing, reserved: Usd) -> Usd {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return reserved;
    };
    let segs = segments(path);
    let moved = match (method, segs.as_slice()) {
        ("POST", ["v1", "payment_intents"] | ["v1", "payment_intents", _, "confirm"]) => {
            match v.get("status").and_then(Value::as_str) {
                // localstripe omits amount_received and amount_capturable; fall back to amount.
                Some("succeeded") => {
                    usd_of(&v, "amount_received", pricing).or_else(|| usd_of(&v, "amount", pricing))
                }
                Some("requires_capture") => usd_of(&v, "amount_capturable", pricing)
                    .or_else(|| usd_of(&v, "amount", pricing)),
                Some("processing" | "requires_action") => usd_of(&v, "amount", pricing),
                Some("requires_payment_method" | "requires_confirmation" | "canceled") => {
                    Some(Usd::ZERO)
                }
                _ => None,
            }
        }
        ("POST", ["v1", "charges"]) => match v.get("status").and_then(Value::as_str) {
            Some("failed") => Some(Usd::ZERO),
            _ if v.get("captured").and_then(Value::as_bool) == Some(true) => {
                usd_of(&v, "amount_captured", pricing).or_else(|| usd_of(&v, "amount", pricing))
            }
            _ => usd_of(&v, "amount", pricing),
        },
        ("POST", ["v1", "invoices", _, "pay"]) => usd_of(&v, "amount_paid", pricing),
        ("POST", ["v1", "subscriptions"]) => v
            .get("latest_invoice")
            .filter(|i| i.is_object())
            .and_then(|i| usd_of(i, "amount_paid", pricing)),
        _ => None,
    };
    moved.unwrap_or(reserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing() -> Pricing {
        let mut p = Pricing::default();
        p.currency_usd_rates
            .insert("eur".into(), "1.08".parse().unwrap());
        p
    }

    fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    #[test]
    fn payment_intents_and_charges_cost_their_amount() {
        let p = pricing();
        let body = b"amount=1250&currency=usd&customer=cus_1&metadata[run]=r1";
        assert_eq!(
            estimate("POST", "/v1/payment_intents", body, &p).unwrap(),
            Estimate::Known(usd("12.50"))
        );
        assert_eq!(
            estimate("POST", "/v1/charges", b"amount=1000&currency=eur", &p).unwrap(),
            Estimate::Known(usd("10.80"))
        );
        assert_eq!(
            estimate("POST", "/v1/payment_intents", b"currency=usd", &p).unwrap(),
            Estimate::Unknown
        );
        assert_eq!(
            estimate("POST", "/v1/payment_intents", b"amount=1&currency=chf", &p).unwrap_err(),
            BadRequest::NoRate("chf".into())
        );
    }

    #[test]
    fn hostile_amounts_are_refused() {
        let p = pricing();
        for body in [
            &b"amount=1&amount=99999&currency=usd"[..],
            b"amount=-5&currency=usd",
            b"amount=12.5&currency=usd",
            b"amount=99999999999999999999999&currency=usd",
            b"amount=1&currency=usd&currency=jpy",
        ] {
            assert!(
                estimate("POST", "/v1/payment_intents", body, &p).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn free_and_unknown_calls() {
        let p = pricing();
        assert_eq!(
            estimate("GET", "/v1/customers/cus_1", b"", &p).unwrap(),
            Estimate::Known(Usd::ZERO)
        );
        assert_eq!(
            estimate("POST", "/v1/refunds", b"payment_intent=pi_1&amount=500", &p).unwrap(),
            Estimate::Known(Usd::ZERO)
        );
        assert_eq!(
            estimate("POST", "/v1/customers", b"email=a@b.c", &p).unwrap(),
            Estimate::Known(Usd::ZERO)
        );
        assert_eq!(
            estimate("POST", "/v1/payment_intents/pi_1/capture", b"", &p).unwrap(),
            Estimate::Known(Usd::ZERO)
        );
        assert_eq!(
            estimate("POST", "/v1/payment_intents/pi_1/confirm", b"", &p).unwrap(),
            Estimate::Unknown
        );
        assert_eq!(
            estimate("POST", "/v1/invoices/in_1/pay", b"", &p).unwrap(),
            Estimate::Unknown
        );
        assert_eq!(
            estimate(
                "POST",
                "/v1/subscriptions",
                b"customer=c&items[0][price]=p",
                &p
            )
            .unwrap(),
            Estimate::Unknown
        );
        assert_eq!(
            estimate("POST", "/v1/transfers", b"amount=5&currency=usd", &p).unwrap(),
            Estimate::Unknown
        );
    }

    #[test]
    fn confirm_and_invoice_pay_read_their_object_first() {
        assert_eq!(
            prefetch("POST", "/v1/payment_intents/pi_1/confirm"),
            Some(("/v1/payment_intents/pi_1".into(), "amount"))
        );
        assert_eq!(
            prefetch("POST", "/v1/invoices/in_1/pay"),
            Some(("/v1/invoices/in_1".into(), "amount_remaining"))
        );
        assert_eq!(prefetch("POST", "/v1/payment_intents"), None);
        let p = pricing();
        assert_eq!(
            prefetched_cost(br#"{"amount":40000,"currency":"eur"}"#, "amount", &p),
            Some(usd("432"))
        );
        assert_eq!(prefetched_cost(b"{}", "amount", &p), None);
    }

    #[test]
    fn actual_cost_follows_what_moved() {
        let p = pricing();
        let r = usd("12.50");
        let pi = |status: &str| {
            format!(r#"{{"id":"pi_1","amount":1250,"currency":"usd","status":"{status}"}}"#)
        };
        assert_eq!(
            actual(
                "POST",
                "/v1/payment_intents",
                pi("succeeded").as_bytes(),
                &p,
                r
            ),
            r
        );
        assert_eq!(
            actual(
                "POST",
                "/v1/payment_intents",
                pi("requires_payment_method").as_bytes(),
                &p,
                r
            ),
            Usd::ZERO
        );
        let received =
            br#"{"amount":1250,"amount_received":1000,"currency":"usd","status":"succeeded"}"#;
        assert_eq!(
            actual("POST", "/v1/payment_intents", received, &p, r),
            usd("10")
        );
        let charge = br#"{"amount":1000,"amount_captured":1000,"captured":true,"currency":"eur","status":"succeeded"}"#;
        assert_eq!(
            actual("POST", "/v1/charges", charge, &p, usd("10.80")),
            usd("10.80")
        );
        assert_eq!(
            actual(
                "POST",
                "/v1/invoices/in_1/pay",
                br#"{"amount_paid":2000,"currency":"usd"}"#,
                &p,
                usd("5")
            ),
            usd("20")
        );
        assert_eq!(
            actual("POST", "/v1/transfers", b"not json", &p, usd("5")),
            usd("5")
        );
    }
}
