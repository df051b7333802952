//! Twilio Programmable Messaging: form-encoded, PascalCase fields. An SMS costs its segments
//! (counted as a segmenting encoder packs them, [`segments`]) times the segment price of its
//! destination (for `+1` numbers, [`nanp`]); an MMS costs the policy's MMS price, or the SMS it
//! may be converted to when that costs more. Calls and everything else that can cost money
//! without a bound in the request need the policy's opt-in worst case.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{
    error::BadRequest,
    request::{Plan, Request, Settled},
    table::{Entry, Rule, e},
};

mod nanp;
mod segments;
mod smart;

pub use segments::sms_segments;

/// The parameters of a message the proxy reads (Twilio's whole list for `Messages.json`); any
/// other name could be one Twilio reads differently (its name matching is not documented as
/// case-sensitive), so it is refused.
const MESSAGE_PARAMS: [&str; 25] = [
    "To",
    "From",
    "MessagingServiceSid",
    "Body",
    "MediaUrl",
    "ContentSid",
    "ContentVariables",
    "StatusCallback",
    "ApplicationSid",
    "MaxPrice",
    "ProvideFeedback",
    "Attempt",
    "ValidityPeriod",
    "ForceDelivery",
    "ContentRetention",
    "AddressRetention",
    "SmartEncoded",
    "PersistentAction",
    "TrafficType",
    "ShortenUrls",
    "ScheduleType",
    "SendAt",
    "SendAsMms",
    "RiskCheck",
    "FallbackFrom",
];

/// Paths that return the account itself, with its auth token: never forwarded, whatever the
/// policy allows.
pub fn exposes_the_auth_token(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    matches!(
        segs.as_slice(),
        ["2010-04-01", "Accounts.json" | "Accounts"] | ["2010-04-01", "Accounts", _]
    )
}

/// Parameters Twilio reads as lists (sent repeated).
pub const LIST_PARAMS: &[&str] = &["MediaUrl", "StatusCallbackEvent", "PersistentAction"];

/// Every Twilio endpoint the proxy meters or knows to move no money.
pub const ENDPOINTS: &[Entry] = &[
    e(
        "POST",
        "/2010-04-01/Accounts/{id}/Messages.json",
        Rule::Priced,
        "SMS: segments of `Body`, packed as Twilio packs them, times the destination's price (the longest prefix in `smsSegmentUsdByPrefix`, where `\"+1\"` covers only US and Canadian area codes; `smsSegmentUsd` only with `requireDestinationPrice: false`); MMS (`MediaUrl`, `SendAsMms`): the larger of `mmsUsd` and the SMS Twilio's MMS Converter may send instead (the segments of `Body` and a 40-character link); always the larger count with and without Smart Encoding; `ContentSid` templates, non-phone destinations, scheduling and link shortening are refused",
    ),
    e(
        "POST",
        "/2010-04-01/Accounts/{id}/Messages/{id}.json",
        Rule::Free,
        "redacting or cancelling a message sends nothing",
    ),
    e(
        "DELETE",
        "/2010-04-01/Accounts/{id}/Messages/{id}.json",
        Rule::Free,
        "moves no money",
    ),
    e(
        "DELETE",
        "/2010-04-01/Accounts/{id}/Messages/{id}/Media/{id}.json",
        Rule::Free,
        "moves no money",
    ),
    e(
        "POST",
        "/2010-04-01/Accounts/{id}/Calls.json",
        Rule::WorstCase,
        "a call is billed by the minute for as long as it lasts",
    ),
    e(
        "POST",
        "/2010-04-01/Accounts/{id}/Calls/{id}.json",
        Rule::WorstCase,
        "redirecting a live call can extend it",
    ),
    e(
        "POST",
        "/2010-04-01/Accounts/{id}/IncomingPhoneNumbers.json",
        Rule::WorstCase,
        "buys a number (monthly fee); also account administration",
    ),
    e(
        "POST",
        "/2010-04-01/Accounts/{id}/Conferences/{id}/Participants.json",
        Rule::WorstCase,
        "dials out, billed by the minute",
    ),
];

/// What the policy charges per segment to `to`: the longest matching prefix, else the default
/// price unless the policy requires a destination price (the default). In the NANP a prefix
/// shorter than `+1` and an area code covers only US and Canadian area codes.
fn segment_price(to: &str, pricing: &Pricing) -> Result<Usd, BadRequest> {
    let digits = to.strip_prefix('+').unwrap_or("");
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadRequest::Invalid(
            "To",
            format!(
                "{to:?} is not an E.164 phone number; other channels (whatsapp:, messenger:) are not metered"
            ),
        ));
    }
    let area = digits.strip_prefix('1').map(nanp::area);
    let covers = |prefix: &str| match &area {
        // "+" and "1" and the three digits of the area code.
        Some(a) if prefix.len() < 5 => *a == nanp::Area::UsCa,
        _ => true,
    };
    let by_prefix = pricing
        .sms_segment_usd_by_prefix
        .iter()
        .filter(|(prefix, _)| to.starts_with(prefix.as_str()) && covers(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, price)| *price);
    match (by_prefix, pricing.require_destination_price) {
        (Some(p), _) => Ok(p),
        (None, true) => Err(BadRequest::Refused(no_price(to, area.as_ref()))),
        (None, false) => pricing.sms_segment_usd.ok_or_else(|| {
            BadRequest::Unbounded(
                "an SMS cannot be costed: the SpendPolicy sets no pricing.smsSegmentUsd".into(),
            )
        }),
    }
}

/// Why an SMS to `to` has no price, and the entry that would give it one.
fn no_price(to: &str, area: Option<&nanp::Area>) -> String {
    const FIELD: &str = "the SpendPolicy's pricing.smsSegmentUsdByPrefix";
    const US_CA_ONLY: &str = "a \"+1\" price covers only US and Canadian area codes";
    match area {
        None => format!(
            "no price for an SMS to {to}: add its country code (like \"+44\") to {FIELD}, or set pricing.requireDestinationPrice: false to price it at pricing.smsSegmentUsd"
        ),
        Some(nanp::Area::UsCa) => {
            format!("no price for an SMS to {to}, a US or Canadian number: add \"+1\" to {FIELD}")
        }
        Some(nanp::Area::Elsewhere(code, region, what)) if !region.is_empty() => format!(
            "no price for an SMS to {to}: area code {code} is {what} ({region}), and {US_CA_ONLY}; price it with \"+1{code}\" in {FIELD}"
        ),
        Some(nanp::Area::Elsewhere(code, _, what)) => format!(
            "no price for an SMS to {to}: area code {code} is {what}, and {US_CA_ONLY}; price it with \"+1{code}\" in {FIELD}"
        ),
        Some(nanp::Area::Unknown(code)) => format!(
            "no price for an SMS to {to}: {code:?} is not a US or Canadian area code in Keybrake's list (from libphonenumber, July 2026), and {US_CA_ONLY}; if it is a new one, price it with \"+1{code}\" in {FIELD}"
        ),
    }
}

/// Whether a flag parameter is sent as anything but `false` (Twilio reads it so).
fn turned_on(call: &Request, field: &str) -> bool {
    call.field(field)
        .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
}

/// A message sent as an MMS: with media, or `SendAsMms`.
fn is_mms(call: &Request) -> bool {
    call.field("MediaUrl").is_some() || turned_on(call, "SendAsMms")
}

/// Costs a Twilio write under its table entry.
pub fn plan(entry: &Entry, call: &Request, pricing: &Pricing) -> Result<Plan, BadRequest> {
    match (entry.method, entry.path) {
        ("POST", "/2010-04-01/Accounts/{id}/Messages.json") => {
            if let Some((k, _)) = call
                .pairs()
                .iter()
                .find(|(k, _)| !MESSAGE_PARAMS.contains(&k.as_str()))
            {
                return Err(BadRequest::Name(
                    k.clone(),
                    "a parameter of Twilio's Messages.json, spelled as Twilio documents it",
                ));
            }
            if call.field("ContentSid").is_some() {
                return Err(BadRequest::Refused(
                    "a ContentSid template's length (and so its segments) is not in the request; send Body".into(),
                ));
            }
            // Both bill a per-message fee the policy has no price for; a scheduled message is
            // sent later, possibly after the key, and a shortened link can be longer than the
            // text it replaces.
            const SCHEDULED: &str = "a scheduled message is sent after the call, possibly after the key has expired, and Twilio bills scheduling a fee of its own";
            for (field, why) in [
                ("ScheduleType", SCHEDULED),
                ("SendAt", SCHEDULED),
                (
                    "ShortenUrls",
                    "Twilio bills link shortening a fee of its own, and a shortened link can be longer than the one it replaces",
                ),
            ] {
                if turned_on(call, field) {
                    return Err(BadRequest::Refused(format!("{field}: {why}")));
                }
            }
            let to = call.field("To").ok_or_else(|| {
                BadRequest::Invalid("To", "is required to cost the message".into())
            })?;
            let mms = is_mms(call);
            let price = segment_price(to, pricing)?;
            let text = call.field("Body").unwrap_or("");
            // Smart Encoding (a parameter, or on by default in a Messaging Service) can turn a
            // UCS-2 body into a longer GSM-7 one: the larger count is reserved.
            let count = |text: &str| match to.starts_with("+60") {
                true => segments::ascii_only_segments(text),
                false => sms_segments(text),
            };
            let segments = |text: &str| count(text).max(count(&smart::encoded(text)));
            let sms = price
                .checked_mul(segments(text))
                .ok_or_else(|| BadRequest::Invalid("Body", "too long to cost".into()))?;
            if !mms {
                return Ok(Plan::Known(sms));
            }
            // An MMS the converter sends as an SMS carries a link to its media after the body:
            // counted as a line break and 40 characters.
            let converted = price
                .checked_mul(segments(&format!("{text}\n{}", "x".repeat(40))))
                .ok_or_else(|| BadRequest::Invalid("Body", "too long to cost".into()))?;
            // Twilio's MMS Converter (on by default, per account and per Messaging Service) sends
            // an MMS to a destination without MMS as an SMS, billed as the segments it became.
            let mms_usd = pricing.mms_usd.ok_or_else(|| {
                BadRequest::Unbounded(
                    "an MMS cannot be costed: the SpendPolicy sets no pricing.mmsUsd".into(),
                )
            })?;
            Ok(Plan::Known(mms_usd.max(converted)))
        }
        _ if entry.rule == Rule::Free => Ok(Plan::Known(Usd::ZERO)),
        _ => Err(BadRequest::Refused(format!(
            "{} {} has no cost rule",
            entry.method, entry.path
        ))),
    }
}

/// Costs a 2xx Twilio response: Twilio's own `num_segments` (or `num_media`) when it reports
/// them; a Messaging Service or scheduled send reports `0` at creation and keeps the estimate.
pub fn actual(call: &Request, v: Option<&Value>, pricing: &Pricing, reserved: Usd) -> Settled {
    let keep = Settled {
        usd: reserved,
        object: None,
    };
    let is_messages = matches!(
        call.segments().as_slice(),
        ["2010-04-01", "Accounts", _, "Messages.json"]
    );
    let (true, Some(v)) = (call.method == "POST" && is_messages, v) else {
        return keep;
    };
    let count = |field: &str| {
        v.get(field)
            .and_then(|n| {
                n.as_str()
                    .map(str::to_owned)
                    .or_else(|| n.as_u64().map(|n| n.to_string()))
            })
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let to = call.field("To").unwrap_or("");
    let mms = is_mms(call);
    if mms {
        // Costed as an MMS: Twilio may report no media at creation, never less than reserved.
        return Settled {
            usd: reserved.max(pricing.mms_usd.unwrap_or(reserved)),
            object: None,
        };
    }
    let usd = if count("num_media") > 0 {
        pricing.mms_usd
    } else if count("num_segments") > 0 {
        segment_price(to, pricing)
            .ok()
            .and_then(|p| p.checked_mul(count("num_segments")))
    } else {
        None
    };
    Settled {
        usd: usd.unwrap_or(reserved),
        object: None,
    }
}

#[cfg(test)]
mod tests {
    use keybrake_crds::Vendor;

    use super::{
        super::{plan as plan_call, testing},
        *,
    };

    /// The tests' prices with the default price for destinations without one.
    fn pricing() -> Pricing {
        let mut p = testing::pricing();
        p.require_destination_price = false;
        p.sms_segment_usd_by_prefix
            .insert("+44".into(), "0.04".parse().unwrap());
        p.sms_segment_usd_by_prefix
            .insert("+4479".into(), "0.05".parse().unwrap());
        p
    }

    const PATH: &str = "/2010-04-01/Accounts/AC123/Messages.json";

    fn cost(body: &str, p: &Pricing) -> Result<Plan, BadRequest> {
        plan_call(&testing::try_call(Vendor::Twilio, "POST", PATH, body)?, p)
    }

    fn known(body: &str, p: &Pricing) -> Usd {
        match cost(body, p) {
            Ok(Plan::Known(u)) => u,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn prices_by_destination() {
        let p = pricing();
        let long = format!(
            "To=%2B15551234567&From=%2B15557654321&Body={}",
            "a".repeat(200)
        );
        assert_eq!(
            known(&long, &p),
            "0.0166".parse().unwrap(),
            "smsSegmentUsd, with requireDestinationPrice: false"
        );
        assert_eq!(
            known("To=%2B447700900000&Body=hi", &p),
            "0.04".parse().unwrap()
        );
        assert_eq!(
            known("To=%2B447900900000&Body=hi", &p),
            "0.05".parse().unwrap(),
            "the longest prefix wins"
        );
        let mut strict = p.clone();
        strict.require_destination_price = true;
        assert!(matches!(
            cost("To=%2B15551234567&Body=hi", &strict),
            Err(BadRequest::Refused(_))
        ));
        assert_eq!(
            known("To=%2B447700900000&Body=hi", &strict),
            "0.04".parse().unwrap()
        );
        assert!(exposes_the_auth_token("/2010-04-01/Accounts/AC1.json"));
        assert!(exposes_the_auth_token("/2010-04-01/Accounts.json"));
        assert!(!exposes_the_auth_token(
            "/2010-04-01/Accounts/AC1/Messages.json"
        ));
    }

    /// A policy as the API server hands it over: `requireDestinationPrice` left out.
    fn as_stored(json: serde_json::Value) -> Pricing {
        serde_json::from_value(json).unwrap()
    }

    fn refusal(body: &str, p: &Pricing) -> String {
        match cost(body, p) {
            Err(BadRequest::Refused(why)) => why,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_destination_without_a_price_is_refused_unless_the_policy_says_otherwise() {
        let p = as_stored(serde_json::json!({"smsSegmentUsd": "0.0083", "mmsUsd": "0.022"}));
        assert!(p.require_destination_price, "on when absent");
        let why = refusal("To=%2B447700900000&Body=hi", &p);
        assert!(why.contains("+447700900000"), "{why}");
        assert!(why.contains("pricing.smsSegmentUsdByPrefix"), "{why}");
        let why = refusal(
            "To=%2B14155550100&Body=hi&MediaUrl=https%3A%2F%2Fx%2Fa.png",
            &p,
        );
        assert!(why.contains("add \"+1\""), "an MMS too: {why}");

        let off = as_stored(
            serde_json::json!({"smsSegmentUsd": "0.0083", "requireDestinationPrice": false}),
        );
        assert!(!off.require_destination_price);
        assert_eq!(
            known("To=%2B447700900000&Body=hi", &off),
            "0.0083".parse().unwrap()
        );
        let written = serde_json::to_value(&off).unwrap();
        assert_eq!(
            written["requireDestinationPrice"], false,
            "false is written"
        );
        assert_eq!(as_stored(serde_json::to_value(&p).unwrap()), p);
    }

    #[test]
    fn a_plus_one_price_covers_only_us_and_canadian_numbers() {
        let mut p = as_stored(serde_json::json!({
            "smsSegmentUsdByPrefix": {"+1": "0.0075", "+18": "0.001"},
        }));
        let price = |to: &str, p: &Pricing| known(&format!("To=%2B{to}&Body=hi"), p);
        assert_eq!(
            price("14155550100", &p),
            "0.0075".parse().unwrap(),
            "San Francisco"
        );
        assert_eq!(
            price("16045550100", &p),
            "0.0075".parse().unwrap(),
            "Vancouver"
        );
        assert_eq!(
            price("18195550100", &p),
            "0.001".parse().unwrap(),
            "a shorter prefix than an area code, for US and Canadian codes"
        );
        for (to, says) in [
            ("18765550100", "area code 876 is Jamaica (JM)"),
            ("16585550100", "area code 658 is Jamaica (JM)"),
            ("12425550100", "the Bahamas (BS)"),
            ("18095550100", "the Dominican Republic (DO)"),
            ("18495550100", "the Dominican Republic (DO)"),
            ("17875550100", "Puerto Rico (a US territory) (PR)"),
            ("13405550100", "the US Virgin Islands"),
            ("16715550100", "Guam"),
            ("18005550100", "toll-free"),
            ("15551234567", "\"555\" is not a US or Canadian area code"),
            ("141", "\"41\" is not a US or Canadian area code"),
        ] {
            let why = refusal(&format!("To=%2B{to}&Body=hi"), &p);
            assert!(why.contains(says), "{to}: {why}");
            assert!(why.contains(&format!("+{to}")), "names the number: {why}");
            assert!(why.contains("pricing.smsSegmentUsdByPrefix"), "{why}");
        }
        let why = refusal("To=%2B18765550100&Body=hi", &p);
        assert!(why.contains("price it with \"+1876\""), "{why}");
        p.sms_segment_usd_by_prefix
            .insert("+1876".into(), "0.05".parse().unwrap());
        assert_eq!(price("18765550100", &p), "0.05".parse().unwrap());
        assert!(
            cost("To=%2B16585550100&Body=hi", &p).is_err(),
            "Jamaica's other area code is priced apart"
        );
        // Without requireDestinationPrice, the default price, never the "+1" one.
        p.require_destination_price = false;
        p.sms_segment_usd = Some("0.0083".parse().unwrap());
        assert_eq!(price("12425550100", &p), "0.0083".parse().unwrap());
        assert_eq!(price("14155550100", &p), "0.0075".parse().unwrap());
    }

    #[test]
    fn what_twilio_adds_to_a_message_is_reserved_or_refused() {
        let p = pricing();
        let uk = |body: &str| known(&format!("To=%2B447700900000&{body}"), &p);
        // 70 tabs are one UCS-2 segment, but Smart Encoding sends 490 spaces: four.
        assert_eq!(
            uk(&format!("Body={}", "%09".repeat(70))),
            "0.16".parse().unwrap()
        );
        assert_eq!(
            uk(&format!("Body={}&SmartEncoded=false", "%09".repeat(70))),
            "0.16".parse().unwrap(),
            "a Messaging Service may encode anyway"
        );
        // 160 characters fit one SMS, not once the converter adds the media link.
        let mut mms = p.clone();
        mms.mms_usd = Some("0.01".parse().unwrap());
        let body = format!(
            "To=%2B447700900000&MediaUrl=https%3A%2F%2Fx%2Fa.png&Body={}",
            "a".repeat(160)
        );
        assert_eq!(known(&body, &mms), "0.08".parse().unwrap());
        for extra in [
            "ScheduleType=fixed&SendAt=2030-01-01T00:00:00Z",
            "SendAt=2030-01-01T00:00:00Z",
            "ShortenUrls=true",
        ] {
            assert!(
                matches!(
                    cost(&format!("To=%2B447700900000&Body=hi&{extra}"), &p),
                    Err(BadRequest::Refused(_))
                ),
                "{extra}"
            );
        }
        assert_eq!(uk("Body=hi&ShortenUrls=false"), "0.04".parse().unwrap());
        // Malaysia's carriers take only ASCII as GSM-7: 160 × é is three UCS-2 segments there.
        let mut my = p.clone();
        my.sms_segment_usd_by_prefix
            .insert("+60".into(), "0.1".parse().unwrap());
        let e = "%C3%A9".repeat(160);
        assert_eq!(
            known(&format!("To=%2B60123456789&Body={e}"), &my),
            "0.3".parse().unwrap()
        );
        assert_eq!(
            known(&format!("To=%2B447700900000&Body={e}"), &my),
            "0.04".parse().unwrap()
        );
    }

    #[test]
    fn an_mms_costs_at_least_the_sms_it_may_become() {
        let mut p = pricing();
        p.sms_segment_usd_by_prefix
            .insert("+1".into(), "0.0083".parse().unwrap());
        let media = "MediaUrl=https%3A%2F%2Fx%2Fa.png&MediaUrl=https%3A%2F%2Fx%2Fb.png";
        let mms = |to: &str, body: &str| known(&format!("To=%2B{to}&{body}"), &p);
        assert_eq!(
            mms("14155550100", &format!("Body=hi&{media}")),
            "0.022".parse().unwrap(),
            "one segment costs less than an MMS"
        );
        assert_eq!(
            mms("14155550100", &format!("Body={}&{media}", "a".repeat(500))),
            "0.0332".parse().unwrap(),
            "four segments cost more"
        );
        assert_eq!(
            mms("14155550100", "Body=hi&SendAsMms=true"),
            "0.022".parse().unwrap()
        );
        assert_eq!(
            mms("447700900000", &format!("Body=hi&{media}")),
            "0.04".parse().unwrap(),
            "converted abroad: one UK segment"
        );
        assert_eq!(
            mms("447700900000", media),
            "0.04".parse().unwrap(),
            "no Body: the converted message is still one segment"
        );
        assert_eq!(
            mms("447700900000", &format!("Body={}&{media}", "😀".repeat(40))),
            "0.08".parse().unwrap(),
            "80 UTF-16 units: two UK segments"
        );
        p.mms_usd = None;
        assert!(matches!(
            cost(&format!("To=%2B14155550100&Body=hi&{media}"), &p),
            Err(BadRequest::Unbounded(_))
        ));
    }

    #[test]
    fn refuses_what_it_cannot_cost() {
        let p = pricing();
        for body in [
            "To=1&To=2&Body=x",
            "Body=x",
            "To=whatsapp%3A%2B15551234567&Body=x",
            "To=%2B1555&ContentSid=HX123&ContentVariables=%7B%7D",
            "To=%2B1555&body=x",
            "To=%2B1555&Body=x&BODY=y",
            "To=%2B1555&Body=x&CONTENTSID=HX1",
            "To=%2B1555&Body=x&Unknown=1",
        ] {
            assert!(cost(body, &p).is_err(), "{body}");
        }
        assert!(matches!(
            cost("To=%2B1555&Body=x", &Pricing::default()),
            Err(BadRequest::Refused(_))
        ));
        let unpriced = Pricing {
            require_destination_price: false,
            ..Pricing::default()
        };
        assert!(matches!(
            cost("To=%2B1555&Body=x", &unpriced),
            Err(BadRequest::Unbounded(_))
        ));
        let calls = testing::call(
            Vendor::Twilio,
            "POST",
            "/2010-04-01/Accounts/AC1/Calls.json",
            "To=%2B1555&Url=x",
        );
        assert!(matches!(
            plan_call(&calls, &p),
            Err(BadRequest::Unbounded(_))
        ));
    }

    #[test]
    fn settles_on_twilios_own_count_or_keeps_the_estimate() {
        let p = pricing();
        let c = testing::call(Vendor::Twilio, "POST", PATH, "To=%2B15551234567&Body=x");
        let reply =
            serde_json::json!({"sid": "SM1", "num_segments": "3", "num_media": "0", "price": null});
        assert_eq!(
            actual(&c, Some(&reply), &p, Usd::ZERO).usd,
            "0.0249".parse().unwrap()
        );
        let queued = serde_json::json!({"sid": "SM1", "num_segments": "0", "price": null});
        assert_eq!(
            actual(&c, Some(&queued), &p, "0.0083".parse().unwrap()).usd,
            "0.0083".parse().unwrap()
        );
    }
}
