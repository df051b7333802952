//! The operator's part of a VaultKey's status (never `spend`: the proxy owns it), written with
//! server-side apply only when it differs from what is there.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use keybrake_crds::{
    KeyPhase, Listed, VaultKey, VaultKeyStatus, Vendor,
    status::{RECONCILING, STALLED, conditions},
    vault_key::{RestartStatus, RotationStatus},
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
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Rollouts of the restart targets.
    pub restart: Option<RestartStatus>,
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
            restart: s.restart,
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
        restart: report.restart.clone(),
        spend: None,
        conditions: conditions(
            ready,
            kstatus(report),
            &report.reason,
            &report.message,
            generation,
            previous,
            now,
        ),
    }
}

/// The kstatus condition that goes with `Ready` (Flux, `kubectl wait` and cli-utils do not read
/// `Ready=False` as a failure): `Stalled` for what only a change to the key or its policy can
/// fix, `Reconciling` while the operator is still working toward a usable key; neither for a
/// key that works or has stopped.
fn kstatus(report: &Report) -> Option<&'static str> {
    match (report.phase, report.reason.as_str()) {
        _ if report.failing => Some(RECONCILING),
        (Some(KeyPhase::Invalid), _) | (_, "PolicyNotFound" | "PolicyInvalid") => Some(STALLED),
        (Some(KeyPhase::Pending) | None, _) => Some(RECONCILING),
        _ => None,
    }
}

/// Writes the report unless the status already says it. A reconcile may run on a cached
/// object older than our last write; before writing, the decision is re-made against the
/// object as the API server has it now, so a stale cache never causes a write (and with it
/// another reconcile). `fresh`: `vk` is the API server's own answer to a write of this
/// reconcile, so it is read already. The version the write leaves is remembered: its echo
/// starts no reconcile.
pub async fn write(
    vk: &VaultKey,
    report: &Report,
    ctx: &Context,
    now_ms: i64,
    fresh: bool,
) -> Result<()> {
    let now = clock::time(now_ms);
    if unchanged(vk, report, now.clone()) {
        return Ok(());
    }
    let ns = vk.namespace().unwrap_or_default();
    let api: Api<Listed<VaultKey>> = Api::namespaced(ctx.client.clone(), &ns);
    let read;
    let current = if fresh {
        vk
    } else {
        let Some(listed) = ctx
            .timed("get vaultkey", api.get_opt(&vk.name_any()))
            .await?
        else {
            return Ok(()); // gone meanwhile
        };
        // Unreadable meanwhile: the reconcile its change starts says so.
        let Ok(parsed) = listed.parse() else {
            return Ok(());
        };
        read = parsed;
        &read
    };
    if unchanged(current, report, now.clone()) {
        return Ok(());
    }
    let want = desired(current, report, now);
    let patch = json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "status": want});
    let written = ctx
        .timed(
            "patch status",
            api.patch_status(
                &vk.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(patch),
            ),
        )
        .await?;
    ctx.own_writes.record(&written.metadata);
    Ok(())
}

fn unchanged(vk: &VaultKey, report: &Report, now: Time) -> bool {
    let mut have = vk.status.clone().unwrap_or_default();
    have.spend = None;
    have == desired(vk, report, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> VaultKey {
        VaultKey::test("ns", "k")
            .policy("p")
            .spec(json!({"dailyUsdCap": 5, "ttl": "1h"}))
            .metadata(json!({"generation": 3}))
            .build()
    }

    fn kinds(phase: Option<KeyPhase>, reason: &str, failing: bool) -> Vec<(String, String)> {
        let report = Report {
            phase,
            reason: reason.into(),
            failing,
            ..Default::default()
        };
        desired(&key(), &report, clock::time(0))
            .conditions
            .into_iter()
            .map(|c| (c.type_, c.status))
            .collect()
    }

    fn c(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    /// kstatus (Flux, kubectl wait): Current only when Ready; Stalled (failed) for what only a
    /// spec change fixes; Reconciling (in progress) while the operator works. Ready stays first.
    #[test]
    fn every_phase_has_its_kstatus_conditions() {
        assert_eq!(
            kinds(Some(KeyPhase::Active), "Issued", false),
            c(&[
                ("Ready", "True"),
                ("Reconciling", "False"),
                ("Stalled", "False")
            ])
        );
        assert_eq!(
            kinds(Some(KeyPhase::Invalid), "CapAboveLimit", false),
            c(&[
                ("Ready", "False"),
                ("Reconciling", "False"),
                ("Stalled", "True")
            ])
        );
        assert_eq!(
            kinds(Some(KeyPhase::Invalid), "SecretNotOwned", false),
            c(&[
                ("Ready", "False"),
                ("Reconciling", "False"),
                ("Stalled", "True")
            ])
        );
        for policy_error in ["PolicyNotFound", "PolicyInvalid"] {
            assert_eq!(
                kinds(Some(KeyPhase::Pending), policy_error, false),
                c(&[
                    ("Ready", "False"),
                    ("Reconciling", "False"),
                    ("Stalled", "True")
                ])
            );
        }
        assert_eq!(
            kinds(Some(KeyPhase::Active), "RedisUnavailable", true),
            c(&[
                ("Ready", "False"),
                ("Reconciling", "True"),
                ("Stalled", "False")
            ])
        );
        assert_eq!(
            kinds(Some(KeyPhase::Pending), "Waiting", false),
            c(&[
                ("Ready", "False"),
                ("Reconciling", "True"),
                ("Stalled", "False")
            ])
        );
        for done in [KeyPhase::Revoked, KeyPhase::Expired, KeyPhase::CapReached] {
            assert_eq!(
                kinds(Some(done), "x", false),
                c(&[
                    ("Ready", "False"),
                    ("Reconciling", "False"),
                    ("Stalled", "False")
                ]),
                "{done:?}"
            );
        }
        let status = desired(&key(), &Report::default(), clock::time(0));
        assert_eq!(status.observed_generation, Some(3));
    }

    /// The first write replaces the schema default's pending conditions, their placeholder time
    /// included, even when the key is still pending.
    #[test]
    fn the_first_write_replaces_the_pending_default() {
        let mut vk = key();
        vk.status = Some(serde_json::from_value(keybrake_crds::status::pending()).unwrap());
        let now = clock::time(1_700_000_000_000);
        let pending = Report {
            phase: Some(KeyPhase::Pending),
            reason: "Waiting".into(),
            ..Default::default()
        };
        let want = desired(&vk, &pending, now.clone());
        assert!(!unchanged(&vk, &pending, now.clone()));
        let reconciling = &want.conditions[1];
        assert_eq!(
            (reconciling.type_.as_str(), reconciling.status.as_str()),
            ("Reconciling", "True")
        );
        assert_eq!(reconciling.last_transition_time, now, "not the epoch");
        assert_eq!(reconciling.reason, "Waiting");
    }
}
