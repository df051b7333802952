//! Stripe: form-encoded requests under `/v1`. A PaymentIntent or Charge costs its amount when it
//! is created, whether or not it is confirmed then (it can be confirmed later without the proxy);
//! confirming, capturing or raising an object this key already counted costs only the excess.
//! Refunds, transfers, payouts and top-ups cost their amount; invoices and subscriptions cost what
//! the objects they charge say, read first with the real key.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{
    call::{Call, Plan, Prefetch, Settled},
    error::BadRequest,
    money,
    table::{Entry, Rule, e},
};

/// Every Stripe endpoint the proxy meters or knows to move no money. Literal rows come before
/// `{id}` rows they could be mistaken for.
pub const ENDPOINTS: &[Entry] = &[
    e(
        "POST",
        "/v1/payment_intents",
        Rule::Priced,
        "`amount` in `currency`, counted at creation even when not confirmed yet",
    ),
    e(
        "POST",
        "/v1/payment_intents/{id}",
        Rule::Prefetched,
        "a new `amount` or `currency` costs what the PaymentIntent would then move over what this key counted for it; free without either",
    ),
    e(
        "POST",
        "/v1/payment_intents/{id}/confirm",
        Rule::Prefetched,
        "the PaymentIntent's `amount`, less what this key already counted for it",
    ),
    e(
        "POST",
        "/v1/payment_intents/{id}/capture",
        Rule::Prefetched,
        "`amount_to_capture` (else the PaymentIntent's `amount_capturable`), less what this key already counted for it",
    ),
    e(
        "POST",
        "/v1/payment_intents/{id}/increment_authorization",
        Rule::Prefetched,
        "the new total `amount`, less what this key already counted for the PaymentIntent",
    ),
    e(
        "POST",
        "/v1/payment_intents/{id}/cancel",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/charges",
        Rule::Priced,
        "`amount` in `currency`, counted at creation (also with `capture=false`)",
    ),
    e(
        "POST",
        "/v1/charges/{id}/capture",
        Rule::Prefetched,
        "`amount` (else the Charge's `amount`), less what this key already counted for it",
    ),
    e(
        "POST",
        "/v1/refunds",
        Rule::Prefetched,
        "`amount`, else the whole `payment_intent` or `charge`, in its currency (read first): money out counts against the caps",
    ),
    e(
        "POST",
        "/v1/refunds/{id}/cancel",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/transfers",
        Rule::Priced,
        "`amount` in `currency`",
    ),
    e(
        "POST",
        "/v1/payouts",
        Rule::Priced,
        "`amount` in `currency`",
    ),
    e("POST", "/v1/topups", Rule::Priced, "`amount` in `currency`"),
    e(
        "POST",
        "/v1/invoices",
        Rule::Free,
        "only with `auto_advance=false` (an invoice that finalizes itself charges later without the proxy); refused otherwise",
    ),
    e(
        "POST",
        "/v1/invoices/create_preview",
        Rule::Free,
        "a preview moves no money",
    ),
    e(
        "POST",
        "/v1/invoices/{id}/pay",
        Rule::Prefetched,
        "the invoice's `amount_remaining`",
    ),
    e(
        "POST",
        "/v1/invoices/{id}/finalize",
        Rule::Prefetched,
        "the invoice's `amount_due` when it charges automatically; free for `send_invoice`",
    ),
    e(
        "POST",
        "/v1/invoices/{id}/void",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/invoiceitems",
        Rule::Priced,
        "`amount` (or `unit_amount` times `quantity`) in `currency`, counted when created: a pending item is charged on the customer's next invoice, which may never pass the proxy",
    ),
    e(
        "POST",
        "/v1/subscriptions",
        Rule::Prefetched,
        "every period until `cancel_at`, which is required and may be no later than the key's expiry (so no renewal outlives the key): each item's price (read first) times its quantity times the periods that can start before `cancel_at` (months counted as 28 days, years as 365; one more with `billing_cycle_anchor`); refused when the customer has pending invoice items or a balance owed (the first invoice would charge them too), and for metered or tiered prices, tax, another currency and added invoice items",
    ),
    e(
        "POST",
        "/v1/subscriptions/{id}",
        Rule::Free,
        "only `metadata`, `description` and a `cancel_at` no later than the subscription's own (read first) and the key's expiry; anything that changes what a period charges or when it ends otherwise is refused (its renewals were reserved at creation)",
    ),
    e(
        "POST",
        "/v1/subscription_items",
        Rule::Refused(
            "changes what every renewal of a subscription charges; renewals are reserved only when the subscription is created",
        ),
        "",
    ),
    e(
        "POST",
        "/v1/subscription_items/{id}",
        Rule::Refused(
            "changes what every renewal of a subscription charges; renewals are reserved only when the subscription is created",
        ),
        "",
    ),
    e(
        "DELETE",
        "/v1/subscriptions/{id}",
        Rule::Free,
        "free; `invoice_now` other than `false` is refused (it bills at once)",
    ),
    e(
        "POST",
        "/v1/subscription_schedules",
        Rule::Refused("a schedule's phases commit money over time, past any key's expiry"),
        "",
    ),
    e(
        "POST",
        "/v1/checkout/sessions",
        Rule::WorstCase,
        "line items and modes the request does not bound; `mode=subscription` is refused even then (the subscription would renew after the key)",
    ),
    e(
        "POST",
        "/v1/payment_links",
        Rule::Refused(
            "anyone with the link can pay, any number of times, long after the key has expired",
        ),
        "",
    ),
    e(
        "POST",
        "/v1/credit_notes",
        Rule::WorstCase,
        "can refund or credit amounts the request does not bound",
    ),
    e(
        "POST",
        "/v1/quotes/{id}/accept",
        Rule::Refused("creates an invoice or a subscription whose renewals no key bounds"),
        "",
    ),
    e(
        "POST",
        "/v1/transfers/{id}/reversals",
        Rule::WorstCase,
        "reverses an amount of a transfer",
    ),
    e(
        "POST",
        "/v1/application_fees/{id}/refunds",
        Rule::WorstCase,
        "refunds an application fee",
    ),
    e(
        "POST",
        "/v1/customers",
        Rule::Free,
        "free; `balance`, `cash_balance`, `account_balance`, `plan`, `quantity` and `trial_end` are refused (they change what the next invoice charges, or subscribe under old API versions)",
    ),
    e(
        "POST",
        "/v1/customers/{id}",
        Rule::Free,
        "free; the same parameters are refused as on create",
    ),
    e("DELETE", "/v1/customers/{id}", Rule::Free, "moves no money"),
    e("POST", "/v1/payment_methods", Rule::Free, "moves no money"),
    e(
        "POST",
        "/v1/payment_methods/{id}",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/payment_methods/{id}/attach",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/payment_methods/{id}/detach",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/setup_intents",
        Rule::Free,
        "saves a payment method; moves no money",
    ),
    e(
        "POST",
        "/v1/setup_intents/{id}",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/setup_intents/{id}/confirm",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/v1/setup_intents/{id}/cancel",
        Rule::Free,
        "moves no money",
    ),
    e("POST", "/v1/products", Rule::Free, "moves no money"),
    e(
        "POST",
        "/v1/products/{id}",
        Rule::Free,
        "free; `default_price` is refused (it re-prices the merchant's own Checkout and links)",
    ),
    e(
        "POST",
        "/v1/prices",
        Rule::Free,
        "free; `lookup_key`, `transfer_lookup_key` and `currency_options` are refused (they re-price flows outside the proxy)",
    ),
    e(
        "POST",
        "/v1/prices/{id}",
        Rule::Free,
        "free; `lookup_key`, `transfer_lookup_key` and `currency_options` are refused",
    ),
    e("POST", "/v1/plans", Rule::Free, "moves no money"),
    e("POST", "/v1/tokens", Rule::Free, "moves no money"),
    e(
        "POST",
        "/v1/coupons",
        Rule::Free,
        "lowers what invoices charge",
    ),
    e(
        "POST",
        "/v1/promotion_codes",
        Rule::Free,
        "lowers what invoices charge",
    ),
];

/// Customer parameters that change what its next invoice charges, or that subscribed it under
/// API versions from before 2018 (`plan`, `quantity`, `trial_end`).
const CUSTOMER_REFUSED: [&str; 6] = [
    "balance",
    "cash_balance",
    "account_balance",
    "plan",
    "quantity",
    "trial_end",
];

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

/// A Stripe object id as the API issues them (`pi_3N...`, `cus_...`); nothing else is ever
/// put into a path the proxy reads.
fn object_id<'a>(field: &'static str, v: &'a str) -> Result<&'a str, BadRequest> {
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
fn chosen_id<'a>(field: &'static str, v: &'a str) -> Result<&'a str, BadRequest> {
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

fn required<'a>(call: &'a Call, name: &'static str) -> Result<&'a str, BadRequest> {
    call.field(name)
        .ok_or_else(|| BadRequest::Invalid(name, "is required to cost the call".into()))
}

/// `amount` in `currency` from the request.
fn amount_in(
    call: &Call,
    amount_field: &'static str,
    pricing: &Pricing,
) -> Result<Usd, BadRequest> {
    let amount = money::parse_amount(amount_field, required(call, amount_field)?)?;
    money::minor_to_usd(amount, required(call, "currency")?, pricing)
}

/// An integer amount field of a fetched object, in dollars; `None` when absent.
fn usd_of(v: &Value, field: &str, pricing: &Pricing) -> Result<Option<Usd>, BadRequest> {
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

fn first_usd(v: &Value, fields: &[&str], pricing: &Pricing) -> Result<Usd, BadRequest> {
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
fn excess(
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
fn amount_of_object(call: &Call, field: &'static str) -> Result<Option<u64>, BadRequest> {
    call.field(field)
        .map(|a| money::parse_amount(field, a))
        .transpose()
}

fn in_currency_of(obj: &Value, amount: u64, pricing: &Pricing) -> Result<Usd, BadRequest> {
    let currency = obj.get("currency").and_then(Value::as_str).ok_or_else(|| {
        BadRequest::Invalid("currency", "the vendor object has no currency".into())
    })?;
    money::minor_to_usd(amount, currency, pricing)
}

/// Costs a Stripe write under its table entry: one arm per costed endpoint, so the cost of each
/// is read beside the others.
pub fn plan(entry: &Entry, call: &Call, pricing: &Pricing) -> Result<Plan, BadRequest> {
    let segs = call.segments();
    let id = || segs.get(2).copied().unwrap_or_default().to_owned();
    match (entry.method, entry.path) {
        (
            "POST",
            "/v1/payment_intents" | "/v1/charges" | "/v1/transfers" | "/v1/payouts" | "/v1/topups",
        ) => amount_in(call, "amount", pricing).map(Plan::Known),
        ("POST", "/v1/payment_intents/{id}") => {
            let amount = amount_of_object(call, "amount")?;
            let currency = call.field("currency").map(str::to_owned);
            if amount.is_none() && currency.is_none() {
                return Ok(Plan::Known(Usd::ZERO));
            }
            // What the PaymentIntent could move after the update: its amount in its currency,
            // either or both as updated.
            Ok(excess(
                format!("/v1/payment_intents/{}", id()),
                &id(),
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
        ("POST", "/v1/payment_intents/{id}/confirm") => Ok(excess(
            format!("/v1/payment_intents/{}", id()),
            &id(),
            pricing,
            |pi, p| first_usd(pi, &["amount"], p),
        )),
        ("POST", "/v1/payment_intents/{id}/capture") => {
            let to_capture = amount_of_object(call, "amount_to_capture")?;
            Ok(excess(
                format!("/v1/payment_intents/{}", id()),
                &id(),
                pricing,
                move |pi, p| match to_capture {
                    Some(a) => in_currency_of(pi, a, p),
                    // localstripe has no amount_capturable: the amount bounds it.
                    None => first_usd(pi, &["amount_capturable", "amount"], p),
                },
            ))
        }
        ("POST", "/v1/payment_intents/{id}/increment_authorization") => {
            let amount = money::parse_amount("amount", required(call, "amount")?)?;
            Ok(excess(
                format!("/v1/payment_intents/{}", id()),
                &id(),
                pricing,
                move |pi, p| in_currency_of(pi, amount, p),
            ))
        }
        ("POST", "/v1/charges/{id}/capture") => {
            let amount = amount_of_object(call, "amount")?;
            Ok(excess(
                format!("/v1/charges/{}", id()),
                &id(),
                pricing,
                move |ch, p| match amount {
                    Some(a) => in_currency_of(ch, a, p),
                    None => first_usd(ch, &["amount"], p),
                },
            ))
        }
        ("POST", "/v1/refunds") => refund(call, pricing),
        ("POST", "/v1/invoices/{id}/pay") => Ok(excess(
            format!("/v1/invoices/{}", id()),
            &id(),
            pricing,
            |inv, p| first_usd(inv, &["amount_remaining"], p),
        )),
        ("POST", "/v1/invoices/{id}/finalize") => Ok(excess(
            format!("/v1/invoices/{}", id()),
            &id(),
            pricing,
            |inv, p| match inv.get("collection_method").and_then(Value::as_str) {
                Some("send_invoice") => Ok(Usd::ZERO),
                _ => first_usd(inv, &["amount_due"], p),
            },
        )),
        ("POST", "/v1/invoices") => match call.field("auto_advance") {
            Some("false") => Ok(Plan::Known(Usd::ZERO)),
            _ => Err(BadRequest::Refused(
                "POST /v1/invoices: an invoice that advances by itself is finalized and charged later without the proxy; create it with auto_advance=false, then finalize or pay it through the proxy".into(),
            )),
        },
        ("POST", "/v1/invoiceitems") => invoice_item(call, pricing).map(Plan::Known),
        ("POST", "/v1/subscriptions") => subscription(call, pricing, std::time::SystemTime::now()),
        ("POST", "/v1/subscriptions/{id}") => subscription_update(call),
        ("DELETE", "/v1/subscriptions/{id}") => {
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
        ("POST", "/v1/prices" | "/v1/prices/{id}" | "/v1/products/{id}") => {
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
        ("POST", "/v1/customers" | "/v1/customers/{id}") => {
            if let Some((name, _)) = call
                .pairs()
                .iter()
                .find(|(k, _)| {
                    let root = k.split('[').next().unwrap_or_default();
                    CUSTOMER_REFUSED.contains(&root)
                })
            {
                return Err(BadRequest::Refused(format!(
                    "{name} on a customer changes what its next invoice charges, outside any cap"
                )));
            }
            Ok(Plan::Known(Usd::ZERO))
        }
        _ if entry.rule == Rule::Free => Ok(Plan::Known(Usd::ZERO)),
        _ => Err(BadRequest::Refused(format!(
            "{} {} has no cost rule",
            entry.method, entry.path
        ))),
    }
}

/// A subscription update: free when it only relabels the subscription or ends it sooner.
/// Everything else changes what its periods charge or lets it renew past what was reserved at
/// creation; a new `cancel_at` is read against the subscription's own (read first) and held to
/// the key's expiry by the reserve script.
fn subscription_update(call: &Call) -> Result<Plan, BadRequest> {
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
    let id = call
        .segments()
        .get(2)
        .copied()
        .unwrap_or_default()
        .to_owned();
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

/// An invoice item's amount: `amount`, or `unit_amount` times `quantity`, in `currency`.
fn invoice_item(call: &Call, pricing: &Pricing) -> Result<Usd, BadRequest> {
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

fn refund(call: &Call, pricing: &Pricing) -> Result<Plan, BadRequest> {
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

/// One subscription item: the object to read (or an inline price with its shortest period, in
/// seconds) and its quantity.
enum Item {
    Read(String, u64),
    Inline(u64, String, u64, u64),
}

/// Why a call costed by a policy's worst case would still commit money past any key: a Checkout
/// session that starts a subscription.
pub fn outlives_the_key(call: &Call) -> Option<String> {
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
pub fn commitment(call: &Call) -> Result<Option<i64>, BadRequest> {
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

/// The shortest a billing period of `count` × `interval` can last, in seconds: a month counted
/// as 28 days and a year as 365, so the periods counted before `cancel_at` are never too few.
fn shortest_period(interval: Option<&str>, count: Option<u64>) -> Result<u64, BadRequest> {
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
fn period_of(obj: &Value) -> Result<u64, BadRequest> {
    let recurring = obj.get("recurring").unwrap_or(obj);
    shortest_period(
        recurring.get("interval").and_then(Value::as_str),
        recurring.get("interval_count").and_then(Value::as_u64),
    )
}

/// Costs a subscription: every period that can start before its `cancel_at`, which the reserve
/// script holds to the key's expiry. One function: the items, their prices, quantities and
/// periods, and the refusal of every shape Stripe reads another way are one reading of the form.
fn subscription(
    call: &Call,
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

/// What one unit of a price or plan charges per period, in the currency the customer is billed
/// in (a price's `currency_options`), refusing what has no fixed unit price.
fn unit_price(
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

/// A refused PaymentIntent that still exists: Stripe answers a declined card with 402 but keeps
/// the PaymentIntent (`error.payment_intent`), which can then be confirmed client-side without
/// the proxy. Its reservation stays counted, for that object.
pub fn declined(call: &Call, status: u16, v: Option<&Value>, reserved: Usd) -> Option<Settled> {
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
        .and_then(|id| object_id("id", id).ok())?;
    (creates && status == 402).then(|| Settled {
        usd: reserved,
        object: Some(id.to_owned()),
    })
}

/// Costs a 2xx Stripe response: never below what was reserved (a PaymentIntent counts its amount
/// whatever its status), above it when the response shows more; and the object the money
/// belongs to, so a later confirm or capture by this key costs only the excess.
pub fn actual(call: &Call, v: Option<&Value>, pricing: &Pricing, reserved: Usd) -> Settled {
    let segs = call.segments();
    let shown = |field: &str| {
        v.and_then(|v| usd_of(v, field, pricing).ok().flatten())
            .unwrap_or(Usd::ZERO)
    };
    let response_id = || {
        v.and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            .and_then(|id| object_id("id", id).ok())
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

#[cfg(test)]
mod tests {
    use keybrake_crds::Vendor;
    use serde_json::json;

    use super::{
        super::{plan as plan_call, testing::*},
        *,
    };

    fn usd(s: &str) -> Usd {
        s.parse().unwrap()
    }

    fn cost(method: &str, path: &str, params: &str) -> Result<Plan, BadRequest> {
        plan_call(&try_call(Vendor::Stripe, method, path, params)?, &pricing())
    }

    fn known(method: &str, path: &str, params: &str) -> Usd {
        match cost(method, path, params) {
            Ok(Plan::Known(u)) => u,
            other => panic!("{method} {path} {params}: {other:?}"),
        }
    }

    /// Runs a prefetch plan against objects as the vendor would return them.
    fn prefetched(
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

    #[test]
    fn subscriptions_cost_their_items() {
        // Ends within the first period: one period is reserved.
        let sub = |params: &str| {
            let end = NOW_SECS + 3600;
            subscription(
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

    const NOW_SECS: i64 = 1_800_000_000;

    fn now() -> std::time::SystemTime {
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(NOW_SECS as u64)
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
            match subscription(&c, &pricing(), now())? {
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
            subscription(&open, &pricing(), now()),
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
