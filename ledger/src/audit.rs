//! One call in the audit trail, as the scripts write it to a policy's stream.

use std::collections::HashMap;

/// What became of a call, as the scripts name it in the audit trail.
pub const OUTCOMES: [&str; 6] = [
    "ok",
    "vendor_error",
    "not_sent",
    "unknown",
    "refused",
    // The vendor's answer to a call closed as unknown arrived late and showed more money than
    // the estimate kept: a second entry for the same call, carrying the excess.
    "late",
];

/// One call in the audit trail.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Stream id (time-ordered, per policy).
    pub id: String,
    /// The call's own id: its reservation id, that id with `:late` for the excess of a late
    /// answer, or the refused attempt's id. Empty for entries written before ids were.
    pub call_id: String,
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
    /// One of [`OUTCOMES`].
    pub outcome: String,
    /// The refusing rule, for refusals.
    pub rule: String,
    /// How far the actual cost went above the reservation, micro-dollars (never clipped: the
    /// whole actual is counted, and the key turns CapReached if that passes a cap).
    pub overshoot: u64,
}

/// A stream entry that does not read back as an audit entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("audit entry {id}: {problem}")]
pub struct MalformedEntry {
    /// Its stream id.
    pub id: String,
    /// What is wrong with it.
    pub problem: String,
    /// Its fields as stored, for whoever looks into it.
    pub fields: std::collections::BTreeMap<String, String>,
}

impl AuditEntry {
    /// Reads an entry as the scripts write it. Text fields a script leaves out (a refusal has no
    /// vendor status) read as empty and money as zero; a time, key or outcome missing, or a
    /// number that does not parse, is an error.
    pub fn from_fields(
        id: String,
        f: &HashMap<String, String>,
    ) -> Result<AuditEntry, MalformedEntry> {
        let bad = |problem: String| MalformedEntry {
            id: id.clone(),
            problem,
            fields: f.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let s = |k: &str| f.get(k).cloned().unwrap_or_default();
        let n = |k: &str| -> Result<u64, MalformedEntry> {
            f.get(k).map_or(Ok(0), |v| {
                v.parse()
                    .map_err(|_| bad(format!("{k}={v:?} is not a whole number")))
            })
        };
        let ts_ms = f
            .get("ts")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no time (ts)".into()))?;
        let outcome = s("outcome");
        if !OUTCOMES.contains(&outcome.as_str()) {
            return Err(bad(format!("unknown outcome {outcome:?}")));
        }
        let key = s("key");
        if key.is_empty() {
            return Err(bad("no key id".into()));
        }
        Ok(AuditEntry {
            call_id: s("id"),
            ts_ms,
            key,
            vault_key: s("vk"),
            run_label: s("run"),
            vendor: s("vendor"),
            method: s("method"),
            path: s("path"),
            estimate: n("estimate")?,
            actual: n("actual")?,
            status: s("status"),
            request_id: s("request_id"),
            outcome,
            rule: s("rule"),
            overshoot: n("overshoot")?,
            id,
        })
    }
}

fn read(e: redis::streams::StreamId) -> std::result::Result<AuditEntry, MalformedEntry> {
    let fields: HashMap<String, String> = e
        .map
        .iter()
        .filter_map(|(k, v)| {
            redis::from_redis_value_ref::<String>(v)
                .ok()
                .map(|v| (k.clone(), v))
        })
        .collect();
    AuditEntry::from_fields(e.id, &fields)
}

/// Splits stream entries into those that read back and those that do not.
pub(crate) fn split(ids: Vec<redis::streams::StreamId>) -> (Vec<AuditEntry>, Vec<MalformedEntry>) {
    let mut entries = Vec::new();
    let mut malformed = Vec::new();
    for e in ids {
        match read(e) {
            Ok(entry) => entries.push(entry),
            Err(m) => malformed.push(m),
        }
    }
    (entries, malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_what_the_scripts_write_and_names_what_is_wrong() {
        let refusal = fields(&[
            ("id", "abc"),
            ("ts", "1700000000000"),
            ("key", "kb_1"),
            ("vk", "billing/run"),
            ("outcome", "refused"),
            ("rule", "daily_cap"),
            ("estimate", "12500000"),
            ("actual", "0"),
        ]);
        let e = AuditEntry::from_fields("1-0".into(), &refusal).unwrap();
        assert_eq!(
            (
                e.call_id.as_str(),
                e.estimate,
                e.overshoot,
                e.status.as_str()
            ),
            ("abc", 12_500_000, 0, "")
        );
        for (k, v, problem) in [
            ("ts", "", "no time"),
            ("outcome", "paid", "unknown outcome"),
            ("actual", "1.5", "actual=\"1.5\""),
            ("key", "", "no key id"),
        ] {
            let mut f = refusal.clone();
            f.insert(k.into(), v.into());
            let err = AuditEntry::from_fields("1-0".into(), &f).unwrap_err();
            assert!(err.to_string().contains(problem), "{err}");
            assert!(err.to_string().contains("1-0"), "{err}");
        }
    }
}
