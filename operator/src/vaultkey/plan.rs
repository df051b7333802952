//! What to do about one VaultKey, decided from what was read: [`plan`] is a pure function of
//! the [`Observed`] state, tested branch by branch below; `mod.rs` reads, then carries the plan
//! out in a fixed order (Redis first, then the Secret, the Events, the rollout, the status).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use keybrake_crds::{
    KeyPhase, SpendPolicy, VaultKey,
    validate::validate_policy,
    vault_key::{RestartStatus, RotationStatus},
};
use keybrake_ledger::{
    EffectiveKey, KeyId, KeyRecord, Spend, Token, resolve_key, secret_env::ProxyCa,
};
use kube::{ResourceExt, runtime::events::EventType};

use super::{
    ownership::{self, Standing},
    secret,
    status::Report,
};
use crate::clock;

/// A reconcile of a Pending or slot-taken key, or of a Secret the operator does not own, looks
/// again this often (nothing else would wake it).
pub const RECHECK: Duration = Duration::from_secs(60);
/// The longest a healthy key waits for its next reconcile.
pub const HEARTBEAT: Duration = Duration::from_secs(3600);

/// The credential as the key's Secret holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    /// The token.
    pub token: Token,
    /// When it was issued, Unix ms.
    pub issued_at_ms: i64,
    /// Rotations so far.
    pub rotations: u32,
}

/// Everything one reconcile reads before it decides.
pub struct Observed<'a> {
    /// The key.
    pub vk: &'a VaultKey,
    /// Redis' clock, Unix ms.
    pub now_ms: i64,
    /// The Secret `spec.secretName` names, and whose it is.
    pub secret: Standing<'a>,
    /// The key's id for life: the one in its status or Secret when Redis confirms it is this
    /// object's, else the one derived from its uid.
    pub life_id: KeyId,
    /// The id derived from the uid (differs from `life_id` only for keys issued before).
    pub derived: KeyId,
    /// Whether a key id was confirmed from the status or the Secret.
    pub known: bool,
    /// Whether `life_id` was revoked for good.
    pub retired: bool,
    /// The policy (`None`: not found).
    pub policy: Option<&'a SpendPolicy>,
    /// Why the policy the API server has cannot be read (then `policy` is `None`).
    pub policy_unreadable: Option<&'a str>,
    /// Another policy owning the policy's Redis slot.
    pub slot_owner: Option<String>,
    /// The Redis record of `life_id`.
    pub stored: Option<KeyRecord>,
    /// The spend counted against `life_id`.
    pub spend: Spend,
    /// A new secret under `life_id`, used if a token must be issued or rotated.
    pub fresh: Token,
    /// What key Secrets point at.
    pub proxy_url: &'a str,
    /// The proxy's CA, when it has a private one.
    pub ca: Option<&'a ProxyCa>,
}

/// A write to Redis.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerStep {
    /// Revoked for good (`spec.revoked`).
    Retire(KeyId),
    /// Refused until rewritten (invalid, a foreign Secret, a taken slot).
    Revoke(KeyId),
    /// The record the proxy enforces.
    Write(KeyId, Box<KeyRecord>),
}

/// What happens to the key's own Secret.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretStep {
    /// Nothing (it is up to date, absent, or not the operator's).
    Keep,
    /// Deleted (only the operator's own, by uid).
    Delete,
    /// Written with this credential (created, or patched at the version read).
    Write(Box<Credential>),
}

/// An Event on the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// The reason.
    pub reason: String,
    /// The note.
    pub note: String,
    /// Only when the key enters this phase (re-reconciles do not repeat it).
    pub on_entering: Option<KeyPhase>,
}

/// After the status is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A Revoked or Expired key: delete it after its retention if the issuance API made it.
    Retire(KeyPhase),
    /// Look again after this long.
    Requeue(Duration),
    /// Only a change to the key wakes it.
    AwaitChange,
}

/// What one reconcile does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Redis writes, in order, before anything else.
    pub ledger: Vec<LedgerStep>,
    /// Then the Secret.
    pub secret: SecretStep,
    /// Then the Events.
    pub events: Vec<Note>,
    /// Then the restart targets, when the Secret's contents change under running pods.
    pub roll: bool,
    /// Then the status.
    pub report: Report,
    /// Then this.
    pub next: Next,
}

/// Why a plan could not be made: the object lacks what the API server always sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the VaultKey has no {0}")]
pub struct Incomplete(pub &'static str);

fn decoded(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|s| (k.clone(), s)))
        .collect()
}

fn annotation<T: std::str::FromStr>(secret: &Secret, key: &str) -> Option<T> {
    secret.annotations().get(key).and_then(|v| v.parse().ok())
}

/// The key record of `token` for `vk`.
pub fn key_record(
    vk: &VaultKey,
    policy: &str,
    eff: &EffectiveKey,
    token: &Token,
    prev_hash: Option<String>,
    prev_until: Option<i64>,
) -> KeyRecord {
    let ns = vk.namespace().unwrap_or_default();
    KeyRecord {
        vendor: eff.vendor,
        vault_key: format!("{ns}/{}", vk.name_any()),
        vault_key_uid: vk.uid().unwrap_or_default(),
        policy: format!("{ns}/{policy}"),
        secret_hash: token.secret_hash(),
        prev_secret_hash: prev_hash,
        prev_valid_until_ms: prev_until,
        revoked: false,
        expires_at_ms: eff.expires_at.map(|t| t.as_millisecond()),
        daily_cap: eff.daily_cap,
        total_cap: eff.total_cap,
        per_call_cap: eff.per_call_cap,
        endpoints: eff.endpoints.clone(),
        run_label: vk.spec.run_label.clone().unwrap_or_default(),
    }
}

/// The Secret's data for a credential.
pub fn secret_data(cred: &Credential, o: &Observed) -> BTreeMap<String, ByteString> {
    secret::data_with_ca(&cred.token, o.proxy_url, o.ca)
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect()
}

fn ended(
    report: Report,
    ledger: Vec<LedgerStep>,
    secret: SecretStep,
    event: Option<Note>,
    next: Next,
) -> Plan {
    Plan {
        ledger,
        secret,
        events: event.into_iter().collect(),
        roll: false,
        report,
        next,
    }
}

fn on_entering(phase: KeyPhase, type_: EventType, reason: &str, note: &str) -> Option<Note> {
    Some(Note {
        type_,
        reason: reason.into(),
        note: note.into(),
        on_entering: Some(phase),
    })
}

/// Decides what to do about the key. Every branch is one phase of its life, in the order they
/// take precedence (revoked, policy, ownership, validity, expiry, slot, then the live key in
/// [`issue`]); kept as one function so the precedence reads top to bottom.
pub fn plan(o: &Observed) -> Result<Plan, Incomplete> {
    let vk = o.vk;
    let ns = vk.namespace().ok_or(Incomplete("metadata.namespace"))?;
    let name = vk.name_any();
    let secret_name = vk.spec.secret_name.clone().unwrap_or_else(|| name.clone());
    let policy_name = &vk.spec.policy_ref.name;
    let ours = match o.secret {
        Standing::Ours(s) => Some(s),
        Standing::Absent | Standing::Foreign(_) => None,
    };
    let delete_ours = if ours.is_some() {
        SecretStep::Delete
    } else {
        SecretStep::Keep
    };
    let mut report = Report {
        key_id: o.known.then(|| o.life_id.to_string()),
        ..Default::default()
    };

    // Revoked: before anything about the policy, so it holds while the policy is missing.
    if vk.spec.revoked || o.retired {
        let mut ledger = vec![LedgerStep::Retire(o.life_id.clone())];
        if o.derived != o.life_id {
            ledger.push(LedgerStep::Retire(o.derived.clone()));
        }
        // `kubectl get vk` keeps showing what the key had.
        if let Some(was) = vk.status.as_ref() {
            report.cap = was.cap.clone();
            report.vendor = was.vendor;
            report.expires_at_ms = was.expires_at.as_ref().map(|t| t.0.as_millisecond());
            report.restart = was.restart.clone();
        }
        report.phase = Some(KeyPhase::Revoked);
        report.reason = "Revoked".into();
        report.message = if vk.spec.revoked {
            "revoked by spec.revoked; the key is refused and its Secret deleted".into()
        } else {
            "revoked for good: spec.revoked was set back to false, which cannot un-revoke a key; create a new VaultKey".into()
        };
        let note = on_entering(
            KeyPhase::Revoked,
            EventType::Normal,
            "Revoked",
            &report.message,
        );
        return Ok(ended(
            report,
            ledger,
            delete_ours,
            note,
            Next::Retire(KeyPhase::Revoked),
        ));
    }

    // Held (Pending, nothing written, checked again) while the policy is unreadable, missing
    // or invalid: the policy is the cause, and a change to it is the fix.
    let held = |mut report: Report, reason: &str, message: String| {
        report.phase = Some(KeyPhase::Pending);
        report.reason = reason.into();
        report.message = message;
        Ok(ended(
            report,
            vec![],
            SecretStep::Keep,
            None,
            Next::Requeue(RECHECK),
        ))
    };
    if let Some(why) = o.policy_unreadable {
        let message = format!("SpendPolicy {ns}/{policy_name} cannot be read: {why}");
        return held(report, "PolicyInvalid", message);
    }
    let Some(policy) = o.policy else {
        let message = format!(
            "SpendPolicy {ns}/{policy_name} not found; create it or fix spec.policyRef.name"
        );
        return held(report, "PolicyNotFound", message);
    };
    report.vendor = Some(policy.spec.vendor);
    if let Err(v) = validate_policy(&policy.spec) {
        let message = format!("SpendPolicy {ns}/{policy_name} is invalid: {v}");
        return held(report, "PolicyInvalid", message);
    }

    if let Standing::Foreign(other) = o.secret {
        // Never adopted, overwritten or deleted; a token this key had is refused from now on.
        report.phase = Some(KeyPhase::Invalid);
        report.reason = "SecretNotOwned".into();
        report.message = format!(
            "Secret {ns}/{secret_name} already exists and is {}; Keybrake writes only Secrets it creates for this VaultKey, so nothing was written: set spec.secretName to a free name",
            ownership::owner_of(other)
        );
        let note = on_entering(
            KeyPhase::Invalid,
            EventType::Warning,
            "SecretNotOwned",
            &report.message,
        );
        // A Secret the operator does not own raises no watch event: look again now and then.
        return Ok(ended(
            report,
            vec![LedgerStep::Revoke(o.life_id.clone())],
            SecretStep::Keep,
            note,
            Next::Requeue(RECHECK),
        ));
    }

    let created = vk
        .metadata
        .creation_timestamp
        .as_ref()
        .ok_or(Incomplete("metadata.creationTimestamp"))?
        .0;
    let effective = match resolve_key(&vk.spec, policy_name, &policy.spec, created) {
        Ok(e) => e,
        Err(v) => {
            report.phase = Some(KeyPhase::Invalid);
            report.reason = v.reason().as_str().into();
            report.message = v.to_string();
            let note = on_entering(
                KeyPhase::Invalid,
                EventType::Warning,
                v.reason().as_str(),
                &report.message,
            );
            return Ok(ended(
                report,
                vec![LedgerStep::Revoke(o.life_id.clone())],
                delete_ours,
                note,
                Next::AwaitChange,
            ));
        }
    };
    report.cap = Some(effective.cap_summary());
    report.expires_at_ms = effective.expires_at.map(|t| t.as_millisecond());
    report.secret_name = Some(secret_name.clone());

    if report.expires_at_ms.is_some_and(|exp| exp <= o.now_ms) {
        // Redis already refuses the key (its expiry is in the record); the Secret goes.
        report.phase = Some(KeyPhase::Expired);
        report.reason = "Expired".into();
        report.message = "the key passed its expiry; it is refused and its Secret deleted".into();
        // The rollouts it caused stay on record, as the caps do.
        report.restart = vk.status.as_ref().and_then(|s| s.restart.clone());
        let note = on_entering(
            KeyPhase::Expired,
            EventType::Normal,
            "Expired",
            &report.message,
        );
        return Ok(ended(
            report,
            vec![],
            delete_ours,
            note,
            Next::Retire(KeyPhase::Expired),
        ));
    }

    if let Some(other) = &o.slot_owner {
        // Another policy's slot: a key record here would draw on its budget and records.
        report.phase = Some(KeyPhase::Invalid);
        report.reason = "PolicySlotTaken".into();
        report.message = format!(
            "the Redis slot of SpendPolicy {ns}/{policy_name} belongs to SpendPolicy {other}; rename the policy"
        );
        return Ok(ended(
            report,
            vec![LedgerStep::Revoke(o.life_id.clone())],
            delete_ours,
            None,
            Next::Requeue(RECHECK),
        ));
    }

    Ok(issue(o, &effective, report, ours, &secret_name))
}

/// The key is valid: keep, issue, reissue or rotate its credential, and say how much is left.
/// One function: the token, the overlap, the record, the Events and the wake-up all follow from
/// the same few facts, and splitting them would pass those facts around instead.
fn issue(
    o: &Observed,
    effective: &EffectiveKey,
    mut report: Report,
    ours: Option<&Secret>,
    secret_name: &str,
) -> Plan {
    let vk = o.vk;
    let vault_key = format!("{}/{}", vk.namespace().unwrap_or_default(), vk.name_any());
    let uid = vk.uid().unwrap_or_default();
    // The token lives only in the Secret; it is taken back only when it is this key's and Redis
    // holds its hash for this VaultKey: whoever may write Secrets could otherwise plant a token
    // under another key's id and have the operator write that key's record with their secret.
    let current = ours.and_then(|s| {
        let token = secret::token_from(effective.vendor, &decoded(s))?;
        ownership::issued_here(
            o.stored.as_ref(),
            &vault_key,
            &uid,
            &o.life_id,
            &token,
            o.now_ms,
        )
        .then(|| Credential {
            token,
            issued_at_ms: annotation(s, secret::ISSUED_AT).unwrap_or(o.now_ms),
            rotations: annotation(s, secret::ROTATIONS).unwrap_or(0),
        })
    });
    // A rotation overlap carries on only for the token that was taken back.
    let stored = o.stored.as_ref().filter(|_| current.is_some());
    let mut prev_hash = stored.and_then(|r| r.prev_secret_hash.clone());
    let mut prev_until = stored.and_then(|r| r.prev_valid_until_ms);
    let issued = current.is_none();
    // A new secret under the same key id: a deleted or edited Secret cannot reset the spend
    // counted against the caps, and the old token stops working at once.
    let mut cred = current.unwrap_or_else(|| Credential {
        token: o.fresh.clone(),
        issued_at_ms: o.now_ms,
        rotations: 0,
    });
    let mut rotated = false;
    let mut next_rotation_ms = None;
    if let Some(rot) = &vk.spec.rotation {
        let period_ms = rot.period.as_secs() as i64 * 1000;
        if !issued && o.now_ms >= cred.issued_at_ms + period_ms {
            // Same key id, new secret: spend keeps counting against the same key.
            prev_hash = Some(cred.token.secret_hash());
            prev_until = Some(o.now_ms + rot.overlap.as_secs() as i64 * 1000);
            cred = Credential {
                token: o.fresh.clone(),
                issued_at_ms: o.now_ms,
                rotations: cred.rotations + 1,
            };
            rotated = true;
        }
        next_rotation_ms = Some(cred.issued_at_ms + period_ms);
    }
    if prev_until.is_some_and(|until| until <= o.now_ms) {
        prev_hash = None;
        prev_until = None;
    }

    let record = key_record(
        vk,
        &vk.spec.policy_ref.name,
        effective,
        &cred.token,
        prev_hash,
        prev_until,
    );
    // Redis first: a Secret never holds a token the proxy does not know.
    let ledger = if o.stored.as_ref() == Some(&record) {
        vec![]
    } else {
        vec![LedgerStep::Write(
            cred.token.key_id.clone(),
            Box::new(record),
        )]
    };
    let data = secret_data(&cred, o);
    let rewritten = ours.is_some_and(|s| s.data.as_ref() != Some(&data));
    let reissued = issued && o.known;
    // Pods read the Secret's variables at start: whatever changed them (a rotation, a reissued
    // token, a new proxy URL or CA) rolls the targets that opted in, once per debounce window.
    let (roll, restart, roll_due) = restart(
        vk,
        &digest(&data),
        rotated || rewritten || reissued,
        o.now_ms,
    );
    report.restart = restart;
    let mut events = Vec::new();
    // A first issue is said by the status (Ready, reason Issued, the key id), not by an Event
    // too: that was one more API write per key, and the Event recorder held and scanned every
    // Event of the last six minutes on each publish. A reissue is news, and has its Event.
    if reissued {
        events.push(Note {
            type_: EventType::Normal,
            reason: "Issued".into(),
            note: format!(
                "reissued key {} into Secret {secret_name}: the Secret was missing or not Keybrake's token; spend carries on",
                cred.token.key_id
            ),
            on_entering: None,
        });
    }
    if rotated {
        events.push(Note {
            type_: EventType::Normal,
            reason: "Rotated".into(),
            note: format!("rotation {} of key {}", cred.rotations, cred.token.key_id),
            on_entering: None,
        });
    }

    let daily_hit = effective
        .daily_cap
        .is_some_and(|c| o.spend.today >= c.micros() && c.micros() > 0);
    let total_hit = effective
        .total_cap
        .is_some_and(|c| o.spend.total >= c.micros() && c.micros() > 0);
    report.key_id = Some(cred.token.key_id.to_string());
    report.issued_at_ms = Some(cred.issued_at_ms);
    report.rotation = vk.spec.rotation.as_ref().map(|_| RotationStatus {
        rotations: cred.rotations,
        next_rotation_at: next_rotation_ms.map(clock::time),
        previous_valid_until: prev_until.map(clock::time),
    });
    (report.phase, report.reason, report.message) = if total_hit {
        (
            Some(KeyPhase::CapReached),
            "TotalCapReached".into(),
            "the total cap is spent; calls are refused for good".into(),
        )
    } else if daily_hit {
        (
            Some(KeyPhase::CapReached),
            "DailyCapReached".into(),
            "today's cap is spent; calls are refused until 00:00 UTC".into(),
        )
    } else {
        (
            Some(KeyPhase::Active),
            "Issued".into(),
            format!("credential in Secret {secret_name}"),
        )
    };

    // Wake up for whatever comes first: expiry, the next rotation, the end of an overlap, or
    // the UTC day turning over a spent daily cap.
    let next_midnight = (o.now_ms / 86_400_000 + 1) * 86_400_000;
    let wake = [
        report.expires_at_ms,
        next_rotation_ms,
        prev_until,
        daily_hit.then_some(next_midnight),
        roll_due,
    ]
    .into_iter()
    .flatten()
    .min()
    .map_or(HEARTBEAT, |at| {
        Duration::from_millis((at - o.now_ms).max(500) as u64)
    });
    Plan {
        ledger,
        // Writing is a no-op when the Secret already holds exactly this (data, annotations,
        // owner): the executor compares before it writes.
        secret: SecretStep::Write(Box::new(cred)),
        events,
        roll,
        report,
        next: Next::Requeue(wake.min(HEARTBEAT)),
    }
}

/// A digest of a Secret's contents (names and values, in order).
fn digest(data: &BTreeMap<String, ByteString>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(&v.0);
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Whether to roll the restart targets now, the restart status to write, and when to look
/// again. The targets are rolled once the Secret's contents (`digest`) differ from what they
/// were last rolled for and `spec.restartDebounce` has passed since the first such change: a
/// burst of changes causes one rollout. Recording the contents rather than the change makes an
/// interrupted reconcile (the Secret written, the status not) roll on the next one. A key's first
/// contents are recorded without a rollout: nothing ran with the key yet.
fn restart(
    vk: &VaultKey,
    digest: &str,
    changed: bool,
    now_ms: i64,
) -> (bool, Option<RestartStatus>, Option<i64>) {
    // Nothing to roll: the executor has no target to patch, and there is no status to keep.
    if vk.spec.restart_targets.is_empty() {
        return (changed, None, None);
    }
    let prev = vk
        .status
        .as_ref()
        .and_then(|s| s.restart.clone())
        .unwrap_or_default();
    let settled = RestartStatus {
        pending_since: None,
        rolled_for: Some(digest.to_owned()),
        ..prev.clone()
    };
    match prev.rolled_for.as_deref() {
        // First contents (or a status from before this field): only a change now rolls.
        None if !changed && prev.pending_since.is_none() => return (false, Some(settled), None),
        Some(d) if d == digest => return (false, Some(settled), None),
        _ => {}
    }
    let since = prev
        .pending_since
        .as_ref()
        .map_or(now_ms, |t| t.0.as_millisecond());
    let debounce = vk
        .spec
        .restart_debounce
        .as_ref()
        .map_or(0, |d| d.as_secs() as i64 * 1000);
    let due = since + debounce;
    if now_ms >= due {
        let rolled = RestartStatus {
            rolls: prev.rolls + 1,
            last_rolled_at: Some(clock::time(now_ms)),
            ..settled
        };
        (true, Some(rolled), None)
    } else {
        let pending = RestartStatus {
            pending_since: Some(clock::time(since)),
            ..prev
        };
        (false, Some(pending), Some(due))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use keybrake_crds::Vendor;
    use keybrake_ledger::PolicyTag;
    use serde_json::json;

    use super::*;
    use crate::context::MANAGER;

    const NOW: i64 = 1_800_000_000_000;
    const UID: &str = "uid-run-7f3a";

    fn key(spec: serde_json::Value) -> VaultKey {
        VaultKey::test("billing", "run-7f3a")
            .spec(spec)
            .metadata(json!({
                "uid": UID,
                // Created a minute before NOW.
                "creationTimestamp": jiff::Timestamp::from_millisecond(NOW - 60_000).unwrap().to_string(),
            }))
            .build()
    }

    fn policy() -> SpendPolicy {
        SpendPolicy::test("billing", "stripe", Vendor::Stripe)
            .limits(json!({
                "maxDailyUsd": 5000, "maxTotalUsd": 20000, "maxPerCallUsd": "1000",
                "maxTtl": "24h", "allowedEndpoints": ["POST /v1/payment_intents"],
            }))
            .build()
    }

    fn life_id() -> KeyId {
        KeyId::of_vault_key(&PolicyTag::of("billing", "stripe"), UID)
    }

    struct World {
        vk: VaultKey,
        policy: Option<SpendPolicy>,
        policy_unreadable: Option<&'static str>,
        secret: Option<Secret>,
        stored: Option<KeyRecord>,
        spend: Spend,
        retired: bool,
        known: bool,
        slot_owner: Option<String>,
        fresh: Token,
    }

    impl World {
        fn new(vk: VaultKey) -> World {
            World {
                vk,
                policy: Some(policy()),
                policy_unreadable: None,
                secret: None,
                stored: None,
                spend: Spend::default(),
                retired: false,
                known: false,
                slot_owner: None,
                fresh: Token::generate(Vendor::Stripe, life_id()),
            }
        }

        fn plan(&self) -> Plan {
            let standing = ownership::standing(self.secret.as_ref(), UID);
            let o = Observed {
                vk: &self.vk,
                now_ms: NOW,
                secret: standing,
                life_id: life_id(),
                derived: life_id(),
                known: self.known,
                retired: self.retired,
                policy: self.policy.as_ref(),
                policy_unreadable: self.policy_unreadable,
                slot_owner: self.slot_owner.clone(),
                stored: self.stored.clone(),
                spend: self.spend,
                fresh: self.fresh.clone(),
                proxy_url: "https://proxy:8080",
                ca: None,
            };
            plan(&o).unwrap()
        }

        /// The world after carrying `p` out: the record and the Secret it wrote.
        fn after(mut self, p: &Plan) -> World {
            for step in &p.ledger {
                if let LedgerStep::Write(_, r) = step {
                    self.stored = Some((**r).clone());
                }
            }
            if let SecretStep::Write(cred) = &p.secret {
                let o = Observed {
                    vk: &self.vk,
                    now_ms: NOW,
                    secret: Standing::Absent,
                    life_id: life_id(),
                    derived: life_id(),
                    known: true,
                    retired: false,
                    policy: None,
                    policy_unreadable: None,
                    slot_owner: None,
                    stored: None,
                    spend: Spend::default(),
                    fresh: self.fresh.clone(),
                    proxy_url: "https://proxy:8080",
                    ca: None,
                };
                let data = secret_data(cred, &o);
                let owner = OwnerReference {
                    api_version: "keybrake.com/v1alpha1".into(),
                    kind: "VaultKey".into(),
                    name: "run-7f3a".into(),
                    uid: UID.into(),
                    controller: Some(true),
                    ..Default::default()
                };
                self.secret = Some(Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some("run-7f3a".into()),
                        labels: Some(
                            [(ownership::MANAGED_BY.to_owned(), MANAGER.to_owned())].into(),
                        ),
                        annotations: Some(
                            [
                                (secret::ISSUED_AT.to_owned(), cred.issued_at_ms.to_string()),
                                (secret::ROTATIONS.to_owned(), cred.rotations.to_string()),
                            ]
                            .into(),
                        ),
                        owner_references: Some(vec![owner]),
                        ..Default::default()
                    },
                    data: Some(data),
                    ..Default::default()
                });
            }
            self.known = true;
            self.fresh = Token::generate(Vendor::Stripe, life_id());
            self
        }
    }

    fn phase(p: &Plan) -> (Option<KeyPhase>, &str) {
        (p.report.phase, p.report.reason.as_str())
    }

    #[test]
    fn a_new_key_is_issued_then_left_alone() {
        let w = World::new(key(json!({})));
        let first = w.plan();
        assert_eq!(phase(&first), (Some(KeyPhase::Active), "Issued"));
        assert!(
            matches!(&first.ledger[..], [LedgerStep::Write(id, r)] if *id == life_id() && r.secret_hash == w.fresh.secret_hash())
        );
        assert!(matches!(&first.secret, SecretStep::Write(c) if c.token == w.fresh));
        assert!(
            first.events.is_empty(),
            "the status says it: {:?}",
            first.events
        );
        assert!(!first.roll, "nothing ran with the key yet");
        // The next reconcile finds its own token: nothing to write, say or roll.
        let w = w.after(&first);
        let again = w.plan();
        assert!(again.ledger.is_empty(), "{:?}", again.ledger);
        assert!(again.events.is_empty() && !again.roll);
        assert_eq!(again.report.key_id, first.report.key_id);
        assert!(matches!(again.next, Next::Requeue(d) if d <= HEARTBEAT));
    }

    #[test]
    fn a_lost_or_edited_secret_is_reissued_under_the_same_id_and_rolls() {
        let w = World::new(key(json!({})));
        let first = w.plan();
        let mut w = w.after(&first);
        w.secret = None;
        let reissue = w.plan();
        assert!(matches!(&reissue.ledger[..], [LedgerStep::Write(id, _)] if *id == life_id()));
        assert!(reissue.events[0].note.starts_with("reissued key"));
        assert!(reissue.roll);
        // A token planted in a Secret that looks like ours is not taken back.
        let mut w = w.after(&reissue);
        let planted = Token::generate(Vendor::Stripe, life_id());
        if let Some(s) = w.secret.as_mut()
            && let Some(d) = s.data.as_mut()
        {
            d.insert(
                "STRIPE_API_KEY".into(),
                ByteString(planted.bearer().into_bytes()),
            );
        }
        let after_plant = w.plan();
        assert!(matches!(&after_plant.secret, SecretStep::Write(c) if c.token != planted));
    }

    #[test]
    fn a_due_rotation_keeps_the_previous_token_for_the_overlap_and_rolls() {
        let w = World::new(key(json!({"rotation": {"period": "1m", "overlap": "30s"}})));
        let first = w.plan();
        let mut w = w.after(&first);
        // Issued at NOW, as the annotation says; a minute later the rotation is due.
        w.secret
            .as_mut()
            .unwrap()
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(secret::ISSUED_AT.into(), (NOW - 60_000).to_string());
        let old = match &first.secret {
            SecretStep::Write(c) => c.token.clone(),
            other => panic!("{other:?}"),
        };
        let rotated = w.plan();
        assert!(rotated.roll);
        assert_eq!(rotated.events[0].reason, "Rotated");
        let [LedgerStep::Write(_, record)] = &rotated.ledger[..] else {
            panic!("{:?}", rotated.ledger)
        };
        assert_eq!(record.prev_secret_hash, Some(old.secret_hash()));
        assert_eq!(record.prev_valid_until_ms, Some(NOW + 30_000));
        assert_eq!(record.secret_hash, w.fresh.secret_hash());
        assert!(matches!(rotated.next, Next::Requeue(d) if d == Duration::from_secs(30)));
    }

    #[test]
    fn spent_caps_report_cap_reached_and_wake_at_midnight_for_the_daily_one() {
        let mut w = World::new(key(json!({})));
        w.spend.today = 500_000_000;
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::CapReached), "DailyCapReached"));
        let midnight = (NOW / 86_400_000 + 1) * 86_400_000;
        let Next::Requeue(d) = p.next else { panic!() };
        assert!(d.as_millis() as i64 <= midnight - NOW);
        let mut w = World::new(key(json!({"totalUsdCap": 700})));
        w.spend.total = 700_000_000;
        assert_eq!(
            phase(&w.plan()),
            (Some(KeyPhase::CapReached), "TotalCapReached")
        );
    }

    #[test]
    fn a_revoke_retires_for_good_and_deletes_only_our_secret() {
        let w = World::new(key(json!({})));
        let first = w.plan();
        let mut w = w.after(&first);
        w.vk.spec.revoked = true;
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Revoked), "Revoked"));
        assert_eq!(p.ledger, vec![LedgerStep::Retire(life_id())]);
        assert_eq!(p.secret, SecretStep::Delete);
        assert_eq!(p.next, Next::Retire(KeyPhase::Revoked));
        assert_eq!(p.events[0].on_entering, Some(KeyPhase::Revoked));
        // The status keeps what the key had, its rollouts included.
        let rolled = RestartStatus {
            rolls: 2,
            ..Default::default()
        };
        w.vk.status = Some(keybrake_crds::VaultKeyStatus {
            cap: Some("$5.00/day".into()),
            restart: Some(rolled.clone()),
            ..Default::default()
        });
        let p = w.plan();
        assert_eq!(p.report.cap.as_deref(), Some("$5.00/day"));
        assert_eq!(p.report.restart, Some(rolled.clone()));
        // Set back to false, a retired key stays revoked and says why.
        w.vk.spec.revoked = false;
        w.retired = true;
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Revoked), "Revoked"));
        assert!(p.report.message.contains("for good"));
        // Even without a policy.
        w.policy = None;
        assert_eq!(phase(&w.plan()).0, Some(KeyPhase::Revoked));
    }

    #[test]
    fn a_missing_or_invalid_policy_leaves_the_key_pending_and_writes_nothing() {
        let mut w = World::new(key(json!({})));
        w.policy = None;
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Pending), "PolicyNotFound"));
        assert!(p.ledger.is_empty() && p.secret == SecretStep::Keep);
        assert_eq!(p.next, Next::Requeue(RECHECK));
        let mut bad = policy();
        bad.spec.credentials_secret_ref.name = "Not_A_Name".into();
        w.policy = Some(bad);
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Pending), "PolicyInvalid"));
        // A policy the API server stores and our types cannot read holds the key the same way,
        // saying which field.
        w.policy = None;
        w.policy_unreadable = Some("spec.limits.maxTtl: duration \"0s\" is zero");
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Pending), "PolicyInvalid"));
        assert!(
            p.report
                .message
                .contains("cannot be read: spec.limits.maxTtl")
        );
        assert!(p.ledger.is_empty() && p.secret == SecretStep::Keep);
    }

    #[test]
    fn a_foreign_secret_is_never_written_and_refuses_the_key() {
        let mut w = World::new(key(json!({})));
        w.secret = Some(Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("run-7f3a".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Invalid), "SecretNotOwned"));
        assert_eq!(p.ledger, vec![LedgerStep::Revoke(life_id())]);
        assert_eq!(p.secret, SecretStep::Keep);
        assert_eq!(p.next, Next::Requeue(RECHECK));
    }

    #[test]
    fn caps_over_the_policy_make_the_key_invalid_and_revoke_it() {
        let w = World::new(key(json!({})));
        let first = w.plan();
        let mut w = w.after(&first);
        w.vk.spec.daily_usd_cap = "6000".parse().ok();
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Invalid), "CapAboveLimit"));
        assert_eq!(p.ledger, vec![LedgerStep::Revoke(life_id())]);
        assert_eq!(p.secret, SecretStep::Delete);
        assert_eq!(p.next, Next::AwaitChange);
        assert_eq!(p.events[0].on_entering, Some(KeyPhase::Invalid));
    }

    #[test]
    fn an_expired_key_loses_its_secret_and_is_retired() {
        let w = World::new(key(json!({"ttl": "30s"})));
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Expired), "Expired"));
        assert!(
            p.ledger.is_empty(),
            "Redis refuses it by its expiry already"
        );
        assert_eq!(p.next, Next::Retire(KeyPhase::Expired));
        let mut w = w;
        let rolled = RestartStatus {
            rolls: 1,
            ..Default::default()
        };
        w.vk.status = Some(keybrake_crds::VaultKeyStatus {
            restart: Some(rolled.clone()),
            ..Default::default()
        });
        assert_eq!(w.plan().report.restart, Some(rolled));
    }

    #[test]
    fn a_taken_policy_slot_writes_no_record() {
        let mut w = World::new(key(json!({})));
        w.slot_owner = Some("billing/other".into());
        let p = w.plan();
        assert_eq!(phase(&p), (Some(KeyPhase::Invalid), "PolicySlotTaken"));
        assert_eq!(p.ledger, vec![LedgerStep::Revoke(life_id())]);
    }

    /// A key with a restart target, a debounce, and the restart status it had.
    fn restarting(debounce: Option<&str>, status: Option<serde_json::Value>) -> VaultKey {
        let mut vk = key(json!({
            "restartTargets": [{"kind": "Deployment", "name": "billing-worker"}],
            "restartDebounce": debounce,
        }));
        vk.status = status.map(|r| serde_json::from_value(json!({"restart": r})).unwrap());
        vk
    }

    fn at(ms: i64) -> String {
        jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
    }

    #[test]
    fn restarts_roll_once_per_change_and_once_per_debounce_window() {
        // No targets: nothing to record (the executor has nothing to roll).
        assert_eq!(restart(&key(json!({})), "a", true, NOW), (true, None, None));
        // A key's first contents are recorded, not rolled: nothing ran with it yet.
        let (roll, status, due) = restart(&restarting(None, None), "a", false, NOW);
        assert!(!roll && due.is_none());
        assert_eq!(status.as_ref().unwrap().rolled_for.as_deref(), Some("a"));
        // Unchanged contents: nothing.
        let rolled_for_a = json!({"rolls": 1, "rolledFor": "a"});
        let (roll, _, _) = restart(
            &restarting(None, Some(rolled_for_a.clone())),
            "a",
            false,
            NOW,
        );
        assert!(!roll);
        // Without a debounce a change rolls at once.
        let (roll, status, due) = restart(
            &restarting(None, Some(rolled_for_a.clone())),
            "b",
            true,
            NOW,
        );
        let status = status.unwrap();
        assert!(roll && due.is_none());
        assert_eq!((status.rolls, status.rolled_for.as_deref()), (2, Some("b")));
        assert!(status.pending_since.is_none());
        // With 30s: the first change waits for 30s...
        let (roll, status, due) = restart(
            &restarting(Some("30s"), Some(rolled_for_a.clone())),
            "b",
            true,
            NOW,
        );
        assert!(!roll);
        assert_eq!(due, Some(NOW + 30_000));
        let pending = serde_json::to_value(status.unwrap()).unwrap();
        assert_eq!(pending["pendingSince"], at(NOW));
        // ...a second change 10s later does not push it back...
        let (roll, _, due) = restart(
            &restarting(Some("30s"), Some(pending.clone())),
            "c",
            true,
            NOW + 10_000,
        );
        assert!(!roll);
        assert_eq!(due, Some(NOW + 30_000));
        // ...and at 30s the burst rolls once, for the contents of that moment.
        let (roll, status, due) = restart(
            &restarting(Some("30s"), Some(pending.clone())),
            "c",
            false,
            NOW + 30_000,
        );
        let status = status.unwrap();
        assert!(roll && due.is_none());
        assert_eq!((status.rolls, status.rolled_for.as_deref()), (2, Some("c")));
        assert!(status.pending_since.is_none());
        // A change the last reconcile wrote but could not record (its status write failed) is
        // still seen: the contents differ from what was rolled for.
        let (roll, _, _) = restart(&restarting(None, Some(rolled_for_a)), "b", false, NOW);
        assert!(roll);
        // A pending change from before this status field is kept, not forgotten.
        let (roll, _, due) = restart(
            &restarting(Some("30s"), Some(json!({"pendingSince": at(NOW)}))),
            "b",
            false,
            NOW + 1_000,
        );
        assert!(!roll && due == Some(NOW + 30_000));
    }
}
