//! Request headers from an allowlist: the proxy forwards only the headers each vendor's SDKs send
//! on the metered calls, refuses those that change whose account is acted on or how the body
//! must be read, and drops the rest (hop-by-hop, tracing, anything a vendor might one day read).

use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};
use keybrake_crds::Vendor;

use super::error::BadRequest;

/// Forwarded for every vendor (content type and length are the proxy's own).
const COMMON: [&str; 3] = ["user-agent", "accept", "accept-language"];
/// Stripe's SDKs: the API version, their telemetry, and the idempotency key.
const STRIPE: [&str; 4] = [
    "stripe-version",
    "x-stripe-client-user-agent",
    "x-stripe-client-telemetry",
    "idempotency-key",
];
/// Resend's idempotency key and batch validation mode.
const RESEND: [&str; 2] = ["idempotency-key", "x-batch-validation"];

/// The Stripe API version the metering table reads responses and objects in: sent on the proxy's
/// own reads, and on a call that names none (the account's default could be older than
/// [`OLDEST_STRIPE_VERSION`]).
pub const STRIPE_VERSION: &str = "2024-06-20";

/// The oldest Stripe API version accepted: older versions still honour parameters that are
/// gone since (`account_balance`, a customer's `plan`), which the metering table does not know.
pub const OLDEST_STRIPE_VERSION: &str = "2020-08-27";

/// The newest Stripe API version the metering table was written for (what Python stripe 16.1.0
/// and Node stripe 23.1.0 send): a newer one may read a parameter or answer a field in a way the
/// table does not know yet.
pub const NEWEST_STRIPE_VERSION: &str = "2026-10-28";

/// Why a `Stripe-Version` is refused: not `YYYY-MM-DD` with an optional `.release` name (a
/// `; feature_beta=v3` preview changes what the API reads), or outside the versions the table
/// was written for.
fn stripe_version(v: &str) -> Option<&'static str> {
    let (date, release) = v.split_once('.').unwrap_or((v, "release"));
    let shaped = date.len() == 10
        && date.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && !release.is_empty()
        && release.bytes().all(|b| b.is_ascii_lowercase());
    if !shaped {
        Some(
            "is not a Stripe API version the proxy reads (YYYY-MM-DD, or YYYY-MM-DD.release; no preview features)",
        )
    } else if date < OLDEST_STRIPE_VERSION {
        Some(
            "names a Stripe API version older than 2020-08-27; older versions read parameters the proxy does not meter",
        )
    } else if date > NEWEST_STRIPE_VERSION {
        Some(
            "names a Stripe API version newer than 2026-10-28, the newest the proxy's metering table was written for; send 2026-10-28.endive or older",
        )
    } else {
        None
    }
}

/// Headers that make the real key act on another account, or that the proxy cannot honour.
fn refused(vendor: Vendor, name: &str, value: &HeaderValue) -> Option<&'static str> {
    match name {
        "stripe-version" if vendor == Vendor::Stripe => {
            stripe_version(value.to_str().unwrap_or(""))
        }
        "content-encoding" => Some(
            "a request Content-Encoding is not accepted: the proxy must read the body exactly as the vendor will; send it uncompressed",
        ),
        "stripe-account" | "stripe-context" if vendor == Vendor::Stripe => Some(
            "acts on another Stripe account (a connected account or an organization's), which no vault key grants",
        ),
        n if vendor == Vendor::Stripe && n.starts_with("stripe-") && !STRIPE.contains(&n) => {
            Some("is a Stripe header the proxy does not know; it could change how the call is read")
        }
        _ => None,
    }
}

/// The headers to forward, or why the request is refused.
pub fn forwarded(
    vendor: Vendor,
    headers: &HeaderMap,
) -> Result<Vec<(HeaderName, HeaderValue)>, BadRequest> {
    let own: &[&str] = match vendor {
        Vendor::Stripe => &STRIPE,
        Vendor::Twilio => &[],
        Vendor::Resend => &RESEND,
    };
    let mut out = Vec::new();
    for (name, value) in headers {
        let n = name.as_str();
        if let Some(why) = refused(vendor, n, value) {
            return Err(BadRequest::Header(n.to_owned(), why));
        }
        if COMMON.contains(&n) || own.contains(&n) {
            if headers.get_all(name).iter().count() > 1 {
                return Err(BadRequest::Duplicate(format!("the {n} header")));
            }
            out.push((name.clone(), value.clone()));
        }
    }
    if vendor == Vendor::Stripe && !out.iter().any(|(n, _)| n.as_str() == "stripe-version") {
        out.push((
            HeaderName::from_static("stripe-version"),
            HeaderValue::from_static(STRIPE_VERSION),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forwards_what_the_sdks_send_and_nothing_else() {
        let h = map(&[
            ("user-agent", "Stripe/v1 PythonBindings/16.1.0"),
            ("stripe-version", "2025-01-27.acacia"),
            ("idempotency-key", "k1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-debug", "1"),
            ("authorization", "Bearer kb_x"),
        ]);
        let names: Vec<String> = forwarded(Vendor::Stripe, &h)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(names, ["user-agent", "stripe-version", "idempotency-key"]);
        let bare: Vec<_> = forwarded(Vendor::Stripe, &HeaderMap::new()).unwrap();
        assert_eq!(
            bare.len(),
            1,
            "a pinned Stripe-Version when the caller names none"
        );
        let tw: Vec<_> = forwarded(Vendor::Twilio, &h).unwrap();
        assert_eq!(tw.len(), 1, "Twilio does not read Idempotency-Key");
    }

    #[test]
    fn refuses_account_switching_and_encodings() {
        for (k, v) in [
            ("stripe-account", "acct_1"),
            ("stripe-context", "ctx_1"),
            ("stripe-something-new", "x"),
            ("content-encoding", "gzip"),
            ("stripe-version", "2019-09-09"),
            ("stripe-version", "latest"),
            ("stripe-version", "2026-11-17.fig"),
            ("stripe-version", "2027-01-01"),
            ("stripe-version", "2024-06-20; feature_beta=v3"),
            ("stripe-version", "2024-06-20.Acacia"),
        ] {
            let err = forwarded(Vendor::Stripe, &map(&[(k, v)])).unwrap_err();
            assert!(matches!(err, BadRequest::Header(ref n, _) if n == k), "{k}");
        }
        assert!(forwarded(Vendor::Resend, &map(&[("content-encoding", "identity")])).is_err());
        for v in [
            "2020-08-27",
            "2024-06-20",
            "2026-10-28.endive",
            "2025-01-27.acacia",
        ] {
            let h = map(&[("stripe-version", v)]);
            assert!(forwarded(Vendor::Stripe, &h).is_ok(), "{v}");
        }
        assert!(
            forwarded(
                Vendor::Stripe,
                &map(&[("idempotency-key", "a"), ("idempotency-key", "b")])
            )
            .is_err()
        );
    }
}
