//! Which watched changes are worth a reconcile. Status writes bump resourceVersion but not
//! generation; passing them on would re-reconcile every key of a policy each time the policy's
//! key count changes (quadratic at scale).

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
}
