//! Request paths and query strings, parsed the way kube-rs and kubectl send them.

use crate::error::{ApiError, Result};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/version`.
    Version,
    /// `/healthz`, `/readyz`, `/livez`.
    Health,
    /// `/api`: core versions (legacy or aggregated discovery).
    CoreDiscovery,
    /// `/apis`: groups (legacy or aggregated discovery).
    GroupsDiscovery,
    /// `/apis/{group}`: one group.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`: the resources of one group version.
    GroupVersion(String, String),
    /// `/openapi/v3`.
    OpenApiRoot,
    /// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
    OpenApiGroupVersion(String, String),
    /// `/openapi/v2`.
    OpenApiV2,
    /// A resource collection, object or subresource.
    Resource(ResourcePath),
}

/// `/apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}[/{subresource}]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group (`""` for core).
    pub group: String,
    /// API version (`v1`, `v1alpha1`).
    pub version: String,
    /// Namespace from the path; `None` for cluster-scoped or all-namespaces requests.
    pub namespace: Option<String>,
    /// Plural resource name.
    pub plural: String,
    /// Object name.
    pub name: Option<String>,
    /// `status`, when addressed.
    pub subresource: Option<String>,
}

/// Parses a request path.
pub fn route(path: &str) -> Result<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let owned = |s: &str| s.to_owned();
    Ok(match segs.as_slice() {
        ["version"] => Route::Version,
        ["healthz" | "readyz" | "livez", ..] => Route::Health,
        ["api"] => Route::CoreDiscovery,
        ["apis"] => Route::GroupsDiscovery,
        ["apis", g] => Route::Group(owned(g)),
        ["api", v] => Route::GroupVersion(String::new(), owned(v)),
        ["apis", g, v] => Route::GroupVersion(owned(g), owned(v)),
        ["openapi", "v3"] => Route::OpenApiRoot,
        ["openapi", "v3", "api", v] => Route::OpenApiGroupVersion(String::new(), owned(v)),
        ["openapi", "v3", "apis", g, v] => Route::OpenApiGroupVersion(owned(g), owned(v)),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["api", v, rest @ ..] => Route::Resource(resource_path("", v, rest, path)?),
        ["apis", g, v, rest @ ..] => Route::Resource(resource_path(g, v, rest, path)?),
        _ => return Err(ApiError::no_route(path)),
    })
}

fn resource_path(group: &str, version: &str, rest: &[&str], path: &str) -> Result<ResourcePath> {
    let mk = |ns: Option<&str>, plural: &str, name: Option<&str>, sub: Option<&str>| ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace: ns.map(str::to_owned),
        plural: plural.to_owned(),
        name: name.map(str::to_owned),
        subresource: sub.map(str::to_owned),
    };
    Ok(match rest {
        // `/api/v1/namespaces/{ns}/status|finalize` address the Namespace object itself.
        ["namespaces", name, sub @ ("status" | "finalize")] => {
            mk(None, "namespaces", Some(name), Some(sub))
        }
        ["namespaces", ns, plural] => mk(Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => mk(Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => mk(Some(ns), plural, Some(name), Some(sub)),
        [plural] => mk(None, plural, None, None),
        [plural, name] => mk(None, plural, Some(name), None),
        [plural, name, sub] => mk(None, plural, Some(name), Some(sub)),
        _ => return Err(ApiError::no_route(path)),
    })
}

/// The query parameters the server acts on. Empty pairs (`?&limit=500`) are accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// `labelSelector`.
    pub label_selector: Option<String>,
    /// `fieldSelector`.
    pub field_selector: Option<String>,
    /// `limit` (0 = none).
    pub limit: usize,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `resourceVersionMatch`.
    pub resource_version_match: Option<String>,
    /// `watch=true`.
    pub watch: bool,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<u64>,
    /// `allowWatchBookmarks=true`.
    pub allow_watch_bookmarks: bool,
    /// `sendInitialEvents=true`.
    pub send_initial_events: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// `force=true` (server-side apply).
    pub force: bool,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldValidation` (`Strict`, `Warn`, `Ignore`).
    pub field_validation: Option<String>,
}

impl Query {
    /// Parses a raw query string; a malformed number is a 400 naming the parameter.
    pub fn parse(raw: Option<&str>) -> Result<Query> {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let v = v.into_owned();
            let num = |name: &str| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid {name} {v:?}: must be a non-negative integer"
                    ))
                })
            };
            match k.as_ref() {
                "labelSelector" => q.label_selector = Some(v).filter(|s| !s.is_empty()),
                "fieldSelector" => q.field_selector = Some(v).filter(|s| !s.is_empty()),
                "limit" => q.limit = num("limit")? as usize,
                "continue" => q.continue_token = Some(v).filter(|s| !s.is_empty()),
                "resourceVersion" => q.resource_version = Some(v),
                "resourceVersionMatch" => {
                    q.resource_version_match = Some(v).filter(|s| !s.is_empty())
                }
                "watch" => q.watch = v == "true" || v == "1",
                "timeoutSeconds" => q.timeout_seconds = Some(num("timeoutSeconds")?),
                "allowWatchBookmarks" => q.allow_watch_bookmarks = v == "true",
                "sendInitialEvents" => q.send_initial_events = v == "true",
                "fieldManager" => q.field_manager = Some(v).filter(|s| !s.is_empty()),
                "force" => q.force = v == "true",
                "dryRun" => q.dry_run = v == "All",
                "fieldValidation" => q.field_validation = Some(v),
                // timeout, pretty, propagationPolicy and the like need no action here.
                _ => {}
            }
        }
        Ok(q)
    }

    /// Whether unknown fields are an error (`fieldValidation=Strict`).
    pub fn strict(&self) -> bool {
        self.field_validation.as_deref() == Some("Strict")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(p: &str) -> ResourcePath {
        match route(p).unwrap() {
            Route::Resource(r) => r,
            other => panic!("{p}: {other:?}"),
        }
    }

    #[test]
    fn routes_resource_paths() {
        let r = res("/apis/keybrake.com/v1alpha1/namespaces/billing/vaultkeys/k1/status");
        assert_eq!(
            (
                r.group.as_str(),
                r.namespace.as_deref(),
                r.plural.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (
                "keybrake.com",
                Some("billing"),
                "vaultkeys",
                Some("k1"),
                Some("status")
            )
        );
        let all = res("/apis/keybrake.com/v1alpha1/vaultkeys");
        assert_eq!((all.namespace, all.name), (None, None));
        let ns = res("/api/v1/namespaces/default");
        assert_eq!(
            (ns.plural.as_str(), ns.name.as_deref(), ns.namespace),
            ("namespaces", Some("default"), None)
        );
        let secrets = res("/api/v1/namespaces/default/secrets");
        assert_eq!(
            (secrets.plural.as_str(), secrets.namespace.as_deref()),
            ("secrets", Some("default"))
        );
        let fin = res("/api/v1/namespaces/x/finalize");
        assert_eq!(
            (fin.plural.as_str(), fin.name.as_deref()),
            ("namespaces", Some("x"))
        );
    }

    #[test]
    fn routes_discovery_and_openapi() {
        assert_eq!(route("/api").unwrap(), Route::CoreDiscovery);
        assert_eq!(route("/apis/").unwrap(), Route::GroupsDiscovery);
        assert_eq!(
            route("/api/v1").unwrap(),
            Route::GroupVersion(String::new(), "v1".into())
        );
        assert_eq!(
            route("/openapi/v3/apis/keybrake.com/v1alpha1").unwrap(),
            Route::OpenApiGroupVersion("keybrake.com".into(), "v1alpha1".into())
        );
        assert!(route("/nope").is_err());
        assert!(route("/api/v1/namespaces/a/b/c/d/e").is_err());
    }

    #[test]
    fn parses_queries_with_empty_pairs() {
        let q = Query::parse(Some(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=12",
        ))
        .unwrap();
        assert!(q.watch && q.allow_watch_bookmarks);
        assert_eq!(q.timeout_seconds, Some(290));
        assert_eq!(q.resource_version.as_deref(), Some("12"));
        let q = Query::parse(Some("&limit=500&labelSelector=a%3Db")).unwrap();
        assert_eq!((q.limit, q.label_selector.as_deref()), (500, Some("a=b")));
        assert_eq!(Query::parse(Some("")).unwrap(), Query::default());
        assert_eq!(Query::parse(None).unwrap(), Query::default());
        let e = Query::parse(Some("limit=-1")).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("limit"));
        let q = Query::parse(Some(
            "fieldManager=kubectl&force=true&dryRun=All&fieldValidation=Strict",
        ))
        .unwrap();
        assert!(q.force && q.dry_run && q.strict());
    }
}
