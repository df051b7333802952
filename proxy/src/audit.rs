//! The audit trail over the admin port:
//! `GET /audit?namespace=NS&run_label=L&key=K&vault_key=ns/name&from=T&to=T&limit=N` returns the
//! calls (oldest first) with their costs and vendor request ids, and per-run totals. Times are
//! RFC 3339 or Unix milliseconds. Callers authenticate like the issuance API and need `list` on
//! vaultkeys in the namespace asked for (`namespace`, or that of `vault_key`), or in all
//! namespaces when they name none.

use std::collections::BTreeMap;

use keybrake_crds::Usd;
use keybrake_ledger::connection::Connection;
use keybrake_ledger::{AuditEntry, KeyId, Ledger};
use serde_json::{Value, json};

/// A parsed audit query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this key id.
    pub key: Option<String>,
    /// Only this run label.
    pub run_label: Option<String>,
    /// Only this VaultKey (`namespace/name`).
    pub vault_key: Option<String>,
    /// Only keys of this namespace.
    pub namespace: Option<String>,
    /// From (Unix ms).
    pub from_ms: Option<i64>,
    /// To (Unix ms).
    pub to_ms: Option<i64>,
    /// At most this many entries.
    pub limit: usize,
}

fn time_ms(name: &str, v: &str) -> Result<i64, String> {
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    v.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|_| format!("{name}={v:?} is neither RFC 3339 nor Unix milliseconds"))
}

/// Parses the query string; errors name the parameter.
pub fn parse(query: Option<&str>) -> Result<AuditQuery, String> {
    let mut q = AuditQuery {
        limit: 1000,
        ..Default::default()
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "key" => q.key = Some(v),
            "run_label" => q.run_label = Some(v),
            "vault_key" => q.vault_key = Some(v),
            "namespace" => q.namespace = Some(v),
            "from" => q.from_ms = Some(time_ms("from", &v)?),
            "to" => q.to_ms = Some(time_ms("to", &v)?),
            "limit" => {
                q.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=100_000).contains(n))
                    .ok_or(format!("limit={v:?} must be 1 to 100000"))?
            }
            other => {
                return Err(format!(
                    "unknown parameter {other:?}; use namespace, key, run_label, vault_key, from, to, limit"
                ));
            }
        }
    }
    Ok(q)
}

impl AuditQuery {
    /// The namespace the query is confined to, if any: `namespace`, else `vault_key`'s.
    pub fn scope(&self) -> Option<&str> {
        self.namespace.as_deref().or_else(|| {
            self.vault_key
                .as_deref()
                .and_then(|v| v.split_once('/').map(|(ns, _)| ns))
        })
    }
}

fn usd(micros: u64) -> String {
    Usd::saturating_from_micros(micros).to_string()
}

fn entry_json(e: &AuditEntry) -> Value {
    json!({
        "time": jiff::Timestamp::from_millisecond(e.ts_ms).map(|t| t.to_string()).unwrap_or_default(),
        "key": e.key, "vault_key": e.vault_key, "run_label": e.run_label, "vendor": e.vendor,
        "method": e.method, "path": e.path, "estimate_usd": usd(e.estimate), "actual_usd": usd(e.actual),
        "status": e.status, "request_id": e.request_id, "outcome": e.outcome, "rule": e.rule,
    })
}

/// Runs a query across the policies (or the one a key id names).
pub async fn run(
    ledger: &Ledger<Connection>,
    q: &AuditQuery,
) -> Result<Value, keybrake_ledger::LedgerError> {
    let tags = match q.key.as_deref().map(KeyId::parse) {
        Some(Ok(id)) => vec![id.tag()],
        Some(Err(_)) => Vec::new(),
        None => ledger.policy_tags().await?,
    };
    let mut entries = Vec::new();
    for tag in tags {
        for e in ledger.audit(&tag, q.from_ms, q.to_ms, 100_000).await? {
            let keep = q.key.as_ref().is_none_or(|k| *k == e.key)
                && q.run_label.as_ref().is_none_or(|r| *r == e.run_label)
                && q.vault_key.as_ref().is_none_or(|v| *v == e.vault_key)
                && q.scope()
                    .is_none_or(|ns| e.vault_key.split_once('/').map(|(n, _)| n) == Some(ns));
            if keep {
                entries.push(e);
            }
        }
    }
    entries.sort_by(|a, b| (a.ts_ms, &a.id).cmp(&(b.ts_ms, &b.id)));
    entries.truncate(q.limit);
    let mut totals: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    for e in &entries {
        let t = totals.entry(e.run_label.clone()).or_default();
        if e.outcome == "refused" {
            t.1 += 1;
        } else if e.outcome != "not_sent" {
            t.0 += 1;
        }
        t.2 += e.actual;
        t.3 += e.estimate;
    }
    let totals: BTreeMap<String, Value> = totals
        .into_iter()
        .map(|(run, (calls, refused, actual, estimate))| (run, json!({"calls": calls, "refused": refused, "actual_usd": usd(actual), "estimate_usd": usd(estimate)})))
        .collect();
    Ok(json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>(), "totals": totals}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_parameters() {
        let q = parse(Some(
            "run_label=hatchet%2Frun-1&from=2026-11-22T00:00:00Z&to=1764000000000&limit=5",
        ))
        .unwrap();
        assert_eq!(q.run_label.as_deref(), Some("hatchet/run-1"));
        assert_eq!(q.from_ms, Some(1_795_305_600_000));
        assert_eq!(q.to_ms, Some(1_764_000_000_000));
        assert_eq!(q.limit, 5);
        assert!(parse(Some("from=yesterday")).unwrap_err().contains("from"));
        assert!(parse(Some("limit=0")).unwrap_err().contains("limit"));
        assert!(
            parse(Some("runlabel=x"))
                .unwrap_err()
                .contains("unknown parameter \"runlabel\"")
        );
    }
}
