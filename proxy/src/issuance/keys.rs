//! The four operations, each on real `VaultKey` objects: issue (create, wait until the operator
//! has made the key work, hand out the token once), show, list, and revoke (in Redis at once,
//! then `spec.revoked` so the operator and kubectl agree).

use std::collections::BTreeMap;

use hyper::StatusCode;
use k8s_openapi::api::core::v1::Secret;
use keybrake_crds::{
    KeyPhase, Listed, SpendPolicy, VaultKey, VaultKeySpec, Vendor, validate::is_dns_label,
    vault_key::PolicyRef,
};
use keybrake_ledger::{KeyId, PolicyTag, resolve_key, secret_env};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
    runtime::wait::await_condition,
};
use serde_json::{Value, json};

use super::{
    caller::Caller,
    error::ApiError,
    request::{IssueRequest, violations_error},
    view,
};
use crate::{app::App, policies::PolicyState};

/// Annotation: the user who asked for the key.
pub const REQUESTED_BY: &str = "keybrake.com/requested-by";

fn kube_error(what: &str, e: kube::Error) -> ApiError {
    match &e {
        kube::Error::Api(s) if s.code == 404 => {
            ApiError::new(StatusCode::NOT_FOUND, format!("{what}: not found"))
        }
        kube::Error::Api(s) if s.code == 403 => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "{what}: the proxy's own RBAC does not allow it: {}",
                s.message
            ),
        ),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{what}: the Kubernetes API refused it: {}", s.message),
        ),
        _ => ApiError::unavailable(what, e),
    }
}

/// The policy a key draws on: the one named, else the namespace's only one for the vendor.
/// Policies are listed as stored: one our types cannot read is refused when named and passed
/// over otherwise, never failing the request for the others.
async fn choose_policy(
    api: &Api<Listed<SpendPolicy>>,
    ns: &str,
    vendor: Vendor,
    named: Option<&str>,
) -> Result<SpendPolicy, ApiError> {
    if let Some(name) = named {
        let p = api
            .get_opt(name)
            .await
            .map_err(|e| kube_error("reading the SpendPolicy", e))?
            .map(|p| p.parse());
        return match p {
            Some(Ok(p)) if p.spec.vendor == vendor => Ok(p),
            Some(Ok(p)) => Err(ApiError::field(
                "policy",
                format!(
                    "SpendPolicy {ns}/{name} is for {}, not {vendor}",
                    p.spec.vendor
                ),
            )),
            Some(Err(why)) => Err(ApiError::field(
                "policy",
                format!("SpendPolicy {ns}/{name} cannot be read: {why}"),
            )),
            None => Err(ApiError::field(
                "policy",
                format!("no SpendPolicy {name:?} in namespace {ns:?}"),
            )),
        };
    }
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_error("listing SpendPolicies", e))?;
    let mut matching: Vec<SpendPolicy> = all
        .items
        .iter()
        .filter_map(|p| p.parse().ok())
        .filter(|p| p.spec.vendor == vendor)
        .collect();
    match matching.len() {
        0 => Err(ApiError::field(
            "vendor",
            format!(
                "no SpendPolicy for {vendor} in namespace {ns:?}; a platform admin creates one first"
            ),
        )),
        1 => Ok(matching.remove(0)),
        _ => Err(ApiError::field(
            "policy",
            format!(
                "required: namespace {ns:?} has several SpendPolicies for {vendor} ({}); name one",
                matching
                    .iter()
                    .map(|p| p.name_any())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// A VaultKey name from the run label (readable in `kubectl get vk`), with a random suffix.
fn generated_name(run_label: Option<&str>) -> String {
    let suffix = hex::encode(rand::random::<[u8; 4]>());
    let mut slug = String::new();
    for c in run_label.unwrap_or("run").chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_matches('-');
    if slug.is_empty() {
        format!("run-{suffix}")
    } else {
        format!("{slug}-{suffix}")
    }
}

fn key_object(name: &str, caller: &Caller, policy: &str, req: &IssueRequest) -> VaultKey {
    let spec = VaultKeySpec {
        policy_ref: PolicyRef {
            name: policy.to_owned(),
        },
        daily_usd_cap: req.daily_usd_cap,
        total_usd_cap: req.total_usd_cap,
        per_call_usd_cap: req.per_call_usd_cap,
        allowed_endpoints: req.allowed_endpoints.clone(),
        ttl: req.expires_in,
        expires_at: req
            .expires_at
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        run_label: req.run_label.clone(),
        revoked: false,
        rotation: None,
        secret_name: None,
        restart_targets: Vec::new(),
        restart_debounce: None,
    };
    VaultKey {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                keybrake_crds::vault_key::ISSUED_BY_LABEL.to_owned(),
                keybrake_crds::vault_key::ISSUED_BY_API.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                REQUESTED_BY.to_owned(),
                caller.username.clone(),
            )])),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// Whether the operator has acted on the key (any phase but Pending).
fn settled(vk: Option<&VaultKey>) -> bool {
    vk.and_then(|k| k.status.as_ref()?.phase)
        .is_some_and(|p| p != KeyPhase::Pending)
}

/// Issues a key and returns it with its token, once the key works: the request checked against
/// its policy, the VaultKey created, waited for, and its token read from the Secret the
/// operator made for it.
pub async fn issue(
    app: &App,
    caller: &Caller,
    ns: &str,
    req: IssueRequest,
) -> Result<(StatusCode, Value), ApiError> {
    let (policy_name, object) = checked(app, caller, ns, &req).await?;
    let name = object.name_any();
    let secrets = Api::<Secret>::namespaced(app.client.clone(), ns);
    refuse_a_taken_secret(&secrets, ns, &name).await?;
    let keys: Api<VaultKey> = Api::namespaced(app.client.clone(), ns);
    let uid = match keys.create(&PostParams::default(), &object).await {
        Ok(created) => created.metadata.uid.unwrap_or_default(),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            return Err(ApiError {
                status: StatusCode::CONFLICT,
                message: format!("name: a VaultKey {ns}/{name} already exists"),
                field: Some("name".into()),
            });
        }
        Err(e) => return Err(kube_error("creating the VaultKey", e)),
    };
    tracing::info!(
        namespace = ns,
        name,
        policy = policy_name,
        user = caller.username,
        "issuing a vault key"
    );
    let vk = active(&keys, ns, &name, &uid, app.config.issue_timeout()).await?;
    handed_out(&secrets, ns, &name, &vk, req.vendor).await
}

/// The VaultKey to create for `req`, checked against its SpendPolicy's limits (in Redis time)
/// and with the policy usable by the proxy; and the policy's name.
async fn checked(
    app: &App,
    caller: &Caller,
    ns: &str,
    req: &IssueRequest,
) -> Result<(String, VaultKey), ApiError> {
    let policies: Api<Listed<SpendPolicy>> = Api::namespaced(app.client.clone(), ns);
    let policy = choose_policy(&policies, ns, req.vendor, req.policy.as_deref()).await?;
    let policy_name = policy.name_any();
    if let Some(name) = &req.name
        && !is_dns_label(name)
    {
        return Err(ApiError::field(
            "name",
            format!("{name:?} must be a lowercase DNS label (a-z, 0-9, '-', at most 63)"),
        ));
    }
    let name = req
        .name
        .clone()
        .unwrap_or_else(|| generated_name(req.run_label.as_deref()));
    let object = key_object(&name, caller, &policy_name, req);
    // Redis time is the truth for expiry; without Redis no key could work anyway.
    let (now_ms, _) = app
        .ledger
        .now()
        .await
        .map_err(|e| ApiError::unavailable("cannot reach Redis", e))?;
    let now = jiff::Timestamp::from_millisecond(now_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    resolve_key(&object.spec, &policy_name, &policy.spec, now).map_err(|v| violations_error(&v))?;
    let loaded = match app.policies.get(&PolicyTag::of(ns, &policy_name)) {
        Some(state) => Some(state),
        None => {
            crate::policies::load_named(&app.policies, &app.client, &app.config, ns, &policy_name)
                .await
        }
    };
    match loaded {
        Some(PolicyState::Ready(_)) => Ok((policy_name, object)),
        Some(PolicyState::Unusable(why)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("the SpendPolicy cannot be used: {why}"),
        )),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "SpendPolicy {ns}/{policy_name} or its credentials could not be read from the Kubernetes API; retry in a few seconds"
            ),
        )),
    }
}

/// The operator never adopts a Secret it did not create: a name that is taken is refused
/// here, before anything is made.
async fn refuse_a_taken_secret(
    secrets: &Api<Secret>,
    ns: &str,
    name: &str,
) -> Result<(), ApiError> {
    let Some(taken) = secrets
        .get_metadata_opt(name)
        .await
        .map_err(|e| kube_error(&format!("reading Secret {ns}/{name}"), e))?
    else {
        return Ok(());
    };
    let owner = taken
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map_or_else(
            || "not made by Keybrake".to_owned(),
            |o| format!("owned by {} {}", o.kind, o.name),
        );
    Err(ApiError {
        status: StatusCode::CONFLICT,
        message: format!(
            "name: a Secret {ns}/{name} already exists ({owner}); a vault key never takes over a Secret, choose another name"
        ),
        field: Some("name".into()),
    })
}

/// Waits for the VaultKey created here (uid `uid`) to be Active. Everything acts on that
/// object by its uid: a VaultKey deleted and made again under the same name meanwhile is
/// someone else's. A key that does not become Active is deleted: nothing half-made stays.
async fn active(
    keys: &Api<VaultKey>,
    ns: &str,
    name: &str,
    uid: &str,
    timeout: std::time::Duration,
) -> Result<VaultKey, ApiError> {
    let only_ours = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let ours = {
        let uid = uid.to_owned();
        move |vk: Option<&VaultKey>| {
            vk.is_some_and(|k| k.metadata.uid.as_deref() == Some(uid.as_str()))
        }
    };
    // Done when ours is settled, or no longer there (deleted, or replaced under the same name).
    let done = {
        let ours = ours.clone();
        move |vk: Option<&VaultKey>| !ours(vk) || settled(vk)
    };
    let waited = tokio::time::timeout(timeout, await_condition(keys.clone(), name, done)).await;
    let vk = match waited {
        Ok(Ok(Some(vk))) if ours(Some(&vk)) && settled(Some(&vk)) => vk,
        Ok(Ok(_)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "VaultKey {ns}/{name} was deleted or replaced while it was being issued; nothing was issued"
                ),
            ));
        }
        outcome => {
            // Nothing half-made stays behind: the caller never got a token.
            let now = keys
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|k| ours(Some(k)));
            let _ = keys.delete(name, &only_ours).await;
            let why = now
                .as_ref()
                .and_then(|k| view::key(k, None)["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "no status yet".into());
            let cause = match outcome {
                Ok(Err(e)) => format!("watching it failed: {e}"),
                _ => format!(
                    "the operator did not make it work within {}s ({why})",
                    timeout.as_secs()
                ),
            };
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("VaultKey {ns}/{name}: {cause}; it was deleted and nothing was issued"),
            ));
        }
    };
    if vk.status.as_ref().and_then(|s| s.phase) != Some(KeyPhase::Active) {
        let _ = keys.delete(name, &only_ours).await;
        let body = view::key(&vk, None);
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "VaultKey {ns}/{name} is {}: {}; it was deleted and nothing was issued",
                body["state"].as_str().unwrap_or("not active"),
                body["message"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(vk)
}

/// The key with its token, read from the Secret the operator made for this very VaultKey.
async fn handed_out(
    secrets: &Api<Secret>,
    ns: &str,
    name: &str,
    vk: &VaultKey,
    vendor: Vendor,
) -> Result<(StatusCode, Value), ApiError> {
    let secret_name = vk
        .status
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .unwrap_or_else(|| name.to_owned());
    let secret = secrets
        .get(&secret_name)
        .await
        .map_err(|e| kube_error(&format!("reading Secret {ns}/{secret_name}"), e))?;
    // Only a token from the Secret the operator made for this very VaultKey is handed out.
    let made_for_it = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == vk.metadata.uid.as_ref());
    if !made_for_it {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Secret {ns}/{secret_name} is not the one made for VaultKey {ns}/{name}; nothing was issued"
            ),
        ));
    }
    let data: BTreeMap<String, String> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
        .collect();
    let token = secret_env::token_from(vendor, &data).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Secret {ns}/{secret_name} holds no {vendor} token"),
        )
    })?;
    let mut body = view::key(vk, None);
    body["base_url"] = json!(data.get("KEYBRAKE_PROXY_URL"));
    match vendor {
        Vendor::Twilio => {
            body["account_sid"] = json!(token.twilio_sid());
            body["vault_key"] = json!(token.secret());
        }
        Vendor::Stripe | Vendor::Resend => body["vault_key"] = json!(token.bearer()),
    }
    Ok((StatusCode::CREATED, body))
}

async fn live_spend(app: &App, vk: &VaultKey) -> Option<keybrake_ledger::Spend> {
    let id = KeyId::parse(vk.status.as_ref()?.key_id.as_deref()?).ok()?;
    app.ledger.key_spend(&id).await.ok()
}

/// The VaultKey `ns/name` as stored, or a 404 naming it. Listed, not parsed: a key our types
/// cannot read can still be shown and revoked.
async fn existing(
    keys: &Api<Listed<VaultKey>>,
    ns: &str,
    name: &str,
) -> Result<Listed<VaultKey>, ApiError> {
    keys.get_opt(name)
        .await
        .map_err(|e| kube_error("reading the VaultKey", e))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no key {name:?} in namespace {ns:?}"),
            )
        })
}

/// A key's view with live spend, parsed once: what can be said of it and why it is refused when
/// it cannot be read.
async fn shown(app: &App, listed: &Listed<VaultKey>) -> Value {
    match listed.parse() {
        Ok(vk) => view::key(&vk, live_spend(app, &vk).await),
        Err(why) => view::unreadable(listed, &why),
    }
}

/// One key, with live spend.
pub async fn show(app: &App, ns: &str, name: &str) -> Result<(StatusCode, Value), ApiError> {
    let keys: Api<Listed<VaultKey>> = Api::namespaced(app.client.clone(), ns);
    let listed = existing(&keys, ns, name).await?;
    Ok((StatusCode::OK, shown(app, &listed).await))
}

/// The namespace's keys, optionally only one run's. A key our types cannot read is listed as
/// invalid, saying why; it never hides the others.
pub async fn list(
    app: &App,
    ns: &str,
    run_label: Option<&str>,
) -> Result<(StatusCode, Value), ApiError> {
    let keys: Api<Listed<VaultKey>> = Api::namespaced(app.client.clone(), ns);
    let all = keys
        .list(&ListParams::default())
        .await
        .map_err(|e| kube_error("listing VaultKeys", e))?;
    let items: Vec<Value> = all
        .items
        .iter()
        .filter(|k| run_label.is_none_or(|l| k.spec_str(&["runLabel"]) == Some(l)))
        .map(|k| match k.parse() {
            Ok(vk) => view::key(&vk, None),
            Err(why) => view::unreadable(k, &why),
        })
        .collect();
    Ok((StatusCode::OK, json!({"keys": items})))
}

/// Revokes a key: `spec.revoked` first (one-way, so the operator revokes it in Redis for
/// certain, whatever happens next), then in Redis, so the next call is refused at once. 200 only
/// once Redis refuses the key: with Redis unreachable the answer is 503, the revocation stays
/// recorded, and a retried DELETE finishes it. A key our types cannot read is revoked the same
/// way, from what can be read of it.
pub async fn revoke(
    app: &App,
    caller: &Caller,
    ns: &str,
    name: &str,
) -> Result<(StatusCode, Value), ApiError> {
    let keys: Api<Listed<VaultKey>> = Api::namespaced(app.client.clone(), ns);
    let listed = existing(&keys, ns, name).await?;
    let patched = if listed.spec_bool(&["revoked"]) == Some(true) {
        listed
    } else {
        keys.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await
        .map_err(|e| kube_error("marking the VaultKey revoked", e))?
    };
    tracing::info!(
        namespace = ns,
        name,
        user = caller.username,
        "vault key revoked through the API"
    );
    // Revoked for good in Redis (the record's `retired` survives any rewrite): the key's own id
    // (derived from its uid) and, for a key issued before ids were derived, the id in its
    // status when its record names this very object.
    let vault_key = format!("{ns}/{name}");
    let uid = patched.uid().unwrap_or_default();
    let policy = patched.spec_str(&["policyRef", "name"]).unwrap_or_default();
    let derived = KeyId::of_vault_key(&PolicyTag::of(ns, policy), &uid);
    let from_status = patched
        .status
        .as_ref()
        .and_then(|s| s.get("keyId"))
        .and_then(Value::as_str)
        .and_then(|k| KeyId::parse(k).ok())
        .filter(|id| *id != derived);
    let refused = async {
        app.ledger.retire(&derived).await?;
        if let Some(id) = &from_status
            && app.ledger.key_belongs_to(id, &vault_key, &uid).await?
        {
            app.ledger.retire(id).await?;
        }
        Ok::<_, keybrake_ledger::LedgerError>(())
    };
    refused.await.map_err(|e| {
        tracing::warn!(namespace = ns, name, error = %e, "could not revoke in Redis; spec.revoked is set");
        ApiError::unavailable(
            "spec.revoked is set and the operator will enforce it, but Redis could not be told at once (retry the DELETE to confirm)",
            e,
        )
    })?;
    Ok((StatusCode::OK, shown(app, &patched).await))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_run_label() {
        let n = generated_name(Some("hatchet/billing-agent/7F3A9C2E"));
        assert!(n.starts_with("hatchet-billing-agent-7f3a9c2e-"), "{n}");
        assert!(is_dns_label(&n));
        let n = generated_name(Some(&"x/".repeat(100)));
        assert!(is_dns_label(&n), "{n}");
        assert!(generated_name(Some("///")).starts_with("run-"));
        assert!(generated_name(None).starts_with("run-"));
    }
}
