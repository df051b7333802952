//! VaultKey reconcile: validate against the SpendPolicy, issue the credential once (Redis
//! record first, then the Secret), rotate with an overlap, expire, revoke. Cleanup, behind the
//! finalizer, revokes in Redis before the object may go.

pub mod ownership;
pub mod plan;
pub mod secret;
mod status;
mod teardown;
mod unreadable;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::Secret,
};
use keybrake_crds::{
    KeyPhase, Listed, SpendPolicy, VaultKey,
    status::READY,
    validate::validate_policy,
    vault_key::{ISSUED_BY_API, ISSUED_BY_LABEL, WorkloadKind},
};
use keybrake_ledger::{KeyId, PolicyTag, Token};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};
use serde_json::json;
use tracing::{info, instrument, warn};

use self::ownership::Standing;
pub use self::status::Report;
pub use self::teardown::FINALIZER;
use self::teardown::{delete_secret, known_key_id};
use crate::{
    cached::CachedKey,
    clock,
    context::{Context, MANAGER},
    error::{Error, Result},
};

/// Pod-template annotation bumped on each rotation to roll a workload.
pub const ROTATED_AT: &str = "keybrake.com/rotated-at";
/// The workload annotation that lets a VaultKey's rotations roll it: the key's name (several,
/// comma-separated) or `*`. Without it a VaultKey could make the operator restart workloads its
/// author may not touch.
pub const RESTART_OPT_IN: &str = "keybrake.com/restart-on-rotation";

/// After a key is Revoked or Expired: a key the issuance API created is deleted once it has been
/// so for `issued_key_retention_secs` (the finalizer then removes its Redis record; its audit
/// entries stay), so per-run keys do not pile up. Keys created any other way (kubectl, GitOps)
/// are left to their owners.
async fn retire(vk: &VaultKey, ctx: &Context, phase: KeyPhase, now_ms: i64) -> Result<Action> {
    let issued = vk
        .labels()
        .get(ISSUED_BY_LABEL)
        .is_some_and(|v| v == ISSUED_BY_API);
    if !issued {
        return Ok(Action::await_change());
    }
    // The Ready condition's time is when the phase began, if the object we were handed already
    // had that phase; otherwise it began with this reconcile.
    let status = vk.status.as_ref();
    let since_ms = status
        .filter(|s| s.phase == Some(phase))
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        // Condition times are whole seconds: the phase began at most 999 ms after it.
        .map_or(now_ms, |c| {
            (c.last_transition_time.0.as_millisecond() + 999).min(now_ms)
        });
    let retention_ms = i64::try_from(ctx.config.issued_key_retention_secs.saturating_mul(1000))
        .unwrap_or(i64::MAX);
    let left_ms = since_ms.saturating_add(retention_ms).saturating_sub(now_ms);
    if left_ms > 0 {
        return Ok(Action::requeue(Duration::from_millis(left_ms as u64)));
    }
    let ns = vk.namespace().unwrap_or_default();
    let api: Api<VaultKey> = Api::namespaced(ctx.client.clone(), &ns);
    match ctx
        .timed(
            "delete vaultkey",
            api.delete(&vk.name_any(), &DeleteParams::default()),
        )
        .await
    {
        Ok(_) => info!(phase = ?phase, "deleted an issued key past its retention"),
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {}
        Err(e) => return Err(e),
    }
    Ok(Action::await_change())
}

/// The reconcile entry point for the controller.
#[instrument(skip_all, fields(vaultkey = %cached.name_any(), namespace = cached.namespace().unwrap_or_default()))]
pub async fn reconcile(cached: Arc<CachedKey>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciled("vaultkey");
    // Parsed per object at the watch: an object our types cannot read is refused alone.
    let vk = match &*cached {
        CachedKey::Read(vk) => Arc::new(VaultKey::clone(vk)),
        CachedKey::Unreadable(listed, why) => {
            return unreadable::reconcile(listed, why, &ctx).await;
        }
    };
    if let Some(uid) = vk.uid() {
        ctx.metrics.unreadable("vaultkey", &uid, false);
    }
    let ns = vk
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    // The finalizer is added here rather than by `finalizer` below, which would end this
    // reconcile and leave the key to the one its echo starts: the key is issued now, from the
    // object the patch returns.
    let first =
        vk.meta().deletion_timestamp.is_none() && !vk.finalizers().iter().any(|f| f == FINALIZER);
    let (vk, first) = if first {
        match with_finalizer(&vk, &ctx).await? {
            Some((vk, first)) => (Arc::new(vk), first),
            None => return Ok(Action::await_change()),
        }
    } else {
        (vk, false)
    };
    let api: Api<VaultKey> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, vk.clone(), |event| async {
        match event {
            Finalizer::Apply(vk) => match apply(&vk, &ctx, first).await {
                // A first reconcile does not read the Secret (no reconcile has made it yet);
                // when the name was taken after all, the key is decided again from it.
                Err(Error::Kube(kube::Error::Api(e))) if first && e.code == 409 => {
                    apply(&vk, &ctx, false).await
                }
                other => other,
            },
            Finalizer::Cleanup(vk) => cleanup(&vk, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if let Err(e) = &result
        && let Some(cause) = e.redis_cause()
    {
        redis_failed(&vk, &ctx, cause).await;
    }
    result
}

/// The key with the finalizer added, and whether this reconcile added it. The cache can trail
/// the key (often: our own add, its echo not yet seen), and then the patch's test fails; the key
/// is then read again.
async fn with_finalizer(vk: &VaultKey, ctx: &Context) -> Result<Option<(VaultKey, bool)>> {
    match add_finalizer(vk, ctx).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 422 => {
            let ns = vk.namespace().unwrap_or_default();
            let api: Api<Listed<VaultKey>> = Api::namespaced(ctx.client.clone(), &ns);
            let name = vk.name_any();
            let read = ctx.timed("get vaultkey", api.get_opt(&name)).await?;
            let Some(Ok(fresh)) = read.map(|l| l.parse()) else {
                return Ok(None); // gone, or unreadable: its own event says so
            };
            if fresh.finalizers().iter().any(|f| f == FINALIZER) {
                return Ok(Some((fresh, false)));
            }
            Ok(add_finalizer(&fresh, ctx).await?.map(|vk| (vk, true)))
        }
        added => Ok(added?.map(|vk| (vk, true))),
    }
}

/// Adds the finalizer, as `kube`'s `finalizer` does (a JSON Patch that first tests the list it
/// extends, so a concurrent change fails it), and returns the key as the API server now has it;
/// its echo starts no reconcile. `None`: the key became unreadable meanwhile (then that change
/// starts a reconcile of its own, as it is not remembered as ours).
async fn add_finalizer(vk: &VaultKey, ctx: &Context) -> Result<Option<VaultKey>> {
    let ns = vk.namespace().unwrap_or_default();
    let api: Api<Listed<VaultKey>> = Api::namespaced(ctx.client.clone(), &ns);
    let ops = if vk.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": vk.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|_| Error::MissingField("a JSON Patch"))?;
    let listed = ctx
        .timed(
            "add finalizer",
            api.patch(
                &vk.name_any(),
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            ),
        )
        .await?;
    let Ok(parsed) = listed.parse() else {
        return Ok(None);
    };
    ctx.own_writes.record(&listed.metadata);
    Ok(Some(parsed))
}

/// Says on the object that Redis stopped the reconcile: `Ready=False` and a Warning Event, so
/// it shows where people look, not only in the operator's log. Best effort: the reconcile is
/// retried anyway.
async fn redis_failed(vk: &VaultKey, ctx: &Context, cause: &keybrake_ledger::LedgerError) {
    let message = format!(
        "the operator cannot reach Redis ({cause}); the key's record could not be checked or written, and the proxy refuses calls it cannot account for"
    );
    let report = Report::failing(vk, "RedisUnavailable", message.clone());
    // Redis is the clock for caps and expiry; a condition's time can come from this host.
    if let Err(e) = status::write(vk, &report, ctx, clock::local_ms(), false).await {
        warn!(error = %e, "could not report the Redis failure on the VaultKey");
    }
    let already = vk
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
        .is_some_and(|c| c.reason == "RedisUnavailable");
    if !already {
        publish(ctx, vk, EventType::Warning, "RedisUnavailable", &message).await;
    }
}

/// Failed reconciles are logged, counted and retried after a short, bounded delay.
pub fn error_policy(vk: Arc<CachedKey>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(vaultkey = %vk.name_any(), error = %err, "reconcile failed");
    ctx.metrics.failed("vaultkey", err.label());
    Action::requeue(Duration::from_secs(5))
}

/// The key's Secret, read from the API server: not on the key's first reconcile, when no
/// reconcile can have made it yet.
async fn read_secret(
    ctx: &Context,
    secrets: &Api<Secret>,
    name: &str,
    first: bool,
) -> Result<Option<Secret>> {
    if first {
        return Ok(None);
    }
    ctx.timed("get secret", secrets.get_opt(name)).await
}

/// The policy, from the SpendPolicy watch's cache once it has listed: a policy's keys are
/// reconciled again when its spec changes, after the cache holds the change.
async fn cached_policy(ctx: &Context, ns: &str, name: &str) -> Option<Arc<Listed<SpendPolicy>>> {
    let _ = ctx.policies.wait_until_ready().await;
    ctx.policies.get(&ObjectRef::new(name).within(ns))
}

/// One reconcile of a live key: read what the decision needs, decide ([`plan::plan`], pure),
/// carry the plan out. `first`: the reconcile that added the finalizer, so no reconcile has
/// made the key's Secret (a Secret of that name anyone else made fails the create, and the key
/// is then decided again with it read); `vk` is then the API server's own answer.
async fn apply(vk: &VaultKey, ctx: &Context, first: bool) -> Result<Action> {
    let ns = vk
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vk.name_any();
    let (now_ms, _) = ctx.ledger.now().await?;
    let uid = vk.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = vk.spec.secret_name.clone().unwrap_or_else(|| name.clone());
    let found = read_secret(ctx, &secrets, &secret_name, first).await?;
    let standing = ownership::standing(found.as_ref(), &uid);
    let ours = match standing {
        Standing::Ours(s) => Some(s),
        Standing::Absent | Standing::Foreign(_) => None,
    };
    let status_key_id = vk.status.as_ref().and_then(|s| s.key_id.as_deref());
    let known = known_key_id(status_key_id, &uid, ours, ctx, &format!("{ns}/{name}")).await?;
    let policy_name = vk.spec.policy_ref.name.clone();
    // One key id for the VaultKey's whole life (a key issued before ids were derived keeps the
    // one it was issued).
    let tag = PolicyTag::of(&ns, &policy_name);
    let derived = KeyId::of_vault_key(&tag, &uid);
    let life_id = known.clone().unwrap_or_else(|| derived.clone());
    let retired = ctx.ledger.is_retired(&life_id).await?;
    let listed_policy = if vk.spec.revoked || retired {
        None
    } else {
        cached_policy(ctx, &ns, &policy_name).await
    };
    let (policy, policy_unreadable) = match listed_policy.as_deref().map(Listed::parse) {
        Some(Ok(p)) => (Some(p), None),
        Some(Err(why)) => (None, Some(why.to_string())),
        None => (None, None),
    };
    // The slot is claimed for a policy that exists and is valid, as before it is written to.
    let slot_owner = match &policy {
        Some(p) if validate_policy(&p.spec).is_ok() => {
            ctx.ledger
                .claim_tag(&tag, &format!("{ns}/{policy_name}"))
                .await?
        }
        _ => None,
    };
    let stored = ctx.ledger.key_record(&life_id).await?;
    let spend = ctx.ledger.key_spend(&life_id).await?;
    let ca = ctx.proxy_ca.get();
    let vendor = policy
        .as_ref()
        .map_or(keybrake_crds::Vendor::Stripe, |p| p.spec.vendor);
    let observed = plan::Observed {
        vk,
        now_ms,
        secret: standing,
        life_id: life_id.clone(),
        derived,
        known: known.is_some(),
        retired,
        policy: policy.as_ref(),
        policy_unreadable: policy_unreadable.as_deref(),
        slot_owner,
        stored,
        spend,
        // Used only when a token is issued or rotated, for the policy's vendor.
        fresh: Token::generate(vendor, life_id),
        proxy_url: &ctx.config.proxy_url,
        ca: ca.as_ref(),
    };
    let decided = plan::plan(&observed).map_err(|e| Error::MissingField(e.0))?;
    let target = Target {
        secrets: &secrets,
        name: &secret_name,
        ours,
        fresh: first,
    };
    execute(vk, ctx, &target, decided, &observed).await
}

/// The key's Secret as the executor needs it: where, whose, and whether `vk` is fresh from the
/// API server (then the status is written without reading the key again).
struct Target<'a> {
    secrets: &'a Api<Secret>,
    name: &'a str,
    ours: Option<&'a Secret>,
    fresh: bool,
}

/// Carries a plan out: Redis first (a Secret never holds a token the proxy does not know,
/// and a refusal takes effect before the Secret goes), then the Secret, the Events, the
/// rollout, the status, and what comes next.
async fn execute(
    vk: &VaultKey,
    ctx: &Context,
    target: &Target<'_>,
    plan: plan::Plan,
    observed: &plan::Observed<'_>,
) -> Result<Action> {
    let (secrets, secret_name, ours) = (target.secrets, target.name, target.ours);
    for step in &plan.ledger {
        match step {
            plan::LedgerStep::Retire(id) => ctx.ledger.retire(id).await?,
            plan::LedgerStep::Revoke(id) => ctx.ledger.revoke(id).await?,
            plan::LedgerStep::Write(id, record) => ctx.ledger.write_key(id, record).await?,
        }
    }
    match &plan.secret {
        plan::SecretStep::Keep => {}
        plan::SecretStep::Delete => delete_secret(ctx, secrets, ours).await?,
        plan::SecretStep::Write(cred) => {
            write_secret(vk, ctx, secrets, secret_name, cred, ours, observed).await?;
        }
    }
    for note in &plan.events {
        match note.on_entering {
            Some(phase) => {
                transition_event(vk, ctx, phase, note.type_, &note.reason, &note.note).await
            }
            None => {
                info!(reason = %note.reason, "{}", note.note);
                publish(ctx, vk, note.type_, &note.reason, &note.note).await;
            }
        }
    }
    let ns = vk.namespace().unwrap_or_default();
    if plan.roll {
        roll_targets(vk, ctx, &ns, observed.now_ms).await;
    }
    metrics_phase(vk, ctx, plan.report.phase);
    status::write(vk, &plan.report, ctx, observed.now_ms, target.fresh).await?;
    match plan.next {
        plan::Next::Retire(phase) => retire(vk, ctx, phase, observed.now_ms).await,
        plan::Next::Requeue(after) => Ok(Action::requeue(after)),
        plan::Next::AwaitChange => Ok(Action::await_change()),
    }
}

/// Applies the Secret unless it already holds exactly this credential; true when an existing
/// Secret's contents changed (the token, the proxy URL or its CA), which running pods only see
/// once restarted.
async fn write_secret(
    vk: &VaultKey,
    ctx: &Context,
    secrets: &Api<Secret>,
    name: &str,
    cred: &plan::Credential,
    existing: Option<&Secret>,
    observed: &plan::Observed<'_>,
) -> Result<bool> {
    let data = plan::secret_data(cred, observed);
    let annotations = BTreeMap::from([
        (secret::KEY_ID.to_owned(), cred.token.key_id.to_string()),
        (secret::ISSUED_AT.to_owned(), cred.issued_at_ms.to_string()),
        (secret::ROTATIONS.to_owned(), cred.rotations.to_string()),
        (secret::VAULT_KEY.to_owned(), vk.name_any()),
    ]);
    let owner = vk
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let up_to_date = existing.is_some_and(|s| {
        s.data.as_ref() == Some(&data)
            && annotations
                .iter()
                .all(|(k, v)| s.annotations().get(k) == Some(v))
            && s.owner_references().iter().any(|o| o.uid == owner.uid)
    });
    if up_to_date {
        return Ok(false);
    }
    let contents_changed = existing.is_some_and(|s| s.data.as_ref() != Some(&data));
    let mut labels = BTreeMap::from([(ownership::MANAGED_BY.to_owned(), MANAGER.to_owned())]);
    if let Some(name) = secret::vault_key_label(&vk.name_any()) {
        labels.insert(secret::VAULT_KEY.to_owned(), name);
    }
    let written = match existing {
        // Only ever created, never applied over something that exists.
        None => {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            // Someone making it between the read and now fails this with 409; the next reconcile
            // then sees whose it is.
            let params = PostParams::default();
            ctx.timed("create secret", secrets.create(&params, &secret))
                .await?
        }
        // Ours: changed only at the version that was read, so a Secret that changed hands in
        // between is not written.
        Some(current) => {
            let body = json!({
                "metadata": {
                    "resourceVersion": current.resource_version(),
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [owner],
                },
                "data": data,
            });
            let (params, patch) = (PatchParams::default(), Patch::Merge(body));
            ctx.timed("update secret", secrets.patch(name, &params, &patch))
                .await?
        }
    };
    ctx.own_writes.record(&written.metadata);
    Ok(contents_changed)
}

/// Deleting a VaultKey: revoke and forget the key in Redis, then delete its Secret.
async fn cleanup(vk: &VaultKey, ctx: &Context) -> Result<Action> {
    let ns = vk
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret_name = vk.spec.secret_name.clone().unwrap_or_else(|| vk.name_any());
    let found = ctx
        .timed("get secret", secrets.get_opt(&secret_name))
        .await?;
    let uid = vk.uid().unwrap_or_default();
    let ours = match ownership::standing(found.as_ref(), &uid) {
        Standing::Ours(s) => Some(s),
        Standing::Absent | Standing::Foreign(_) => None,
    };
    let vault_key = format!("{ns}/{}", vk.name_any());
    let derived = KeyId::of_vault_key(&PolicyTag::of(&ns, &vk.spec.policy_ref.name), &uid);
    let status_key_id = vk.status.as_ref().and_then(|s| s.key_id.as_deref());
    let known = known_key_id(status_key_id, &uid, ours, ctx, &vault_key).await?;
    for id in known.into_iter().chain([derived]) {
        ctx.ledger.revoke(&id).await?;
        ctx.ledger.delete_key(&id).await?;
        info!(key_id = %id, "revoked on delete");
    }
    delete_secret(ctx, &secrets, ours).await?;
    metrics_phase(vk, ctx, None);
    Ok(Action::await_change())
}

fn metrics_phase(vk: &VaultKey, ctx: &Context, phase: Option<KeyPhase>) {
    if let Some(uid) = vk.uid() {
        ctx.metrics.key_phase(&uid, phase);
    }
}

async fn publish(ctx: &Context, vk: &VaultKey, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(keybrake_crds::events::note(note)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &vk.object_ref(&())).await {
        warn!(error = %e, "could not publish an Event");
    }
}

/// An Event only when the key enters `phase`, so re-reconciles do not repeat it.
async fn transition_event(
    vk: &VaultKey,
    ctx: &Context,
    phase: KeyPhase,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let was = vk.status.as_ref().and_then(|s| s.phase);
    metrics_phase(vk, ctx, Some(phase));
    if was == Some(phase) {
        return;
    }
    // The cached object can trail this operator's own last status write (the reconcile that
    // follows it): the API server's copy says whether the transition was already announced.
    let api: Api<VaultKey> =
        Api::namespaced(ctx.client.clone(), &vk.namespace().unwrap_or_default());
    let fresh = api.get_opt(&vk.name_any()).await.ok().flatten();
    if fresh.and_then(|k| k.status?.phase) == Some(phase) {
        return;
    }
    publish(ctx, vk, type_, reason, note).await;
}

/// The API of one workload kind: every kind is patched and listed the same way, by path.
fn workloads(ctx: &Context, ns: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    let resource = match kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    };
    Api::namespaced_with(ctx.client.clone(), ns, &resource)
}

/// Whether the workload opts in to be rolled by this key: a JSON Patch that only tests the
/// annotation (a test that holds changes nothing, and it holds the annotation the roll relies on
/// at the moment of the patch, not at a read before it).
async fn opted_in(api: &Api<DynamicObject>, name: &str, key: &str) -> Result<bool> {
    let path = format!(
        "/metadata/annotations/{}",
        RESTART_OPT_IN.replace('/', "~1")
    );
    for value in [key, "*"] {
        let test: json_patch::Patch =
            serde_json::from_value(json!([{"op": "test", "path": path, "value": value}]))
                .map_err(|_| Error::MissingField("a JSON Patch"))?;
        let patch = Patch::<()>::Json(test);
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 422 => continue,
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    Ok(false)
}

/// The workloads a restart target names: its one name, or every workload of its kind in the
/// namespace that its label selector chooses (listed now, so a workload added since is rolled).
async fn workloads_of(
    api: &Api<DynamicObject>,
    target: &keybrake_crds::vault_key::RestartTarget,
) -> std::result::Result<Vec<String>, String> {
    if let Some(name) = &target.name {
        return Ok(vec![name.clone()]);
    }
    let Some(selector) = &target.selector else {
        return Ok(Vec::new());
    };
    let selector = kube::core::Selector::try_from(selector.clone())
        .map_err(|e| format!("its selector cannot be used: {e}"))?;
    api.list_metadata(&ListParams::default().labels_from(&selector))
        .await
        .map(|l| l.items.iter().map(ResourceExt::name_any).collect())
        .map_err(|e| format!("could not list them: {e}"))
}

/// Why a workload was not rolled: the metric's result, the Event's reason and its note.
type NotRolled = (&'static str, &'static str, String);

/// Rolls one workload if it opts in.
async fn roll_one(
    api: &Api<DynamicObject>,
    kind: &str,
    name: &str,
    key: &str,
    patch: &serde_json::Value,
) -> std::result::Result<(), NotRolled> {
    match opted_in(api, name, key).await {
        Ok(true) => {}
        Ok(false) => {
            return Err((
                "not_opted_in",
                "RestartNotAllowed",
                format!(
                    "{kind} {name} was not rolled: it does not opt in (annotate it {RESTART_OPT_IN}={key} or *)"
                ),
            ));
        }
        Err(e) => {
            return Err((
                "failed",
                "RollFailed",
                format!("could not roll {kind} {name}: {e}"),
            ));
        }
    }
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(drop)
        .map_err(|e| {
            (
                "failed",
                "RollFailed",
                format!("could not roll {kind} {name}: {e}"),
            )
        })
}

/// Rolls each restart target that opts in, once for this change: a pod-template annotation
/// with a nanosecond timestamp, so two changes within one second both roll.
async fn roll_targets(vk: &VaultKey, ctx: &Context, ns: &str, now_ms: i64) {
    let stamp = jiff::Timestamp::now()
        .max(jiff::Timestamp::from_millisecond(now_ms).unwrap_or_default())
        .to_string();
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {ROTATED_AT: stamp}}}}});
    let key = vk.name_any();
    for target in &vk.spec.restart_targets {
        let kind = format!("{:?}", target.kind);
        let api = workloads(ctx, ns, target.kind);
        match workloads_of(&api, target).await {
            Ok(names) => {
                for name in names {
                    let roll = roll_one(&api, &kind, &name, &key, &patch).await;
                    reported(ctx, vk, ns, &kind, roll).await;
                }
            }
            Err(why) => {
                let note = format!("could not roll the {kind}s a restart target selects: {why}");
                reported(ctx, vk, ns, &kind, Err(("failed", "RollFailed", note))).await;
            }
        }
    }
}

/// Counts a roll in the metric and, when it did not happen, says why in a Warning Event.
async fn reported(
    ctx: &Context,
    vk: &VaultKey,
    ns: &str,
    kind: &str,
    roll: std::result::Result<(), NotRolled>,
) {
    match roll {
        Ok(()) => ctx.metrics.restart(ns, kind, "rolled"),
        Err((result, reason, note)) => {
            ctx.metrics.restart(ns, kind, result);
            warn!("{note}");
            publish(ctx, vk, EventType::Warning, reason, &note).await;
        }
    }
}
