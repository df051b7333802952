//! Who is calling: the bearer token checked with a TokenReview, and each action checked with a
//! SubjectAccessReview for `vaultkeys.keybrake.com` in the target namespace, as a delegating
//! server does (kube-rbac-proxy, the metrics-server). Nothing is cached: a revoked token or a
//! removed RoleBinding takes effect on the next call.

use std::collections::BTreeMap;

use hyper::{HeaderMap, StatusCode, header::AUTHORIZATION};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};

use super::error::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User name (`system:serviceaccount:NS:NAME` for a ServiceAccount).
    pub username: String,
    /// User uid.
    pub uid: Option<String>,
    /// The groups the API server put the caller in.
    pub groups: Vec<String>,
    /// Extra attributes from the authenticator, passed on to authorization.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Caller {
    /// The namespace of a ServiceAccount caller.
    pub fn service_account_namespace(&self) -> Option<&str> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        rest.split_once(':').map(|(ns, _)| ns)
    }

    /// The namespace a request acts in: the one asked for, else the ServiceAccount's own.
    pub fn namespace_for(&self, asked: Option<&str>) -> Result<String, ApiError> {
        match asked.or(self.service_account_namespace()) {
            Some(ns) if keybrake_crds::validate::is_dns_label(ns) => Ok(ns.to_owned()),
            Some(ns) => Err(ApiError::field(
                "namespace",
                format!("{ns:?} is not a valid namespace name"),
            )),
            None => Err(ApiError::field(
                "namespace",
                format!(
                    "required: {:?} is not a ServiceAccount, so name the namespace (body field or ?namespace=)",
                    self.username
                ),
            )),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or_else(|| {
        unauthorized(
            "missing Authorization header: send `Authorization: Bearer <token>` with a Kubernetes ServiceAccount token",
        )
    })?;
    if values.next().is_some() {
        return Err(unauthorized(
            "the Authorization header is sent more than once",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not visible ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthorized(
            "the Authorization header must be `Bearer <token>` with a Kubernetes ServiceAccount token",
        ));
    }
    Ok(token.to_owned())
}

/// Checks the bearer token with a TokenReview for `audience`: only a token minted for the
/// proxy (a projected ServiceAccount token with that audience) is accepted, so a token seen on
/// the way here cannot be replayed against the Kubernetes API, and the default token (the API
/// server's audience) is refused.
pub async fn authenticate(
    client: &Client,
    headers: &HeaderMap,
    audience: &str,
) -> Result<Caller, ApiError> {
    let token = bearer(headers)?;
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| {
            ApiError::unavailable(
                "cannot check the token with the Kubernetes API (TokenReview)",
                e,
            )
        })?;
    reviewed(answer.status.unwrap_or_default(), audience)
}

/// The caller a TokenReview's answer names, when it authenticated the token for `audience`.
fn reviewed(status: TokenReviewStatus, audience: &str) -> Result<Caller, ApiError> {
    let for_us = status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == audience));
    let user = status.user.unwrap_or_default();
    match (status.authenticated, user.username) {
        (Some(true), Some(username)) if !username.is_empty() && for_us => Ok(Caller {
            username,
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "the bearer token is not valid for audience {audience:?}: present a projected ServiceAccount token minted for it (a serviceAccountToken volume with audience: {audience}), not the pod's default token (docs/security.md)"
            ),
        )),
    }
}

/// Checks with a SubjectAccessReview that `caller` may `verb` vaultkeys in `namespace`.
pub async fn authorize(
    client: &Client,
    caller: &Caller,
    verb: &str,
    namespace: &str,
    name: Option<&str>,
) -> Result<(), ApiError> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.username.clone()),
            uid: caller.uid.clone(),
            groups: Some(caller.groups.clone()),
            extra: Some(caller.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(keybrake_crds::GROUP.to_owned()),
                resource: Some("vaultkeys".into()),
                verb: Some(verb.into()),
                namespace: Some(namespace.into()),
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| {
            ApiError::unavailable(
                "cannot check permissions with the Kubernetes API (SubjectAccessReview)",
                e,
            )
        })?;
    if answer.status.is_some_and(|s| s.allowed) {
        return Ok(());
    }
    let place = if namespace.is_empty() {
        "in all namespaces (name one with ?namespace=)".to_owned()
    } else {
        format!("in the namespace {namespace:?}")
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{:?} cannot {verb} vaultkeys.{} {place}",
            caller.username,
            keybrake_crds::GROUP
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: &str) -> Caller {
        Caller {
            username: user.into(),
            uid: None,
            groups: vec![],
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn a_service_account_acts_in_its_own_namespace_unless_it_names_one() {
        let sa = caller("system:serviceaccount:billing:hatchet-worker");
        assert_eq!(sa.namespace_for(None).unwrap(), "billing");
        assert_eq!(sa.namespace_for(Some("other")).unwrap(), "other");
        let user = caller("alice");
        assert_eq!(
            user.namespace_for(None).unwrap_err().field.as_deref(),
            Some("namespace")
        );
        assert!(user.namespace_for(Some("Bad_NS")).is_err());
    }

    #[test]
    fn the_authorization_header_must_be_one_bearer_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().status, StatusCode::UNAUTHORIZED);
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
        h.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc");
        h.append(AUTHORIZATION, "Bearer def".parse().unwrap());
        assert!(bearer(&h).unwrap_err().message.contains("more than once"));
    }

    #[test]
    fn only_a_token_for_our_audience_names_a_caller() {
        use k8s_openapi::api::authentication::v1::UserInfo;
        let status = |authenticated: bool, audiences: &[&str]| TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:billing:worker".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(reviewed(status(true, &["keybrake"]), "keybrake").is_ok());
        // The API server's audience (the default token), another audience, or none at all.
        for wrong in [
            &["https://kubernetes.default.svc.cluster.local"][..],
            &["vault"],
            &[],
        ] {
            let e = reviewed(status(true, wrong), "keybrake").unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
            assert!(
                e.message.contains("not valid for audience \"keybrake\""),
                "{}",
                e.message
            );
        }
        assert!(reviewed(status(false, &["keybrake"]), "keybrake").is_err());
    }
}
