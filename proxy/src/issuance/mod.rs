//! The Keybrake-compatible issuance API: `POST /vault/keys` issues a key per workflow run,
//! `GET /vault/keys[/{key_id}]` reads them, `DELETE /vault/keys/{key_id}` revokes. Each key is a
//! real `VaultKey` in the caller's namespace, so kubectl, GitOps tooling and the operator see it.
//! Callers authenticate with a Kubernetes bearer token (TokenReview) and are authorized by RBAC
//! (SubjectAccessReview) for the verb on `vaultkeys` in that namespace. `key_id` is the VaultKey's
//! name.

mod caller;
mod error;
mod keys;
mod request;
mod view;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header::CONTENT_TYPE};
use serde_json::Value;

pub use caller::Caller;
pub use error::ApiError;
pub use request::IssueRequest;

use crate::app::App;

/// Largest issuance request body.
const MAX_BODY: usize = 64 * 1024;

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error response in the admin API's shape.
pub fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    json_response(e.status, &e.body())
}

/// Checks that the caller of `GET /audit` may list vaultkeys where the query looks: in its
/// namespace, or in all namespaces when it names none.
pub async fn authorize_audit(
    app: &App,
    headers: &hyper::HeaderMap,
    query: &keybrake_audit::AuditQuery,
) -> Result<(), ApiError> {
    let caller = caller::authenticate(&app.client, headers, &app.config.token_audience).await?;
    caller::authorize(
        &app.client,
        &caller,
        "list",
        query.scope().unwrap_or(""),
        None,
    )
    .await
}

/// Whether a path belongs to this API.
pub fn owns(path: &str) -> bool {
    path == "/vault/keys" || path == "/vault/keys/" || path.starts_with("/vault/keys/")
}

/// Serves one request of the issuance API.
pub async fn serve(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match route(app, req).await {
        Ok((status, body)) => json_response(status, &body),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(status = %e.status, error = %e.message, "issuance API failed");
            }
            error_response(&e)
        }
    }
}

async fn route(app: &App, req: Request<Incoming>) -> Result<(StatusCode, Value), ApiError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let key_id = path.strip_prefix("/vault/keys/").map(str::to_owned);
    let query: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for (k, _) in &query {
        if !["namespace", "run_label"].contains(&k.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown query parameter {k:?}; use namespace or run_label"),
            ));
        }
    }
    // A key id is a VaultKey name; anything else (a `/` reaching a subresource, say) is refused
    // before it is put in an API path.
    if let Some(id) = &key_id
        && !keybrake_crds::validate::is_dns_subdomain(id)
    {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("key_id: {id:?} is not a VaultKey name"),
            field: Some("key_id".into()),
        });
    }
    let caller =
        caller::authenticate(&app.client, req.headers(), &app.config.token_audience).await?;
    let method = req.method().clone();
    match (method, key_id) {
        (Method::POST, None) => {
            let body = read_body(req).await?;
            let issue = IssueRequest::parse(&body)?;
            let ns = caller
                .namespace_for(issue.namespace.as_deref().or(param("namespace").as_deref()))?;
            caller::authorize(&app.client, &caller, "create", &ns, None).await?;
            keys::issue(app, &caller, &ns, issue).await
        }
        (Method::GET, None) => {
            let ns = caller.namespace_for(param("namespace").as_deref())?;
            caller::authorize(&app.client, &caller, "list", &ns, None).await?;
            keys::list(app, &ns, param("run_label").as_deref()).await
        }
        (Method::GET, Some(name)) => {
            let ns = caller.namespace_for(param("namespace").as_deref())?;
            caller::authorize(&app.client, &caller, "get", &ns, Some(&name)).await?;
            keys::show(app, &ns, &name).await
        }
        (Method::DELETE, Some(name)) => {
            let ns = caller.namespace_for(param("namespace").as_deref())?;
            caller::authorize(&app.client, &caller, "delete", &ns, Some(&name)).await?;
            keys::revoke(app, &caller, &ns, &name).await
        }
        (m, id) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{m} is not served on {}; use POST/GET /vault/keys, GET/DELETE /vault/keys/{{key_id}}",
                if id.is_some() {
                    "/vault/keys/{key_id}"
                } else {
                    "/vault/keys"
                }
            ),
        )),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_BODY} bytes"),
            ))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("could not read the request body: {e}"),
        )),
    }
}
