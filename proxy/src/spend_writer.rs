//! Spend write-back: `status.spend` of each VaultKey that saw calls (and its SpendPolicy's
//! aggregate), read from the Redis counters and written with the proxy's own field manager at
//! most once per interval, so bursts coalesce and the operator's status fields are never
//! touched. The first cap hit of a key in a UTC day raises a Warning Event on it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use keybrake_crds::{Listed, SpendPolicy, Usd, VaultKey, status::SpendStatus};
use keybrake_ledger::connection::Connection;
use keybrake_ledger::{KeyId, Ledger, PolicyTag, Spend};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::json;

/// Field manager of the proxy's status writes.
pub const MANAGER: &str = "keybrake-proxy";

#[derive(Debug, Clone)]
struct Touch {
    vault_key: String,
    policy: String,
    cap_hit: Option<String>,
}

/// Keys whose spend changed since the last write.
#[derive(Default)]
pub struct SpendWriter {
    dirty: Mutex<HashMap<KeyId, Touch>>,
}

impl SpendWriter {
    /// Notes that a key's counters changed (`cap_hit`: the refusal message of a cap hit).
    pub fn touch(&self, key: &KeyId, vault_key: &str, policy: &str, cap_hit: Option<String>) {
        if vault_key.is_empty() {
            return;
        }
        if let Ok(mut d) = self.dirty.lock() {
            let entry = d.entry(key.clone()).or_insert_with(|| Touch {
                vault_key: vault_key.into(),
                policy: policy.into(),
                cap_hit: None,
            });
            if cap_hit.is_some() {
                entry.cap_hit = cap_hit;
            }
        }
    }

    fn take(&self) -> HashMap<KeyId, Touch> {
        self.dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }
}

/// The `status.spend` form of ledger counters.
pub fn status_of(s: &Spend, observed_ms: Option<i64>, replica: &str) -> SpendStatus {
    SpendStatus {
        observed_at: observed_ms.and_then(time),
        observed_by: Some(replica.to_owned()),
        ..counters_of(s)
    }
}

/// The counters alone, as the status shows them.
pub fn counters_of(s: &Spend) -> SpendStatus {
    SpendStatus {
        today_usd: Usd::saturating_from_micros(s.today),
        total_usd: Usd::saturating_from_micros(s.total),
        calls: s.calls,
        refused: s.refused,
        last_call_at: s.last_call_ms.and_then(time),
        observed_at: None,
        observed_by: None,
    }
}

fn time(ms: i64) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time> {
    jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
}

fn split(ns_name: &str) -> Option<(&str, &str)> {
    ns_name.split_once('/')
}

/// Whether a failed status write is worth another try: an overloaded (429) or failing (5xx)
/// API server, a timeout or a broken connection. A 4xx other than 429 would fail the same way
/// again.
fn transient(result: &Result<Result<(), kube::Error>, tokio::time::error::Elapsed>) -> bool {
    match result {
        Ok(Ok(())) => false,
        Err(_) => true,
        Ok(Err(kube::Error::Api(s))) => s.code == 429 || s.code >= 500,
        Ok(Err(_)) => true,
    }
}

/// Writes dirty keys every `interval` until the task is dropped. One loop: the key writes, their
/// cap Events and the policies they touched are one round, retried together.
pub async fn run(
    dirty: Arc<SpendWriter>,
    ledger: Ledger<Connection>,
    client: Client,
    metrics: Arc<crate::metrics::Metrics>,
    interval: Duration,
    timeout: Duration,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let mut rounds = Rounds {
        ledger,
        client,
        metrics,
        recorder,
        // Which replica wrote a number (`status.spend.observedBy`): the pod's name, as in Events.
        replica: std::env::var("POD_NAME").unwrap_or_else(|_| MANAGER.to_owned()),
        timeout,
        evented: HashMap::new(),
        retry_policies: HashSet::new(),
    };
    loop {
        tokio::time::sleep(interval).await;
        rounds.round(&dirty).await;
    }
}

/// What the write-back keeps from one round to the next.
struct Rounds {
    ledger: Ledger<Connection>,
    client: Client,
    metrics: Arc<crate::metrics::Metrics>,
    recorder: Recorder,
    replica: String,
    timeout: Duration,
    /// The day of each key's last cap-hit Event (one per key and day).
    evented: HashMap<KeyId, i64>,
    /// Policies whose last write failed for a reason that passes: written again next round.
    retry_policies: HashSet<String>,
}

impl Rounds {
    async fn round(&mut self, dirty: &SpendWriter) {
        let batch = dirty.take();
        // Forget cap-hit Events of past days (one entry per key at most, only for today).
        if let Ok((_, today)) = self.ledger.now().await {
            self.evented.retain(|_, day| *day >= today);
        }
        let mut policies = std::mem::take(&mut self.retry_policies);
        for (key, touch) in batch {
            if split(&touch.vault_key).is_none() {
                continue;
            }
            policies.insert(touch.policy.clone());
            self.write_key(dirty, key, touch).await;
        }
        for policy in policies {
            self.write_policy(policy).await;
        }
    }

    /// One key's `status.spend`, and its cap-hit Event once a day; touched again when the write
    /// failed for a reason that passes.
    async fn write_key(&mut self, dirty: &SpendWriter, key: KeyId, touch: Touch) {
        let Some((ns, name)) = split(&touch.vault_key) else {
            return;
        };
        let spend = match self.ledger.key_spend(&key).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "could not read spend");
                dirty.touch(&key, &touch.vault_key, &touch.policy, touch.cap_hit);
                return;
            }
        };
        match self.ledger.key_record(&key).await {
            Ok(Some(record)) => self.metrics.key_spend(
                &touch.vault_key,
                &touch.policy,
                &spend,
                record.daily_cap.map(|c| c.micros()),
                record.total_cap.map(|c| c.micros()),
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "could not read a key record for its metrics"),
        }
        // Listed: the answer is the object as stored, which must not fail to parse (an
        // unreadable key would make this write look failed and retried forever).
        let api: Api<Listed<VaultKey>> = Api::namespaced(self.client.clone(), ns);
        // Redis time of this read: the status' observedAt, and the day of a cap-hit Event.
        let now = self.ledger.now().await.ok();
        let observed = now.map(|(ms, _)| ms);
        let patch = json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "status": {"spend": status_of(&spend, observed, &self.replica)}});
        let params = PatchParams::apply(MANAGER).force();
        let written = tokio::time::timeout(
            self.timeout,
            api.patch_status(name, &params, &Patch::Apply(&patch)),
        )
        .await;
        match written {
            Ok(Ok(vk)) => {
                if let Some(message) = touch.cap_hit {
                    let day = now.map(|(_, d)| d).unwrap_or_default();
                    self.cap_event(&key, day, &message, &vk).await;
                }
            }
            Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {}
            failed => {
                let failed = failed.map(|r| r.map(drop));
                let again = transient(&failed);
                tracing::warn!(vaultkey = %touch.vault_key, retry = again, error = ?failed, "could not write spend");
                if again {
                    dirty.touch(&key, &touch.vault_key, &touch.policy, touch.cap_hit);
                }
            }
        }
    }

    /// The first cap hit of a key in a (Redis) day raises a Warning Event on it.
    async fn cap_event(&mut self, key: &KeyId, day: i64, message: &str, vk: &Listed<VaultKey>) {
        if self.evented.get(key) == Some(&day) {
            return;
        }
        self.evented.insert(key.clone(), day);
        let event = Event {
            type_: EventType::Warning,
            reason: "CapReached".into(),
            note: Some(keybrake_crds::events::note(message)),
            action: "Refuse".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &vk.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish the cap-hit Event");
        }
    }

    /// A policy's aggregate `status.spend`; kept for the next round when the write failed for a
    /// reason that passes.
    async fn write_policy(&mut self, policy: String) {
        let Some((ns, name)) = split(&policy) else {
            return;
        };
        let Ok(spend) = self.ledger.policy_spend(&PolicyTag::of(ns, name)).await else {
            self.retry_policies.insert(policy);
            return;
        };
        let api: Api<Listed<SpendPolicy>> = Api::namespaced(self.client.clone(), ns);
        let observed = self.ledger.now().await.ok().map(|(ms, _)| ms);
        let patch = json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "SpendPolicy", "status": {"spend": status_of(&spend, observed, &self.replica)}});
        let written = tokio::time::timeout(
            self.timeout,
            api.patch_status(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&patch),
            ),
        )
        .await
        .map(|r| r.map(drop));
        if !matches!(written, Ok(Ok(()))) {
            let again = transient(&written);
            tracing::warn!(policy = %policy, retry = again, error = ?written, "could not write policy spend");
            if again {
                self.retry_policies.insert(policy);
            }
        }
    }
}

#[cfg(test)]
mod transient_tests {
    use super::*;

    fn api(code: u16) -> Result<Result<(), kube::Error>, tokio::time::error::Elapsed> {
        let status = kube::core::Status {
            code,
            ..Default::default()
        };
        Ok(Err(kube::Error::Api(Box::new(status))))
    }

    #[test]
    fn overload_failures_and_timeouts_are_retried_other_refusals_are_not() {
        assert!(transient(&api(429)));
        assert!(transient(&api(500)));
        assert!(transient(&api(503)));
        assert!(!transient(&api(422)));
        assert!(!transient(&api(403)));
        assert!(!transient(&Ok(Ok(()))));
    }
}
