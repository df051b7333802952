//! Whose Secret is it. The operator writes, reads a token from, and deletes only a Secret it
//! created for this very VaultKey: controlled by the VaultKey's uid and labelled as the
//! operator's. A `secretName` that names any other Secret (another key's, a policy's real
//! credentials, anything a person made) is never adopted, overwritten or deleted.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::context::MANAGER;

/// The label the operator puts on the Secrets it creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// What the Secret a VaultKey names is to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing<'a> {
    /// No such Secret: the operator may create it.
    Absent,
    /// Created by the operator for this VaultKey (its uid).
    Ours(&'a Secret),
    /// Anything else: left alone.
    Foreign,
}

/// The Secret's standing for the VaultKey with `uid`.
pub fn standing<'a>(secret: Option<&'a Secret>, uid: &str) -> Standing<'a> {
    let Some(s) = secret else {
        return Standing::Absent;
    };
    let controlled = s
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && o.uid == uid && o.kind == "VaultKey");
    let labelled = s.labels().get(MANAGED_BY).is_some_and(|v| v == MANAGER);
    if controlled && labelled {
        Standing::Ours(s)
    } else {
        Standing::Foreign
    }
}

/// Who a foreign Secret belongs to, in words for a condition and an Event.
pub fn owner_of(secret: &Secret) -> String {
    let refs = secret.owner_references();
    match refs
        .iter()
        .find(|o| o.controller == Some(true))
        .or(refs.first())
    {
        Some(o) => format!("owned by {} {} (uid {})", o.kind, o.name, o.uid),
        None if secret
            .labels()
            .get(MANAGED_BY)
            .is_some_and(|v| v == MANAGER) =>
        {
            "labelled as Keybrake's but owned by no VaultKey".into()
        }
        None => "not made by Keybrake (it has no owner)".into(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn secret(owner: Option<(&str, &str, bool)>, labelled: bool) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("s".into()),
                labels: labelled.then(|| [(MANAGED_BY.to_owned(), MANAGER.to_owned())].into()),
                owner_references: owner.map(|(kind, uid, controller)| {
                    vec![OwnerReference {
                        api_version: "keybrake.com/v1alpha1".into(),
                        kind: kind.into(),
                        name: "other".into(),
                        uid: uid.into(),
                        controller: Some(controller),
                        block_owner_deletion: None,
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn only_a_secret_made_for_this_uid_is_ours() {
        assert_eq!(standing(None, "u1"), Standing::Absent);
        let ours = secret(Some(("VaultKey", "u1", true)), true);
        assert_eq!(standing(Some(&ours), "u1"), Standing::Ours(&ours));
        for foreign in [
            secret(Some(("VaultKey", "u2", true)), true),
            secret(Some(("VaultKey", "u1", false)), true),
            secret(Some(("VaultKey", "u1", true)), false),
            secret(Some(("SpendPolicy", "u1", true)), true),
            secret(None, true),
            secret(None, false),
        ] {
            assert_eq!(
                standing(Some(&foreign), "u1"),
                Standing::Foreign,
                "{foreign:?}"
            );
        }
    }

    #[test]
    fn the_owner_is_named() {
        assert_eq!(
            owner_of(&secret(Some(("VaultKey", "u2", true)), true)),
            "owned by VaultKey other (uid u2)"
        );
        assert_eq!(
            owner_of(&secret(None, false)),
            "not made by Keybrake (it has no owner)"
        );
    }
}
