//! Which watched changes are worth a reconcile. Status writes bump resourceVersion but not
//! generation; passing them on would re-reconcile every key of a policy each time the policy's
//! key count changes (quadratic at scale). These filters keep the stable `watches` API.

use std::{collections::HashMap, sync::Mutex};

use kube::{Resource, ResourceExt};

/// Remembers the last generation seen per object.
#[derive(Default)]
pub struct GenerationChanges(Mutex<HashMap<String, i64>>);

impl GenerationChanges {
    /// True the first time an object is seen and whenever its generation moved since.
    pub fn changed<K: Resource>(&self, obj: &K) -> bool {
        let (Some(uid), Some(generation)) = (obj.uid(), obj.meta().generation) else {
            return true;
        };
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        seen.insert(uid, generation) != Some(generation)
    }
}

/// Remembers which objects exist, to pass on only arrivals and deletions.
#[derive(Default)]
pub struct Membership(Mutex<HashMap<String, ()>>);

impl Membership {
    /// True when the object is new or on its way out.
    pub fn changed<K: Resource>(&self, obj: &K) -> bool {
        let Some(uid) = obj.uid() else { return true };
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if obj.meta().deletion_timestamp.is_some() {
            seen.remove(&uid);
            return true;
        }
        seen.insert(uid, ()).is_none()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn obj(uid: &str, generation: i64, deleting: bool) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                generation: Some(generation),
                deletion_timestamp: deleting.then_some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        jiff::Timestamp::UNIX_EPOCH,
                    ),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn generations() {
        let g = GenerationChanges::default();
        assert!(g.changed(&obj("a", 1, false)));
        assert!(!g.changed(&obj("a", 1, false)), "a status write");
        assert!(g.changed(&obj("a", 2, false)));
        assert!(g.changed(&obj("b", 2, false)));
    }

    #[test]
    fn membership() {
        let m = Membership::default();
        assert!(m.changed(&obj("a", 1, false)));
        assert!(!m.changed(&obj("a", 2, false)));
        assert!(m.changed(&obj("a", 2, true)));
        assert!(m.changed(&obj("a", 2, true)), "the final DELETED event too");
    }
}
