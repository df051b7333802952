//! The records the operator writes and the scripts read: one per VaultKey, one per
//! SpendPolicy. Fields are plain strings so the Lua side reads them without decoding; money is
//! integer micro-dollars, times are Unix milliseconds, and an empty string means "none".

use keybrake_crds::{EndpointPattern, Usd, Vendor};

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
