//! Fixtures for tests of every crate (unit and end-to-end): a VaultKey or SpendPolicy with
//! sensible defaults, changed field by field, as the typed object, JSON or YAML for kubectl.
//! Built on JSON so a test can set any field, including ones the types would refuse:
//! `VaultKey::test("billing", "run-1").daily_cap("50").revoked().build()`.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::{SpendPolicy, VaultKey, Vendor};

/// A resource under construction.
#[derive(Debug, Clone)]
pub struct Fixture<K> {
    value: Value,
    kind: std::marker::PhantomData<K>,
}

impl<K: DeserializeOwned> Fixture<K> {
    fn new(value: Value) -> Fixture<K> {
        Fixture {
            value,
            kind: std::marker::PhantomData,
        }
    }

    /// Sets `spec` fields (merged over the defaults; `null` removes one).
    pub fn spec(mut self, fields: Value) -> Self {
        merge(&mut self.value["spec"], fields);
        self
    }

    /// Sets `metadata` fields (merged: `uid`, `generation`, `creationTimestamp`, ...).
    pub fn metadata(mut self, fields: Value) -> Self {
        merge(&mut self.value["metadata"], fields);
        self
    }

    /// The typed object. Panics (a test's failure) when the fields do not make one.
    pub fn build(self) -> K {
        serde_json::from_value(self.value).unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    /// The object as JSON.
    pub fn json(self) -> Value {
        self.value
    }

    /// The object as a YAML document, for `kubectl apply`.
    pub fn yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.value).unwrap_or_else(|e| panic!("fixture: {e}"))
    }
}

fn merge(into: &mut Value, fields: Value) {
    let (Some(into), Value::Object(fields)) = (into.as_object_mut(), fields) else {
        return;
    };
    for (k, v) in fields {
        if v.is_null() {
            into.remove(&k);
        } else {
            into.insert(k, v);
        }
    }
}

impl VaultKey {
    /// A VaultKey `ns/name` drawing on SpendPolicy `stripe`: $500 a day, 2 hours,
    /// `POST /v1/payment_intents` only.
    pub fn test(ns: &str, name: &str) -> Fixture<VaultKey> {
        Fixture::new(json!({
            "apiVersion": "keybrake.com/v1alpha1",
            "kind": "VaultKey",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "policyRef": {"name": "stripe"},
                "dailyUsdCap": "500",
                "allowedEndpoints": ["POST /v1/payment_intents"],
                "ttl": "2h",
            },
        }))
    }
}

impl Fixture<VaultKey> {
    /// Draws on SpendPolicy `name`.
    pub fn policy(self, name: &str) -> Self {
        self.spec(json!({"policyRef": {"name": name}}))
    }

    /// The daily cap, in dollars (`"12.50"`).
    pub fn daily_cap(self, usd: &str) -> Self {
        self.spec(json!({"dailyUsdCap": usd}))
    }

    /// The total cap, in dollars.
    pub fn total_cap(self, usd: &str) -> Self {
        self.spec(json!({"totalUsdCap": usd}))
    }

    /// The per-call cap, in dollars.
    pub fn per_call_cap(self, usd: &str) -> Self {
        self.spec(json!({"perCallUsdCap": usd}))
    }

    /// The allowlist.
    pub fn endpoints(self, patterns: &[&str]) -> Self {
        self.spec(json!({"allowedEndpoints": patterns}))
    }

    /// How long the key lives (`"30m"`).
    pub fn ttl(self, ttl: &str) -> Self {
        self.spec(json!({"ttl": ttl}))
    }

    /// The run it belongs to.
    pub fn run_label(self, label: &str) -> Self {
        self.spec(json!({"runLabel": label}))
    }

    /// Revoked.
    pub fn revoked(self) -> Self {
        self.spec(json!({"revoked": true}))
    }
}

impl SpendPolicy {
    /// A SpendPolicy `ns/name` for `vendor`, its credentials in Secret `<name>-credentials`,
    /// with no limits or budget.
    pub fn test(ns: &str, name: &str, vendor: Vendor) -> Fixture<SpendPolicy> {
        Fixture::new(json!({
            "apiVersion": "keybrake.com/v1alpha1",
            "kind": "SpendPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "vendor": vendor.as_str(),
                "credentialsSecretRef": {"name": format!("{name}-credentials")},
            },
        }))
    }
}

impl Fixture<SpendPolicy> {
    /// The Secret holding the real credentials.
    pub fn credentials(self, secret: &str) -> Self {
        self.spec(json!({"credentialsSecretRef": {"name": secret}}))
    }

    /// `spec.limits` (merged as a whole).
    pub fn limits(self, limits: Value) -> Self {
        self.spec(json!({"limits": limits}))
    }

    /// The policy's daily budget, in dollars.
    pub fn budget_daily(self, usd: &str) -> Self {
        self.spec(json!({"budget": {"dailyUsd": usd}}))
    }

    /// The vendor's base URL.
    pub fn upstream(self, url: &str) -> Self {
        self.spec(json!({"upstream": url}))
    }
}

/// The spec of a Stripe policy with every limit set: $1,000 a day, $5,000 in all, $200 a call,
/// 24 hours, `POST /v1/payment_intents` and `GET /v1/customers/*`; credentials `stripe-live`.
pub fn limited_policy_spec() -> crate::spend_policy::SpendPolicySpec {
    SpendPolicy::test("billing", "stripe", Vendor::Stripe)
        .credentials("stripe-live")
        .limits(json!({
            "maxDailyUsd": "1000", "maxTotalUsd": "5000", "maxPerCallUsd": "200",
            "maxTtl": "24h",
            "allowedEndpoints": ["POST /v1/payment_intents", "GET /v1/customers/*"],
        }))
        .build()
        .spec
}

/// The spec of a run's key under [`limited_policy_spec`]: $500 a day, 2 hours, a run label,
/// and no allowlist of its own (its policy's applies).
pub fn run_key_spec() -> crate::vault_key::VaultKeySpec {
    VaultKey::test("billing", "run-1")
        .spec(json!({"allowedEndpoints": null}))
        .run_label("hatchet/billing-agent/run-1")
        .build()
        .spec
}

/// A Secret holding `pairs` as its data (a credentials Secret, for instance).
pub fn secret(pairs: &[(&str, &str)]) -> Secret {
    Secret {
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_build_typed_objects_and_yaml_with_any_field_changed() {
        let key = VaultKey::test("billing", "run-1")
            .daily_cap("50")
            .revoked()
            .spec(json!({"ttl": null, "totalUsdCap": "80"}))
            .build();
        assert!(key.spec.revoked && key.spec.ttl.is_none());
        assert_eq!(key.spec.daily_usd_cap, Some("50".parse().unwrap()));
        assert_eq!(key.spec.total_usd_cap, Some("80".parse().unwrap()));
        let yaml = SpendPolicy::test("billing", "stripe", Vendor::Stripe)
            .budget_daily("100")
            .yaml();
        let back: SpendPolicy = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back.spec.credentials_secret_ref.name, "stripe-credentials");
        assert_eq!(back.spec.budget.daily_usd, Some("100".parse().unwrap()));
        assert_eq!(secret(&[("apiKey", "sk")]).data.unwrap()["apiKey"].0, b"sk");
    }
}
