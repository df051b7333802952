//! A VaultKey as the operator's cache holds it: parsed once, when the watch brings it, into
//! its own type, or kept as stored with the reason when our types cannot read it (that key
//! alone is refused, as before; the watch never stops on it).
//!
//! Why not the stored JSON: a key held as `serde_json::Value` trees took about 8 KiB (each
//! small map is a B-tree node of eleven slots); the typed key a fraction of that, which is what
//! lets 50,000 keys be held within the operator's memory budget.

use std::borrow::Cow;

use keybrake_crds::{Listed, Unreadable, VaultKey};
use kube::{Resource, api::ObjectMeta, core::NamespaceResourceScope};
use serde::{Deserialize, Deserializer};

/// A cached VaultKey.
#[derive(Debug, Clone)]
pub enum CachedKey {
    /// Read by our types.
    Read(Box<VaultKey>),
    /// Stored, but our types cannot read it: why, and the object as stored.
    Unreadable(Box<Listed<VaultKey>>, Unreadable),
}

impl From<Listed<VaultKey>> for CachedKey {
    fn from(listed: Listed<VaultKey>) -> CachedKey {
        match listed.parse() {
            Ok(vk) => CachedKey::Read(Box::new(vk)),
            Err(why) => CachedKey::Unreadable(Box::new(listed), why),
        }
    }
}

impl<'de> Deserialize<'de> for CachedKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CachedKey, D::Error> {
        Listed::<VaultKey>::deserialize(d).map(CachedKey::from)
    }
}

impl CachedKey {
    /// The policy the key names, also when the rest of it cannot be read.
    pub fn policy_name(&self) -> Option<&str> {
        match self {
            CachedKey::Read(vk) => Some(&vk.spec.policy_ref.name),
            CachedKey::Unreadable(listed, _) => listed.spec_str(&["policyRef", "name"]),
        }
    }
}

impl Resource for CachedKey {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        VaultKey::kind(&())
    }

    fn group(_: &()) -> Cow<'_, str> {
        VaultKey::group(&())
    }

    fn version(_: &()) -> Cow<'_, str> {
        VaultKey::version(&())
    }

    fn plural(_: &()) -> Cow<'_, str> {
        VaultKey::plural(&())
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            CachedKey::Read(vk) => &vk.metadata,
            CachedKey::Unreadable(listed, _) => &listed.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            CachedKey::Read(vk) => &mut vk.metadata,
            CachedKey::Unreadable(listed, _) => &mut listed.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_key_our_types_cannot_read_is_kept_with_why() {
        let read: CachedKey = serde_json::from_value(json!({
            "apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey",
            "metadata": {"name": "k", "namespace": "ns", "uid": "u"},
            "spec": {"policyRef": {"name": "p"}, "dailyUsdCap": 5, "ttl": "1h"},
        }))
        .unwrap();
        assert!(matches!(read, CachedKey::Read(_)), "{read:?}");
        assert_eq!(read.policy_name(), Some("p"));
        let unreadable: CachedKey = serde_json::from_value(json!({
            "apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey",
            "metadata": {"name": "k", "namespace": "ns", "uid": "u"},
            "spec": {"policyRef": {"name": "p"}, "dailyUsdCap": "many"},
        }))
        .unwrap();
        assert!(
            matches!(&unreadable, CachedKey::Unreadable(_, why) if why.field.starts_with("spec")),
            "{unreadable:?}"
        );
        assert_eq!(unreadable.policy_name(), Some("p"));
        assert_eq!(unreadable.meta().name.as_deref(), Some("k"));
    }
}
