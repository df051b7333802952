//! What a VaultKey may do once its SpendPolicy's limits are applied: the caps, endpoints and
//! expiry the operator writes to the key's record for the proxy to enforce (and the issuance
//! API checks before it creates a key). A key may only narrow its
//! policy; every rule it breaks is reported at once, naming the field, the value and the limit.

use jiff::{SignedDuration, Timestamp};
use keybrake_crds::{
    EndpointPattern, Usd, Vendor,
    spend_policy::SpendPolicySpec,
    validate::{Check, Reason, Violations, check_key},
    vault_key::VaultKeySpec,
};

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
    use keybrake_crds::{
        testing::{limited_policy_spec as policy, run_key_spec as key},
        validate::validate_key,
        vault_key::Rotation,
    };

    use super::*;

    fn usd(s: &str) -> Option<Usd> {
        Some(s.parse().unwrap())
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

    /// Every shipped example VaultKey resolves against its example SpendPolicy: what the
    /// README and the docs tell people to apply works as it is.
    #[test]
    fn every_example_key_resolves_against_its_policy() {
        use keybrake_crds::{SpendPolicy, VaultKey};
        use serde::Deserialize;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        let mut docs = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                docs.push((name, serde_json::Value::deserialize(doc).unwrap()));
            }
        }
        let policies: std::collections::BTreeMap<(String, String), SpendPolicy> = docs
            .iter()
            .filter(|(_, d)| d["kind"] == "SpendPolicy")
            .map(|(_, d)| {
                let p: SpendPolicy = serde_json::from_value(d.clone()).unwrap();
                let at = (
                    p.metadata.namespace.clone().unwrap(),
                    p.metadata.name.clone().unwrap(),
                );
                (at, p)
            })
            .collect();
        let mut resolved = 0;
        for (file, doc) in docs.iter().filter(|(_, d)| d["kind"] == "VaultKey") {
            let k: VaultKey = serde_json::from_value(doc.clone()).unwrap();
            let ns = k.metadata.namespace.clone().unwrap();
            let name = k.spec.policy_ref.name.clone();
            let policy = &policies[&(ns, name.clone())];
            resolve_key(&k.spec, &name, &policy.spec, created())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            resolved += 1;
        }
        assert!(resolved >= 5, "only {resolved} example keys found");
    }
}
