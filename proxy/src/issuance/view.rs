//! How a key looks in the API's answers (Keybrake's field names; money as decimal strings).

use keybrake_crds::{KeyPhase, Listed, Unreadable, Usd, VaultKey};
use keybrake_ledger::Spend;
use kube::ResourceExt;
use serde_json::{Value, json};

fn usd(u: Option<Usd>) -> Value {
    u.map_or(Value::Null, |u| json!(u.to_string()))
}

/// The key's state in the API's words.
pub fn state(vk: &VaultKey) -> &'static str {
    if vk.spec.revoked {
        return "revoked";
    }
    match vk.status.as_ref().and_then(|s| s.phase) {
        None | Some(KeyPhase::Pending) => "pending",
        Some(KeyPhase::Active) => "active",
        Some(KeyPhase::Expired) => "expired",
        Some(KeyPhase::Revoked) => "revoked",
        Some(KeyPhase::CapReached) => "cap_reached",
        Some(KeyPhase::Invalid) => "invalid",
    }
}

/// A key without its token. `spend` is the live ledger figure when known, else the status'.
/// A key our types cannot read: refused (the operator revokes what it was issued), with the
/// field and why.
pub fn unreadable(listed: &Listed<VaultKey>, why: &Unreadable) -> Value {
    json!({
        "key_id": listed.name_any(),
        "namespace": listed.namespace(),
        "policy": listed.spec_str(&["policyRef", "name"]),
        "state": "invalid",
        "message": format!("the VaultKey cannot be read: {why}"),
        "agent_run_label": listed.spec_str(&["runLabel"]),
    })
}

pub fn key(vk: &VaultKey, spend: Option<Spend>) -> Value {
    let status = vk.status.clone().unwrap_or_default();
    // Live ledger counters when known, else what the proxy last wrote to the status.
    let spend = spend
        .map(|s| crate::spend_writer::counters_of(&s))
        .or(status.spend.clone())
        .map_or(Value::Null, |s| {
            json!({"today_usd": s.today_usd.to_string(), "total_usd": s.total_usd.to_string(), "calls": s.calls, "refused": s.refused})
        });
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == keybrake_crds::status::READY)
        .map(|c| c.message.clone());
    json!({
        "key_id": vk.name_any(),
        "namespace": vk.namespace(),
        "vendor": status.vendor.map(|v| v.as_str()),
        "policy": vk.spec.policy_ref.name,
        "state": state(vk),
        "message": message,
        "daily_usd_cap": usd(vk.spec.daily_usd_cap),
        "total_usd_cap": usd(vk.spec.total_usd_cap),
        "per_call_usd_cap": usd(vk.spec.per_call_usd_cap),
        "cap": status.cap,
        "allowed_endpoints": vk.spec.allowed_endpoints.as_ref().map(|e| e.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
        "expires_at": status.expires_at.map(|t| t.0.to_string()),
        "issued_at": status.issued_at.map(|t| t.0.to_string()),
        "agent_run_label": vk.spec.run_label,
        "secret_name": status.secret_name,
        "proxy_key_id": status.key_id,
        "spend": spend,
        "created_at": vk.creation_timestamp().map(|t| t.0.to_string()),
    })
}
