//! What a credential Secret holds: each SDK's own environment variables, so a pod uses it with
//! `envFrom` and changes no code but the base URL. The operator writes it; the proxy's issuance
//! API reads the token back to hand it out once.

use std::collections::BTreeMap;

use keybrake_crds::Vendor;

use crate::Token;

/// Where a pod mounts the key's Secret as files, so the CA bundle in it has a path the SDKs'
/// environment variables can name (`volumeMounts` of the Secret at this path).
pub const DEFAULT_MOUNT_PATH: &str = "/var/run/secrets/keybrake";

/// The file name of the proxy's CA bundle in the Secret (and in its mount).
pub const CA_FILE: &str = "ca.crt";

/// The proxy's CA, for a Secret whose pod must trust a privately issued proxy certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCa {
    /// PEM certificate(s).
    pub pem: String,
    /// Where the pod mounts the Secret ([`DEFAULT_MOUNT_PATH`] unless configured).
    pub mount_path: String,
}

/// The Secret's string data for `token`.
pub fn data(token: &Token, proxy_url: &str) -> BTreeMap<String, String> {
    data_with_ca(token, proxy_url, None)
}

/// [`data`], and with a CA: the bundle itself and the variables each SDK reads for one.
/// `NODE_EXTRA_CA_CERTS` adds it to Node's roots (the Node SDKs of all three vendors);
/// `REQUESTS_CA_BUNDLE` is what `requests` trusts (the Python SDKs of Twilio and Resend) and
/// replaces its roots for that process; `KEYBRAKE_CA_FILE` names it for anything else
/// (stripe-python pins its own bundle and reads no variable: `stripe.ca_bundle_path`).
pub fn data_with_ca(
    token: &Token,
    proxy_url: &str,
    ca: Option<&ProxyCa>,
) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    let url = proxy_url.trim_end_matches('/').to_owned();
    match token.vendor {
        Vendor::Stripe => {
            d.insert("STRIPE_API_KEY".into(), token.bearer());
            d.insert("STRIPE_API_BASE".into(), url.clone());
        }
        Vendor::Twilio => {
            // Not TWILIO_REGION/TWILIO_EDGE: both SDKs rewrite the host from them and would
            // bypass the proxy.
            d.insert("TWILIO_ACCOUNT_SID".into(), token.twilio_sid());
            d.insert("TWILIO_AUTH_TOKEN".into(), token.secret().to_owned());
            d.insert("TWILIO_API_BASE".into(), url.clone());
        }
        Vendor::Resend => {
            d.insert("RESEND_API_KEY".into(), token.bearer());
            d.insert("RESEND_BASE_URL".into(), url.clone());
            d.insert("RESEND_API_URL".into(), url.clone());
        }
    }
    d.insert("KEYBRAKE_KEY_ID".into(), token.key_id.to_string());
    d.insert("KEYBRAKE_PROXY_URL".into(), url);
    if let Some(ca) = ca {
        let file = format!("{}/{CA_FILE}", ca.mount_path.trim_end_matches('/'));
        d.insert(CA_FILE.into(), ca.pem.clone());
        for var in [
            "KEYBRAKE_CA_FILE",
            "NODE_EXTRA_CA_CERTS",
            "REQUESTS_CA_BUNDLE",
        ] {
            d.insert(var.into(), file.clone());
        }
    }
    d
}

/// Reads the token back out of a Secret's (decoded) data.
pub fn token_from(vendor: Vendor, data: &BTreeMap<String, String>) -> Option<Token> {
    match vendor {
        Vendor::Stripe => Token::parse_bearer(data.get("STRIPE_API_KEY")?).ok(),
        Vendor::Resend => Token::parse_bearer(data.get("RESEND_API_KEY")?).ok(),
        Vendor::Twilio => Token::parse_twilio(
            data.get("TWILIO_ACCOUNT_SID")?,
            data.get("TWILIO_AUTH_TOKEN")?,
        )
        .ok(),
    }
    .filter(|t| t.vendor == vendor)
}

#[cfg(test)]
mod tests {
    use crate::{KeyId, PolicyTag};

    use super::*;

    #[test]
    fn a_ca_comes_with_the_variables_that_name_its_file() {
        let token = Token::generate(Vendor::Twilio, KeyId::generate(&PolicyTag::of("a", "b")));
        let ca = ProxyCa {
            pem: "-----BEGIN CERTIFICATE-----\n".into(),
            mount_path: "/var/run/secrets/keybrake/".into(),
        };
        let d = data_with_ca(&token, "https://proxy:8443", Some(&ca));
        assert_eq!(d[CA_FILE], ca.pem);
        for var in [
            "KEYBRAKE_CA_FILE",
            "NODE_EXTRA_CA_CERTS",
            "REQUESTS_CA_BUNDLE",
        ] {
            assert_eq!(d[var], "/var/run/secrets/keybrake/ca.crt");
        }
        assert!(!data(&token, "https://proxy:8443").contains_key(CA_FILE));
    }

    #[test]
    fn every_vendor_round_trips_through_its_env_vars() {
        for vendor in Vendor::ALL {
            let token = Token::generate(vendor, KeyId::generate(&PolicyTag::of("ns", "p")));
            let d = data(&token, "http://proxy.keybrake-system:8080/");
            assert_eq!(d["KEYBRAKE_PROXY_URL"], "http://proxy.keybrake-system:8080");
            assert_eq!(d["KEYBRAKE_KEY_ID"], token.key_id.to_string());
            assert_eq!(token_from(vendor, &d), Some(token.clone()));
            assert!(!d.keys().any(|k| k.contains("REGION") || k.contains("EDGE")));
        }
    }

    #[test]
    fn a_token_for_another_vendor_is_not_read() {
        let token = Token::generate(Vendor::Stripe, KeyId::generate(&PolicyTag::of("ns", "p")));
        let mut d = data(&token, "http://p");
        d.insert("RESEND_API_KEY".into(), token.bearer());
        assert_eq!(token_from(Vendor::Resend, &d), None);
    }
}
