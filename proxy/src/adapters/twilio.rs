//! Twilio Programmable Messaging: form-encoded, PascalCase fields. An SMS costs its segments
//! (counted as a segmenting encoder packs them, [`segments`]) times the segment price of its
//! destination; an MMS costs the policy's MMS price. Calls and everything else that can cost money
//! without a bound in the request need the policy's opt-in worst case.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{
    BadRequest, Call, Plan, Settled,
    table::{Entry, Rule, e},
};

mod segments;

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
        "SMS: segments of `Body` times the destination's price (`smsSegmentUsdByPrefix`, else `smsSegmentUsd`); MMS (`MediaUrl`): `mmsUsd`; `ContentSid` templates and non-phone destinations are refused",
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
/// price (unless the policy requires a destination price).
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
    let by_prefix = pricing
        .sms_segment_usd_by_prefix
        .iter()
        .filter(|(prefix, _)| to.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, price)| *price);
    match (by_prefix, pricing.require_destination_price) {
        (Some(p), _) => Ok(p),
        (None, true) => Err(BadRequest::Refused(format!(
            "no price for SMS to {to} in the SpendPolicy's pricing.smsSegmentUsdByPrefix, and it requires one"
        ))),
        (None, false) => pricing.sms_segment_usd.ok_or_else(|| {
            BadRequest::Unbounded(
                "an SMS cannot be costed: the SpendPolicy sets no pricing.smsSegmentUsd".into(),
            )
        }),
    }
}

/// Costs a Twilio write under its table entry.
pub fn plan(entry: &Entry, call: &Call, pricing: &Pricing) -> Result<Plan, BadRequest> {
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
            let to = call.field("To").ok_or_else(|| {
                BadRequest::Invalid("To", "is required to cost the message".into())
            })?;
            let mms = call.field("MediaUrl").is_some()
                || call
                    .field("SendAsMms")
                    .is_some_and(|v| !v.eq_ignore_ascii_case("false"));
            if mms {
                segment_price(to, pricing)?;
                return pricing.mms_usd.map(Plan::Known).ok_or_else(|| {
                    BadRequest::Unbounded(
                        "an MMS cannot be costed: the SpendPolicy sets no pricing.mmsUsd".into(),
                    )
                });
            }
            let price = segment_price(to, pricing)?;
            let text = call.field("Body").unwrap_or("");
            price
                .checked_mul(sms_segments(text))
                .map(Plan::Known)
                .ok_or_else(|| BadRequest::Invalid("Body", "too long to cost".into()))
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
pub fn actual(call: &Call, v: Option<&Value>, pricing: &Pricing, reserved: Usd) -> Settled {
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
    let mms = call.field("MediaUrl").is_some()
        || call
            .field("SendAsMms")
            .is_some_and(|v| !v.eq_ignore_ascii_case("false"));
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

    fn pricing() -> Pricing {
        let mut p = testing::pricing();
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
        assert_eq!(known(&long, &p), "0.0166".parse().unwrap());
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
        let mms =
            "To=%2B1555&Body=hi&MediaUrl=https%3A%2F%2Fx%2Fa.png&MediaUrl=https%3A%2F%2Fx%2Fb.png";
        assert_eq!(known(mms, &p), "0.022".parse().unwrap());
        assert_eq!(
            known("To=%2B1555&Body=hi&SendAsMms=true", &p),
            "0.022".parse().unwrap()
        );
        assert!(exposes_the_auth_token("/2010-04-01/Accounts/AC1.json"));
        assert!(exposes_the_auth_token("/2010-04-01/Accounts.json"));
        assert!(!exposes_the_auth_token(
            "/2010-04-01/Accounts/AC1/Messages.json"
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
