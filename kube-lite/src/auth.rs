//! Authentication and authorization of every request, as a real API server does them: a bearer
//! token names a user (from the static token file), and RBAC over the stored Roles and bindings
//! decides whether that user may do the verb. A request without credentials is served as an
//! administrator, like the old API server's insecure port: that is how kubectl and the tests'
//! own admin client reach kube-lite, while the operator and the proxy present their
//! ServiceAccounts' tokens and get exactly what the shipped RBAC grants them.

use hyper::{HeaderMap, Method, header::AUTHORIZATION};
use serde_json::json;

use crate::{
    error::{ApiError, Result},
    request::{Query, ResourcePath},
    resources::Resource,
    review::{Attributes, StaticToken, authorize},
    store::State,
};

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials: the insecure-port administrator.
    Admin,
    /// An authenticated user.
    User {
        /// The user name.
        name: String,
        /// Its groups, `system:authenticated` included.
        groups: Vec<String>,
    },
}

/// Finds the caller from the `Authorization` header: no header is the administrator, a bearer
/// token must be one of `tokens` (401 otherwise, as the real server answers).
pub fn authenticate(headers: &HeaderMap, tokens: &[StaticToken]) -> Result<Caller> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(Caller::Admin);
    };
    // The scheme is case-insensitive, as the real server's bearer authenticator takes it.
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(unauthorized)?;
    // A token minted for another audience (a projected token for the proxy) is not valid here.
    let found = tokens
        .iter()
        .find(|t| t.token == token)
        .filter(|t| {
            t.audiences()
                .iter()
                .any(|a| a == crate::review::API_AUDIENCE)
        })
        .ok_or_else(unauthorized)?;
    let mut groups = found.groups.clone();
    groups.push("system:authenticated".into());
    Ok(Caller::User {
        name: found.user.clone(),
        groups,
    })
}

fn unauthorized() -> ApiError {
    ApiError {
        code: 401,
        reason: "Unauthorized",
        message: "Unauthorized".into(),
        details: None,
    }
}

/// The RBAC verb of a resource request.
pub fn verb(method: &Method, rp: &ResourcePath, query: &Query) -> &'static str {
    match (method, rp.name.is_some()) {
        (&Method::GET, _) if query.watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// Allows the request or answers 403 in the real server's words.
pub fn check(
    state: &State,
    caller: &Caller,
    verb: &str,
    res: &Resource,
    rp: &ResourcePath,
) -> Result<()> {
    let Caller::User { name, groups } = caller else {
        return Ok(());
    };
    let attrs = Attributes {
        user: name,
        groups: groups.iter().map(String::as_str).collect(),
        verb,
        namespace: rp.namespace.as_deref().unwrap_or(""),
        group: &res.group,
        resource: &res.plural,
        subresource: rp.subresource.as_deref().unwrap_or(""),
        name: rp.name.as_deref().unwrap_or(""),
        path: None,
    };
    if authorize(state, &attrs).is_some() {
        return Ok(());
    }
    Err(forbidden(name, verb, res, rp))
}

/// `vaultkeys.keybrake.com "k" is forbidden: User "u" cannot delete resource "vaultkeys" in
/// API group "keybrake.com" in the namespace "billing"`.
fn forbidden(user: &str, verb: &str, res: &Resource, rp: &ResourcePath) -> ApiError {
    let object = match &rp.name {
        Some(n) => format!("{} \"{n}\"", res.qualified_plural()),
        None => res.qualified_plural(),
    };
    let resource = match &rp.subresource {
        Some(s) => format!("{}/{s}", res.plural),
        None => res.plural.clone(),
    };
    let scope = match &rp.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{object} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            res.group
        ),
        details: Some(json!({
            "name": rp.name.clone().unwrap_or_default(),
            "group": res.group,
            "kind": res.plural,
        })),
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn token() -> StaticToken {
        StaticToken {
            token: "t1".into(),
            user: "system:serviceaccount:ns:sa".into(),
            uid: "u".into(),
            groups: vec!["system:serviceaccounts".into()],
            audiences: Vec::new(),
        }
    }

    #[test]
    fn no_credentials_is_the_administrator_and_an_unknown_token_is_401() {
        let mut h = HeaderMap::new();
        assert_eq!(authenticate(&h, &[token()]).unwrap(), Caller::Admin);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t1"));
        let Caller::User { name, groups } = authenticate(&h, &[token()]).unwrap() else {
            panic!("a user")
        };
        assert_eq!(name, "system:serviceaccount:ns:sa");
        assert!(groups.contains(&"system:authenticated".to_owned()));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer nope"));
        assert_eq!(authenticate(&h, &[token()]).unwrap_err().code, 401);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic dTpw"));
        assert_eq!(authenticate(&h, &[token()]).unwrap_err().code, 401);
        // A projected token for another audience is not a credential for the API server.
        let projected = StaticToken {
            audiences: vec!["keybrake".into()],
            ..token()
        };
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t1"));
        assert_eq!(authenticate(&h, &[projected]).unwrap_err().code, 401);
    }

    #[test]
    fn verbs_follow_the_method_and_the_path() {
        let rp = |name: Option<&str>| ResourcePath {
            group: String::new(),
            version: "v1".into(),
            namespace: Some("ns".into()),
            plural: "secrets".into(),
            name: name.map(str::to_owned),
            subresource: None,
        };
        let q = Query::parse(None).unwrap();
        let w = Query::parse(Some("watch=true")).unwrap();
        assert_eq!(verb(&Method::GET, &rp(Some("a")), &q), "get");
        assert_eq!(verb(&Method::GET, &rp(None), &q), "list");
        assert_eq!(verb(&Method::GET, &rp(None), &w), "watch");
        assert_eq!(verb(&Method::PATCH, &rp(Some("a")), &q), "patch");
        assert_eq!(verb(&Method::PUT, &rp(Some("a")), &q), "update");
        assert_eq!(verb(&Method::DELETE, &rp(Some("a")), &q), "delete");
        assert_eq!(verb(&Method::POST, &rp(None), &q), "create");
    }
}
