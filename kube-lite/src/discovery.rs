//! Discovery (legacy and aggregated), `/version`, and the minimal `/openapi/v3` that
//! `kubectl apply` needs.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::resources::{Registry, Resource};

/// The Content-Type kubectl requires for aggregated discovery.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.contains("as=APIGroupDiscoveryList")
}

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-kube-lite",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "n/a",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// The verbs of a resource in discovery.
fn verbs(r: &Resource) -> &'static [&'static str] {
    if crate::review::is_review(r) {
        &["create"]
    } else {
        &VERBS
    }
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Groups and their versions, core (`""`) first.
fn groups(reg: &Registry) -> BTreeMap<String, Vec<&Resource>> {
    let mut out: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for r in reg.all() {
        out.entry(r.group.clone()).or_default().push(r);
    }
    out
}

fn aggregated_resource(r: &Resource) -> Value {
    let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let mut v = json!({
        "resource": r.plural,
        "responseKind": kind,
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": verbs(r),
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if r.status_subresource {
        v["subresources"] = json!([{"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}]);
    }
    v
}

/// `/api` (core) or `/apis` (every other group) as an APIGroupDiscoveryList.
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let items: Vec<Value> = groups(reg)
        .into_iter()
        .filter(|(g, _)| g.is_empty() == core)
        .map(|(g, resources)| {
            let version = resources.first().map(|r| r.version.clone()).unwrap_or_default();
            json!({
                "metadata": {"name": g, "creationTimestamp": null},
                "versions": [{
                    "version": version,
                    "resources": resources.iter().map(|r| aggregated_resource(r)).collect::<Vec<_>>(),
                    "freshness": "Current",
                }],
            })
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// Legacy `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn api_group(g: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{g}/{version}"), "version": version});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [gv], "preferredVersion": gv})
}

/// Legacy `/apis`.
pub fn group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = groups(reg)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, rs)| api_group(&g, &rs[0].version))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/{group}`.
pub fn group(reg: &Registry, g: &str) -> Option<Value> {
    reg.all()
        .find(|r| r.group == g)
        .map(|r| api_group(g, &r.version))
}

/// Legacy `/api/v1` or `/apis/{group}/{version}`: an APIResourceList.
pub fn resource_list(reg: &Registry, g: &str, version: &str) -> Option<Value> {
    if !reg.serves_group_version(g, version) {
        return None;
    }
    let mut resources = Vec::new();
    for r in reg.all().filter(|r| r.group == g && r.version == version) {
        let mut v = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            v["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            v["categories"] = json!(r.categories);
        }
        resources.push(v);
        if r.status_subresource {
            resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if g.is_empty() {
        version.to_owned()
    } else {
        format!("{g}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// `/openapi/v3`: where each group version's document is, with a hash that changes when the
/// served resources do (kubectl caches by hash).
pub fn openapi_root(reg: &Registry, generation: u64) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, rs) in groups(reg) {
        let version = &rs[0].version;
        let key = if g.is_empty() {
            format!("api/{version}")
        } else {
            format!("apis/{g}/{version}")
        };
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={generation:016X}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/{api/v1 | apis/g/v}`: a patch operation per resource (what kubectl apply
/// looks for) and, for custom resources, their schema (what `kubectl explain` reads).
pub fn openapi_group_version(reg: &Registry, g: &str, version: &str) -> Option<Value> {
    if !reg.serves_group_version(g, version) {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    let prefix = if g.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{g}/{version}")
    };
    for r in reg.all().filter(|r| r.group == g && r.version == version) {
        let gvk = json!({"group": g, "version": version, "kind": r.kind});
        let path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        paths.insert(path, json!({"patch": {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
            "responses": {"200": {"description": "OK"}},
        }}));
        if let Some(schema) = &r.schema {
            let reversed_group: Vec<&str> = g.split('.').rev().collect();
            let mut s = (**schema).clone();
            s["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(
                format!("{}.{version}.{}", reversed_group.join("."), r.kind),
                s,
            );
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-kube-lite"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_lists_core_and_groups_apart() {
        let reg = Registry::with_builtins();
        let core = aggregated(&reg, true);
        assert_eq!(core["items"].as_array().unwrap().len(), 1);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        let groups = aggregated(&reg, false);
        let names: Vec<&str> = groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"apps") && names.contains(&"coordination.k8s.io"));
        let deploy = groups["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        assert_eq!(
            deploy["versions"][0]["resources"][0]["subresources"][0]["subresource"],
            "status"
        );
    }

    #[test]
    fn legacy_resource_lists_and_openapi() {
        let reg = Registry::with_builtins();
        let v1 = resource_list(&reg, "", "v1").unwrap();
        assert!(
            v1["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "secrets")
        );
        assert!(resource_list(&reg, "", "v9").is_none());
        let root = openapi_root(&reg, 3);
        assert_eq!(
            root["paths"]["api/v1"]["serverRelativeURL"],
            "/openapi/v3/api/v1?hash=0000000000000003"
        );
        let doc = openapi_group_version(&reg, "", "v1").unwrap();
        assert!(doc["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"]["x-kubernetes-group-version-kind"].is_object());
    }
}
