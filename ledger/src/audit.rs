//! One call in the audit trail, as the scripts write it to a policy's stream.

/// One call in the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Stream id (time-ordered).
    pub id: String,
    /// Unix ms (Redis time).
    pub ts_ms: i64,
    /// Key id.
    pub key: String,
    /// `namespace/name` of the VaultKey.
    pub vault_key: String,
    /// Run label.
    pub run_label: String,
    /// Vendor name (`stripe`, `twilio`, `resend`).
    pub vendor: String,
    /// HTTP method of the call.
    pub method: String,
    /// Canonical path.
    pub path: String,
    /// Reserved estimate, micro-dollars.
    pub estimate: u64,
    /// Settled cost, micro-dollars.
    pub actual: u64,
    /// Vendor HTTP status ("" when none).
    pub status: String,
    /// Vendor request id or object id.
    pub request_id: String,
    /// `ok`, `vendor_error`, `not_sent`, `unknown` or `refused`.
    pub outcome: String,
    /// The refusing rule, for refusals.
    pub rule: String,
    /// How far the actual cost went above the reservation, micro-dollars (never clipped: the
    /// whole actual is counted, and the key turns CapReached if that passes a cap).
    pub overshoot: u64,
}

impl AuditEntry {
    pub(crate) fn from_fields(
        id: String,
        f: &std::collections::HashMap<String, String>,
    ) -> AuditEntry {
        let s = |k: &str| f.get(k).cloned().unwrap_or_default();
        let n = |k: &str| f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        AuditEntry {
            id,
            ts_ms: n("ts") as i64,
            key: s("key"),
            vault_key: s("vk"),
            run_label: s("run"),
            vendor: s("vendor"),
            method: s("method"),
            path: s("path"),
            estimate: n("estimate"),
            actual: n("actual"),
            status: s("status"),
            request_id: s("request_id"),
            outcome: s("outcome"),
            rule: s("rule"),
            overshoot: n("overshoot"),
        }
    }
}
