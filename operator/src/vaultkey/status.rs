//! The operator's part of a VaultKey's status (never `spend`: the proxy owns it), written with
//! server-side apply only when it differs from what is there.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use keybrake_crds::{
    KeyPhase, VaultKey, VaultKeyStatus, Vendor,
    status::{READY, condition},
    vault_key::RotationStatus,
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    clock,
    context::{Context, MANAGER},
    error::Result,
};

/// What the operator reports about a key.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The phase.
    pub phase: Option<KeyPhase>,
    /// `Ready` condition reason.
    pub reason: String,
    /// `Ready` condition message.
    pub message: String,
    /// The policy's vendor.
    pub vendor: Option<Vendor>,
    /// The key id.
    pub key_id: Option<String>,
    /// The Secret name.
    pub secret_name: Option<String>,
    /// Caps in words.
    pub cap: Option<String>,
    /// Expiry, Unix ms.
    pub expires_at_ms: Option<i64>,
    /// Issue time of the current token, Unix ms.
    pub issued_at_ms: Option<i64>,
    /// Rotation progress.
    pub rotation: Option<RotationStatus>,
    /// The operator could not finish the reconcile (Redis unreachable): `Ready` is False
    /// whatever the phase, with the reason and message above.
    pub failing: bool,
}

impl Report {
    /// What the status says now, with `Ready` turned False for `reason`.
    pub fn failing(vk: &VaultKey, reason: &str, message: String) -> Report {
        let s = vk.status.clone().unwrap_or_default();
        Report {
            phase: s.phase.or(Some(KeyPhase::Pending)),
            reason: reason.into(),
            message,
            vendor: s.vendor,
            key_id: s.key_id,
            secret_name: s.secret_name,
            cap: s.cap,
            expires_at_ms: s.expires_at.map(|t| t.0.as_millisecond()),
            issued_at_ms: s.issued_at.map(|t| t.0.as_millisecond()),
            rotation: s.rotation,
            failing: true,
        }
    }
}

fn desired(vk: &VaultKey, report: &Report, now: Time) -> VaultKeyStatus {
    let previous: &[Condition] = vk
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let ready = matches!(report.phase, Some(KeyPhase::Active)) && !report.failing;
    let generation = vk.metadata.generation;
    VaultKeyStatus {
        observed_generation: generation,
        phase: report.phase,
        vendor: report.vendor,
        key_id: report.key_id.clone(),
        secret_name: report.secret_name.clone(),
        cap: report.cap.clone(),
        expires_at: report.expires_at_ms.map(clock::time),
        issued_at: report.issued_at_ms.map(clock::time),
        rotation: report.rotation.clone(),
        spend: None,
        conditions: vec![condition(
            READY,
            ready,
            &report.reason,
            report.message.clone(),
            generation,
            previous,
            now,
        )],
    }
}

/// Writes the report unless the status already says it. A reconcile may run on a cached
/// object older than our last write; before writing, the decision is re-made against the
/// object as the API server has it now, so a stale cache never causes a write (and with it
/// another reconcile).
pub async fn write(vk: &VaultKey, report: &Report, ctx: &Context, now_ms: i64) -> Result<()> {
    let now = clock::time(now_ms);
    if unchanged(vk, report, now.clone()) {
        return Ok(());
    }
    let ns = vk.namespace().unwrap_or_default();
    let api: Api<VaultKey> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(fresh) = ctx
        .timed("get vaultkey", api.get_opt(&vk.name_any()))
        .await?
    else {
        return Ok(()); // gone meanwhile
    };
    if unchanged(&fresh, report, now.clone()) {
        return Ok(());
    }
    let want = desired(&fresh, report, now);
    let patch = json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "status": want});
    ctx.timed(
        "patch status",
        api.patch_status(
            &vk.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        ),
    )
    .await?;
    Ok(())
}

fn unchanged(vk: &VaultKey, report: &Report, now: Time) -> bool {
    let mut have = vk.status.clone().unwrap_or_default();
    have.spend = None;
    have == desired(vk, report, now)
}
