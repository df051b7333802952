//! Canonical request paths. The allowlist, the cost estimate and the upstream all see the same
//! canonical path; anything that could mean one thing here and another upstream is refused.

use keybrake_crds::Vendor;

use crate::policies::Credentials;

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path (absolute URIs and `*` are refused: the upstream comes only from
    /// the policy).
    #[error("the request target must be a path starting with /")]
    NotAPath,
    /// `.`/`..`/empty segments, encoded slashes, backslashes or encoded dots.
    #[error(
        "the path {0:?} has dot segments, empty segments, backslashes or encoded slashes or dots"
    )]
    Ambiguous(String),
    /// A `/stripe|/twilio|/resend` prefix naming another vendor than the key.
    #[error("the path prefix /{0} does not match the vault key's vendor {1}")]
    VendorMismatch(String, Vendor),
}

/// The canonical path: no vendor prefix, no trailing slash, no query.
pub fn canonical(vendor: Vendor, raw: &str) -> Result<String, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAPath)?;
    let lower = raw.to_ascii_lowercase();
    if raw.contains('\\')
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%2e")
        || lower.contains("%00")
    {
        return Err(PathError::Ambiguous(raw.to_owned()));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    if segments
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == "..")
    {
        return Err(PathError::Ambiguous(raw.to_owned()));
    }
    if let Some(first) = segments.first()
        && let Ok(prefix) = first.parse::<Vendor>()
    {
        if prefix != vendor {
            return Err(PathError::VendorMismatch(first.to_string(), vendor));
        }
        segments.remove(0);
    }
    Ok(format!("/{}", segments.join("/")))
}

/// The upstream path: Twilio's account SID in the path must be the key's, and becomes the real
/// one. `None` when it names another account.
pub fn upstream_path(key_sid: &str, credentials: &Credentials, path: &str) -> Option<String> {
    let Credentials::Twilio { account_sid, .. } = credentials else {
        return Some(path.to_owned());
    };
    let mut segs: Vec<&str> = path.split('/').collect();
    match segs.iter().position(|s| *s == "Accounts") {
        Some(i) => {
            // `Accounts/{sid}.json` and `Accounts/{sid}/...` both name the account.
            let next = segs.get(i + 1).copied().unwrap_or("");
            let (sid, suffix) = next
                .strip_suffix(".json")
                .map_or((next, ""), |s| (s, ".json"));
            if sid != key_sid {
                return None;
            }
            let real = format!("{account_sid}{suffix}");
            segs[i + 1] = &real;
            Some(segs.join("/"))
        }
        None => Some(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_an_optional_matching_prefix() {
        assert_eq!(
            canonical(Vendor::Stripe, "/v1/payment_intents").unwrap(),
            "/v1/payment_intents"
        );
        assert_eq!(
            canonical(Vendor::Stripe, "/stripe/v1/payment_intents/").unwrap(),
            "/v1/payment_intents"
        );
        assert_eq!(
            canonical(Vendor::Resend, "/resend/emails").unwrap(),
            "/emails"
        );
        assert_eq!(canonical(Vendor::Resend, "/").unwrap(), "/");
        assert_eq!(
            canonical(Vendor::Stripe, "/twilio/v1/x").unwrap_err(),
            PathError::VendorMismatch("twilio".into(), Vendor::Stripe)
        );
    }

    #[test]
    fn refuses_what_could_be_read_two_ways() {
        for p in [
            "/v1/../admin",
            "/v1/./x",
            "/v1//x",
            "/v1/a%2Fb",
            "/v1/a%2fb",
            "/v1/%2e%2e/x",
            "/v1\\x",
            "/v1/a%5Cb",
            "/v1/a%00",
        ] {
            assert!(
                matches!(canonical(Vendor::Stripe, p), Err(PathError::Ambiguous(_))),
                "{p}"
            );
        }
        assert_eq!(
            canonical(Vendor::Stripe, "http://evil.example/v1").unwrap_err(),
            PathError::NotAPath
        );
        assert_eq!(
            canonical(Vendor::Stripe, "*").unwrap_err(),
            PathError::NotAPath
        );
    }

    proptest::proptest! {
        /// Whatever the client sends, the canonical path is plain: no dot or empty segments,
        /// no encoded slashes, no query, and another vendor's prefix never survives.
        #[test]
        fn canonical_paths_are_plain(raw in "(/|[a-z0-9%._~\\\\-]{0,6}){0,12}", vendor in proptest::sample::select(Vendor::ALL.to_vec())) {
            if let Ok(p) = canonical(vendor, &raw) {
                proptest::prop_assert!(p.starts_with('/'));
                proptest::prop_assert!(!p.contains("//") && !p.contains('?') && !p.contains('\\'));
                proptest::prop_assert!(!p.split('/').any(|s| s == "." || s == ".."));
                proptest::prop_assert!(!p.to_ascii_lowercase().contains("%2f"));
            }
        }

        #[test]
        fn any_text_is_refused_or_canonical(raw in "\\PC{0,80}") {
            let _ = canonical(Vendor::Stripe, &raw);
        }
    }

    #[test]
    fn twilio_paths_name_the_keys_account_and_get_the_real_one() {
        let c = Credentials::Twilio {
            account_sid: "ACreal".into(),
            auth_token: "t".into(),
        };
        assert_eq!(
            upstream_path("ACkey", &c, "/2010-04-01/Accounts/ACkey/Messages.json").as_deref(),
            Some("/2010-04-01/Accounts/ACreal/Messages.json")
        );
        assert_eq!(
            upstream_path("ACkey", &c, "/2010-04-01/Accounts/ACkey.json").as_deref(),
            Some("/2010-04-01/Accounts/ACreal.json")
        );
        assert_eq!(
            upstream_path("ACkey", &c, "/2010-04-01/Accounts/ACother/Messages.json"),
            None
        );
        assert_eq!(upstream_path("ACkey", &c, "/2010-04-01/Accounts"), None);
        let k = Credentials::ApiKey("sk".into());
        assert_eq!(
            upstream_path("x", &k, "/v1/charges").as_deref(),
            Some("/v1/charges")
        );
    }
}
