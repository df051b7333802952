//! One row of the `calls` table, typed both ways: from a stream entry (the sink's write) and
//! back to an [`AuditEntry`] (the audit API's read), so both sources answer in one shape.

use keybrake_ledger::{AuditEntry, PolicyTag};

/// A row of `calls` (`migrations/V1__calls.sql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRow {
    /// Primary key: the call's own id (see the migration).
    pub id: String,
    /// When (Redis time).
    pub at: jiff::Timestamp,
    /// The VaultKey's namespace.
    pub namespace: String,
    /// The VaultKey's name.
    pub vault_key: String,
    /// The key id.
    pub key_id: String,
    /// The run label ("" when the key has none).
    pub run_label: String,
    /// `stripe`, `twilio` or `resend` ("" when a refusal came before the key was known).
    pub vendor: String,
    /// HTTP method.
    pub method: String,
    /// Canonical path.
    pub endpoint: String,
    /// Estimate, micro-dollars.
    pub estimate_micros: i64,
    /// Actual cost, micro-dollars.
    pub actual_micros: i64,
    /// Actual over the estimate, micro-dollars.
    pub overshoot_micros: i64,
    /// One of `keybrake_ledger::audit::OUTCOMES`.
    pub outcome: String,
    /// The refusing rule.
    pub rule: Option<String>,
    /// The vendor's HTTP status.
    pub vendor_status: Option<i32>,
    /// The vendor's request or object id.
    pub vendor_request_id: Option<String>,
    /// The reservation the entry belongs to (none for refusals).
    pub reservation_id: Option<String>,
    /// The policy's stream.
    pub policy_tag: String,
    /// The entry's id in that stream.
    pub stream_id: String,
}

/// An entry that cannot become a row.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("audit entry {stream_id}: {problem}")]
pub struct RowError {
    /// The entry's stream id.
    pub stream_id: String,
    /// What is wrong.
    pub problem: String,
}

fn some(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn micros(stream_id: &str, what: &str, n: u64) -> Result<i64, RowError> {
    i64::try_from(n).map_err(|_| RowError {
        stream_id: stream_id.to_owned(),
        problem: format!("{what} {n} is out of range"),
    })
}

/// Longest text a row takes in a column (bytes): indexed columns must stay far below
/// PostgreSQL's index row limit (about 2,700 bytes), and no field the scripts write comes near.
pub const MAX_TEXT: usize = 1024;

impl CallRow {
    /// The row for an entry of `tag`'s stream. Text PostgreSQL would refuse (NUL) or could not
    /// index (over [`MAX_TEXT`]) is an error here, so the entry is kept aside, whole.
    pub fn from_entry(tag: &PolicyTag, e: &AuditEntry) -> Result<CallRow, RowError> {
        let bad = |problem: String| RowError {
            stream_id: e.id.clone(),
            problem,
        };
        for (name, text) in [
            ("id", &e.call_id),
            ("key", &e.key),
            ("vault key", &e.vault_key),
            ("run label", &e.run_label),
            ("vendor", &e.vendor),
            ("method", &e.method),
            ("path", &e.path),
            ("vendor request id", &e.request_id),
            ("rule", &e.rule),
            ("status", &e.status),
        ] {
            if text.len() > MAX_TEXT {
                return Err(bad(format!(
                    "its {name} is {} bytes long (at most {MAX_TEXT})",
                    text.len()
                )));
            }
            if text.contains('\0') {
                return Err(bad(format!("its {name} holds a NUL character")));
            }
        }
        let (namespace, vault_key) = match e.vault_key.split_once('/') {
            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
            // A refusal before the key was authenticated names no VaultKey.
            None if e.vault_key.is_empty() => (String::new(), String::new()),
            None => {
                return Err(bad(format!(
                    "VaultKey {:?} is not namespace/name",
                    e.vault_key
                )));
            }
        };
        let vendor_status = match e.status.as_str() {
            "" => None,
            s => Some(
                s.parse::<i32>()
                    .map_err(|_| bad(format!("vendor status {s:?} is not a number")))?,
            ),
        };
        let at = jiff::Timestamp::from_millisecond(e.ts_ms)
            .map_err(|_| bad(format!("time {} ms is out of range", e.ts_ms)))?;
        let id = match e.call_id.as_str() {
            "" => format!("{}/{}", tag.as_str(), e.id),
            id => id.to_owned(),
        };
        let reservation_id = match e.outcome.as_str() {
            "refused" => None,
            "late" => some(e.call_id.trim_end_matches(":late")),
            _ => some(&e.call_id),
        };
        Ok(CallRow {
            id,
            at,
            namespace,
            vault_key,
            key_id: e.key.clone(),
            run_label: e.run_label.clone(),
            vendor: e.vendor.clone(),
            method: e.method.clone(),
            endpoint: e.path.clone(),
            estimate_micros: micros(&e.id, "estimate", e.estimate)?,
            actual_micros: micros(&e.id, "actual", e.actual)?,
            overshoot_micros: micros(&e.id, "overshoot", e.overshoot)?,
            outcome: e.outcome.clone(),
            rule: some(&e.rule),
            vendor_status,
            vendor_request_id: some(&e.request_id),
            reservation_id,
            policy_tag: tag.as_str().to_owned(),
            stream_id: e.id.clone(),
        })
    }

    /// The row as the audit trail's entry, the shape the audit API answers in.
    pub fn to_entry(&self) -> AuditEntry {
        AuditEntry {
            id: self.stream_id.clone(),
            call_id: self.id.clone(),
            ts_ms: self.at.as_millisecond(),
            key: self.key_id.clone(),
            vault_key: if self.namespace.is_empty() && self.vault_key.is_empty() {
                String::new()
            } else {
                format!("{}/{}", self.namespace, self.vault_key)
            },
            run_label: self.run_label.clone(),
            vendor: self.vendor.clone(),
            method: self.method.clone(),
            path: self.endpoint.clone(),
            // Never negative: the table's CHECKs.
            estimate: self.estimate_micros.max(0) as u64,
            actual: self.actual_micros.max(0) as u64,
            status: self
                .vendor_status
                .map(|s| s.to_string())
                .unwrap_or_default(),
            request_id: self.vendor_request_id.clone().unwrap_or_default(),
            outcome: self.outcome.clone(),
            rule: self.rule.clone().unwrap_or_default(),
            overshoot: self.overshoot_micros.max(0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            id: "1700000000000-3".into(),
            call_id: "9f2c".into(),
            ts_ms: 1_700_000_000_000,
            key: "kb_1".into(),
            vault_key: "billing/run-7f3a".into(),
            run_label: "hatchet/run-1".into(),
            vendor: "stripe".into(),
            method: "POST".into(),
            path: "/v1/payment_intents".into(),
            estimate: 12_500_000,
            actual: 12_500_000,
            status: "200".into(),
            request_id: "req_1".into(),
            outcome: "ok".into(),
            rule: String::new(),
            overshoot: 0,
        }
    }

    #[test]
    fn an_entry_becomes_a_row_and_reads_back_the_same() {
        let tag = PolicyTag::of("billing", "stripe");
        let row = CallRow::from_entry(&tag, &entry()).unwrap();
        assert_eq!(
            (
                row.id.as_str(),
                row.namespace.as_str(),
                row.vault_key.as_str()
            ),
            ("9f2c", "billing", "run-7f3a")
        );
        assert_eq!(row.vendor_status, Some(200));
        assert_eq!(row.reservation_id.as_deref(), Some("9f2c"));
        assert_eq!(row.to_entry(), entry());
    }

    #[test]
    fn refusals_late_answers_and_old_entries_get_their_own_ids() {
        let tag = PolicyTag::of("billing", "stripe");
        let refused = AuditEntry {
            outcome: "refused".into(),
            rule: "daily_cap".into(),
            status: String::new(),
            request_id: String::new(),
            ..entry()
        };
        let row = CallRow::from_entry(&tag, &refused).unwrap();
        assert_eq!((row.reservation_id, row.vendor_status), (None, None));
        assert_eq!(row.rule.as_deref(), Some("daily_cap"));
        let late = AuditEntry {
            call_id: "9f2c:late".into(),
            outcome: "late".into(),
            ..entry()
        };
        let row = CallRow::from_entry(&tag, &late).unwrap();
        assert_eq!(
            (row.id.as_str(), row.reservation_id.as_deref()),
            ("9f2c:late", Some("9f2c"))
        );
        let old = AuditEntry {
            call_id: String::new(),
            ..entry()
        };
        let row = CallRow::from_entry(&tag, &old).unwrap();
        assert_eq!(row.id, format!("{}/1700000000000-3", tag.as_str()));
    }

    #[test]
    fn what_cannot_be_a_row_is_named() {
        let tag = PolicyTag::of("billing", "stripe");
        for (e, problem) in [
            (
                AuditEntry {
                    vault_key: "no-slash".into(),
                    ..entry()
                },
                "not namespace/name",
            ),
            (
                AuditEntry {
                    status: "OK".into(),
                    ..entry()
                },
                "not a number",
            ),
            (
                AuditEntry {
                    actual: u64::MAX,
                    ..entry()
                },
                "out of range",
            ),
            (
                AuditEntry {
                    request_id: "r".repeat(MAX_TEXT + 1),
                    ..entry()
                },
                "bytes long",
            ),
            (
                AuditEntry {
                    request_id: "req_\0".into(),
                    ..entry()
                },
                "NUL",
            ),
        ] {
            let err = CallRow::from_entry(&tag, &e).unwrap_err().to_string();
            assert!(err.contains(problem), "{err}");
        }
    }
}
