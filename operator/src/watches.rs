//! The watches both controllers run on, each opened once: VaultKeys and SpendPolicies (each
//! into one cache the reconciles read), and Secrets by their metadata only. What one watch
//! means for the other controller is sent to it as object references, so no resource is
//! listed twice, no Secret's data is held, and no echo of the operator's own write starts a
//! reconcile.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt, TryStreamExt, channel::mpsc::UnboundedSender, future};
use k8s_openapi::api::core::v1::Secret;
use keybrake_crds::{Listed, SpendPolicy, VaultKey};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher::{self, Event, watcher},
    },
};
use tracing::warn;

use crate::{
    cached::CachedKey, counts::KeyCounts, own_writes::OwnWrites, triggers::GenerationChanges,
};

/// A VaultKey to reconcile.
pub type KeyRef = ObjectRef<CachedKey>;
/// A SpendPolicy to reconcile.
pub type PolicyRef = ObjectRef<Listed<SpendPolicy>>;

/// The annotation `kubectl apply` keeps a whole copy of the object in; nothing reads it here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops from a cached object what no reconcile reads: its managed fields and kubectl's copy
/// of it, most of an object's size (50,000 keys are held at once).
fn slim<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// The VaultKey watch: fills `writer`'s cache and the per-policy key counts, and yields the
/// keys to reconcile (every change but the echoes of the operator's own writes).
pub fn keys(
    client: Client,
    writer: Writer<CachedKey>,
    counts: Arc<KeyCounts>,
    own: Arc<OwnWrites>,
) -> impl Stream<Item = Result<CachedKey, watcher::Error>> + Send + 'static {
    let forget = own.clone();
    watcher(Api::all(client), watcher::Config::default())
        .modify(slim)
        .reflect(writer)
        .inspect_ok(move |event| {
            counts.observe(event);
            if let Event::Delete(key) = event
                && let Some(uid) = key.uid()
            {
                forget.forget(&uid);
            }
        })
        .applied_objects()
        .try_filter(move |key| future::ready(!own.is_echo(key.meta())))
}

/// The SpendPolicy watch: fills `writer`'s cache, sends the keys of a policy whose spec
/// changed (status writes do not) to the VaultKey controller, and yields the policies to
/// reconcile. A key reconcile reads its policy from this cache, which holds each policy before
/// its keys are sent.
pub fn policies(
    client: Client,
    writer: Writer<Listed<SpendPolicy>>,
    keys: Store<CachedKey>,
    own: Arc<OwnWrites>,
    to_keys: UnboundedSender<KeyRef>,
) -> impl Stream<Item = Result<Listed<SpendPolicy>, watcher::Error>> + Send + 'static {
    let changes = GenerationChanges::default();
    watcher(Api::all(client), watcher::Config::default())
        .modify(slim)
        .reflect(writer)
        .applied_objects()
        .inspect_ok(move |policy: &Listed<SpendPolicy>| {
            if !changes.changed(policy) {
                return;
            }
            let ns = policy.namespace();
            let name = policy.name_any();
            for key in keys.state() {
                if key.namespace() == ns && key.policy_name() == Some(&name) {
                    let _ = to_keys.unbounded_send(ObjectRef::from_obj(&*key));
                }
            }
        })
        .try_filter(move |policy| future::ready(!own.is_echo(policy.meta())))
}

/// The VaultKey a Secret was made for: its controller, when that is a VaultKey.
fn owning_key(secret: &PartialObjectMeta<Secret>) -> Option<KeyRef> {
    let ns = secret.namespace()?;
    secret
        .owner_references()
        .iter()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == VaultKey::kind(&())
                && o.api_version == VaultKey::api_version(&())
        })
        .map(|o| ObjectRef::new(&o.name).within(&ns))
}

/// Follows every Secret by its metadata (the data is never needed to know that one changed):
/// a key's own Secret changing or going re-reconciles the key (unless the change is the
/// operator's own write), and a credentials Secret re-checks the policies naming it. Runs
/// until the controllers stop.
pub async fn secrets(
    client: Client,
    policies: Store<Listed<SpendPolicy>>,
    own: Arc<OwnWrites>,
    to_keys: UnboundedSender<KeyRef>,
    to_policies: UnboundedSender<PolicyRef>,
) {
    // `PartialObjectMeta`: the API server sends metadata only.
    let mut events = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    while let Some(event) = events.next().await {
        let secret = match event {
            Ok(secret) => secret,
            Err(e) => {
                warn!(error = %e, "the Secret watch failed; it is retried");
                continue;
            }
        };
        if let Some(key) = owning_key(&secret)
            && !own.is_echo(&secret.metadata)
        {
            let _ = to_keys.unbounded_send(key);
        }
        let ns = secret.namespace();
        let name = secret.name_any();
        for policy in policies.state() {
            if policy.namespace() == ns
                && policy.spec_str(&["credentialsSecretRef", "name"]) == Some(&name)
            {
                let _ = to_policies.unbounded_send(ObjectRef::from_obj(&*policy));
            }
        }
    }
}

/// Tells the SpendPolicy controller, at most once a second, which policies' key counts moved:
/// while keys arrive by the thousand, each policy's status is rewritten once a second, not once
/// per key.
pub async fn counts(counts: Arc<KeyCounts>, to_policies: UnboundedSender<PolicyRef>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        for (ns, name) in counts.take_changed() {
            let _ = to_policies.unbounded_send(ObjectRef::new(&name).within(&ns));
        }
    }
}
