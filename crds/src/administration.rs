//! Endpoints that administer the vendor account itself rather than use it: minting API keys,
//! buying phone numbers, adding sending domains, managing connected accounts. A policy lists
//! them in `allowedEndpoints` only with `limits.allowAccountAdministration: true`, because a key
//! that can mint an unscoped key or change where the account's events go is no longer scoped.

use crate::{endpoint::EndpointPattern, vendor::Vendor};

/// Twilio resources under `/2010-04-01/Accounts/{sid}/` that administer the account.
const TWILIO: [&str; 9] = [
    "Keys",
    "SigningKeys",
    "IncomingPhoneNumbers",
    "Applications",
    "SIP",
    "OutgoingCallerIds",
    "ConnectApps",
    "AuthorizedConnectApps",
    "Addresses",
];
/// Resend's first path segments that administer the account.
const RESEND: [&str; 3] = ["api-keys", "domains", "webhooks"];
/// Stripe objects under `/v1/` that administer the account or its connected accounts.
const STRIPE: [&str; 6] = [
    "account",
    "accounts",
    "account_links",
    "account_sessions",
    "webhook_endpoints",
    "apple_pay",
];

/// What `pattern` would let a key administer, if anything.
pub fn administers(vendor: Vendor, pattern: &EndpointPattern) -> Option<String> {
    let segs: Vec<Option<&str>> = pattern.segments().collect();
    // `Keys.json` and `Keys` name the same Twilio resource.
    fn stem<'a>(s: &Option<&'a str>) -> Option<&'a str> {
        s.map(|s| s.strip_suffix(".json").unwrap_or(s))
    }
    match vendor {
        Vendor::Twilio => {
            if let [Some("2010-04-01"), rest @ ..] = segs.as_slice() {
                match rest {
                    [Some("Accounts.json") | Some("Accounts")] => {
                        return Some("the list of accounts and subaccounts".into());
                    }
                    [Some("Accounts"), _] => return Some("the account itself".into()),
                    _ => {}
                }
                if let Some(found) = rest.iter().filter_map(stem).find(|s| TWILIO.contains(s)) {
                    return Some(format!("the account's {found}"));
                }
            }
            None
        }
        Vendor::Resend => match segs.first() {
            Some(Some(s)) if RESEND.contains(s) => Some(format!("the account's {s}")),
            _ => None,
        },
        Vendor::Stripe => match segs.as_slice() {
            [Some("v1"), Some(s), ..] if STRIPE.contains(s) => Some(format!("the account's {s}")),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(vendor: Vendor, p: &str) -> bool {
        administers(vendor, &p.parse().unwrap()).is_some()
    }

    #[test]
    fn account_administration_is_recognised() {
        for p in [
            "POST /2010-04-01/Accounts.json",
            "GET /2010-04-01/Accounts/*",
            "POST /2010-04-01/Accounts/*/Keys.json",
            "GET /2010-04-01/Accounts/*/Keys/*",
            "POST /2010-04-01/Accounts/*/SigningKeys.json",
            "POST /2010-04-01/Accounts/*/IncomingPhoneNumbers.json",
        ] {
            assert!(admin(Vendor::Twilio, p), "{p}");
        }
        for p in [
            "POST /2010-04-01/Accounts/*/Messages.json",
            "GET /2010-04-01/Accounts/*/Messages/*",
        ] {
            assert!(!admin(Vendor::Twilio, p), "{p}");
        }
        assert!(admin(Vendor::Resend, "POST /api-keys"));
        assert!(admin(Vendor::Resend, "DELETE /domains/*"));
        assert!(!admin(Vendor::Resend, "POST /emails"));
        assert!(admin(Vendor::Stripe, "POST /v1/accounts"));
        assert!(admin(Vendor::Stripe, "POST /v1/webhook_endpoints"));
        assert!(!admin(Vendor::Stripe, "POST /v1/payment_intents"));
    }
}
