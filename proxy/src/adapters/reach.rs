//! Whose objects a call reaches, and which objects it created. A key may act only on objects it
//! created through the proxy (or its run did, or the policy widened the endpoint): this module
//! reads, from the call as the vendor will read it, every vendor object the call names (ids in
//! the path, linked objects in the parameters) and, from the vendor's answer, every object the
//! call created. The ledger checks the first against the owners it recorded from the second.

use keybrake_crds::Vendor;
use serde_json::Value;

use super::request::{Params, Request};

/// One vendor object a call names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// An object acted on or read by id: must be the key's own unless the policy lists the
    /// endpoint in `scope.existingObjects`.
    Object(String),
    /// A customer (or a saved payment method) a call charges or reads: must be the key's own
    /// unless the policy says `scope.customers: Any`.
    Customer(String),
}

/// What a call reaches besides money.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reach {
    /// The objects it names.
    pub named: Vec<Named>,
    /// A read of a collection or of the account (a list, a search, the balance): it returns
    /// objects no key created, so only an endpoint in `scope.existingObjects` may make it.
    pub listing: bool,
}

/// Stripe's words that sit where an id could (`/v1/customers/search`), as reserve.lua lists them.
const STRIPE_WORDS: [&str; 7] = [
    "search",
    "upcoming",
    "create_preview",
    "preview",
    "report_payment",
    "create_from_calculation",
    "create_reversal",
];

/// A Stripe object id exactly as reserve.lua's `stripe_id` reads one (what `*` in an allowlist
/// matches): a lower-case prefix of one or two parts and a body of letters and digits with at
/// least one digit or capital. The two must agree: an id `*` admits is always checked here.
pub fn stripe_id(s: &str) -> bool {
    if STRIPE_WORDS.contains(&s) {
        return false;
    }
    let lower = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let parts: Vec<&str> = s.split('_').collect();
    let body = match parts.as_slice() {
        [a, body] if lower(a) => body,
        [a, b, body] if lower(a) && lower(b) => body,
        _ => return false,
    };
    !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_alphanumeric())
        && body
            .bytes()
            .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// A Twilio SID (`SM` and 32 hex digits), as reserve.lua reads one, with or without `.json`.
fn twilio_sid(s: &str) -> Option<&str> {
    let sid = s.strip_suffix(".json").unwrap_or(s);
    let b = sid.as_bytes();
    (b.len() > 2
        && b[..2].iter().all(u8::is_ascii_uppercase)
        && b[2..].iter().all(u8::is_ascii_hexdigit))
    .then_some(sid)
}

/// A Resend id (a UUID), as reserve.lua reads one.
fn resend_id(s: &str) -> bool {
    s.len() == 36
        && s.split('-').count() == 5
        && s.split('-')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The object id a path segment holds for `vendor`, as the allowlist's `*` reads one (a Twilio
/// SID without its `.json`).
fn segment_id(vendor: Vendor, s: &str) -> Option<&str> {
    match vendor {
        Vendor::Stripe => stripe_id(s).then_some(s),
        Vendor::Twilio => twilio_sid(s),
        Vendor::Resend => resend_id(s).then_some(s),
    }
}

/// Whether a path segment is an object id of `vendor`, as the allowlist's `*` reads one.
pub fn is_id(vendor: Vendor, s: &str) -> bool {
    segment_id(vendor, s).is_some()
}

/// The object a call acts on: the first id of its path, where each vendor's ids start (Stripe's
/// after `/v1/<collection>`; Twilio's after the account SID, which is checked against the key's
/// own). Ids after it are its children (`/v1/customers/{id}/sources/{id}`, a message's
/// `Media/{sid}`), which each vendor serves only under their own parent.
fn path_object(call: &Request) -> Option<&str> {
    let skip = match call.vendor {
        Vendor::Stripe => 2,
        Vendor::Twilio => 3,
        Vendor::Resend => 0,
    };
    call.path
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(skip)
        .find_map(|s| segment_id(call.vendor, s))
}

/// Stripe parameters that name an object the call acts on, wherever they are nested
/// (`from_invoice[invoice]`, `refunds[0][refund]`).
const STRIPE_OBJECT_PARAMS: [&str; 14] = [
    "payment_intent",
    "invoice_item",
    "invoice_line_item",
    "source_transaction",
    "invoiceitem",
    "subscription_item",
    "charge",
    "invoice",
    "subscription",
    "setup_intent",
    "mandate",
    "schedule",
    "quote",
    "refund",
];

/// Stripe parameters that name a customer or what it saved (a ConfirmationToken carries a
/// payment method too).
const STRIPE_CUSTOMER_PARAMS: [&str; 4] =
    ["customer", "payment_method", "source", "confirmation_token"];

/// The name a form key gives its value: the last bracketed name that is not an index
/// (`from_invoice[invoice]` names an invoice, `refunds[0][refund]` a refund, `customer[]` a
/// customer); `None` under `metadata`, which holds the caller's own words.
fn leaf(key: &str) -> Option<&str> {
    if key.split(['[', ']']).any(|p| p == "metadata") {
        return None;
    }
    key.split(['[', ']'])
        .rfind(|p| !p.is_empty() && !p.bytes().all(|b| b.is_ascii_digit()))
}

/// Resend JSON fields that name an object of the account (a broadcast's audience).
const RESEND_OBJECT_FIELDS: [&str; 2] = ["audience_id", "segment_id"];

/// Stripe's test-mode payment tokens (`pm_card_visa`, `tok_visa`) and single-use card tokens a
/// browser makes (`tok_...`): no customer's saved card, and refused by Stripe in live mode.
fn payment_token(v: &str) -> bool {
    v.starts_with("pm_card_") || v.starts_with("tok_")
}

/// Every object `call` names, and whether it lists a collection.
pub fn reach(call: &Request) -> Reach {
    let mut named = Vec::new();
    let object = path_object(call);
    if let Some(id) = object {
        let customer_read = call.vendor == Vendor::Stripe
            && call.is_read()
            && call.segments().get(1).copied() == Some("customers");
        named.push(match customer_read {
            true => Named::Customer(id.to_owned()),
            false => Named::Object(id.to_owned()),
        });
    }
    if call.vendor == Vendor::Stripe {
        for (k, v) in call.pairs() {
            let Some(name) = leaf(k).filter(|_| !v.is_empty()) else {
                continue;
            };
            let customer = STRIPE_CUSTOMER_PARAMS.contains(&name);
            if STRIPE_OBJECT_PARAMS.contains(&name) || (customer && v.starts_with("acct_")) {
                // A connected account as a `source` is an account debit: never a customer's.
                named.push(Named::Object(v.clone()));
            } else if customer && !payment_token(v) {
                named.push(Named::Customer(v.clone()));
            }
        }
    }
    if let (Vendor::Resend, Params::Json(Value::Object(body))) = (call.vendor, &call.params) {
        for field in RESEND_OBJECT_FIELDS {
            if let Some(id) = body.get(field).and_then(Value::as_str) {
                named.push(Named::Object(id.to_owned()));
            }
        }
    }
    Reach {
        listing: call.is_read() && object.is_none(),
        named,
    }
}

/// An id field of a Stripe object: a string, or an expanded object's `id`.
fn id_of(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("id").and_then(Value::as_str),
        _ => None,
    }
}

/// A Stripe create: a POST to a collection (`/v1/payment_intents`), or to a literal row of the
/// metering table (`/v1/checkout/sessions`). A path with an id Stripe does not shape as one
/// (`/v1/products/gold`) acts on an object: what it answers is never taken for a new one.
fn stripe_create(call: &Request) -> bool {
    let segs = call.segments();
    call.method == "POST"
        && path_object(call).is_none()
        && (segs.len() == 2
            || super::table::find(super::stripe::ENDPOINTS, "POST", &call.path)
                .is_some_and(|e| !e.path.contains("{id}")))
}

/// The objects a Stripe answer shows the call created: the object itself for a create, and the
/// children a create, or a call on the key's own object, brings into being (a PaymentIntent's
/// charge, a subscription's invoice, an invoice's PaymentIntent); never a linked object that
/// existed before (its customer).
fn stripe_created(call: &Request, status: u16, v: &Value, on_own: bool, out: &mut Vec<String>) {
    let create = stripe_create(call);
    if status == 402 {
        // A declined PaymentIntent stays, and its creator may confirm it again.
        if create
            && let Some(id) = v
                .pointer("/error/payment_intent/id")
                .and_then(Value::as_str)
        {
            out.push(id.to_owned());
        }
        return;
    }
    if create && let Some(id) = v.get("id").and_then(Value::as_str) {
        out.push(id.to_owned());
    }
    if !(create || on_own) {
        return;
    }
    let children = |o: &Value, out: &mut Vec<String>| {
        for field in ["latest_charge", "latest_invoice"] {
            out.extend(id_of(o.get(field)).map(str::to_owned));
        }
        if o.get("object").and_then(Value::as_str) == Some("invoice") {
            for field in ["payment_intent", "charge"] {
                out.extend(id_of(o.get(field)).map(str::to_owned));
            }
            // From API version 2025-03-31, an invoice's payments are a list.
            if let Some(payments) = o.pointer("/payments/data").and_then(Value::as_array) {
                for p in payments {
                    for field in ["payment_intent", "charge"] {
                        out.extend(
                            id_of(p.pointer(&format!("/payment/{field}"))).map(str::to_owned),
                        );
                    }
                }
            }
        }
    };
    children(v, out);
    if let Some(invoice @ Value::Object(_)) = v.get("latest_invoice") {
        children(invoice, out);
    }
}

/// Every value the caller sent: an id among them was chosen by the caller (a product, plan or
/// coupon may be created with its own `id`), so the answer echoing it proves nothing.
fn sent(call: &Request) -> Vec<&str> {
    match &call.params {
        Params::Form(pairs) => pairs.iter().map(|(_, v)| v.as_str()).collect(),
        Params::Json(v) => {
            let mut out = Vec::new();
            let mut stack = vec![v];
            while let Some(v) = stack.pop() {
                match v {
                    Value::String(s) => out.push(s.as_str()),
                    Value::Array(a) => stack.extend(a),
                    Value::Object(o) => stack.extend(o.values()),
                    _ => {}
                }
            }
            out
        }
    }
}

/// Every object a 2xx answer to a write (or a declined Stripe PaymentIntent's 402) shows the call
/// created. `on_own`: the call acts on an object the ledger found to be the key's own (not one a
/// policy's `existingObjects` let it reach), so what it brings into being is the key's too.
/// Reads create nothing, and an id the caller chose is never taken for one the vendor made.
pub fn created(call: &Request, status: u16, v: Option<&Value>, on_own: bool) -> Vec<String> {
    let Some(v) = v.filter(|_| !call.is_read()) else {
        return Vec::new();
    };
    let ok = (200..300).contains(&status);
    let create = call.method == "POST" && path_object(call).is_none();
    let mut out = Vec::new();
    match call.vendor {
        Vendor::Stripe if ok || status == 402 => stripe_created(call, status, v, on_own, &mut out),
        Vendor::Twilio if ok && create => {
            out.extend(v.get("sid").and_then(Value::as_str).map(str::to_owned));
        }
        Vendor::Resend if ok && create => {
            out.extend(v.get("id").and_then(Value::as_str).map(str::to_owned));
            if let Some(items) = v.get("data").and_then(Value::as_array) {
                out.extend(
                    items
                        .iter()
                        .filter_map(|i| i.get("id").and_then(Value::as_str))
                        .map(str::to_owned),
                );
            }
        }
        _ => {}
    }
    let chosen = sent(call);
    out.retain(|id| !id.is_empty() && id.len() <= 255 && !chosen.contains(&id.as_str()));
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{super::testing::call, *};

    /// `created` of an answer's bytes.
    fn created_from(call: &Request, status: u16, body: &[u8], on_own: bool) -> Vec<String> {
        created(
            call,
            status,
            serde_json::from_slice(body).ok().as_ref(),
            on_own,
        )
    }

    fn objects(r: &Reach) -> Vec<&str> {
        r.named
            .iter()
            .filter_map(|n| match n {
                Named::Object(id) => Some(id.as_str()),
                Named::Customer(_) => None,
            })
            .collect()
    }

    fn customers(r: &Reach) -> Vec<&str> {
        r.named
            .iter()
            .filter_map(|n| match n {
                Named::Customer(id) => Some(id.as_str()),
                Named::Object(_) => None,
            })
            .collect()
    }

    #[test]
    fn ids_are_read_as_the_allowlist_reads_them() {
        for id in [
            "pi_3NabcXYZ",
            "cus_9s6XKzkNRiz8i3",
            "sub_sched_1Mr3",
            "cs_test_a1B2",
        ] {
            assert!(stripe_id(id), "{id}");
        }
        for word in [
            "search",
            "create_preview",
            "capture",
            "increment_authorization",
            "pm_card_visa",
            "balance_transactions",
            "cus_",
            "_abc1",
            "a_b_c_1",
        ] {
            assert!(!stripe_id(word), "{word}");
        }
    }

    #[test]
    fn a_call_names_its_path_ids_and_linked_objects() {
        let capture = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents/pi_3Nabc/capture",
            "amount_to_capture=100",
        );
        assert_eq!(objects(&reach(&capture)), ["pi_3Nabc"]);
        let refund = call(
            Vendor::Stripe,
            "POST",
            "/v1/refunds",
            "payment_intent=pi_3Nother&amount=5",
        );
        assert_eq!(objects(&reach(&refund)), ["pi_3Nother"]);
        let pi = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=100&currency=usd&customer=cus_9s6X&payment_method=pm_1Saved&off_session=true",
        );
        assert_eq!(customers(&reach(&pi)), ["cus_9s6X", "pm_1Saved"]);
        let test_card = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=100&currency=usd&payment_method=pm_card_visa&confirm=true",
        );
        assert_eq!(reach(&test_card), Reach::default());
        let read = call(Vendor::Stripe, "GET", "/v1/customers/cus_9s6X", "");
        assert_eq!(customers(&reach(&read)), ["cus_9s6X"]);
        let update = call(Vendor::Stripe, "POST", "/v1/customers/cus_9s6X", "name=x");
        assert_eq!(objects(&reach(&update)), ["cus_9s6X"]);
    }

    #[test]
    fn reads_without_an_id_list_what_no_key_made() {
        for (v, path) in [
            (Vendor::Stripe, "/v1/customers"),
            (Vendor::Stripe, "/v1/customers/search"),
            (Vendor::Stripe, "/v1/balance"),
            (
                Vendor::Twilio,
                "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
            ),
            (Vendor::Resend, "/emails"),
        ] {
            assert!(reach(&call(v, "GET", path, "")).listing, "{path}");
        }
        let one = call(
            Vendor::Twilio,
            "GET",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM0123456789abcdef0123456789abcdef.json",
            "",
        );
        let r = reach(&one);
        assert!(!r.listing);
        assert_eq!(objects(&r), ["SM0123456789abcdef0123456789abcdef"]);
        let email = call(
            Vendor::Resend,
            "GET",
            "/emails/4ef9a417-02e9-4d39-ad75-9611e0fcc33c",
            "",
        );
        assert_eq!(
            objects(&reach(&email)),
            ["4ef9a417-02e9-4d39-ad75-9611e0fcc33c"]
        );
    }

    #[test]
    fn review_findings_name_or_record_nothing_they_should_not() {
        // An id the caller chose is never recorded as made by the vendor.
        let product = call(
            Vendor::Stripe,
            "POST",
            "/v1/products",
            "name=x&id=pi_3Foreign1",
        );
        assert!(
            created_from(
                &product,
                200,
                br#"{"id": "pi_3Foreign1", "object": "product"}"#,
                true
            )
            .is_empty()
        );
        // Reads, and calls on objects the key was only let reach, record no children.
        let read = call(
            Vendor::Stripe,
            "GET",
            "/v1/payment_intents/pi_3Foreign1",
            "",
        );
        let body = br#"{"id": "pi_3Foreign1", "latest_charge": "ch_3Foreign1"}"#;
        assert!(created_from(&read, 200, body, true).is_empty());
        let capture = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents/pi_3Foreign1/capture",
            "",
        );
        assert!(created_from(&capture, 200, body, false).is_empty());
        assert_eq!(created_from(&capture, 200, body, true), ["ch_3Foreign1"]);
        // A POST to an id Stripe does not shape as one updates it: nothing is new.
        let gold = call(Vendor::Stripe, "POST", "/v1/products/gold", "name=x");
        assert!(
            created_from(&gold, 200, br#"{"id": "gold", "object": "product"}"#, true).is_empty()
        );
        let checkout = call(
            Vendor::Stripe,
            "POST",
            "/v1/checkout/sessions",
            "mode=payment",
        );
        assert_eq!(
            created_from(&checkout, 200, br#"{"id": "cs_test_a1B2"}"#, true),
            ["cs_test_a1B2"]
        );
        // The newer invoice shape lists its payments.
        let sub = call(
            Vendor::Stripe,
            "POST",
            "/v1/subscriptions",
            "customer=cus_1&items[0][price]=price_1",
        );
        let body = br#"{"id": "sub_1", "latest_invoice": {"id": "in_1", "object": "invoice", "payments": {"data": [{"payment": {"type": "payment_intent", "payment_intent": "pi_3New"}}]}}}"#;
        assert_eq!(
            created_from(&sub, 200, body, true),
            ["in_1", "pi_3New", "sub_1"]
        );
        // Keys under any metadata are the caller's words.
        let labelled = call(
            Vendor::Stripe,
            "POST",
            "/v1/subscriptions",
            "customer=cus_9s6X&items[0][price]=price_1&items[0][metadata][invoice]=INV-7",
        );
        assert_eq!(objects(&reach(&labelled)), Vec::<&str>::new());
        // Nested ids, connected accounts as a source, Resend audiences.
        let revise = call(
            Vendor::Stripe,
            "POST",
            "/v1/invoices",
            "auto_advance=false&from_invoice[action]=revision&from_invoice[invoice]=in_1Foreign&metadata[invoice]=mine",
        );
        assert_eq!(objects(&reach(&revise)), ["in_1Foreign"]);
        let debit = call(
            Vendor::Stripe,
            "POST",
            "/v1/charges",
            "amount=1&currency=usd&source=acct_1Conn",
        );
        assert_eq!(objects(&reach(&debit)), ["acct_1Conn"]);
        let broadcast = call(
            Vendor::Resend,
            "POST",
            "/broadcasts",
            r#"{"audience_id":"78261eea-8f8b-4381-83c6-79fa7120f1cf","from":"a@x.io"}"#,
        );
        assert_eq!(
            objects(&reach(&broadcast)),
            ["78261eea-8f8b-4381-83c6-79fa7120f1cf"]
        );
        // A child is served only under its parent: the parent is what is checked.
        let media = call(
            Vendor::Twilio,
            "GET",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/SM0123456789abcdef0123456789abcdef/Media/ME0123456789abcdef0123456789abcdef.json",
            "",
        );
        assert_eq!(
            objects(&reach(&media)),
            ["SM0123456789abcdef0123456789abcdef"]
        );
    }

    #[test]
    fn a_create_owns_what_it_made_and_never_what_it_named() {
        let pi = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=100&currency=usd&customer=cus_9s6X&confirm=true",
        );
        let body = json!({"id": "pi_3New", "object": "payment_intent", "customer": "cus_9s6X",
            "latest_charge": {"id": "ch_3New", "customer": "cus_9s6X"}});
        assert_eq!(
            created_from(&pi, 200, body.to_string().as_bytes(), true),
            ["ch_3New", "pi_3New"]
        );
        let declined =
            json!({"error": {"type": "card_error", "payment_intent": {"id": "pi_3Dec"}}});
        assert_eq!(
            created_from(&pi, 402, declined.to_string().as_bytes(), true),
            ["pi_3Dec"]
        );
        assert!(created_from(&pi, 400, declined.to_string().as_bytes(), true).is_empty());
        let sub = call(
            Vendor::Stripe,
            "POST",
            "/v1/subscriptions",
            "customer=cus_9s6X&items[0][price]=price_1",
        );
        let body = json!({"id": "sub_1", "customer": "cus_9s6X",
            "latest_invoice": {"id": "in_1", "object": "invoice", "payment_intent": "pi_3Sub"}});
        assert_eq!(
            created_from(&sub, 200, body.to_string().as_bytes(), true),
            ["in_1", "pi_3Sub", "sub_1"]
        );
        // Acting on an object creates nothing but its children.
        let confirm = call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents/pi_3New/confirm",
            "",
        );
        let body = json!({"id": "pi_3New", "latest_charge": "ch_3Two"});
        assert_eq!(
            created_from(&confirm, 200, body.to_string().as_bytes(), true),
            ["ch_3Two"]
        );
        let sms = call(
            Vendor::Twilio,
            "POST",
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
            "To=%2B14155550100&Body=hi",
        );
        assert_eq!(
            created_from(
                &sms,
                201,
                br#"{"sid": "SMabc", "to": "+14155550100"}"#,
                true
            ),
            ["SMabc"]
        );
        let batch = call(
            Vendor::Resend,
            "POST",
            "/emails/batch",
            r#"[{"from":"a@x.io","to":"b@y.io"}]"#,
        );
        assert_eq!(
            created_from(
                &batch,
                200,
                br#"{"data": [{"id": "e1"}, {"id": "e2"}]}"#,
                true
            ),
            ["e1", "e2"]
        );
    }
}
