//! Whose Secret is it. The operator writes, reads a token from, and deletes only a Secret it
//! created for this very VaultKey: controlled by the VaultKey's uid and labelled as the
//! operator's. A `secretName` that names any other Secret (another key's, a policy's real
//! credentials, anything a person made) is never adopted, overwritten or deleted.

use k8s_openapi::api::core::v1::Secret;
use keybrake_ledger::{KeyId, KeyRecord, Token};
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
    Foreign(&'a Secret),
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
        Standing::Foreign(s)
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

/// Whether `token`, read from the VaultKey's own Secret, is the one the operator issued it:
/// under its key id, and held by the Redis record of this VaultKey (its name and uid) as the
/// current secret, or as the previous one within a rotation overlap (a rotation interrupted
/// between Redis and the Secret). A Secret anyone wrote otherwise is not trusted: the key gets
/// a new token.
pub fn issued_here(
    stored: Option<&KeyRecord>,
    vault_key: &str,
    uid: &str,
    key_id: &KeyId,
    token: &Token,
    now_ms: i64,
) -> bool {
    let Some(r) = stored else {
        return false;
    };
    let hash = token.secret_hash();
    let overlap = r.prev_valid_until_ms.is_some_and(|until| until > now_ms);
    token.key_id == *key_id
        && r.vault_key == vault_key
        && (r.vault_key_uid.is_empty() || r.vault_key_uid == uid)
        && (r.secret_hash == hash || (overlap && r.prev_secret_hash.as_deref() == Some(&hash)))
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
                Standing::Foreign(&foreign),
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

    fn record(
        vault_key: &str,
        uid: &str,
        current: &Token,
        prev: Option<(&Token, i64)>,
    ) -> KeyRecord {
        KeyRecord {
            vendor: keybrake_crds::Vendor::Stripe,
            vault_key: vault_key.into(),
            vault_key_uid: uid.into(),
            policy: "billing/stripe".into(),
            secret_hash: current.secret_hash(),
            prev_secret_hash: prev.map(|(t, _)| t.secret_hash()),
            prev_valid_until_ms: prev.map(|(_, until)| until),
            revoked: false,
            expires_at_ms: None,
            daily_cap: None,
            total_cap: None,
            per_call_cap: None,
            endpoints: Vec::new(),
            run_label: String::new(),
        }
    }

    #[test]
    fn a_secrets_token_is_trusted_only_when_redis_holds_it_for_this_key() {
        use keybrake_crds::Vendor;
        let tag = keybrake_ledger::PolicyTag::of("billing", "stripe");
        let mine = KeyId::of_vault_key(&tag, "uid-mine");
        let victim = KeyId::of_vault_key(&tag, "uid-victim");
        let issued = Token::generate(Vendor::Stripe, mine.clone());
        let stored = record("billing/mine", "uid-mine", &issued, None);
        assert!(issued_here(
            Some(&stored),
            "billing/mine",
            "uid-mine",
            &mine,
            &issued,
            0
        ));
        // A token someone wrote into the Secret: another secret, another key's id, another
        // object of the same name.
        let planted = Token::generate(Vendor::Stripe, mine.clone());
        assert!(!issued_here(
            Some(&stored),
            "billing/mine",
            "uid-mine",
            &mine,
            &planted,
            0
        ));
        let theirs = Token::generate(Vendor::Stripe, victim.clone());
        let victims = record("billing/victim", "uid-victim", &theirs, None);
        assert!(!issued_here(
            Some(&victims),
            "billing/mine",
            "uid-mine",
            &mine,
            &theirs,
            0
        ));
        assert!(!issued_here(
            Some(&victims),
            "billing/mine",
            "uid-mine",
            &victim,
            &theirs,
            0
        ));
        assert!(!issued_here(
            Some(&stored),
            "billing/mine",
            "uid-later",
            &mine,
            &issued,
            0
        ));
        assert!(!issued_here(
            None,
            "billing/mine",
            "uid-mine",
            &mine,
            &issued,
            0
        ));
        // A rotation cut between Redis and the Secret: the previous token, within its overlap.
        let next = Token::generate(Vendor::Stripe, mine.clone());
        let rotated = record("billing/mine", "uid-mine", &next, Some((&issued, 1_000)));
        assert!(issued_here(
            Some(&rotated),
            "billing/mine",
            "uid-mine",
            &mine,
            &issued,
            999
        ));
        assert!(!issued_here(
            Some(&rotated),
            "billing/mine",
            "uid-mine",
            &mine,
            &issued,
            1_000
        ));
        // A record written before uids were recorded matches on the name.
        let mut legacy = stored.clone();
        legacy.vault_key_uid.clear();
        assert!(issued_here(
            Some(&legacy),
            "billing/mine",
            "uid-mine",
            &mine,
            &issued,
            0
        ));
    }
}
