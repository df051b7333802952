//! Twilio Programmable Messaging: form-encoded, PascalCase fields. An SMS costs its segments
//! (GSM-7: 160 characters, 153 per part when split; UCS-2: 70, 67 per part) times the policy's
//! segment price; an MMS costs the policy's MMS price.

use keybrake_crds::{Usd, spend_policy::Pricing};
use serde_json::Value;

use super::{BadRequest, Estimate, field, form, segments};

/// GSM 03.38 basic character set.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension characters (each takes two septets).
const GSM_EXTENDED: &str = "^{}\\[~]|€\u{0c}";

/// Segments an SMS body takes.
pub fn sms_segments(body: &str) -> u64 {
    let gsm = body
        .chars()
        .all(|c| GSM_BASIC.contains(c) || GSM_EXTENDED.contains(c));
    let (units, single, part) = if gsm {
        (
            body.chars()
                .map(|c| if GSM_EXTENDED.contains(c) { 2 } else { 1 })
                .sum::<u64>(),
            160,
            153,
        )
    } else {
        (body.encode_utf16().count() as u64, 70, 67)
    };
    if units <= single {
        1
    } else {
        units.div_ceil(part)
    }
}

fn is_messages(path: &str) -> bool {
    matches!(
        segments(path).as_slice(),
        ["2010-04-01", "Accounts", _, "Messages.json"]
    )
}

/// Costs a Twilio request before it is sent.
pub fn estimate(
    method: &str,
    path: &str,
    body: &[u8],
    pricing: &Pricing,
) -> Result<Estimate, BadRequest> {
    if matches!(method, "GET" | "HEAD") {
        return Ok(Estimate::Known(Usd::ZERO));
    }
    let pairs = form(body, &["MediaUrl"])?;
    if method != "POST" || !is_messages(path) {
        return Ok(Estimate::Unknown);
    }
    if field(&pairs, "MediaUrl").is_some() {
        return Ok(pricing.mms_usd.map_or(Estimate::Unknown, Estimate::Known));
    }
    let Some(price) = pricing.sms_segment_usd else {
        return Ok(Estimate::Unknown);
    };
    let text = field(&pairs, "Body").unwrap_or("");
    let cost = price
        .checked_mul(sms_segments(text))
        .ok_or_else(|| BadRequest::Invalid("Body", "too long to cost".into()))?;
    Ok(Estimate::Known(cost))
}

/// Costs a 2xx Twilio response: `num_segments` times the price when the response has it
/// (`price` itself is null at creation), else the reservation.
pub fn actual(method: &str, path: &str, body: &[u8], pricing: &Pricing, reserved: Usd) -> Usd {
    if method != "POST" || !is_messages(path) {
        return reserved;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return reserved;
    };
    let media = v
        .get("num_media")
        .and_then(Value::as_str)
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if media > 0 {
        return pricing.mms_usd.unwrap_or(reserved);
    }
    let segs = v
        .get("num_segments")
        .and_then(Value::as_str)
        .and_then(|n| n.parse::<u64>().ok());
    match (segs, pricing.sms_segment_usd) {
        (Some(n), Some(price)) => price.checked_mul(n).unwrap_or(reserved),
        _ => reserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing() -> Pricing {
        Pricing {
            sms_segment_usd: Some("0.0083".parse().unwrap()),
            mms_usd: Some("0.022".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn counts_segments_like_the_carriers() {
        assert_eq!(sms_segments(""), 1);
        assert_eq!(sms_segments(&"a".repeat(160)), 1);
        assert_eq!(sms_segments(&"a".repeat(161)), 2);
        assert_eq!(sms_segments(&"a".repeat(306)), 2);
        assert_eq!(sms_segments(&"a".repeat(307)), 3);
        assert_eq!(
            sms_segments(&"€".repeat(80)),
            1,
            "extension characters take two septets"
        );
        assert_eq!(sms_segments(&"€".repeat(81)), 2);
        assert_eq!(sms_segments(&"é".repeat(160)), 1, "é is in GSM-7");
        assert_eq!(sms_segments(&"ł".repeat(70)), 1, "ł forces UCS-2");
        assert_eq!(sms_segments(&"ł".repeat(71)), 2);
        assert_eq!(
            sms_segments(&"😀".repeat(35)),
            1,
            "an emoji is two UTF-16 units"
        );
        assert_eq!(sms_segments(&"😀".repeat(36)), 2);
    }

    #[test]
    fn prices_sms_and_mms() {
        let p = pricing();
        let path = "/2010-04-01/Accounts/AC123/Messages.json";
        let long = format!(
            "To=%2B15551234567&From=%2B15557654321&Body={}",
            "a".repeat(200)
        );
        assert_eq!(
            estimate("POST", path, long.as_bytes(), &p).unwrap(),
            Estimate::Known("0.0166".parse().unwrap())
        );
        let mms =
            b"To=%2B1555&Body=hi&MediaUrl=https%3A%2F%2Fx%2Fa.png&MediaUrl=https%3A%2F%2Fx%2Fb.png";
        assert_eq!(
            estimate("POST", path, mms, &p).unwrap(),
            Estimate::Known("0.022".parse().unwrap())
        );
        assert_eq!(
            estimate("POST", path, b"To=1&To=2&Body=x", &p).unwrap_err(),
            BadRequest::Duplicate("To".into())
        );
        assert_eq!(
            estimate("POST", path, b"Body=x", &Pricing::default()).unwrap(),
            Estimate::Unknown
        );
        assert_eq!(
            estimate("GET", path, b"", &p).unwrap(),
            Estimate::Known(Usd::ZERO)
        );
        let reply = br#"{"sid":"SM1","num_segments":"3","num_media":"0","price":null}"#;
        assert_eq!(
            actual("POST", path, reply, &p, Usd::ZERO),
            "0.0249".parse().unwrap()
        );
    }
}
