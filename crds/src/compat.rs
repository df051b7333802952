//! Whether the CRDs installed in a cluster declare every field this build writes and reads.
//! Helm installs CRDs but never upgrades them, so binaries newer than their CRDs are a normal
//! state after `helm upgrade`. A real API server then refuses a server-side apply of a status
//! field the CRD does not declare (a 500) and silently prunes it from other writes: the
//! deployables check at start and refuse to run, naming the fields, instead.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The property paths (`.status.spend.todayUsd`) that `wanted` declares and `installed` does
/// not, for the version this build serves.
pub fn missing_fields(
    installed: &CustomResourceDefinition,
    wanted: &CustomResourceDefinition,
) -> Vec<String> {
    let schema = |crd: &CustomResourceDefinition| {
        let version = &wanted.spec.versions[0].name;
        crd.spec
            .versions
            .iter()
            .find(|v| &v.name == version)
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| serde_json::to_value(&s.open_api_v3_schema).ok())
            .unwrap_or(Value::Null)
    };
    let (have, want) = (schema(installed), schema(wanted));
    if have.is_null() {
        return vec![format!("version {}", wanted.spec.versions[0].name)];
    }
    let mut missing = Vec::new();
    walk("", &have, &want, &mut missing);
    missing
}

fn walk(path: &str, have: &Value, want: &Value, missing: &mut Vec<String>) {
    // A schema that keeps unknown fields declares whatever is below it.
    if have.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        && have.get("properties").is_none()
    {
        return;
    }
    // The rules matter as much as the fields: a CRD without a rule this build relies on (say,
    // `revoked` being one-way) is older too.
    let rules = |v: &Value| -> Vec<String> {
        v.get("x-kubernetes-validations")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|r| r.get("rule").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let installed = rules(have);
    for rule in rules(want) {
        if !installed.contains(&rule) {
            let at = if path.is_empty() { "." } else { path };
            missing.push(format!("the rule {rule:?} on {at}"));
        }
    }
    for marker in ["x-kubernetes-list-type", "x-kubernetes-list-map-keys"] {
        if want.get(marker).is_some() && want.get(marker) != have.get(marker) {
            missing.push(format!("{marker} on {path}"));
        }
    }
    if let Some(props) = want.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let p = format!("{path}.{name}");
            match have.pointer(&format!("/properties/{name}")) {
                Some(h) => walk(&p, h, sub, missing),
                None => missing.push(p),
            }
        }
    }
    for nested in ["items", "additionalProperties"] {
        if let (Some(h), Some(w)) = (have.get(nested), want.get(nested)) {
            walk(&format!("{path}[]"), h, w, missing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::crds;

    #[test]
    fn the_generated_crds_lack_nothing_and_an_older_one_is_named() {
        for crd in crds() {
            assert!(missing_fields(&crd, &crd).is_empty());
        }
        let [_, vk] = crds();
        let mut older = serde_json::to_value(&vk).unwrap();
        let status = older
            .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties")
            .and_then(Value::as_object_mut)
            .unwrap();
        status.remove("keyId");
        let spend = status
            .get_mut("spend")
            .and_then(|s| s.get_mut("properties"))
            .and_then(Value::as_object_mut)
            .unwrap();
        spend.remove("todayUsd");
        let spec = older
            .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/spec")
            .unwrap();
        let rules = spec["x-kubernetes-validations"].as_array_mut().unwrap();
        rules.retain(|r| !r["rule"].as_str().unwrap().contains("oldSelf.revoked"));
        let older: CustomResourceDefinition = serde_json::from_value(older).unwrap();
        let mut missing = missing_fields(&older, &vk);
        missing.sort();
        assert_eq!(missing.len(), 3, "{missing:?}");
        assert_eq!(missing[0], ".status.keyId");
        assert_eq!(missing[1], ".status.spend.todayUsd");
        assert!(
            missing[2].contains("oldSelf.revoked") && missing[2].ends_with("on .spec"),
            "{}",
            missing[2]
        );
    }
}

/// Why the installed CRDs cannot be used by this build.
#[derive(Debug, thiserror::Error)]
pub enum Incompatible {
    /// A CRD is not installed.
    #[error(
        "the keybrake CRDs are not installed ({crd} is missing): run `kubectl apply -f manifests/crds/` (or `keybrake crds | kubectl apply -f -`)"
    )]
    Missing {
        /// The CRD's name.
        crd: String,
    },
    /// A CRD is older than this build.
    #[error(
        "the installed CRD {crd} is older than this build: it does not declare {}; apply this release's CRDs first (`kubectl apply -f manifests/crds/`: `helm upgrade` never upgrades CRDs)",
        fields.join(", ")
    )]
    Outdated {
        /// The CRD's name.
        crd: String,
        /// The fields it lacks.
        fields: Vec<String>,
    },
    /// The API server could not be asked.
    #[error("reading the installed CRDs: {0}")]
    Kube(#[from] kube::Error),
}

/// Reads both installed CRDs and checks they declare everything this build uses.
pub async fn check(client: &kube::Client) -> Result<(), Incompatible> {
    let api: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    for wanted in crate::manifests::crds() {
        let crd = wanted.metadata.name.clone().unwrap_or_default();
        let Some(installed) = api.get_opt(&crd).await? else {
            return Err(Incompatible::Missing { crd });
        };
        let fields = missing_fields(&installed, &wanted);
        if !fields.is_empty() {
            return Err(Incompatible::Outdated { crd, fields });
        }
    }
    Ok(())
}
