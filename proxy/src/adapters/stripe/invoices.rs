//! Invoices and invoice items. Paying or finalizing an invoice costs what it says it will charge,
//! read first; an invoice is created only when it does not advance (and charge) by itself; an
//! invoice item costs its amount.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::fields::{excess, first_usd, path_id, required};
use crate::adapters::{
    error::BadRequest,
    money,
    request::{Plan, Request},
};

/// Paying an invoice: what it has left to charge.
pub(super) fn pay(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let id = path_id(call);
    Ok(excess(
        format!("/v1/invoices/{id}"),
        &id,
        pricing,
        |inv, p| first_usd(inv, &["amount_remaining"], p),
    ))
}

/// Finalizing an invoice: what it charges automatically once final (nothing when it is sent to
/// be paid by the customer).
pub(super) fn finalize(call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let id = path_id(call);
    Ok(excess(
        format!("/v1/invoices/{id}"),
        &id,
        pricing,
        |inv, p| match inv.get("collection_method").and_then(Value::as_str) {
            Some("send_invoice") => Ok(Usd::ZERO),
            _ => first_usd(inv, &["amount_due"], p),
        },
    ))
}

/// Creating an invoice: free, and only when it waits to be finalized or paid through the proxy.
pub(super) fn create(call: &Request) -> Result<Plan, BadRequest> {
    match call.field("auto_advance") {
        Some("false") => Ok(Plan::Known(Usd::ZERO)),
        _ => Err(BadRequest::Refused(
            "POST /v1/invoices: an invoice that advances by itself is finalized and charged later without the proxy; create it with auto_advance=false, then finalize or pay it through the proxy".into(),
        )),
    }
}

/// An invoice item's amount: `amount`, or `unit_amount` times `quantity`, in `currency`.
pub(super) fn item(call: &Request, pricing: &Pricing) -> Result<Usd, BadRequest> {
    const ROOTS: [&str; 12] = [
        "customer",
        "amount",
        "unit_amount",
        "quantity",
        "currency",
        "description",
        "metadata",
        "invoice",
        "subscription",
        "period",
        "discountable",
        "expand",
    ];
    if let Some((k, _)) = call
        .pairs()
        .iter()
        .find(|(k, _)| !ROOTS.contains(&k.split('[').next().unwrap_or_default()))
    {
        return Err(BadRequest::Refused(format!(
            "POST /v1/invoiceitems: {k} is not costed by the proxy; send amount (or unit_amount and quantity) and currency"
        )));
    }
    let minor = match (call.field("amount"), call.field("unit_amount")) {
        (Some(a), None) => money::parse_amount("amount", a)?,
        (None, Some(u)) => {
            let quantity = call
                .field("quantity")
                .map(|q| money::parse_amount("quantity", q))
                .transpose()?
                .unwrap_or(1);
            money::parse_amount("unit_amount", u)?
                .checked_mul(quantity)
                .ok_or_else(|| BadRequest::Invalid("quantity", "too large to cost".into()))?
        }
        _ => {
            return Err(BadRequest::Invalid(
                "amount",
                "an invoice item is costed from exactly one of amount or unit_amount".into(),
            ));
        }
    };
    money::minor_to_usd(minor, required(call, "currency")?, pricing)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn invoice_items_cost_their_amount() {
        assert_eq!(
            known(
                "POST",
                "/v1/invoiceitems",
                "customer=cus_1&amount=99999&currency=usd"
            ),
            usd("999.99")
        );
        assert_eq!(
            known(
                "POST",
                "/v1/invoiceitems",
                "customer=cus_1&unit_amount=250&quantity=4&currency=usd"
            ),
            usd("10")
        );
        for bad in [
            "customer=cus_1&price=price_1",
            "customer=cus_1&amount=1",
            "customer=cus_1&amount=1&unit_amount=2&currency=usd",
            "customer=cus_1&price_data[unit_amount]=1&currency=usd",
        ] {
            assert!(cost("POST", "/v1/invoiceitems", bad).is_err(), "{bad}");
        }
    }
}
