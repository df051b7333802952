//! The real credentials a SpendPolicy's Secret holds, read one way for the operator (which
//! reports a Secret it cannot use) and the proxy (which sends them): a policy is never `Ready`
//! with a Secret the proxy cannot use.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::ByteString;

use crate::vendor::{ACCOUNT_SID, API_KEY, AUTH_TOKEN, Vendor};

/// The real credentials of a vendor account. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Stripe and Resend: one API key.
    ApiKey(String),
    /// Twilio: account SID and auth token.
    Twilio {
        /// `AC...`.
        account_sid: String,
        /// The auth token.
        auth_token: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// Why a credentials Secret's data cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    /// A key the vendor needs is not in the Secret.
    #[error("has no key {key:?} ({vendor} needs {})", vendor.credential_keys().join(" and "))]
    Missing {
        /// The Secret key.
        key: &'static str,
        /// The vendor.
        vendor: Vendor,
    },
    /// The key's value is empty or only whitespace.
    #[error("key {0:?} is empty")]
    Empty(&'static str),
    /// The key's value is not UTF-8 text.
    #[error("key {0:?} is not UTF-8 text")]
    NotText(&'static str),
}

impl Credentials {
    /// Reads `vendor`'s credentials from a Secret's `data` (values are trimmed).
    pub fn from_secret_data(
        vendor: Vendor,
        data: &BTreeMap<String, ByteString>,
    ) -> Result<Credentials, Unusable> {
        let value = |key: &'static str| -> Result<String, Unusable> {
            let bytes = data.get(key).ok_or(Unusable::Missing { key, vendor })?;
            let text = std::str::from_utf8(&bytes.0).map_err(|_| Unusable::NotText(key))?;
            match text.trim() {
                "" => Err(Unusable::Empty(key)),
                t => Ok(t.to_owned()),
            }
        };
        Ok(match vendor {
            Vendor::Stripe | Vendor::Resend => Credentials::ApiKey(value(API_KEY)?),
            Vendor::Twilio => Credentials::Twilio {
                account_sid: value(ACCOUNT_SID)?,
                auth_token: value(AUTH_TOKEN)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &[u8])]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
            .collect()
    }

    #[test]
    fn each_vendor_reads_its_keys_trimmed_and_never_prints_them() {
        let c = Credentials::from_secret_data(Vendor::Stripe, &data(&[("apiKey", b" sk_1\n")]));
        assert_eq!(c, Ok(Credentials::ApiKey("sk_1".into())));
        assert_eq!(format!("{:?}", c.unwrap()), "Credentials(<redacted>)");
        let t = data(&[("accountSid", b"AC1"), ("authToken", b"t")]);
        assert!(matches!(
            Credentials::from_secret_data(Vendor::Twilio, &t),
            Ok(Credentials::Twilio { .. })
        ));
    }

    #[test]
    fn an_unusable_secret_names_the_key_and_why() {
        let e = |vendor, pairs: &[(&str, &[u8])]| {
            Credentials::from_secret_data(vendor, &data(pairs))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(Vendor::Twilio, &[("accountSid", b"AC1")]),
            "has no key \"authToken\" (twilio needs accountSid and authToken)"
        );
        assert_eq!(
            e(Vendor::Stripe, &[("apiKey", b"  ")]),
            "key \"apiKey\" is empty"
        );
        assert_eq!(
            e(Vendor::Resend, &[("apiKey", &[0xff, 0xfe])]),
            "key \"apiKey\" is not UTF-8 text"
        );
    }
}
