//! Validation beyond the schema, shared by the operator (conditions, Events) and the proxy.
//!
//! The CRD schema catches shapes (types, patterns, bounds, CEL cross-field rules); these
//! functions catch what needs values or another object: a VaultKey's caps against its
//! SpendPolicy's limits, endpoints against the policy's allowlist, URLs and currencies. Every
//! message names the field, the value and the rule, so a person can fix the manifest from it.

use std::fmt;

use jiff::{SignedDuration, Timestamp};

pub use crate::names::{DNS_SUBDOMAIN_PATTERN, is_dns_label, is_dns_subdomain, namespaced_name};
use crate::{
    administration, endpoint::EndpointPattern, money::Usd, spend_policy::SpendPolicySpec,
    vault_key::VaultKeySpec, vendor::Vendor,
};

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
struct Check(Vec<Violation>);

impl Check {
    fn fail(&mut self, field: &str, reason: Reason, message: String) {
        self.0.push(Violation {
            field: field.to_owned(),
            reason,
            message,
        });
    }

    fn finish<T>(self, value: T) -> Result<T, Violations> {
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

fn check_key(spec: &VaultKeySpec, check: &mut Check) {
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

/// What a VaultKey may do once its policy's limits are applied: what the operator writes to
/// Redis and the proxy enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveKey {
    /// The policy's vendor.
    pub vendor: Vendor,
    /// Daily cap (the key's, else the policy's `maxDailyUsd`).
    pub daily_cap: Option<Usd>,
    /// Total cap (the key's, else the policy's `maxTotalUsd`).
    pub total_cap: Option<Usd>,
    /// Per-call cap (the key's, else the policy's `maxPerCallUsd`).
    pub per_call_cap: Option<Usd>,
    /// Allowed endpoints (the key's, else the policy's; never empty).
    pub endpoints: Vec<EndpointPattern>,
    /// When the key stops working; `None` only when neither key nor policy bounds it.
    pub expires_at: Option<Timestamp>,
}

impl EffectiveKey {
    /// The caps in words for the printer column: `"500.00/day, 2000.00 total, 50.00/call"`.
    pub fn cap_summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.daily_cap {
            parts.push(format!("{d}/day"));
        }
        if let Some(t) = self.total_cap {
            parts.push(format!("{t} total"));
        }
        if let Some(c) = self.per_call_cap {
            parts.push(format!("{c}/call"));
        }
        parts.join(", ")
    }
}

/// Checks a VaultKey against its own rules and its policy's limits, and computes what it may do.
/// `created` is the VaultKey's creation time, the start of a `ttl` (so re-checking later gives
/// the same answer). One check per rule, in the order of the spec, so every violation is
/// reported at once.
pub fn resolve_key(
    key: &VaultKeySpec,
    policy_name: &str,
    policy: &SpendPolicySpec,
    created: Timestamp,
) -> Result<EffectiveKey, Violations> {
    let mut check = Check::default();
    check_key(key, &mut check);
    let limits = &policy.limits;
    let mut cap = |field: &str, mine: Option<Usd>, limit: Option<Usd>, limit_name: &str| match (
        mine, limit,
    ) {
        (Some(m), Some(l)) if m > l => {
            check.fail(
                &format!("spec.{field}"),
                Reason::CapAboveLimit,
                format!("{m} is above the SpendPolicy {policy_name:?} limit {limit_name} {l}"),
            );
            mine
        }
        _ => mine.or(limit),
    };
    let daily_cap = cap(
        "dailyUsdCap",
        key.daily_usd_cap,
        limits.max_daily_usd,
        "maxDailyUsd",
    );
    let total_cap = cap(
        "totalUsdCap",
        key.total_usd_cap,
        limits.max_total_usd,
        "maxTotalUsd",
    );
    let per_call_cap = cap(
        "perCallUsdCap",
        key.per_call_usd_cap,
        limits.max_per_call_usd,
        "maxPerCallUsd",
    );

    let max_ttl = limits
        .max_ttl
        .map(|d| SignedDuration::from_secs(d.as_secs() as i64));
    let expires_at = match (key.ttl, &key.expires_at, max_ttl) {
        (Some(ttl), _, Some(max)) if ttl.as_secs() as i64 > max.as_secs() => {
            check.fail(
                "spec.ttl",
                Reason::TtlAboveLimit,
                format!(
                    "{ttl} is longer than the SpendPolicy {policy_name:?} limit maxTtl {}",
                    limits.max_ttl.map(|d| d.to_string()).unwrap_or_default()
                ),
            );
            None
        }
        (Some(ttl), _, _) => created
            .checked_add(SignedDuration::from_secs(ttl.as_secs() as i64))
            .ok(),
        (None, Some(at), Some(max)) if at.0.duration_since(created) > max => {
            check.fail(
                "spec.expiresAt",
                Reason::TtlAboveLimit,
                format!(
                    "{} is more than the SpendPolicy {policy_name:?} limit maxTtl {} after the key's creation ({created})",
                    at.0,
                    limits.max_ttl.map(|d| d.to_string()).unwrap_or_default()
                ),
            );
            None
        }
        (None, Some(at), _) => Some(at.0),
        (None, None, Some(max)) => created.checked_add(max).ok(),
        (None, None, None) => None,
    };

    let endpoints = match (&key.allowed_endpoints, &limits.allowed_endpoints) {
        (Some(mine), Some(allowed)) => {
            for e in mine
                .iter()
                .filter(|e| !allowed.iter().any(|a| e.is_covered_by(a)))
            {
                check.fail(
                    "spec.allowedEndpoints",
                    Reason::EndpointNotInPolicy,
                    format!(
                        "\"{e}\" is not allowed by the SpendPolicy {policy_name:?} (allowed: {})",
                        allowed
                            .iter()
                            .map(|a| format!("\"{a}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            mine.clone()
        }
        (Some(mine), None) => mine.clone(),
        (None, Some(allowed)) => allowed.clone(),
        (None, None) => {
            check.fail(
                "spec.allowedEndpoints",
                Reason::NoEndpoints,
                format!("no endpoints are allowed: set spec.allowedEndpoints here or spec.limits.allowedEndpoints on the SpendPolicy {policy_name:?}"),
            );
            Vec::new()
        }
    };

    check.finish(EffectiveKey {
        vendor: policy.vendor,
        daily_cap,
        total_cap,
        per_call_cap,
        endpoints,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{
        spend_policy::{PolicyLimits, SecretRef},
        vault_key::{PolicyRef, Rotation},
    };

    fn usd(s: &str) -> Option<Usd> {
        Some(s.parse().unwrap())
    }

    fn policy() -> SpendPolicySpec {
        SpendPolicySpec {
            vendor: Vendor::Stripe,
            credentials_secret_ref: SecretRef {
                name: "stripe-live".into(),
            },
            upstream: None,
            limits: PolicyLimits {
                max_daily_usd: usd("1000"),
                max_total_usd: usd("5000"),
                max_per_call_usd: usd("200"),
                max_ttl: Some("24h".parse().unwrap()),
                allowed_endpoints: Some(vec![
                    "POST /v1/payment_intents".parse().unwrap(),
                    "GET /v1/customers/*".parse().unwrap(),
                ]),
                allow_account_administration: false,
            },
            budget: Default::default(),
            pricing: Default::default(),
            scope: Default::default(),
        }
    }

    fn key() -> VaultKeySpec {
        VaultKeySpec {
            policy_ref: PolicyRef {
                name: "stripe".into(),
            },
            daily_usd_cap: usd("500"),
            total_usd_cap: None,
            per_call_usd_cap: None,
            allowed_endpoints: None,
            ttl: Some("2h".parse().unwrap()),
            expires_at: None,
            run_label: Some("hatchet/billing-agent/run-1".into()),
            revoked: false,
            rotation: None,
            secret_name: None,
            restart_targets: vec![],
            restart_debounce: None,
        }
    }

    fn created() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    fn violations(k: &VaultKeySpec, p: &SpendPolicySpec) -> Vec<(String, Reason, String)> {
        resolve_key(k, "stripe", p, created())
            .unwrap_err()
            .0
            .into_iter()
            .map(|v| (v.field, v.reason, v.message))
            .collect()
    }

    #[test]
    fn a_narrow_key_resolves_with_policy_defaults() {
        let eff = resolve_key(&key(), "stripe", &policy(), created()).unwrap();
        assert_eq!(eff.daily_cap, usd("500"));
        assert_eq!(
            eff.total_cap,
            usd("5000"),
            "total falls back to the policy limit"
        );
        assert_eq!(eff.per_call_cap, usd("200"));
        assert_eq!(eff.endpoints.len(), 2);
        assert_eq!(
            eff.expires_at,
            Some("2026-11-22T12:00:00Z".parse().unwrap())
        );
        assert_eq!(eff.cap_summary(), "500.00/day, 5000.00 total, 200.00/call");
    }

    #[test]
    fn caps_above_limits_name_field_value_and_limit() {
        let mut k = key();
        k.daily_usd_cap = usd("1000.000001");
        k.per_call_usd_cap = usd("250");
        let v = violations(&k, &policy());
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, "spec.dailyUsdCap");
        assert_eq!(v[0].1, Reason::CapAboveLimit);
        assert_eq!(
            v[0].2,
            "1000.000001 is above the SpendPolicy \"stripe\" limit maxDailyUsd 1000.00"
        );
        assert_eq!(v[1].0, "spec.perCallUsdCap");
    }

    #[test]
    fn a_cap_exactly_at_the_limit_is_allowed() {
        let mut k = key();
        k.daily_usd_cap = usd("1000");
        k.total_usd_cap = usd("5000");
        assert!(resolve_key(&k, "stripe", &policy(), created()).is_ok());
    }

    #[test]
    fn ttl_and_expires_at_are_bounded_by_max_ttl() {
        let mut k = key();
        k.ttl = Some("25h".parse().unwrap());
        let v = violations(&k, &policy());
        assert_eq!(
            (v[0].0.as_str(), v[0].1),
            ("spec.ttl", Reason::TtlAboveLimit)
        );
        assert!(
            v[0].2.contains("25h is longer than") && v[0].2.contains("maxTtl 24h"),
            "{}",
            v[0].2
        );

        k.ttl = None;
        k.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-11-23T10:00:01Z".parse().unwrap(),
        ));
        let v = violations(&k, &policy());
        assert_eq!(
            (v[0].0.as_str(), v[0].1),
            ("spec.expiresAt", Reason::TtlAboveLimit)
        );

        k.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-11-23T10:00:00Z".parse().unwrap(),
        ));
        let eff = resolve_key(&k, "stripe", &policy(), created()).unwrap();
        assert_eq!(
            eff.expires_at,
            Some("2026-11-23T10:00:00Z".parse().unwrap())
        );

        k.expires_at = None;
        let eff = resolve_key(&k, "stripe", &policy(), created()).unwrap();
        assert_eq!(
            eff.expires_at,
            Some("2026-11-23T10:00:00Z".parse().unwrap()),
            "defaults to maxTtl"
        );

        let mut open = policy();
        open.limits.max_ttl = None;
        assert_eq!(
            resolve_key(&k, "stripe", &open, created())
                .unwrap()
                .expires_at,
            None
        );
    }

    #[test]
    fn endpoints_may_only_narrow() {
        let mut k = key();
        k.allowed_endpoints = Some(vec![
            "GET /v1/customers/cus_1".parse().unwrap(),
            "POST /v1/refunds".parse().unwrap(),
        ]);
        let v = violations(&k, &policy());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].1, Reason::EndpointNotInPolicy);
        assert!(
            v[0].2
                .starts_with("\"POST /v1/refunds\" is not allowed by the SpendPolicy \"stripe\""),
            "{}",
            v[0].2
        );

        let mut open = policy();
        open.limits.allowed_endpoints = None;
        let eff = resolve_key(&k, "stripe", &open, created()).unwrap();
        assert_eq!(eff.endpoints.len(), 2);
        k.allowed_endpoints = None;
        let v = violations(&k, &open);
        assert_eq!(v[0].1, Reason::NoEndpoints);
    }

    #[test]
    fn key_rules_of_its_own() {
        let mut k = key();
        k.daily_usd_cap = None;
        k.expires_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            created(),
        ));
        k.rotation = Some(Rotation {
            period: "1h".parse().unwrap(),
            overlap: "1h".parse().unwrap(),
        });
        k.secret_name = Some("Bad_Name".into());
        k.run_label = Some("run\n1".into());
        k.allowed_endpoints = Some(vec![]);
        let reasons: Vec<Reason> = validate_key(&k)
            .unwrap_err()
            .0
            .iter()
            .map(|v| v.reason)
            .collect();
        assert_eq!(
            reasons,
            [
                Reason::MissingCap,
                Reason::ConflictingExpiry,
                Reason::BadRotation,
                Reason::BadName,
                Reason::BadRunLabel,
                Reason::NoEndpoints
            ]
        );
        assert!(validate_key(&key()).is_ok());
    }

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
