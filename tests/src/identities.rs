//! Test identities: ServiceAccounts whose tokens the real TokenRequest API mints, and RBAC that
//! grants them rights on vaultkeys, or not. The named tokens are minted for the `keybrake`
//! audience, as the projected tokens workloads present to the proxy; the `*_default` ones carry
//! the API server's own audience (a Pod's default token), which the proxy refuses and the API
//! server accepts.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::{
    core::v1::{Namespace, ServiceAccount},
    rbac::v1::ClusterRoleBinding,
};
use keybrake_control_plane::ControlPlane;
use kube::{Api, api::PostParams};

/// The audience the proxy asks TokenReview for.
pub const AUDIENCE: &str = "keybrake";

/// The tokens of the test identities on one control plane.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// ServiceAccount `billing/hatchet-worker`: may create, get, list and delete vaultkeys in
    /// `billing` (with [`RBAC`] applied).
    pub billing_worker: String,
    /// ServiceAccount `billing/reader`: may only get and list vaultkeys in `billing`.
    pub billing_reader: String,
    /// ServiceAccount `other/worker`: every vaultkey verb in `other`, nothing in `billing`.
    pub other_worker: String,
    /// `billing/hatchet-worker`'s default token (the API server's audience).
    pub billing_worker_default: String,
    /// `billing/reader`'s default token (the API server's audience).
    pub billing_reader_default: String,
    /// ServiceAccount `keybrake-system/keybrake-operator` (the API server's audience), bound by
    /// the shipped manifests.
    pub operator: String,
    /// ServiceAccount `keybrake-system/keybrake-proxy` (the API server's audience), bound by the
    /// shipped manifests.
    pub proxy: String,
    /// ServiceAccount `keybrake-system/test-admin`, bound to `cluster-admin`: may do anything
    /// (the `keybrake` audience).
    pub admin: String,
}

/// Mints every test identity's token, creating its namespace and ServiceAccount when missing
/// (and the administrator's ClusterRoleBinding).
pub async fn mint(plane: &ControlPlane) -> Result<Tokens> {
    let client = plane.client().await?;
    for (ns, name) in [
        ("billing", "hatchet-worker"),
        ("billing", "reader"),
        ("other", "worker"),
        ("keybrake-system", "keybrake-operator"),
        ("keybrake-system", "keybrake-proxy"),
        ("keybrake-system", "test-admin"),
    ] {
        create(
            &Api::<Namespace>::all(client.clone()),
            serde_json::json!({"metadata": {"name": ns}}),
        )
        .await?;
        create(
            &Api::<ServiceAccount>::namespaced(client.clone(), ns),
            serde_json::json!({"metadata": {"name": name}}),
        )
        .await?;
    }
    create(
        &Api::<ClusterRoleBinding>::all(client),
        serde_json::json!({
            "metadata": {"name": "keybrake-test-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "test-admin", "namespace": "keybrake-system"}],
        }),
    )
    .await?;
    let ttl = Duration::from_secs(3600);
    let keybrake = [AUDIENCE];
    Ok(Tokens {
        billing_worker: plane
            .token("billing", "hatchet-worker", &keybrake, ttl)
            .await?,
        billing_reader: plane.token("billing", "reader", &keybrake, ttl).await?,
        other_worker: plane.token("other", "worker", &keybrake, ttl).await?,
        billing_worker_default: plane.token("billing", "hatchet-worker", &[], ttl).await?,
        billing_reader_default: plane.token("billing", "reader", &[], ttl).await?,
        operator: plane
            .token("keybrake-system", "keybrake-operator", &[], ttl)
            .await?,
        proxy: plane
            .token("keybrake-system", "keybrake-proxy", &[], ttl)
            .await?,
        admin: plane
            .token("keybrake-system", "test-admin", &keybrake, ttl)
            .await?,
    })
}

/// Creates an object unless one of that name exists.
async fn create<K>(api: &Api<K>, object: serde_json::Value) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object)?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The namespace `other` and the Roles and RoleBindings behind the identities above.
pub const RBAC: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: keybrake-vaultkey-issuer}
rules:
- apiGroups: [keybrake.com]
  resources: [vaultkeys]
  verbs: [create, get, list, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: hatchet-worker-issues-keys, namespace: billing}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: keybrake-vaultkey-issuer}
subjects:
- {kind: ServiceAccount, name: hatchet-worker, namespace: billing}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: vaultkey-reader, namespace: billing}
rules:
- apiGroups: [keybrake.com]
  resources: [vaultkeys]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads-keys, namespace: billing}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: vaultkey-reader}
subjects:
- {kind: ServiceAccount, name: reader, namespace: billing}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: worker-issues-keys, namespace: other}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: keybrake-vaultkey-issuer}
subjects:
- {kind: ServiceAccount, name: worker, namespace: other}
"#;
