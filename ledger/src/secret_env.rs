//! What a credential Secret holds: each SDK's own environment variables, so a pod uses it with
//! `envFrom` and changes no code but the base URL. The operator writes it; the proxy's issuance
//! API reads the token back to hand it out once.

use std::collections::BTreeMap;

use keybrake_crds::Vendor;

use crate::Token;

/// The Secret's string data for `token`.
pub fn data(token: &Token, proxy_url: &str) -> BTreeMap<String, String> {
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
