//! Prices and plans: how long a billing period lasts and what one unit charges per period (read
//! when a subscription is costed), and the price and product edits refused because they re-price
//! flows that run outside the proxy.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::fields::usd_of;
use crate::adapters::{
    error::BadRequest,
    money,
    request::{Plan, Request},
};

/// Creating or editing a price, or editing a product: free, unless it re-prices the merchant's
/// own lookup-key, Checkout or multi-currency flows.
pub(super) fn edit(call: &Request) -> Result<Plan, BadRequest> {
    const REPRICING: [&str; 4] = [
        "lookup_key",
        "transfer_lookup_key",
        "currency_options",
        "default_price",
    ];
    match call
        .pairs()
        .iter()
        .find(|(k, _)| REPRICING.contains(&k.split('[').next().unwrap_or_default()))
    {
        Some((name, _)) => Err(BadRequest::Refused(format!(
            "{name} re-prices the merchant's own lookup-key, Checkout or multi-currency flows, which run outside the proxy"
        ))),
        None => Ok(Plan::Known(Usd::ZERO)),
    }
}

/// The shortest a billing period of `count` × `interval` can last, in seconds: a month counted
/// as 28 days and a year as 365, so the periods counted before `cancel_at` are never too few.
pub(super) fn shortest_period(
    interval: Option<&str>,
    count: Option<u64>,
) -> Result<u64, BadRequest> {
    let unit: u64 = match interval {
        Some("day") => 86_400,
        Some("week") => 7 * 86_400,
        Some("month") => 28 * 86_400,
        Some("year") => 365 * 86_400,
        other => {
            return Err(BadRequest::Refused(format!(
                "a subscription item's price has no recurring interval the proxy reads ({other:?})"
            )));
        }
    };
    let count = count.unwrap_or(1);
    if count == 0 || count > 1095 {
        return Err(BadRequest::Invalid(
            "interval_count",
            format!("{count} is not an interval count Stripe accepts"),
        ));
    }
    Ok(unit * count)
}

/// The shortest period of a price (`recurring`) or plan read from Stripe.
pub(super) fn period_of(obj: &Value) -> Result<u64, BadRequest> {
    let recurring = obj.get("recurring").unwrap_or(obj);
    shortest_period(
        recurring.get("interval").and_then(Value::as_str),
        recurring.get("interval_count").and_then(Value::as_u64),
    )
}

/// What one unit of a price or plan charges per period, in the currency the customer is billed
/// in (a price's `currency_options`), refusing what has no fixed unit price.
pub(super) fn unit_price(
    obj: &Value,
    path: &str,
    billed_in: Option<&str>,
    pricing: &Pricing,
) -> Result<Usd, BadRequest> {
    let metered = obj.get("usage_type").and_then(Value::as_str) == Some("metered")
        || obj.pointer("/recurring/usage_type").and_then(Value::as_str) == Some("metered");
    let tiered = obj.get("billing_scheme").and_then(Value::as_str) == Some("tiered");
    if metered || tiered {
        return Err(BadRequest::Refused(format!(
            "{path} is metered or tiered: what a subscription to it charges is not known in advance"
        )));
    }
    let field = if path.starts_with("/v1/plans/") {
        "amount"
    } else {
        "unit_amount"
    };
    let own = obj
        .get("currency")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(c) = billed_in.filter(|c| !c.eq_ignore_ascii_case(own)) {
        let option = obj
            .get("currency_options")
            .and_then(|o| o.get(c.to_ascii_lowercase()))
            .and_then(|o| o.get("unit_amount"))
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                BadRequest::Refused(format!(
                    "{path}: the customer is billed in {c}, and no fixed amount in {c} was read"
                ))
            })?;
        return money::minor_to_usd(option, c, pricing);
    }
    usd_of(obj, field, pricing)?.ok_or_else(|| {
        BadRequest::Refused(format!(
            "{path} has no fixed {field} to cost the subscription from"
        ))
    })
}
