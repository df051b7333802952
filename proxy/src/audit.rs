//! The audit trail over the admin port:
//! `GET /audit?namespace=NS&run_label=L&key=K&vault_key=ns/name&from=T&to=T&limit=N` returns the
//! calls (oldest first) with their costs and vendor request ids, and per-run totals. Times are
//! RFC 3339 or Unix milliseconds. Callers authenticate like the issuance API and need `list` on
//! vaultkeys in the namespace asked for (`namespace`, or that of `vault_key`), or in all
//! namespaces when they name none.

use std::collections::BTreeMap;

use keybrake_audit::query::AuditQuery;
use keybrake_crds::Usd;
use keybrake_ledger::connection::Connection;

use crate::app::App;
use keybrake_ledger::{AuditEntry, KeyId, Ledger};
use serde_json::{Value, json};

fn usd(micros: u64) -> String {
    Usd::saturating_from_micros(micros).to_string()
}

fn entry_json(e: &AuditEntry) -> Value {
    json!({
        "time": jiff::Timestamp::from_millisecond(e.ts_ms).map(|t| t.to_string()).unwrap_or_default(),
        "key": e.key, "vault_key": e.vault_key, "run_label": e.run_label, "vendor": e.vendor,
        "method": e.method, "path": e.path, "estimate_usd": usd(e.estimate), "actual_usd": usd(e.actual),
        "status": e.status, "request_id": e.request_id, "outcome": e.outcome, "rule": e.rule,
        "call_id": e.call_id,
    })
}

/// Runs a query: on the audit database when one is set (the streams keep only what it does not
/// hold yet), else on the streams.
pub async fn run(app: &App, q: &AuditQuery) -> Result<Value, String> {
    let entries = match &app.audit_db {
        Some(db) => db
            .calls(q)
            .await
            .map_err(|e| {
                // The detail (host, user) is for the operator's log, not the caller.
                tracing::warn!(error = %e, "audit query failed");
                "the audit database cannot be read; see the proxy's log".to_owned()
            })?
            .iter()
            .map(keybrake_audit::CallRow::to_entry)
            .collect(),
        None => from_streams(&app.ledger, q)
            .await
            .map_err(|e| e.to_string())?,
    };
    Ok(report(&entries))
}

/// Runs a query across the policies' streams (or the one a key id names).
async fn from_streams(
    ledger: &Ledger<Connection>,
    q: &AuditQuery,
) -> Result<Vec<AuditEntry>, keybrake_ledger::LedgerError> {
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
    Ok(entries)
}

/// The entries and per-run totals: calls that went to the vendor (a late excess is not another
/// call), refusals, and money.
fn report(entries: &[AuditEntry]) -> Value {
    let mut totals: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    for e in entries {
        let t = totals.entry(e.run_label.clone()).or_default();
        match e.outcome.as_str() {
            "refused" => t.1 += 1,
            "ok" | "vendor_error" | "unknown" => t.0 += 1,
            _ => {}
        }
        t.2 += e.actual;
        t.3 += e.estimate;
    }
    let totals: BTreeMap<String, Value> = totals
        .into_iter()
        .map(|(run, (calls, refused, actual, estimate))| (run, json!({"calls": calls, "refused": refused, "actual_usd": usd(actual), "estimate_usd": usd(estimate)})))
        .collect();
    json!({"entries": entries.iter().map(entry_json).collect::<Vec<_>>(), "totals": totals})
}
