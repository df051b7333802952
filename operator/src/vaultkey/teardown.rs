//! What revoking and deleting a key touches, shared by the live and the unreadable paths: the
//! finalizer, the key id proven to be this VaultKey's, and its own Secret only.

use k8s_openapi::api::core::v1::Secret;
use keybrake_ledger::KeyId;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Preconditions},
};
use tracing::warn;

use super::secret;
use crate::{
    context::Context,
    error::{Error, Result},
};

/// Held on every VaultKey until its key is revoked in Redis.
pub const FINALIZER: &str = "keybrake.com/revoke";

/// The key id this VaultKey was issued: from its status or its own Secret (never from a Secret
/// it does not own), and only when the key record in Redis names this VaultKey, so a status
/// written by someone else cannot make the operator revoke or delete another key.
pub(super) async fn known_key_id(
    status_key_id: Option<&str>,
    uid: &str,
    secret: Option<&Secret>,
    ctx: &Context,
    vault_key: &str,
) -> Result<Option<KeyId>> {
    let from_status = status_key_id.and_then(|k| KeyId::parse(k).ok());
    let from_secret = secret
        .and_then(|s| s.annotations().get(secret::KEY_ID))
        .and_then(|k| KeyId::parse(k).ok());
    for id in [from_status, from_secret].into_iter().flatten() {
        if ctx.ledger.key_belongs_to(&id, vault_key, uid).await? {
            return Ok(Some(id));
        }
        warn!(key_id = %id, vault_key, "a key id that names no record of this VaultKey; ignored");
    }
    Ok(None)
}

/// Deletes the VaultKey's own Secret (`None` when it has none): only that object, by its uid.
pub(super) async fn delete_secret(
    ctx: &Context,
    secrets: &Api<Secret>,
    ours: Option<&Secret>,
) -> Result<()> {
    let Some(secret) = ours else {
        return Ok(());
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match ctx
        .timed("delete secret", secrets.delete(&secret.name_any(), &params))
        .await
    {
        Ok(_) => Ok(()),
        Err(Error::Kube(kube::Error::Api(s))) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}
