//! A VaultKey the API server stores but our types cannot read: a value the CRD schema admits
//! and our parser refuses (`ttl: 0s`, `POST /v1/../charges`), or one stored under an older
//! schema. It is refused on its own, and fails closed:
//! - whatever it was issued stops working (its record revoked in Redis, its Secret deleted);
//! - its status says `Invalid` with `Stalled=True`, the field and the parser's words, and a
//!   Warning Event says it once;
//! - it carries the finalizer every key carries; deleted, it is cleaned up like any key: from its
//!   metadata, the names it can still be read for, and the key ids its records confirm.
//!
//! Nothing else is affected: the watches list it like any other object.

use k8s_openapi::api::core::v1::Secret;
use keybrake_crds::{KeyPhase, Listed, Unreadable, VaultKey};
use keybrake_ledger::{KeyId, PolicyTag};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    ownership,
    teardown::{FINALIZER, delete_secret, known_key_id},
};
use crate::{
    context::Context,
    error::{Error, Result},
};

/// What the status says about an unreadable key.
pub fn message(why: &Unreadable) -> String {
    format!(
        "{why}; the operator cannot read this VaultKey, so it issues nothing and refuses what it was issued: fix the field"
    )
}

/// Refuses an unreadable key, or cleans it up when it is being deleted.
pub async fn reconcile(
    listed: &Listed<VaultKey>,
    why: &Unreadable,
    ctx: &Context,
) -> Result<Action> {
    let ns = listed
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = listed.name_any();
    let uid = listed.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let deleting = listed.meta().deletion_timestamp.is_some();
    warn!(error = %why, deleting, "unreadable VaultKey");

    // Fail closed: the key ids this VaultKey may have been issued, as its records confirm them.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    // The Secret the spec names now and the one the status says was written (the spec may have
    // changed in the same edit), each deleted only if it is this key's own.
    let status_secret = listed
        .status
        .as_ref()
        .and_then(|s| s.get("secretName"))
        .and_then(Value::as_str);
    let mut names = vec![listed.spec_str(&["secretName"]).unwrap_or(&name).to_owned()];
    if let Some(n) = status_secret
        && !names.iter().any(|m| m == n)
    {
        names.push(n.to_owned());
    }
    let mut owned = Vec::new();
    for secret_name in &names {
        let found = ctx
            .timed("get secret", secrets.get_opt(secret_name))
            .await?;
        if let ownership::Standing::Ours(s) = ownership::standing(found.as_ref(), &uid) {
            owned.push(s.clone());
        }
    }
    let ours = owned.first();
    let vault_key = format!("{ns}/{name}");
    let status_key_id = listed
        .status
        .as_ref()
        .and_then(|s| s.get("keyId"))
        .and_then(Value::as_str);
    let known = known_key_id(status_key_id, &uid, ours, ctx, &vault_key).await?;
    let confirmed = known.as_ref().map(ToString::to_string);
    let derived = listed
        .spec_str(&["policyRef", "name"])
        .map(|policy| KeyId::of_vault_key(&PolicyTag::of(&ns, policy), &uid));
    for id in known.into_iter().chain(derived) {
        if deleting {
            ctx.ledger.revoke(&id).await?;
            ctx.ledger.delete_key(&id).await?;
            info!(key_id = %id, "revoked on delete");
        } else if ctx.ledger.key_record(&id).await?.is_some() {
            // Revoked, not retired: once the field is fixed the key may work again, as an
            // Invalid key does.
            ctx.ledger.revoke(&id).await?;
            info!(key_id = %id, "revoked: the VaultKey became unreadable");
        }
    }
    for secret in &owned {
        delete_secret(ctx, &secrets, Some(secret)).await?;
    }

    let api: Api<Listed<VaultKey>> = Api::namespaced(ctx.client.clone(), &ns);
    if deleting {
        ctx.metrics.unreadable("vaultkey", &uid, false);
        ctx.metrics.key_phase(&uid, None);
        set_finalizer(listed, &api, ctx, false).await?;
        return Ok(Action::await_change());
    }
    // Counted first: the alert must fire even if a write below is refused.
    ctx.metrics.unreadable("vaultkey", &uid, true);
    ctx.metrics.key_phase(&uid, Some(KeyPhase::Invalid));
    // The finalizer every key carries, so its deletion is seen here too (and counted out).
    set_finalizer(listed, &api, ctx, true).await?;
    let mut fields = serde_json::Map::from_iter([("phase".to_owned(), json!(KeyPhase::Invalid))]);
    // The key id stays on record, so a fixed key is known again as the same key; only an id its
    // record confirms (never one written there by others).
    if let Some(id) = confirmed {
        fields.insert("keyId".into(), id.into());
    }
    crate::unreadable::report(listed, ctx, &message(why), fields).await?;
    Ok(Action::await_change())
}

/// Adds (`held`) or removes our finalizer, leaving the others, guarded by the resourceVersion
/// read (a concurrent change makes the patch fail and the reconcile run again).
async fn set_finalizer(
    listed: &Listed<VaultKey>,
    api: &Api<Listed<VaultKey>>,
    ctx: &Context,
    held: bool,
) -> Result<()> {
    let others = listed
        .finalizers()
        .iter()
        .filter(|f| f.as_str() != FINALIZER)
        .cloned();
    let has = listed.finalizers().iter().any(|f| f == FINALIZER);
    if has == held {
        return Ok(());
    }
    let all: Vec<String> = others.chain(held.then(|| FINALIZER.to_owned())).collect();
    let patch = json!({
        "metadata": {"finalizers": all, "resourceVersion": listed.resource_version()}
    });
    ctx.timed(
        "write finalizers",
        api.patch(
            &listed.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_field_and_what_happens() {
        let listed: Listed<VaultKey> = serde_json::from_value(json!({
            "metadata": {"name": "k", "namespace": "ns", "generation": 2},
            "spec": {"policyRef": {"name": "p"}, "ttl": "0s", "dailyUsdCap": 5},
        }))
        .unwrap();
        let m = message(&listed.parse().unwrap_err());
        assert!(m.starts_with("spec.ttl: duration \"0s\" is zero"), "{m}");
        assert!(m.contains("refuses what it was issued"), "{m}");
    }
}
