//! For any request bytes, either the proxy refuses the call, or what its adapter parsed is what
//! the vendor reads: both from the caller's own bytes and from what the proxy forwards. The
//! vendor side is the sandbox's reading (Stripe and Twilio: query string and form body as one
//! bucket, the last value of a name winning; Resend: JSON with the last duplicate key winning),
//! written independently of the adapters.

use hyper::{
    HeaderMap,
    header::{CONTENT_TYPE, HeaderValue},
};
use keybrake_crds::Vendor;
use keybrake_e2e::upstream::{vendor_form, vendor_sms_segments};
use keybrake_proxy::adapters::{self, Params};
use proptest::prelude::*;

/// Text built from the pieces that make parsers disagree.
fn hostile(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(words), 0..12).prop_map(|w| w.concat())
}

const STRIPE: &[&str] = &[
    "amount", "Amount", "AMOUNT", "currency", "usd", "chf", "=", "&", ";", "%", "%41", "%6d",
    "%3D", "%26", "%2", "+", "[", "]", "[]", "x", "1", "99", "metadata", "expand", "\u{e9}", "%FF",
];
const TWILIO: &[&str] = &[
    "To", "to", "TO", "Body", "body", "MediaUrl", "=", "&", ";", "%", "%2B1555", "%42ody", "+",
    ".", "x", "1", "\u{e9}", "%C3%A9",
];

fn headers(ct: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(ct) = ct {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    h
}

fn form_agrees(
    vendor: Vendor,
    method: &str,
    path: &str,
    query: &str,
    body: &str,
) -> Result<(), TestCaseError> {
    let h = headers(Some("application/x-www-form-urlencoded"));
    let q = (!query.is_empty()).then_some(query);
    let Ok(call) = adapters::read(vendor, method, path, q, &h, body.as_bytes()) else {
        return Ok(());
    };
    let Params::Form(parsed) = &call.params else {
        return Err(TestCaseError::fail("a form vendor gave JSON"));
    };
    // The vendor reading the caller's bytes.
    prop_assert_eq!(&vendor_form(query, body), parsed);
    // The vendor reading what the proxy forwards.
    let (fq, fb, _) = call.encoded();
    let fb = String::from_utf8(fb.to_vec()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&vendor_form(fq.as_deref().unwrap_or(""), &fb), parsed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn stripe_is_read_as_stripe_reads_it(
        method in prop::sample::select(vec!["GET", "POST", "DELETE"]),
        query in hostile(STRIPE),
        body in hostile(STRIPE),
    ) {
        let body = if method == "POST" { body } else { String::new() };
        form_agrees(Vendor::Stripe, method, "/v1/payment_intents", &query, &body)?;
    }

    #[test]
    fn twilio_is_read_as_twilio_reads_it(
        method in prop::sample::select(vec!["GET", "POST"]),
        query in hostile(TWILIO),
        body in hostile(TWILIO),
    ) {
        let body = if method == "POST" { body } else { String::new() };
        form_agrees(Vendor::Twilio, method, "/2010-04-01/Accounts/AC1/Messages.json", &query, &body)?;
    }

    #[test]
    fn resend_is_read_as_resend_reads_it(body in "[{}\\[\\]\",:a-zA-Z0-9 \\\\]{0,60}") {
        let h = headers(Some("application/json"));
        if let Ok(call) = adapters::read(Vendor::Resend, "POST", "/emails", None, &h, body.as_bytes()) {
            let Params::Json(parsed) = &call.params else {
                return Err(TestCaseError::fail("Resend gave a form"));
            };
            let raw: serde_json::Value = serde_json::from_str(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&raw, parsed);
            let (_, fb, _) = call.encoded();
            let sent: serde_json::Value = serde_json::from_slice(&fb).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&sent, parsed);
        }
    }
}

/// Bodies that put GSM-7 escapes and surrogate pairs on every part boundary: runs of one-unit
/// characters as long as a part or a segment, give or take a few, between pairs.
fn sms_body() -> impl Strategy<Value = String> {
    let run = prop::sample::select(vec![
        0usize, 1, 2, 64, 65, 66, 67, 68, 69, 70, 71, 150, 151, 152, 153, 154, 158, 159, 160, 161,
    ]);
    let filler = prop::sample::select(vec!["a", "é", "ł", "`"]);
    let pair = prop::sample::select(vec!["€", "{", "\u{0c}", "😀", "𝄞", ""]);
    prop::collection::vec((run, filler, pair), 1..5).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(n, filler, pair)| format!("{}{pair}", filler.repeat(n)))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The proxy's segment count (its estimate) is the sandbox's (what Twilio bills), counted
    /// two different ways.
    #[test]
    fn twilio_segments_are_counted_as_the_vendor_counts_them(body in sms_body()) {
        prop_assert_eq!(
            adapters::twilio::sms_segments(&body),
            vendor_sms_segments(&body),
            "{:?}", body
        );
    }

    #[test]
    fn any_text_is_counted_as_the_vendor_counts_it(body in "\\PC{0,400}") {
        prop_assert_eq!(adapters::twilio::sms_segments(&body), vendor_sms_segments(&body));
    }
}

/// The two readings are independent: where they would differ, the proxy refuses.
#[test]
fn where_the_readings_differ_the_proxy_refuses() {
    let form = headers(Some("application/x-www-form-urlencoded"));
    assert_eq!(
        vendor_form("amount=99999999", "amount=100"),
        [("amount".to_owned(), "100".to_owned())]
    );
    assert!(
        adapters::read(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            Some("amount=99999999"),
            &form,
            b"amount=100"
        )
        .is_err()
    );
    assert_eq!(
        vendor_form("", "amount=1&amount=99"),
        [("amount".to_owned(), "99".to_owned())]
    );
    assert!(
        adapters::read(
            Vendor::Stripe,
            "POST",
            "/v1/charges",
            None,
            &form,
            b"amount=1&amount=99"
        )
        .is_err()
    );
    // And where they agree, the call goes through with the vendor's values.
    let ok = adapters::read(
        Vendor::Stripe,
        "POST",
        "/v1/charges",
        None,
        &form,
        b"amount=1%30&currency=usd",
    )
    .unwrap();
    assert_eq!(ok.field("amount"), Some("10"));
    form_agrees(
        Vendor::Stripe,
        "POST",
        "/v1/charges",
        "",
        "amount=1%30&currency=usd&metadata[a;b]=%2B",
    )
    .unwrap();
}
