//! Validation beyond the schema, shared by the operator (conditions, Events) and the proxy.
//!
//! The CRD schema catches shapes (types, patterns, bounds, CEL cross-field rules); these
//! functions catch what needs values or another object: a VaultKey's caps against its
//! SpendPolicy's limits, endpoints against the policy's allowlist, URLs and currencies. Every
//! message names the field, the value and the rule, so a person can fix the manifest from it.

use std::fmt;

pub use crate::names::{DNS_SUBDOMAIN_PATTERN, is_dns_label, is_dns_subdomain, namespaced_name};
use crate::{administration, money::Usd, spend_policy::SpendPolicySpec, vault_key::VaultKeySpec};

/// A machine-readable reason, used as the `reason` of the `Ready` condition and of Events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Neither a daily nor a total cap.
    MissingCap,
    /// Both `ttl` and `expiresAt`.
    ConflictingExpiry,
    /// A cap above the policy's limit.
    CapAboveLimit,
    /// A lifetime above the policy's `maxTtl`.
    TtlAboveLimit,
    /// An endpoint the policy does not allow.
    EndpointNotInPolicy,
    /// No endpoint allowed at all.
    NoEndpoints,
    /// `rotation.overlap` not shorter than `rotation.period`.
    BadRotation,
    /// A name that is not a DNS-1123 subdomain.
    BadName,
    /// A run label with control characters.
    BadRunLabel,
    /// An upstream that is not a plain http(s) base URL.
    BadUpstream,
    /// A currency code or rate that cannot be used.
    BadCurrency,
    /// A price that cannot be used.
    BadPrice,
    /// An endpoint that administers the vendor account, not allowed on purpose.
    AccountAdministration,
}

impl Reason {
    /// The CamelCase form used in conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingCap => "MissingCap",
            Reason::ConflictingExpiry => "ConflictingExpiry",
            Reason::CapAboveLimit => "CapAboveLimit",
            Reason::TtlAboveLimit => "TtlAboveLimit",
            Reason::EndpointNotInPolicy => "EndpointNotInPolicy",
            Reason::NoEndpoints => "NoEndpoints",
            Reason::BadRotation => "BadRotation",
            Reason::BadName => "BadName",
            Reason::BadRunLabel => "BadRunLabel",
            Reason::BadUpstream => "BadUpstream",
            Reason::BadCurrency => "BadCurrency",
            Reason::BadPrice => "BadPrice",
            Reason::AccountAdministration => "AccountAdministration",
        }
    }
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field, as a path from the object root (`spec.dailyUsdCap`).
    pub field: String,
    /// Why, for machines.
    pub reason: Reason,
    /// Why, for people: names the value and the rule.
    pub message: String,
}

/// Every rule a spec breaks (never empty).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    /// The reason of the first violation, for a condition.
    pub fn reason(&self) -> Reason {
        self.0.first().map_or(Reason::BadPrice, |v| v.reason)
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.message)?;
        }
        Ok(())
    }
}

/// Collects violations while a spec is checked.
#[derive(Default)]
pub struct Check(Vec<Violation>);

impl Check {
    /// Records one broken rule.
    pub fn fail(&mut self, field: &str, reason: Reason, message: String) {
        self.0.push(Violation {
            field: field.to_owned(),
            reason,
            message,
        });
    }

    /// `value`, or every violation recorded.
    pub fn finish<T>(self, value: T) -> Result<T, Violations> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Violations(self.0))
        }
    }
}

/// Checks a SpendPolicy's own spec: one check per field, in the order of the spec, so every
/// violation is reported at once (and the function is as long as the spec).
pub fn validate_policy(spec: &SpendPolicySpec) -> Result<(), Violations> {
    let mut check = Check::default();
    if !is_dns_subdomain(&spec.credentials_secret_ref.name) {
        check.fail(
            "spec.credentialsSecretRef.name",
            Reason::BadName,
            format!(
                "{:?} is not a valid Secret name (lowercase letters, digits, '-' and '.')",
                spec.credentials_secret_ref.name
            ),
        );
    }
    if let Some(upstream) = &spec.upstream
        && let Err(why) = check_upstream(upstream)
    {
        check.fail(
            "spec.upstream",
            Reason::BadUpstream,
            format!("{upstream:?} {why}"),
        );
    }
    for (code, rate) in &spec.pricing.currency_usd_rates {
        let field = format!("spec.pricing.currencyUsdRates.{code}");
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_lowercase()) {
            check.fail(
                &field,
                Reason::BadCurrency,
                format!("{code:?} is not a lowercase ISO 4217 currency code like \"eur\""),
            );
        } else if code == "usd" && *rate != Usd::from_dollars(1).unwrap_or(Usd::ZERO) {
            check.fail(
                &field,
                Reason::BadCurrency,
                format!("usd is always 1.00, not {rate}"),
            );
        } else if *rate == Usd::ZERO {
            check.fail(
                &field,
                Reason::BadCurrency,
                format!("rate for {code} is 0; a charge in {code} would cost nothing"),
            );
        }
    }
    for (i, w) in spec.pricing.worst_cases.iter().enumerate() {
        if w.usd == Usd::ZERO {
            check.fail(
                &format!("spec.pricing.worstCases[{i}].usd"),
                Reason::BadPrice,
                format!(
                    "is 0 for {}; a call whose cost cannot be bounded must reserve its worst case (remove the entry to refuse such calls)",
                    w.endpoint
                ),
            );
        }
    }
    for prefix in spec.pricing.sms_segment_usd_by_prefix.keys() {
        let digits = prefix.strip_prefix('+').unwrap_or("");
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            check.fail(
                &format!("spec.pricing.smsSegmentUsdByPrefix.{prefix}"),
                Reason::BadPrice,
                format!("{prefix:?} is not an E.164 prefix like \"+1\" or \"+4420\""),
            );
        }
    }
    if !spec.limits.allow_account_administration {
        for (i, p) in spec.limits.allowed_endpoints.iter().flatten().enumerate() {
            if let Some(what) = administration::administers(spec.vendor, p) {
                check.fail(
                    &format!("spec.limits.allowedEndpoints[{i}]"),
                    Reason::AccountAdministration,
                    format!(
                        "{p} administers {what}; set limits.allowAccountAdministration: true to allow it on purpose"
                    ),
                );
            }
        }
    }
    if let Some(list) = &spec.limits.allowed_endpoints
        && list.is_empty()
    {
        check.fail(
            "spec.limits.allowedEndpoints",
            Reason::NoEndpoints,
            "is empty; list the endpoints keys may call, or omit it".into(),
        );
    }
    check.finish(())
}

/// Why an upstream is not a usable base URL, if it is not.
fn check_upstream(text: &str) -> Result<(), &'static str> {
    let url = url::Url::parse(text).map_err(|_| "is not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; put them in the credentials Secret");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query string or fragment");
    }
    Ok(())
}

/// Checks the rules a VaultKey spec must meet on its own.
pub fn validate_key(spec: &VaultKeySpec) -> Result<(), Violations> {
    let mut check = Check::default();
    check_key(spec, &mut check);
    check.finish(())
}

/// The rules of a VaultKey's own spec, recorded in `check`.
pub fn check_key(spec: &VaultKeySpec, check: &mut Check) {
    if spec.daily_usd_cap.is_none() && spec.total_usd_cap.is_none() {
        check.fail(
            "spec",
            Reason::MissingCap,
            "set dailyUsdCap or totalUsdCap (or both): a key without them could spend without limit".into(),
        );
    }
    if spec.ttl.is_some() && spec.expires_at.is_some() {
        check.fail(
            "spec",
            Reason::ConflictingExpiry,
            "set ttl or expiresAt, not both".into(),
        );
    }
    if let Some(rot) = &spec.rotation
        && rot.overlap >= rot.period
    {
        check.fail(
            "spec.rotation.overlap",
            Reason::BadRotation,
            format!(
                "overlap {} must be shorter than period {}",
                rot.overlap, rot.period
            ),
        );
    }
    if !is_dns_subdomain(&spec.policy_ref.name) {
        check.fail(
            "spec.policyRef.name",
            Reason::BadName,
            format!("{:?} is not a valid object name", spec.policy_ref.name),
        );
    }
    if let Some(name) = &spec.secret_name
        && !is_dns_subdomain(name)
    {
        check.fail(
            "spec.secretName",
            Reason::BadName,
            format!("{name:?} is not a valid Secret name (lowercase letters, digits, '-' and '.', at most 253)"),
        );
    }
    if let Some(label) = &spec.run_label
        && label.chars().any(char::is_control)
    {
        check.fail(
            "spec.runLabel",
            Reason::BadRunLabel,
            "contains control characters (newlines, tabs, escapes)".into(),
        );
    }
    if let Some(list) = &spec.allowed_endpoints
        && list.is_empty()
    {
        check.fail(
            "spec.allowedEndpoints",
            Reason::NoEndpoints,
            "is empty; omit it to use the policy's list".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::{limited_policy_spec as policy, run_key_spec as key};

    #[test]
    fn violations_read_as_one_message() {
        let mut k = key();
        k.daily_usd_cap = None;
        let err = validate_key(&k).unwrap_err();
        assert_eq!(err.reason(), Reason::MissingCap);
        assert!(
            err.to_string()
                .starts_with("spec: set dailyUsdCap or totalUsdCap")
        );
    }

    #[test]
    fn policy_rules() {
        let mut p = policy();
        assert!(validate_policy(&p).is_ok());
        p.upstream = Some("ftp://example.com".into());
        p.pricing
            .currency_usd_rates
            .insert("EUR".into(), "1.08".parse().unwrap());
        p.pricing
            .currency_usd_rates
            .insert("usd".into(), "1.5".parse().unwrap());
        p.pricing.currency_usd_rates.insert("jpy".into(), Usd::ZERO);
        p.pricing.worst_cases.push(crate::spend_policy::WorstCase {
            endpoint: "POST /v1/transfers".parse().unwrap(),
            usd: Usd::ZERO,
        });
        p.pricing
            .sms_segment_usd_by_prefix
            .insert("44".into(), "0.04".parse().unwrap());
        p.limits
            .allowed_endpoints
            .get_or_insert_with(Vec::new)
            .push("POST /v1/webhook_endpoints".parse().unwrap());
        p.credentials_secret_ref.name = "Stripe".into();
        let v = validate_policy(&p).unwrap_err().0;
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.credentialsSecretRef.name",
                "spec.upstream",
                "spec.pricing.currencyUsdRates.EUR",
                "spec.pricing.currencyUsdRates.jpy",
                "spec.pricing.currencyUsdRates.usd",
                "spec.pricing.worstCases[0].usd",
                "spec.pricing.smsSegmentUsdByPrefix.44",
                "spec.limits.allowedEndpoints[2]"
            ]
        );
    }

    #[test]
    fn upstream_urls() {
        assert!(check_upstream("https://api.stripe.com").is_ok());
        assert!(check_upstream("http://127.0.0.1:8420").is_ok());
        assert!(check_upstream("http://127.0.0.1:8420/base/").is_ok());
        assert_eq!(check_upstream("not a url"), Err("is not a URL"));
        assert_eq!(
            check_upstream("https://u:p@api.stripe.com"),
            Err("must not carry credentials; put them in the credentials Secret")
        );
        assert_eq!(
            check_upstream("https://api.stripe.com/?x=1"),
            Err("must not have a query string or fragment")
        );
        assert_eq!(
            check_upstream("unix:/var/run/x"),
            Err("must use http or https")
        );
    }

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "stripe-live", "a.b-c.d", "x1"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
