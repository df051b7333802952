//! The vendors Keybrake fronts.

use std::{fmt, str::FromStr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A vendor whose API the proxy fronts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Stripe (`api.stripe.com`).
    Stripe,
    /// Twilio Programmable Messaging (`api.twilio.com`).
    Twilio,
    /// Resend email (`api.resend.com`).
    Resend,
}

impl Vendor {
    /// Every vendor, in a stable order.
    pub const ALL: [Vendor; 3] = [Vendor::Stripe, Vendor::Twilio, Vendor::Resend];

    /// The lowercase name used in manifests, tokens and path prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Stripe => "stripe",
            Vendor::Twilio => "twilio",
            Vendor::Resend => "resend",
        }
    }

    /// The vendor's public API, used when a SpendPolicy names no upstream.
    pub fn default_upstream(self) -> &'static str {
        match self {
            Vendor::Stripe => "https://api.stripe.com",
            Vendor::Twilio => "https://api.twilio.com",
            Vendor::Resend => "https://api.resend.com",
        }
    }

    /// The keys the credentials Secret must hold for this vendor: the one list the operator
    /// checks and the proxy reads.
    pub fn credential_keys(self) -> &'static [&'static str] {
        match self {
            Vendor::Stripe | Vendor::Resend => &[API_KEY],
            Vendor::Twilio => &[ACCOUNT_SID, AUTH_TOKEN],
        }
    }
}

/// Credentials Secret key: the API key of Stripe or Resend.
pub const API_KEY: &str = "apiKey";
/// Credentials Secret key: the Twilio Account SID.
pub const ACCOUNT_SID: &str = "accountSid";
/// Credentials Secret key: the Twilio Auth Token.
pub const AUTH_TOKEN: &str = "authToken";

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A vendor name that Keybrake does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown vendor {0:?}; Keybrake fronts stripe, twilio and resend")]
pub struct UnknownVendor(pub String);

impl FromStr for Vendor {
    type Err = UnknownVendor;

    fn from_str(s: &str) -> Result<Vendor, UnknownVendor> {
        Vendor::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVendor(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_named() {
        for v in Vendor::ALL {
            assert_eq!(v.as_str().parse::<Vendor>().unwrap(), v);
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
        }
        let err = "paypal".parse::<Vendor>().unwrap_err().to_string();
        assert!(err.contains("\"paypal\"") && err.contains("stripe, twilio and resend"));
        assert!(serde_json::from_str::<Vendor>("\"Stripe\"").is_err());
    }
}
