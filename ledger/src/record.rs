//! The records the operator writes and the scripts read: one per VaultKey, one per
//! SpendPolicy. Fields are plain strings so the Lua side reads them without decoding; money is
//! integer micro-dollars, times are Unix milliseconds, and an empty string means "none".

use std::collections::HashMap;

use keybrake_crds::{EndpointPattern, Usd, Vendor};

/// A stored record that does not read back as its type: a field missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key record field {field}: {problem}")]
pub struct RecordError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// What the proxy enforces for one VaultKey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The policy's vendor.
    pub vendor: Vendor,
    /// `namespace/name` of the VaultKey.
    pub vault_key: String,
    /// The VaultKey's uid: a later object of the same name is another key.
    pub vault_key_uid: String,
    /// `namespace/name` of the SpendPolicy.
    pub policy: String,
    /// SHA-256 hex of the current secret.
    pub secret_hash: String,
    /// SHA-256 hex of the previous secret, valid until `prev_valid_until_ms` (rotation).
    pub prev_secret_hash: Option<String>,
    /// End of the rotation overlap, Unix ms.
    pub prev_valid_until_ms: Option<i64>,
    /// Revoked keys are refused at once.
    pub revoked: bool,
    /// Expiry, Unix ms (checked against Redis TIME).
    pub expires_at_ms: Option<i64>,
    /// Daily cap.
    pub daily_cap: Option<Usd>,
    /// Total cap.
    pub total_cap: Option<Usd>,
    /// Per-call cap.
    pub per_call_cap: Option<Usd>,
    /// Allowed endpoints.
    pub endpoints: Vec<EndpointPattern>,
    /// Run label for the audit trail.
    pub run_label: String,
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

fn micros(v: Option<Usd>) -> String {
    v.map(|u| u.micros().to_string()).unwrap_or_default()
}

impl KeyRecord {
    /// The record as hash fields (every field, so a rewrite leaves nothing stale).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("vendor", self.vendor.to_string()),
            ("vault_key", self.vault_key.clone()),
            ("vault_key_uid", self.vault_key_uid.clone()),
            ("policy", self.policy.clone()),
            ("secret_hash", self.secret_hash.clone()),
            ("prev_secret_hash", opt(&self.prev_secret_hash)),
            ("prev_valid_until_ms", opt(&self.prev_valid_until_ms)),
            ("revoked", if self.revoked { "1" } else { "0" }.to_owned()),
            ("expires_at_ms", opt(&self.expires_at_ms)),
            ("daily_cap", micros(self.daily_cap)),
            ("total_cap", micros(self.total_cap)),
            ("per_call_cap", micros(self.per_call_cap)),
            (
                "endpoints",
                self.endpoints
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            ("run_label", self.run_label.clone()),
        ]
    }
}

impl KeyRecord {
    /// Reads a record back from its hash fields, strictly: every field this type writes must be
    /// there and parse (`vault_key_uid` may be absent in records written before it existed).
    /// Fields it does not write (`retired`) are ignored here.
    pub fn from_fields(f: &HashMap<String, String>) -> Result<KeyRecord, RecordError> {
        let text = |field: &'static str| {
            f.get(field).cloned().ok_or(RecordError {
                field,
                problem: "missing".into(),
            })
        };
        let bad = |field: &'static str, value: &str| RecordError {
            field,
            problem: format!("{value:?} does not parse"),
        };
        let optional_int = |field: &'static str| -> Result<Option<i64>, RecordError> {
            let v = text(field)?;
            if v.is_empty() {
                return Ok(None);
            }
            v.parse().map(Some).map_err(|_| bad(field, &v))
        };
        let money = |field: &'static str| -> Result<Option<Usd>, RecordError> {
            let v = text(field)?;
            if v.is_empty() {
                return Ok(None);
            }
            v.parse::<u64>()
                .ok()
                .and_then(Usd::from_micros)
                .map(Some)
                .ok_or_else(|| bad(field, &v))
        };
        let vendor = text("vendor")?;
        let revoked = text("revoked")?;
        let endpoints = text("endpoints")?;
        let prev = text("prev_secret_hash")?;
        Ok(KeyRecord {
            vendor: vendor.parse().map_err(|_| bad("vendor", &vendor))?,
            vault_key: text("vault_key")?,
            vault_key_uid: f.get("vault_key_uid").cloned().unwrap_or_default(),
            policy: text("policy")?,
            secret_hash: text("secret_hash")?,
            prev_secret_hash: (!prev.is_empty()).then_some(prev),
            prev_valid_until_ms: optional_int("prev_valid_until_ms")?,
            revoked: match revoked.as_str() {
                "0" => false,
                "1" => true,
                other => return Err(bad("revoked", other)),
            },
            expires_at_ms: optional_int("expires_at_ms")?,
            daily_cap: money("daily_cap")?,
            total_cap: money("total_cap")?,
            per_call_cap: money("per_call_cap")?,
            endpoints: endpoints
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| l.parse().map_err(|_| bad("endpoints", l)))
                .collect::<Result<_, _>>()?,
            run_label: text("run_label")?,
        })
    }
}

/// What the scripts read of a SpendPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Aggregate daily budget.
    pub daily_budget: Option<Usd>,
    /// Aggregate total budget.
    pub total_budget: Option<Usd>,
}

impl PolicyRecord {
    /// The record as hash fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("daily_budget", micros(self.daily_budget)),
            ("total_budget", micros(self.total_budget)),
        ]
    }
}

/// Spend counters of a key or a policy, as the scripts keep them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Spend in the current UTC day (0 once the day has rolled over).
    pub today: u64,
    /// Spend since issue.
    pub total: u64,
    /// Calls sent to the vendor.
    pub calls: u64,
    /// Calls refused after authentication.
    pub refused: u64,
    /// Unix ms of the last call, if any.
    pub last_call_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            vendor: Vendor::Stripe,
            vault_key: "billing/run-1".into(),
            vault_key_uid: "uid-1".into(),
            policy: "billing/stripe".into(),
            secret_hash: "ab".repeat(32),
            prev_secret_hash: Some("cd".repeat(32)),
            prev_valid_until_ms: Some(1_700_000_000_000),
            revoked: false,
            expires_at_ms: None,
            daily_cap: Usd::from_micros(500_000_000),
            total_cap: None,
            per_call_cap: Usd::from_micros(250_000_000),
            endpoints: vec![
                "POST /v1/payment_intents".parse().unwrap(),
                "GET /v1/customers/*".parse().unwrap(),
            ],
            run_label: "hatchet/billing-agent/7f3a".into(),
        }
    }

    fn fields(r: &KeyRecord) -> HashMap<String, String> {
        r.fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    #[test]
    fn records_read_back_as_written_and_a_malformed_one_is_an_error() {
        let r = record();
        assert_eq!(KeyRecord::from_fields(&fields(&r)).unwrap(), r);
        let mut legacy = fields(&r);
        legacy.remove("vault_key_uid");
        assert_eq!(KeyRecord::from_fields(&legacy).unwrap().vault_key_uid, "");
        for (field, value) in [
            ("daily_cap", "lots"),
            ("revoked", "yes"),
            ("vendor", "paypal"),
            ("prev_valid_until_ms", "soon"),
            ("endpoints", "FETCH /x"),
        ] {
            let mut bad = fields(&r);
            bad.insert(field.into(), value.into());
            let e = KeyRecord::from_fields(&bad).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        let mut missing = fields(&r);
        missing.remove("secret_hash");
        assert_eq!(
            KeyRecord::from_fields(&missing).unwrap_err().field,
            "secret_hash"
        );
    }
}
