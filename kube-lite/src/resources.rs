//! What the server serves: the built-in kinds the project needs, and the kinds CRDs add.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::Value;

/// A printer column (`additionalPrinterColumns`) for Table output.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Header, e.g. `Phase`.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// Simple JSONPath, e.g. `.status.phase`.
    pub json_path: String,
    /// 0 shows by default; higher only with `-o wide`.
    pub priority: i64,
    /// For `kubectl get -o wide` headers and docs.
    pub description: String,
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct Resource {
    /// API group (`""` for core).
    pub group: String,
    /// The served version.
    pub version: String,
    /// Kind, e.g. `VaultKey`.
    pub kind: String,
    /// Plural name in paths, e.g. `vaultkeys`.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`vk`).
    pub short_names: Vec<String>,
    /// Categories (`keybrake`, `all`).
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (then main writes keep status, status writes keep
    /// the rest).
    pub status_subresource: bool,
    /// Whether `metadata.generation` is tracked.
    pub generation: bool,
    /// The CRD's `openAPIV3Schema`, enforced on writes.
    pub schema: Option<Arc<Value>>,
    /// Printer columns for Table output (besides Name and, last, Age).
    pub columns: Vec<Column>,
    /// Field paths allowed in field selectors besides `metadata.name`/`metadata.namespace`.
    pub selectable_fields: Vec<String>,
    /// Whether this kind came from a CRD.
    pub custom: bool,
}

impl Resource {
    /// `apiVersion` of objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` as used in messages (`vaultkeys.keybrake.com`, `secrets`).
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Kind.group` as used in 422 messages (`VaultKey.keybrake.com`, `Secret`).
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The identity under which objects are stored.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    fn builtin(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Resource {
        Resource {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status_subresource: false,
            generation: false,
            schema: None,
            columns: Vec::new(),
            selectable_fields: Vec::new(),
            custom: false,
        }
    }

    fn short(mut self, names: &[&str]) -> Resource {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    fn with_status(mut self) -> Resource {
        self.status_subresource = true;
        self.generation = true;
        self
    }

    fn column(mut self, name: &str, type_: &str, json_path: &str) -> Resource {
        self.columns.push(Column {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            priority: 0,
            description: String::new(),
        });
        self
    }

    fn selectable(mut self, fields: &[&str]) -> Resource {
        self.selectable_fields = fields.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// Identity of a stored resource: group and plural (one served version each).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// API group.
    pub group: String,
    /// Plural name.
    pub plural: String,
}

impl ResourceKey {
    /// `plural.group`, or `plural` for core.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The built-in kinds the project needs: a table, as long as the list of kinds.
pub fn builtins() -> Vec<Resource> {
    let event_fields = [
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];
    vec![
        Resource::builtin("", "v1", "Namespace", "namespaces", false)
            .short(&["ns"])
            .column("Status", "string", ".status.phase"),
        Resource::builtin("", "v1", "Secret", "secrets", true)
            .column("Type", "string", ".type")
            .selectable(&["type"]),
        Resource::builtin("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]),
        Resource::builtin("", "v1", "ServiceAccount", "serviceaccounts", true).short(&["sa"]),
        Resource::builtin("", "v1", "Service", "services", true)
            .short(&["svc"])
            .with_status(),
        Resource::builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        )
        .short(&["pdb"])
        .with_status(),
        Resource::builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        )
        .short(&["netpol"]),
        Resource::builtin("", "v1", "Event", "events", true)
            .short(&["ev"])
            .column("Type", "string", ".type")
            .column("Reason", "string", ".reason")
            .column("Message", "string", ".message")
            .selectable(&event_fields),
        Resource::builtin("events.k8s.io", "v1", "Event", "events", true)
            .short(&["ev"])
            .selectable(&[
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "reason",
                "type",
            ]),
        Resource::builtin("apps", "v1", "Deployment", "deployments", true)
            .short(&["deploy"])
            .with_status(),
        Resource::builtin("apps", "v1", "StatefulSet", "statefulsets", true)
            .short(&["sts"])
            .with_status(),
        Resource::builtin("apps", "v1", "DaemonSet", "daemonsets", true)
            .short(&["ds"])
            .with_status(),
        Resource::builtin("coordination.k8s.io", "v1", "Lease", "leases", true),
        Resource::builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        Resource::builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        Resource::builtin(
            "authentication.k8s.io",
            "v1",
            "TokenReview",
            "tokenreviews",
            false,
        ),
        Resource::builtin(
            "authorization.k8s.io",
            "v1",
            "SubjectAccessReview",
            "subjectaccessreviews",
            false,
        ),
        Resource::builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        )
        .short(&["crd", "crds"])
        .with_status(),
    ]
}

/// Reads a CRD object into the resources it serves (its served versions share one store; the
/// storage version is served). Errors name the bad field.
pub fn from_crd(crd: &Value) -> Result<Resource, String> {
    let spec = crd.get("spec").ok_or("spec: Required value")?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let names = spec.get("names").ok_or("spec.names: Required value")?;
    let group = s(spec, "group").ok_or("spec.group: Required value")?;
    let kind = s(names, "kind").ok_or("spec.names.kind: Required value")?;
    let plural = s(names, "plural").ok_or("spec.names.plural: Required value")?;
    let expected = format!("{plural}.{group}");
    if s(crd.get("metadata").unwrap_or(&Value::Null), "name").as_deref() != Some(expected.as_str())
    {
        return Err(format!(
            "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected})"
        ));
    }
    let scope = s(spec, "scope").ok_or("spec.scope: Required value")?;
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or("spec.versions: Required value")?;
    let version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool).unwrap_or(false))
        .or_else(|| versions.first())
        .ok_or("spec.versions: Required value")?;
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let columns = version
        .get("additionalPrinterColumns")
        .and_then(Value::as_array)
        .map(|cols| {
            cols.iter()
                .map(|c| Column {
                    name: s(c, "name").unwrap_or_default(),
                    type_: s(c, "type").unwrap_or_else(|| "string".into()),
                    json_path: s(c, "jsonPath").unwrap_or_default(),
                    priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    description: s(c, "description").unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    let selectable = version
        .get("selectableFields")
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|x| s(x, "jsonPath"))
                .map(|p| p.trim_start_matches('.').to_owned())
                .collect()
        })
        .unwrap_or_default();
    Ok(Resource {
        group,
        version: s(version, "name").ok_or("spec.versions[0].name: Required value")?,
        singular: s(names, "singular").unwrap_or_else(|| kind.to_ascii_lowercase()),
        kind,
        plural,
        namespaced: scope == "Namespaced",
        short_names: list(names.get("shortNames")),
        categories: list(names.get("categories")),
        status_subresource: version.pointer("/subresources/status").is_some(),
        generation: true,
        schema: version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .map(Arc::new),
        columns,
        selectable_fields: selectable,
        custom: true,
    })
}

/// The served resources, looked up by group and plural (or singular, kind, short name).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_key: BTreeMap<ResourceKey, Arc<Resource>>,
}

impl Registry {
    /// A registry of the built-in kinds.
    pub fn with_builtins() -> Registry {
        let mut r = Registry::default();
        for res in builtins() {
            r.insert(res);
        }
        r
    }

    /// Serves `res` (replacing a previous definition of the same group and plural).
    pub fn insert(&mut self, res: Resource) {
        self.by_key.insert(res.key(), Arc::new(res));
    }

    /// Stops serving a resource.
    pub fn remove(&mut self, key: &ResourceKey) {
        self.by_key.remove(key);
    }

    /// The resource at `/apis/{group}/{version}/{plural}`.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<Resource>> {
        let key = ResourceKey {
            group: group.into(),
            plural: plural.into(),
        };
        self.by_key
            .get(&key)
            .filter(|r| r.version == version)
            .cloned()
    }

    /// Every served resource.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.by_key.values()
    }

    /// Whether a group/version is served at all.
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.all().any(|r| r.group == group && r.version == version)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_a_crd() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wd"]},
                "scope": "Namespaced",
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "schema": {"openAPIV3Schema": {"type": "object"}}}]
            }
        });
        let r = from_crd(&crd).unwrap();
        assert_eq!(r.api_version(), "example.com/v1");
        assert!(r.namespaced && r.status_subresource && r.custom);
        assert_eq!(r.short_names, ["wd"]);
        assert_eq!(r.columns[0].json_path, ".spec.size");
        assert_eq!(r.qualified_kind(), "Widget.example.com");
        let mut bad = crd.clone();
        bad["metadata"]["name"] = json!("widgets");
        assert!(from_crd(&bad).unwrap_err().contains("widgets.example.com"));
    }

    #[test]
    fn looks_up_by_group_version_plural() {
        let r = Registry::with_builtins();
        assert!(r.get("", "v1", "secrets").is_some());
        assert!(r.get("", "v2", "secrets").is_none());
        assert!(
            r.get("apps", "v1", "deployments")
                .unwrap()
                .status_subresource
        );
        assert!(r.serves_group_version("coordination.k8s.io", "v1"));
    }
}
