//! TokenReview (authentication.k8s.io/v1) against a static token file, and SubjectAccessReview
//! (authorization.k8s.io/v1) evaluated with RBAC over the stored Roles, ClusterRoles and their
//! bindings: the two calls a delegating server (like the proxy's issuance API) makes. Both are
//! create-only and never stored, as on a real API server.

use std::path::Path;

use serde_json::{Value, json};

use crate::{
    error::{ApiError, Cause, Result},
    resources::{Resource, ResourceKey},
    store::State,
};

/// One line of a `--token-auth-file`: `token,user,uid,"group1,group2"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticToken {
    /// The bearer token.
    pub token: String,
    /// The user name (`system:serviceaccount:NS:NAME` for a ServiceAccount).
    pub user: String,
    /// The user's uid.
    pub uid: String,
    /// Groups besides `system:authenticated`.
    pub groups: Vec<String>,
    /// What the token is valid for, like a projected token's `aud`; empty means the API
    /// server itself ([`API_AUDIENCE`]), as a default ServiceAccount token or a token-file line.
    pub audiences: Vec<String>,
}

/// The API server's own audience (`--api-audiences`): what a default token is for.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

impl StaticToken {
    /// The audiences the token is valid for.
    pub fn audiences(&self) -> Vec<String> {
        if self.audiences.is_empty() {
            vec![API_AUDIENCE.to_owned()]
        } else {
            self.audiences.clone()
        }
    }
}

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The failure reading it.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("token file line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Parses the kube-apiserver static token file format (CSV, at least three columns).
pub fn parse_token_file(text: &str) -> Result<Vec<StaticToken>, TokenFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut tokens = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| TokenFileError::Line {
            line: e.position().map_or(0, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |i: usize| record.get(i).map(str::trim).unwrap_or("");
        if record.len() < 3 || field(0).is_empty() || field(1).is_empty() {
            return Err(TokenFileError::Line {
                line,
                message: "expected token,user,uid[,\"group1,group2\"]".into(),
            });
        }
        let groups = field(3)
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        tokens.push(StaticToken {
            token: field(0).to_owned(),
            user: field(1).to_owned(),
            uid: field(2).to_owned(),
            groups,
            audiences: Vec::new(),
        });
    }
    Ok(tokens)
}

/// Reads a token file.
pub fn load_token_file(path: &Path) -> Result<Vec<StaticToken>, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_token_file(&text)
}

/// Whether a resource is one of the create-only reviews.
pub fn is_review(res: &Resource) -> bool {
    matches!(
        (res.group.as_str(), res.plural.as_str()),
        ("authentication.k8s.io", "tokenreviews")
            | ("authorization.k8s.io", "subjectaccessreviews")
    )
}

fn spec_of<'a>(body: &'a Value, kind: &str) -> Result<&'a Value> {
    if body.get("kind").and_then(Value::as_str) != Some(kind) {
        return Err(ApiError::bad_request(format!(
            "the body must be a {kind}, got kind {:?}",
            body.get("kind").and_then(Value::as_str).unwrap_or("")
        )));
    }
    body.get("spec")
        .filter(|s| s.is_object())
        .ok_or_else(|| ApiError::invalid(kind, "", vec![Cause::required("spec")]))
}

/// Answers a review: the request echoed with `status` filled in.
pub fn answer(res: &Resource, state: &State, tokens: &[StaticToken], body: Value) -> Result<Value> {
    let mut out = body;
    let status = if res.plural == "tokenreviews" {
        token_review(tokens, spec_of(&out, "TokenReview")?)?
    } else {
        access_review(state, spec_of(&out, "SubjectAccessReview")?)?
    };
    out["status"] = status;
    out["metadata"] = json!({"creationTimestamp": null});
    Ok(out)
}

fn token_review(tokens: &[StaticToken], spec: &Value) -> Result<Value> {
    let token = spec.get("token").and_then(Value::as_str).unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::invalid(
            "TokenReview",
            "",
            vec![Cause::required("spec.token")],
        ));
    }
    // As the real server: a review without audiences asks for the API server's own; the token
    // is valid only where its audiences and the asked ones meet.
    let asked: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![API_AUDIENCE.to_owned()]);
    let Some(t) = tokens.iter().find(|t| t.token == token) else {
        return Ok(json!({"user": {}, "error": "invalid bearer token"}));
    };
    let theirs = t.audiences();
    let common: Vec<&String> = asked.iter().filter(|a| theirs.contains(a)).collect();
    if common.is_empty() {
        return Ok(json!({
            "user": {},
            "error": format!("invalid bearer token, token audiences {theirs:?} is invalid for the target audiences {asked:?}"),
        }));
    }
    let mut groups = t.groups.clone();
    groups.push("system:authenticated".into());
    Ok(json!({
        "authenticated": true,
        "user": {"username": t.user, "uid": t.uid, "groups": groups},
        "audiences": common,
    }))
}

/// What is asked: a verb on a resource (or a non-resource URL) by a user with groups.
pub(crate) struct Attributes<'a> {
    pub(crate) user: &'a str,
    pub(crate) groups: Vec<&'a str>,
    pub(crate) verb: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) group: &'a str,
    pub(crate) resource: &'a str,
    pub(crate) subresource: &'a str,
    pub(crate) name: &'a str,
    pub(crate) path: Option<&'a str>,
}

fn text<'v>(v: &'v Value, path: &str) -> &'v str {
    v.pointer(path).and_then(Value::as_str).unwrap_or("")
}

fn access_review(state: &State, spec: &Value) -> Result<Value> {
    let user = text(spec, "/user");
    let mut groups: Vec<&str> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if user.is_empty() && groups.is_empty() {
        return Err(ApiError::invalid(
            "SubjectAccessReview",
            "",
            vec![Cause::invalid(
                "spec.user",
                "",
                "at least one of user or group must be specified",
            )],
        ));
    }
    let attrs = if let Some(r) = spec.get("resourceAttributes") {
        Attributes {
            user,
            groups: std::mem::take(&mut groups),
            verb: text(r, "/verb"),
            namespace: text(r, "/namespace"),
            group: text(r, "/group"),
            resource: text(r, "/resource"),
            subresource: text(r, "/subresource"),
            name: text(r, "/name"),
            path: None,
        }
    } else if let Some(n) = spec.get("nonResourceAttributes") {
        Attributes {
            user,
            groups: std::mem::take(&mut groups),
            verb: text(n, "/verb"),
            namespace: "",
            group: "",
            resource: "",
            subresource: "",
            name: "",
            path: Some(text(n, "/path")),
        }
    } else {
        return Err(ApiError::invalid(
            "SubjectAccessReview",
            "",
            vec![Cause::invalid(
                "spec.resourceAttributes",
                "",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    };
    Ok(match authorize(state, &attrs) {
        Some(reason) => json!({"allowed": true, "reason": reason}),
        None => json!({"allowed": false}),
    })
}

fn objects<'s>(state: &'s State, group: &str, plural: &str) -> Vec<&'s Value> {
    let key = ResourceKey {
        group: group.to_owned(),
        plural: plural.to_owned(),
    };
    state
        .objects_of(&key)
        .map(|o| o.values().map(|v| v.as_ref()).collect())
        .unwrap_or_default()
}

const RBAC: &str = "rbac.authorization.k8s.io";

/// The reason RBAC allows the request, or `None` (RBAC has no deny rules).
pub(crate) fn authorize(state: &State, a: &Attributes) -> Option<String> {
    if a.groups.contains(&"system:masters") {
        return Some("the system:masters group may do anything".into());
    }
    let subject = |s: &Value| match text(s, "/kind") {
        "User" => text(s, "/name") == a.user,
        "Group" => a.groups.contains(&text(s, "/name")),
        // A ServiceAccount subject names its namespace (the real server requires it; an empty
        // one matches nobody).
        "ServiceAccount" => {
            let ns = text(s, "/namespace");
            !ns.is_empty() && a.user == format!("system:serviceaccount:{ns}:{}", text(s, "/name"))
        }
        _ => false,
    };
    let role_allows = |kind: &str, ns: &str, name: &str| {
        let (plural, ns) = if kind == "ClusterRole" {
            ("clusterroles", "")
        } else {
            ("roles", ns)
        };
        objects(state, RBAC, plural)
            .into_iter()
            .find(|r| text(r, "/metadata/name") == name && text(r, "/metadata/namespace") == ns)
            .and_then(|r| r.get("rules").and_then(Value::as_array))
            .is_some_and(|rules| rules.iter().any(|rule| rule_allows(rule, a)))
    };
    let bindings = objects(state, RBAC, "clusterrolebindings")
        .into_iter()
        .map(|b| ("ClusterRoleBinding", b))
        .chain(
            objects(state, RBAC, "rolebindings")
                .into_iter()
                .filter(|b| {
                    !a.namespace.is_empty() && text(b, "/metadata/namespace") == a.namespace
                })
                .map(|b| ("RoleBinding", b)),
        );
    for (binding_kind, b) in bindings {
        let ns = text(b, "/metadata/namespace");
        let matched = b
            .get("subjects")
            .and_then(Value::as_array)
            .is_some_and(|subjects| subjects.iter().any(subject));
        let (role_kind, role_name) = (text(b, "/roleRef/kind"), text(b, "/roleRef/name"));
        if matched && role_allows(role_kind, ns, role_name) {
            let binding = if ns.is_empty() {
                text(b, "/metadata/name").to_owned()
            } else {
                format!("{}/{ns}", text(b, "/metadata/name"))
            };
            return Some(format!(
                "RBAC: allowed by {binding_kind} {binding:?} of {role_kind} {role_name:?} to {:?}",
                a.user
            ));
        }
    }
    None
}

fn strings(rule: &Value, field: &str) -> Vec<String> {
    rule.get(field)
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let has = |field: &str, want: &str| strings(rule, field).iter().any(|v| v == "*" || v == want);
    if !has("verbs", a.verb) {
        return false;
    }
    if let Some(path) = a.path {
        return strings(rule, "nonResourceURLs").iter().any(|u| {
            u == path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| path.starts_with(prefix))
        });
    }
    if !has("apiGroups", a.group) {
        return false;
    }
    let resources = strings(rule, "resources");
    let resource_ok = if a.subresource.is_empty() {
        resources.iter().any(|r| r == "*" || r == a.resource)
    } else {
        let full = format!("{}/{}", a.resource, a.subresource);
        let any_sub = format!("*/{}", a.subresource);
        // As RBAC matches: `*`, the exact `resource/sub`, or `*/sub` (there is no `resource/*`).
        resources
            .iter()
            .any(|r| r == "*" || *r == full || *r == any_sub)
    };
    let names = strings(rule, "resourceNames");
    resource_ok && (names.is_empty() || (!a.name.is_empty() && names.iter().any(|n| n == a.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_static_token_file_format() {
        let tokens = parse_token_file(
            "# comment\nabc,system:serviceaccount:billing:worker,u1,\"system:serviceaccounts,system:serviceaccounts:billing\"\nxyz,alice,u2\n",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].groups.len(), 2);
        assert_eq!(tokens[1].user, "alice");
        assert!(tokens[1].groups.is_empty());
        let err = parse_token_file("only,two\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let rule = json!({"apiGroups": ["keybrake.com"], "resources": ["vaultkeys", "vaultkeys/status"], "verbs": ["create", "get"]});
        let a = |verb, resource, sub, name| Attributes {
            user: "u",
            groups: vec![],
            verb,
            namespace: "ns",
            group: "keybrake.com",
            resource,
            subresource: sub,
            name,
            path: None,
        };
        assert!(rule_allows(&rule, &a("create", "vaultkeys", "", "")));
        assert!(rule_allows(&rule, &a("get", "vaultkeys", "status", "x")));
        assert!(!rule_allows(&rule, &a("delete", "vaultkeys", "", "x")));
        assert!(!rule_allows(&rule, &a("get", "spendpolicies", "", "")));
        let named = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"], "resourceNames": ["one"]});
        assert!(rule_allows(&named, &a("delete", "vaultkeys", "", "one")));
        assert!(!rule_allows(&named, &a("delete", "vaultkeys", "", "two")));
        assert!(!rule_allows(&named, &a("create", "vaultkeys", "", "")));
    }
}
