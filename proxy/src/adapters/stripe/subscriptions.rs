//! Subscriptions: what one charges is reserved at creation for every period until its
//! `cancel_at`, which the reserve script holds to the key's expiry ([`commitment`]); an update
//! may only relabel it or end it sooner, and cancelling it may not bill or credit the unused time.
//! A Checkout session that would start one is refused ([`outlives_the_key`]).

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{
    fields::{chosen_id, object_id, path_id, required},
    prices::{period_of, shortest_period, unit_price},
};
use crate::adapters::{
    error::BadRequest,
    money,
    request::{Plan, Prefetch, Request},
};

/// Parameters a subscription may carry and still be costed by its items.
const SUBSCRIPTION_ROOTS: [&str; 19] = [
    "customer",
    "cancel_at",
    "items",
    "default_payment_method",
    "default_source",
    "payment_behavior",
    "metadata",
    "expand",
    "trial_period_days",
    "trial_end",
    "cancel_at_period_end",
    "description",
    "off_session",
    "proration_behavior",
    "coupon",
    "promotion_code",
    "collection_method",
    "days_until_due",
    "billing_cycle_anchor",
];

/// One subscription item: the object to read (or an inline price with its shortest period, in
/// seconds) and its quantity.
enum Item {
    Read(String, u64),
    Inline(u64, String, u64, u64),
}

/// Why a call costed by a policy's worst case would still commit money past any key: a Checkout
/// session that starts a subscription.
pub fn outlives_the_key(call: &Request) -> Option<String> {
    let checkout = call.method == "POST" && call.path == "/v1/checkout/sessions";
    (checkout && call.field("mode") != Some("payment") && call.field("mode") != Some("setup")).then(|| {
        "POST /v1/checkout/sessions: only mode=payment or mode=setup; a subscription started by Checkout renews after the key has expired, unreserved".to_owned()
    })
}

/// A `cancel_at`: whole Unix seconds.
fn cancel_at(v: &str) -> Result<i64, BadRequest> {
    v.parse::<i64>()
        .ok()
        .filter(|s| *s > 0 && *s < 100_000_000_000 && v.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            BadRequest::Invalid("cancel_at", format!("{v:?} is not a time in Unix seconds"))
        })
}

/// Until when a subscription create or update commits money: its `cancel_at`, in Unix
/// milliseconds. The reserve script refuses it past the key's expiry, by Redis time.
pub fn commitment(call: &Request) -> Result<Option<i64>, BadRequest> {
    let segs = call.segments();
    let subscription = call.method == "POST"
        && matches!(
            segs.as_slice(),
            ["v1", "subscriptions"] | ["v1", "subscriptions", _]
        );
    match call.field("cancel_at") {
        Some(v) if subscription => Ok(Some(cancel_at(v)?.saturating_mul(1000))),
        _ => Ok(None),
    }
}

/// Costs a subscription: every period that can start before its `cancel_at`, which the reserve
/// script holds to the key's expiry. One function: the items, their prices, quantities and
/// periods, and the refusal of every shape Stripe reads another way are one reading of the form.
pub(super) fn create(
    call: &Request,
    pricing: &Pricing,
    now: std::time::SystemTime,
) -> Result<Plan, BadRequest> {
    let end = match call.field("cancel_at") {
        Some(v) => cancel_at(v)?,
        None => {
            return Err(BadRequest::Refused(
                "POST /v1/subscriptions: a subscription renews until cancelled, after the key has expired; send cancel_at (Unix seconds), no later than the key's expiry, and every period until then is reserved".into(),
            ));
        }
    };
    let now_secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    if end <= now_secs {
        return Err(BadRequest::Invalid(
            "cancel_at",
            "is not in the future".into(),
        ));
    }
    let span = (end - now_secs) as u64;
    // An anchor makes a prorated first invoice before the regular periods: one more charge.
    let anchored = u64::from(call.field("billing_cycle_anchor").is_some());
    let periods = move |period: u64| span.div_ceil(period).max(1) + anchored;
    let mut items: std::collections::BTreeMap<u64, Vec<(&str, &str)>> = Default::default();
    for (k, v) in call.pairs() {
        let root = k.split('[').next().unwrap_or_default();
        if !SUBSCRIPTION_ROOTS.contains(&root) {
            return Err(BadRequest::Refused(format!(
                "POST /v1/subscriptions: {k} is not costed by the proxy (it can add charges the items do not show)"
            )));
        }
        if root != "items" {
            continue;
        }
        let rest = &k["items[".len().min(k.len())..];
        let (index, sub) = rest.split_once(']').unwrap_or(("", ""));
        // `items[00]` and `items[+0]` would be one item here and maybe two at Stripe.
        let canonical = index == "0" || (!index.starts_with('0') && !index.is_empty());
        let index: u64 = index
            .parse()
            .ok()
            .filter(|_| canonical && index.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| BadRequest::Invalid("items", format!("{k} is not items[N][...]")))?;
        items.entry(index).or_default().push((sub, v));
    }
    if items.is_empty() {
        return Err(BadRequest::Invalid(
            "items",
            "a subscription needs items to be costed".into(),
        ));
    }
    if items.keys().copied().ne(0..items.len() as u64) {
        return Err(BadRequest::Invalid(
            "items",
            "items are numbered items[0], items[1], ... without gaps".into(),
        ));
    }
    let customer = object_id("customer", required(call, "customer")?)?;
    let mut plan = Vec::new();
    for fields in items.values() {
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        for (k, _) in fields {
            let known = ["[price]", "[plan]", "[quantity]"].contains(k)
                || k.starts_with("[metadata]")
                || [
                    "[price_data][currency]",
                    "[price_data][product]",
                    "[price_data][unit_amount]",
                    "[price_data][recurring][interval]",
                    "[price_data][recurring][interval_count]",
                ]
                .contains(k);
            if !known {
                return Err(BadRequest::Refused(format!(
                    "POST /v1/subscriptions: items{k} is not costed by the proxy"
                )));
            }
        }
        let quantity = get("[quantity]")
            .map(|q| money::parse_amount("items[][quantity]", q))
            .transpose()?
            .unwrap_or(1);
        plan.push(
            match (
                get("[price]"),
                get("[plan]"),
                get("[price_data][unit_amount]"),
            ) {
                (Some(p), None, None) => Item::Read(
                    // Expanded: a customer billed in another currency pays that option's amount.
                    format!(
                        "/v1/prices/{}?expand%5B%5D=currency_options",
                        chosen_id("items[][price]", p)?
                    ),
                    quantity,
                ),
                (None, Some(p), None) => Item::Read(
                    format!("/v1/plans/{}", chosen_id("items[][plan]", p)?),
                    quantity,
                ),
                (None, None, Some(a)) => Item::Inline(
                    money::parse_amount("items[][price_data][unit_amount]", a)?,
                    get("[price_data][currency]")
                        .ok_or_else(|| {
                            BadRequest::Invalid(
                                "items[][price_data][currency]",
                                "is required".into(),
                            )
                        })?
                        .to_owned(),
                    quantity,
                    shortest_period(
                        get("[price_data][recurring][interval]"),
                        get("[price_data][recurring][interval_count]")
                            .map(|c| money::parse_amount("interval_count", c))
                            .transpose()?,
                    )?,
                ),
                _ => {
                    return Err(BadRequest::Invalid(
                        "items",
                        "each item names exactly one of price, plan or price_data[unit_amount]"
                            .into(),
                    ));
                }
            },
        );
    }
    // The customer and its pending items first: the first invoice charges them too.
    let mut reads = vec![
        format!("/v1/customers/{customer}"),
        format!("/v1/invoiceitems?customer={customer}&pending=true&limit=1"),
    ];
    reads.extend(plan.iter().filter_map(|i| match i {
        Item::Read(path, _) => Some(path.clone()),
        Item::Inline(..) => None,
    }));
    let pricing = pricing.clone();
    Ok(Plan::Prefetch(Prefetch {
        reads,
        object: None,
        cost: Box::new(move |objects, _| {
            let mut read = objects.iter();
            let customer = read.next();
            // Without a balance (an old API version) what the first invoice adds is unknown.
            let owed = customer
                .and_then(|c| c.get("balance"))
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    BadRequest::Refused("the customer's balance could not be read".into())
                })?;
            // A customer billed in its own currency pays a price's amount in that currency.
            let billed_in = customer
                .and_then(|c| c.get("currency"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            if owed > 0 {
                return Err(BadRequest::Refused(
                    "the customer owes a balance, which the subscription's first invoice would charge beyond its items".into(),
                ));
            }
            let pending = read
                .next()
                .and_then(|l| l.get("data"))
                .and_then(Value::as_array)
                .is_none_or(|d| !d.is_empty());
            if pending {
                return Err(BadRequest::Refused(
                    "the customer has pending invoice items (or they could not be listed), which the subscription's first invoice would charge beyond its items".into(),
                ));
            }
            let mut total = Usd::ZERO;
            for item in plan {
                let (unit, quantity, period) = match item {
                    Item::Inline(amount, currency, q, period) => {
                        if billed_in
                            .as_ref()
                            .is_some_and(|c| !c.eq_ignore_ascii_case(&currency))
                        {
                            return Err(BadRequest::Refused(format!(
                                "the customer is billed in {}, not in the item's {currency}",
                                billed_in.as_deref().unwrap_or_default()
                            )));
                        }
                        (money::minor_to_usd(amount, &currency, &pricing)?, q, period)
                    }
                    Item::Read(path, q) => {
                        let obj = read
                            .next()
                            .ok_or_else(|| BadRequest::Refused(format!("{path} was not read")))?;
                        (
                            unit_price(obj, &path, billed_in.as_deref(), &pricing)?,
                            q,
                            period_of(obj)?,
                        )
                    }
                };
                total = unit
                    .checked_mul(quantity)
                    .and_then(|u| u.checked_mul(periods(period)))
                    .and_then(|u| total.checked_add(u))
                    .ok_or_else(|| BadRequest::Invalid("items", "too large to cost".into()))?;
            }
            Ok(total)
        }),
    }))
}

/// A subscription update: free when it only relabels the subscription or ends it sooner.
/// Everything else changes what its periods charge or lets it renew past what was reserved at
/// creation; a new `cancel_at` is read against the subscription's own (read first) and held to
/// the key's expiry by the reserve script.
pub(super) fn update(call: &Request) -> Result<Plan, BadRequest> {
    let mut end = None;
    for (k, v) in call.pairs() {
        match k.split('[').next().unwrap_or_default() {
            "metadata" | "description" | "expand" => {}
            "cancel_at" if !v.is_empty() => end = Some(cancel_at(v)?),
            // Ending sooner without crediting the unused time (money back, uncounted).
            "proration_behavior" if v == "none" => {}
            _ => {
                return Err(BadRequest::Refused(format!(
                    "POST /v1/subscriptions/{{id}}: {k}={v} changes what the subscription charges or how long it renews, after its renewals were reserved at creation; only metadata, description and an earlier cancel_at are accepted"
                )));
            }
        }
    }
    let Some(end) = end else {
        return Ok(Plan::Known(Usd::ZERO));
    };
    let id = path_id(call);
    Ok(Plan::Prefetch(Prefetch {
        reads: vec![format!("/v1/subscriptions/{id}")],
        object: None,
        cost: Box::new(move |objects, _| {
            let current = objects
                .first()
                .and_then(|s| s.get("cancel_at"))
                .and_then(Value::as_i64);
            match current {
                Some(c) if end <= c => Ok(Usd::ZERO),
                Some(c) => Err(BadRequest::Refused(format!(
                    "cancel_at {end} is later than the subscription's own ({c}): its renewals until then were not reserved"
                ))),
                None => Err(BadRequest::Refused(
                    "the subscription has no cancel_at (or it could not be read): its renewals were not reserved".into(),
                )),
            }
        }),
    }))
}

/// Cancelling a subscription: free, unless it bills or credits the unused time.
pub(super) fn delete(call: &Request) -> Result<Plan, BadRequest> {
    match (call.field("invoice_now"), call.field("prorate")) {
        (Some(v), _) if v != "false" => Err(BadRequest::Refused(
            "DELETE /v1/subscriptions/{id} with invoice_now=true bills at once an amount the request does not bound".into(),
        )),
        // A proration credits the customer for unused time: money back, uncounted.
        (_, Some(v)) if v != "false" => Err(BadRequest::Refused(
            "DELETE /v1/subscriptions/{id} with prorate=true credits the customer an amount the request does not bound".into(),
        )),
        _ => Ok(Plan::Known(Usd::ZERO)),
    }
}

#[cfg(test)]
mod tests {
    use keybrake_crds::{Usd, Vendor};
    use serde_json::{Value, json};

    use super::{super::testing::*, *};

    const NOW_SECS: i64 = 1_800_000_000;

    fn now() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW_SECS as u64)
    }

    #[test]
    fn subscriptions_cost_their_items() {
        // Ends within the first period: one period is reserved.
        let sub = |params: &str| {
            let end = NOW_SECS + 3600;
            create(
                &try_call(
                    Vendor::Stripe,
                    "POST",
                    "/v1/subscriptions",
                    &format!("{params}&cancel_at={end}"),
                )?,
                &pricing(),
                now(),
            )
        };
        let params =
            "customer=cus_1&items[0][price]=price_a&items[0][quantity]=3&items[1][plan]=gold";
        let customer = json!({"id": "cus_1", "balance": 0});
        let none_pending = json!({"object": "list", "data": []});
        let price = json!({"unit_amount": 1000, "currency": "usd", "recurring": {"usage_type": "licensed", "interval": "month"}});
        let plan = json!({"amount": 500, "currency": "eur", "usage_type": "licensed", "interval": "month"});
        let run = |params: &str, objects: &[Value]| -> Result<Usd, BadRequest> {
            let mut all = vec![customer.clone(), none_pending.clone()];
            all.extend_from_slice(objects);
            match sub(params)? {
                Plan::Prefetch(p) => (p.cost)(&all, Usd::ZERO),
                Plan::Known(u) => panic!("known {u}"),
            }
        };
        match sub(params).unwrap() {
            Plan::Prefetch(p) => assert_eq!(
                p.reads,
                [
                    "/v1/customers/cus_1",
                    "/v1/invoiceitems?customer=cus_1&pending=true&limit=1",
                    "/v1/prices/price_a?expand%5B%5D=currency_options",
                    "/v1/plans/gold"
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            run(params, &[price.clone(), plan.clone()]).unwrap(),
            usd("35.40")
        );
        // The first invoice would also charge pending items or a balance owed.
        let with = |customer: Value, pending: Value| match sub(params).unwrap() {
            Plan::Prefetch(p) => {
                (p.cost)(&[customer, pending, price.clone(), plan.clone()], Usd::ZERO)
            }
            other => panic!("{other:?}"),
        };
        assert!(with(json!({"balance": 5000}), none_pending.clone()).is_err());
        assert!(
            with(json!({}), none_pending.clone()).is_err(),
            "no balance read: refused"
        );
        // A customer billed in euros pays the price's euro option, or is refused without one.
        let eur_customer = json!({"balance": 0, "currency": "eur"});
        let multi = json!({"unit_amount": 1000, "currency": "usd", "recurring": {"interval": "month"}, "currency_options": {"eur": {"unit_amount": 99_999_999u64}}});
        let eur_plan = json!({"amount": 500, "currency": "eur", "usage_type": "licensed", "interval": "month"});
        match sub("customer=cus_1&items[0][price]=price_a&items[1][plan]=gold").unwrap() {
            Plan::Prefetch(p) => {
                let got = (p.cost)(
                    &[eur_customer.clone(), none_pending.clone(), multi, eur_plan],
                    Usd::ZERO,
                )
                .unwrap();
                assert_eq!(got, usd("1080005.3892"), "999,999.99 eur + 5 eur at 1.08");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            with(eur_customer, none_pending.clone()).is_err(),
            "usd price, no eur option"
        );
        assert!(with(customer.clone(), json!({"data": [{"id": "ii_1"}]})).is_err());
        assert!(with(customer.clone(), json!({"error": {}})).is_err());
        let metered =
            json!({"unit_amount": 1, "currency": "usd", "recurring": {"usage_type": "metered"}});
        assert!(run("customer=cus_1&items[0][price]=price_m", &[metered]).is_err());
        let tiered = json!({"unit_amount": null, "currency": "usd", "billing_scheme": "tiered"});
        assert!(run("customer=cus_1&items[0][price]=price_t", &[tiered]).is_err());
        for bad in [
            "customer=cus_1",
            "items[0][price]=price_a",
            "customer=cus_1&items[0][price]=price_a&add_invoice_items[0][price]=price_b",
            "customer=cus_1&items[0][price]=price_a&automatic_tax[enabled]=true",
            "customer=cus_1&items[0][price]=price_a&items[0][tax_rates][]=txr_1",
            "customer=cus_1&items[0][price]=price_a&currency=eur",
            "customer=cus_1&items[0][price]=a/../b",
            "customer=cus_1&items[0][price]=price_a&items[0][plan]=gold",
            "customer=cus_1&items[0][price]=price_a&items[00][price]=price_b",
            "customer=cus_1&items[0][price]=price_a&items[+0][quantity]=9",
            "customer=cus_1&items[1][price]=price_a",
        ] {
            assert!(sub(bad).is_err(), "{bad}");
        }
        assert_eq!(
            run("customer=cus_1&items[0][price_data][unit_amount]=700&items[0][price_data][currency]=usd&items[0][price_data][product]=prod_1&items[0][price_data][recurring][interval]=month", &[]).unwrap(),
            usd("7")
        );
    }

    #[test]
    fn a_subscription_reserves_every_period_until_it_ends() {
        let customer = json!({"id": "cus_1", "balance": 0});
        let none_pending = json!({"object": "list", "data": []});
        let monthly =
            json!({"unit_amount": 1000, "currency": "usd", "recurring": {"interval": "month"}});
        let weekly = json!({"unit_amount": 1000, "currency": "usd", "recurring": {"interval": "week", "interval_count": 2}});
        let cost_until = |params: &str, end: i64, price: &Value| -> Result<Usd, BadRequest> {
            let c = try_call(
                Vendor::Stripe,
                "POST",
                "/v1/subscriptions",
                &format!("customer=cus_1&items[0][price]=price_a{params}&cancel_at={end}"),
            )?;
            match create(&c, &pricing(), now())? {
                Plan::Prefetch(p) => (p.cost)(
                    &[customer.clone(), none_pending.clone(), price.clone()],
                    Usd::ZERO,
                ),
                Plan::Known(u) => panic!("known {u}"),
            }
        };
        let day = 86_400;
        // 60 days hold three months of 28 days: three charges at most.
        assert_eq!(
            cost_until("", NOW_SECS + 60 * day, &monthly).unwrap(),
            usd("30")
        );
        assert_eq!(
            cost_until("", NOW_SECS + 56 * day, &monthly).unwrap(),
            usd("20")
        );
        assert_eq!(cost_until("", NOW_SECS + 1, &monthly).unwrap(), usd("10"));
        // Two-week periods over 29 days: three; an anchor adds a prorated first invoice.
        assert_eq!(
            cost_until("", NOW_SECS + 29 * day, &weekly).unwrap(),
            usd("30")
        );
        assert_eq!(
            cost_until(
                &format!("&billing_cycle_anchor={}", NOW_SECS + day),
                NOW_SECS + 29 * day,
                &weekly
            )
            .unwrap(),
            usd("40")
        );
        assert!(
            cost_until("", NOW_SECS - 1, &monthly).is_err(),
            "in the past"
        );
        let once = json!({"unit_amount": 1000, "currency": "usd"});
        assert!(
            cost_until("", NOW_SECS + day, &once).is_err(),
            "no interval"
        );
        // Without cancel_at a subscription renews past any key: refused.
        let open = try_call(
            Vendor::Stripe,
            "POST",
            "/v1/subscriptions",
            "customer=cus_1&items[0][price]=price_a",
        )
        .unwrap();
        assert!(matches!(
            create(&open, &pricing(), now()),
            Err(BadRequest::Refused(_))
        ));
        // The commitment the reserve script holds to the key's expiry.
        let c = try_call(
            Vendor::Stripe,
            "POST",
            "/v1/subscriptions",
            "customer=cus_1&items[0][price]=price_a&cancel_at=1800003600",
        )
        .unwrap();
        assert_eq!(commitment(&c).unwrap(), Some(1_800_003_600_000));
        let c = try_call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=1&currency=usd&cancel_at=5",
        )
        .unwrap();
        assert_eq!(commitment(&c).unwrap(), None);
    }

    #[test]
    fn a_subscription_update_may_only_end_it_sooner() {
        for ok in ["metadata[x]=1", "description=d", "proration_behavior=none"] {
            assert_eq!(
                known("POST", "/v1/subscriptions/sub_1", ok),
                Usd::ZERO,
                "{ok}"
            );
        }
        // A new end is read against the subscription's own: sooner only.
        let at = |own: Value| {
            prefetched(
                "POST",
                "/v1/subscriptions/sub_1",
                "cancel_at=1800003600",
                &[json!({ "cancel_at": own })],
                "0",
            )
        };
        assert_eq!(at(json!(1_800_003_600)).unwrap(), Usd::ZERO);
        assert_eq!(at(json!(1_900_000_000)).unwrap(), Usd::ZERO);
        assert!(
            matches!(at(json!(1_800_000_000)), Err(BadRequest::Refused(_))),
            "later"
        );
        assert!(
            matches!(at(Value::Null), Err(BadRequest::Refused(_))),
            "no end of its own"
        );
        for bad in [
            "items[0][price]=p",
            "cancel_at=",
            "cancel_at_period_end=false",
            "cancel_at_period_end=true",
            "quantity=100",
            "trial_end=now",
            "pause_collection=",
            "proration_behavior=always_invoice",
        ] {
            assert!(
                matches!(
                    cost("POST", "/v1/subscriptions/sub_1", bad),
                    Err(BadRequest::Refused(_))
                ),
                "{bad}"
            );
        }
    }
}
