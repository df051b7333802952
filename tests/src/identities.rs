//! Test identities: static bearer tokens kube-lite's TokenReview accepts (its
//! `--token-auth-file`), and RBAC that grants them rights on vaultkeys, or not. The named
//! tokens are minted for the `keybrake` audience, as the projected tokens workloads present to
//! the proxy; the `*_DEFAULT` ones are default ServiceAccount tokens (the API server's
//! audience), which the proxy refuses and the API server accepts.

use kube_lite::review::StaticToken;

/// ServiceAccount `billing/hatchet-worker`: may create, get, list and delete vaultkeys in
/// `billing`.
pub const BILLING_WORKER: &str = "t-billing-hatchet-worker-2b8f0c";
/// ServiceAccount `billing/reader`: may only get and list vaultkeys in `billing`.
pub const BILLING_READER: &str = "t-billing-reader-9d41e7";
/// ServiceAccount `other/worker`: every vaultkey verb in `other`, nothing in `billing`.
pub const OTHER_WORKER: &str = "t-other-worker-5a0c3e";
/// `billing/hatchet-worker`'s default token (the API server's audience).
pub const BILLING_WORKER_DEFAULT: &str = "d-billing-hatchet-worker-61c2f0";
/// `billing/reader`'s default token (the API server's audience).
pub const BILLING_READER_DEFAULT: &str = "d-billing-reader-0b7a3e";
/// The audience the proxy asks TokenReview for.
pub const AUDIENCE: &str = "keybrake";
/// ServiceAccount `keybrake-system/keybrake-operator`, bound by the shipped manifests.
pub const OPERATOR: &str = "t-keybrake-operator-41c9aa";
/// ServiceAccount `keybrake-system/keybrake-proxy`, bound by the shipped manifests.
pub const PROXY: &str = "t-keybrake-proxy-e07b12";
/// User `alice` in `system:masters`: may do anything, and is not a ServiceAccount.
pub const ADMIN: &str = "t-admin-alice-77e1d2";

fn service_account(token: &str, ns: &str, name: &str) -> StaticToken {
    StaticToken {
        audiences: vec![AUDIENCE.into()],
        token: token.into(),
        user: format!("system:serviceaccount:{ns}:{name}"),
        uid: format!("uid-{ns}-{name}"),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
        ],
    }
}

/// A ServiceAccount's default token: valid for the API server only.
fn default_token(token: &str, ns: &str, name: &str) -> StaticToken {
    StaticToken {
        audiences: Vec::new(),
        ..service_account(token, ns, name)
    }
}

/// The tokens every test cluster accepts.
pub fn tokens() -> Vec<StaticToken> {
    vec![
        service_account(BILLING_WORKER, "billing", "hatchet-worker"),
        service_account(BILLING_READER, "billing", "reader"),
        service_account(OTHER_WORKER, "other", "worker"),
        default_token(BILLING_WORKER_DEFAULT, "billing", "hatchet-worker"),
        default_token(BILLING_READER_DEFAULT, "billing", "reader"),
        default_token(OPERATOR, "keybrake-system", "keybrake-operator"),
        default_token(PROXY, "keybrake-system", "keybrake-proxy"),
        StaticToken {
            audiences: vec![AUDIENCE.into()],
            token: ADMIN.into(),
            user: "alice".into(),
            uid: "uid-alice".into(),
            groups: vec!["system:masters".into()],
        },
    ]
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
