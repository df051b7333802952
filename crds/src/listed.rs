//! Our resources as the API server stores them, for the watches: metadata typed, spec and
//! status kept as JSON and parsed only when used.
//!
//! A watch of the typed `VaultKey` fails as a whole when one stored object does not parse (a
//! value the CRD schema admits and our parser refuses, or one stored under an older schema): one
//! bad object, written by anyone allowed to write one, would stop the operator and the proxy
//! from seeing every other object, revocations included. A watch of `Listed<VaultKey>` never
//! fails on content; [`Listed::parse`] says which object is unreadable, at which field and why,
//! and that object alone is refused.

use std::{borrow::Cow, fmt, marker::PhantomData};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::Resource;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// A custom resource `K` as stored: its metadata, and its spec and status as JSON.
#[derive(Serialize, Deserialize)]
pub struct Listed<K> {
    /// The object's metadata (the API server guarantees its shape).
    pub metadata: ObjectMeta,
    /// The spec, unparsed.
    #[serde(default)]
    pub spec: Value,
    /// The status, unparsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

// Derives would ask `K` for the same traits; a `Listed` holds no `K`.
impl<K> Clone for Listed<K> {
    fn clone(&self) -> Self {
        Listed {
            metadata: self.metadata.clone(),
            spec: self.spec.clone(),
            status: self.status.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Listed<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listed")
            .field("metadata", &self.metadata)
            .field("spec", &self.spec)
            .field("status", &self.status)
            .finish()
    }
}

impl<K> PartialEq for Listed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.metadata == other.metadata && self.spec == other.spec && self.status == other.status
    }
}

/// Why a stored object cannot be read as its type: the field and the parser's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Unreadable {
    /// The field's path, as kubectl and the API server write it (`spec.allowedEndpoints[0]`).
    pub field: String,
    /// What the parser said.
    pub message: String,
}

impl<K> Listed<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    /// The object as its type, or which field of its spec cannot be read and why. A status
    /// that cannot be read is dropped rather than refused: it is the binaries' own report, which
    /// they write again, and anyone allowed to write status must not be able to make a key
    /// unusable by writing a bad one.
    pub fn parse(&self) -> Result<K, Unreadable> {
        match self.parse_with(self.status.as_ref()) {
            Err(e) if e.field == "status" || e.field.starts_with("status.") => {
                self.parse_with(None)
            }
            parsed => parsed,
        }
    }

    fn parse_with(&self, status: Option<&Value>) -> Result<K, Unreadable> {
        let mut object = serde_json::Map::new();
        object.insert("apiVersion".into(), K::api_version(&()).into());
        object.insert("kind".into(), K::kind(&()).into());
        let metadata = serde_json::to_value(&self.metadata).map_err(|e| Unreadable {
            field: "metadata".into(),
            message: e.to_string(),
        })?;
        object.insert("metadata".into(), metadata);
        object.insert("spec".into(), self.spec.clone());
        if let Some(status) = status {
            object.insert("status".into(), status.clone());
        }
        serde_path_to_error::deserialize::<_, K>(Value::Object(object)).map_err(|e| Unreadable {
            field: e.path().to_string(),
            message: without_position(&e.inner().to_string()),
        })
    }

    /// A string field of the spec, read without parsing the rest (`["policyRef", "name"]`):
    /// what a watch needs to map one object to another even when the object is unreadable.
    pub fn spec_str(&self, path: &[&str]) -> Option<&str> {
        self.spec_at(path).and_then(Value::as_str)
    }

    /// A boolean field of the spec, read without parsing the rest.
    pub fn spec_bool(&self, path: &[&str]) -> Option<bool> {
        self.spec_at(path).and_then(Value::as_bool)
    }

    fn spec_at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(&self.spec, |v, key| v.get(key))
    }

    /// The status' conditions, those that read as conditions (none when the status has none).
    pub fn conditions(&self) -> Vec<Condition> {
        self.status
            .as_ref()
            .and_then(|s| s.get("conditions"))
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default()
    }
}

/// serde_json appends " at line L column C", meaningless for an object read from a watch.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

impl<K> Resource for Listed<K>
where
    K: Resource<DynamicType = ()>,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{SpendPolicy, VaultKey};

    fn listed<K>(spec: Value) -> Listed<K> {
        serde_json::from_value(json!({
            "apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey",
            "metadata": {"name": "k", "namespace": "billing", "generation": 2},
            "spec": spec,
            "status": {"phase": "Active"},
        }))
        .unwrap()
    }

    /// What the API server admits and our parsers refuse is a readable object with an
    /// unreadable field, named with its path and the parser's words.
    #[test]
    fn an_unreadable_field_is_named_with_the_parsers_message() {
        let cases = [
            (
                json!({"policyRef": {"name": "stripe"}, "dailyUsdCap": 5, "allowedEndpoints": ["POST /v1/charges", "POST /v1/../charges"]}),
                "spec.allowedEndpoints[1]",
                "..",
            ),
            (
                json!({"policyRef": {"name": "stripe"}, "dailyUsdCap": 5, "ttl": "0s"}),
                "spec.ttl",
                "zero",
            ),
            (
                json!({"policyRef": {"name": "stripe"}, "dailyUsdCap": "5.0000001"}),
                "spec.dailyUsdCap",
                "5.0000001",
            ),
        ];
        for (spec, field, says) in cases {
            let key = listed::<VaultKey>(spec.clone());
            let err = key.parse().unwrap_err();
            assert_eq!(err.field, field, "{spec}: {err}");
            assert!(err.message.contains(says), "{spec}: {err}");
            assert!(!err.message.contains(" at line "), "{err}");
            assert_eq!(key.spec_str(&["policyRef", "name"]), Some("stripe"));
        }
    }

    #[test]
    fn an_unreadable_status_is_dropped_not_refused() {
        let mut key =
            listed::<VaultKey>(json!({"policyRef": {"name": "stripe"}, "dailyUsdCap": 5}));
        key.status = Some(
            json!({"phase": "Active", "expiresAt": "not a time", "rotation": {"rotations": -1}}),
        );
        let vk = key.parse().unwrap();
        assert!(vk.status.is_none());
    }

    #[test]
    fn a_good_object_parses_as_its_type_and_round_trips() {
        let key = listed::<VaultKey>(
            json!({"policyRef": {"name": "stripe"}, "dailyUsdCap": 5, "revoked": true}),
        );
        let vk = key.parse().unwrap();
        assert!(vk.spec.revoked);
        assert_eq!(vk.metadata.generation, Some(2));
        assert_eq!(key.spec_bool(&["revoked"]), Some(true));
        let again: Listed<VaultKey> =
            serde_json::from_value(serde_json::to_value(&key).unwrap()).unwrap();
        assert_eq!(again, key);
        assert_eq!(Listed::<SpendPolicy>::plural(&()), "spendpolicies");
        assert_eq!(
            Listed::<VaultKey>::api_version(&()),
            "keybrake.com/v1alpha1"
        );
    }
}
