//! The HTTP/1.1 server: routing, body limits, content negotiation (JSON, Table,
//! PartialObjectMetadata, aggregated discovery) and graceful shutdown.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ACCEPT, CONTENT_TYPE},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    auth::{self, Caller},
    discovery,
    error::{ApiError, Result},
    patch::PatchKind,
    request::{Query, ResourcePath, Route, route},
    resources::Resource,
    store::Store,
    table::{self, Shape},
    watch as watch_stream,
    write::Deleted,
};

/// Response bodies: whole JSON documents or watch streams.
pub type Body = BoxBody<Bytes, Infallible>;

/// The largest request body accepted (the real server's limit is about 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What every connection shares.
pub struct Shared {
    /// The objects.
    pub store: Arc<Store>,
    /// The address clients reach (for legacy `/api`).
    pub addr: SocketAddr,
    /// Flips to true when the server shuts down (ends watches).
    pub shutdown: watch::Receiver<bool>,
    /// How often idle watches get a bookmark.
    pub bookmark_every: std::time::Duration,
    /// Bearer tokens the server accepts (requests and TokenReview).
    pub tokens: Vec<crate::review::StaticToken>,
    /// Every request RBAC refused, as the 403 message: tests assert the deployables, running
    /// as their ServiceAccounts, were never refused.
    pub denials: Arc<std::sync::Mutex<Vec<String>>>,
    /// Failures to answer to the next matching writes (a test's hook).
    pub faults: Arc<std::sync::Mutex<Vec<crate::Fault>>>,
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// Serves connections from `listener` until `shutdown` resolves; then stops accepting and lets
/// open requests finish (watches end at once).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let service = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(shared, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = match dispatch(&shared, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    resp
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError {
                code: 413,
                reason: "RequestEntityTooLarge",
                message: format!("the request body is larger than {MAX_BODY} bytes"),
                details: None,
            })
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Decodes a create/update body: JSON or YAML; protobuf is refused with the workaround.
fn decode_object(content_type: &str, body: &[u8]) -> Result<Value> {
    if content_type.contains("protobuf") {
        return Err(ApiError::unsupported_media_type(
            "kube-lite speaks JSON only; for `kubectl create secret|namespace` use \
             `--dry-run=client -o yaml | kubectl apply -f -`",
        ));
    }
    if content_type.contains("yaml") {
        let text = std::str::from_utf8(body)
            .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        return serde_yaml_ng::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding the request body as JSON: {e}")))
}

async fn dispatch(shared: &Shared, req: Request<Incoming>) -> Result<Response<Body>> {
    let path = req.uri().path().to_owned();
    let caller = crate::auth::authenticate(req.headers(), &shared.tokens)?;
    let accept = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let reg_get = |f: &dyn Fn(&crate::store::State) -> Option<Value>| -> Result<Response<Body>> {
        let st = shared.store.lock();
        f(&st)
            .map(|v| json_response(200, &v))
            .ok_or_else(|| ApiError::no_route(&path))
    };
    match route(&path)? {
        Route::Version => Ok(json_response(200, &discovery::version())),
        Route::Health => Ok(json_response(200, &json!("ok"))),
        Route::CoreDiscovery | Route::GroupsDiscovery if discovery::wants_aggregated(&accept) => {
            let core = route(&path)? == Route::CoreDiscovery;
            let body = discovery::aggregated(&shared.store.lock().registry, core);
            let mut resp = json_response(200, &body);
            resp.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
            );
            Ok(resp)
        }
        Route::CoreDiscovery => Ok(json_response(
            200,
            &discovery::core_versions(&shared.addr.to_string()),
        )),
        Route::GroupsDiscovery => reg_get(&|st| Some(discovery::group_list(&st.registry))),
        Route::Group(g) => reg_get(&|st| discovery::group(&st.registry, &g)),
        Route::GroupVersion(g, v) => reg_get(&|st| discovery::resource_list(&st.registry, &g, &v)),
        Route::OpenApiRoot => reg_get(&|st| {
            Some(discovery::openapi_root(
                &st.registry,
                st.discovery_generation,
            ))
        }),
        Route::OpenApiGroupVersion(g, v) => {
            reg_get(&|st| discovery::openapi_group_version(&st.registry, &g, &v))
        }
        Route::OpenApiV2 => Err(ApiError::no_route(&path)),
        Route::Resource(rp) => resource(shared, req, rp, &accept, &caller).await,
    }
}

/// Serves one request to a resource path. One function: authorization, then one arm per verb,
/// each a few lines calling the store; splitting it would pass the parsed request around.
async fn resource(
    shared: &Shared,
    req: Request<Incoming>,
    rp: ResourcePath,
    accept: &str,
    caller: &Caller,
) -> Result<Response<Body>> {
    let query = Query::parse(req.uri().query())?;
    let res = shared
        .store
        .lock()
        .registry
        .get(&rp.group, &rp.version, &rp.plural)
        .ok_or_else(|| ApiError::no_route(req.uri().path()))?;
    if !res.namespaced && rp.namespace.is_some() {
        return Err(ApiError::no_route(req.uri().path()));
    }
    let status = match rp.subresource.as_deref() {
        None => false,
        Some("status") if res.status_subresource => true,
        Some(_) => return Err(ApiError::no_route(req.uri().path())),
    };
    let ns = rp.namespace.clone().unwrap_or_default();
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let method = req.method().clone();
    authorize(shared, caller, auth::verb(&method, &rp, &query), &res, &rp)?;
    if method != Method::GET {
        injected_fault(shared, req.uri().path())?;
    }
    if crate::review::is_review(&res) {
        if method != Method::POST || rp.name.is_some() {
            return Err(ApiError::method_not_allowed(format!(
                "{} only supports create",
                res.qualified_plural()
            )));
        }
        let body = decode_object(&content_type, &read_body(req).await?)?;
        let st = shared.store.lock();
        let answer = crate::review::answer(&res, &st, &shared.tokens, body)?;
        return Ok(json_response(201, &answer));
    }
    match (method, rp.name.clone()) {
        (Method::GET, None) if query.watch => {
            Ok(start_watch(shared, res, rp.namespace, query, accept))
        }
        (Method::GET, None) => {
            let st = shared.store.lock();
            let (items, rv, cont) = st.list(&res, rp.namespace.as_deref(), &query)?;
            Ok(json_response(
                200,
                &render_list(&res, &items, rv, cont.as_deref(), accept),
            ))
        }
        (Method::GET, Some(name)) => {
            check_scope(&res, &rp)?;
            let obj = shared.store.lock().get(&res, &ns, &name)?;
            Ok(json_response(
                200,
                &table::render(&res, Shape::from_accept(accept), &obj),
            ))
        }
        (Method::POST, None) => {
            if res.namespaced && rp.namespace.is_none() {
                return Err(ApiError::method_not_allowed(format!(
                    "{} must be created in a namespace",
                    res.qualified_plural()
                )));
            }
            let body = decode_object(&content_type, &read_body(req).await?)?;
            let created = shared.store.lock().create(&res, &ns, body, &query)?;
            shared.store.mark_dirty();
            Ok(json_response(201, &created))
        }
        (Method::PUT, Some(name)) => {
            check_scope(&res, &rp)?;
            let body = decode_object(&content_type, &read_body(req).await?)?;
            let updated = shared
                .store
                .lock()
                .update(&res, &ns, &name, status, body, &query)?;
            shared.store.mark_dirty();
            Ok(json_response(200, &updated))
        }
        (Method::PATCH, Some(name)) => {
            check_scope(&res, &rp)?;
            let kind = PatchKind::from_content_type(&content_type)?;
            if kind == PatchKind::Apply && shared.store.lock().get(&res, &ns, &name).is_err() {
                // A server-side apply that creates the object is also a create.
                authorize(shared, caller, "create", &res, &rp)?;
            }
            let body = read_body(req).await?;
            let (obj, created) = shared
                .store
                .lock()
                .patch(&res, &ns, &name, status, kind, &body, &query)?;
            shared.store.mark_dirty();
            Ok(json_response(if created { 201 } else { 200 }, &obj))
        }
        (Method::DELETE, Some(name)) => {
            check_scope(&res, &rp)?;
            let body = read_body(req).await?;
            let options: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).unwrap_or(json!({}))
            };
            let outcome = shared
                .store
                .lock()
                .delete(&res, &ns, &name, &options, &query)?;
            shared.store.mark_dirty();
            Ok(match outcome {
                Deleted::Pending(obj) => json_response(200, &obj),
                Deleted::Gone(obj) => json_response(
                    200,
                    &json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": res.group,
                            "kind": res.plural,
                            "uid": obj.pointer("/metadata/uid"),
                        },
                    }),
                ),
            })
        }
        (Method::DELETE, None) => {
            let body = read_body(req).await?;
            let options: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).unwrap_or(json!({}))
            };
            let mut st = shared.store.lock();
            let (items, _, _) = st.list(
                &res,
                rp.namespace.as_deref(),
                &Query {
                    limit: 0,
                    continue_token: None,
                    ..query.clone()
                },
            )?;
            let mut deleted = Vec::new();
            for obj in items {
                let o_ns = obj
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let o_name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                if let Ok(Deleted::Gone(o) | Deleted::Pending(o)) =
                    st.delete(&res, &o_ns, &o_name, &options, &query)
                {
                    deleted.push(o);
                }
            }
            let rv = st.rv;
            drop(st);
            shared.store.mark_dirty();
            Ok(json_response(
                200,
                &render_list(&res, &deleted, rv, None, ""),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "{m} is not supported on {}",
            req_path(&rp)
        ))),
    }
}

fn authorize(
    shared: &Shared,
    caller: &Caller,
    verb: &str,
    res: &Resource,
    rp: &ResourcePath,
) -> Result<()> {
    let checked = auth::check(&shared.store.lock(), caller, verb, res, rp);
    if let Err(e) = &checked {
        tracing::warn!(message = %e.message, "forbidden");
        if let Ok(mut d) = shared.denials.lock() {
            d.push(e.message.clone());
        }
    }
    checked
}

/// The error a test asked the next matching write to get, as an overloaded or failing real
/// server answers it.
fn injected_fault(shared: &Shared, path: &str) -> Result<()> {
    let Ok(mut faults) = shared.faults.lock() else {
        return Ok(());
    };
    let Some(f) = faults
        .iter_mut()
        .find(|f| f.remaining > 0 && path.contains(&f.path_contains))
    else {
        return Ok(());
    };
    f.remaining -= 1;
    Err(match f.code {
        429 => ApiError {
            code: 429,
            reason: "TooManyRequests",
            message:
                "the server has received too many requests and has asked us to try again later"
                    .into(),
            details: Some(json!({"retryAfterSeconds": 1})),
        },
        code => ApiError {
            code,
            reason: "InternalError",
            message: format!("Internal error occurred: injected fault on {path}"),
            details: None,
        },
    })
}

fn req_path(rp: &ResourcePath) -> String {
    format!("{}/{}", rp.plural, rp.name.as_deref().unwrap_or(""))
}

/// A namespaced object must be addressed inside its namespace.
fn check_scope(res: &Resource, rp: &ResourcePath) -> Result<()> {
    if res.namespaced && rp.namespace.is_none() {
        return Err(ApiError::no_route(&req_path(rp)));
    }
    Ok(())
}

fn render_list(
    res: &Resource,
    items: &[Arc<Value>],
    rv: u64,
    cont: Option<&str>,
    accept: &str,
) -> Value {
    let shape = Shape::from_accept(accept);
    if shape == Shape::Table {
        let refs: Vec<&Value> = items.iter().map(|i| i.as_ref()).collect();
        return table::table(res, &refs, rv, cont);
    }
    let metadata_only = shape == Shape::Metadata;
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    let (kind, api_version) = if metadata_only {
        (
            "PartialObjectMetadataList".to_owned(),
            "meta.k8s.io/v1".to_owned(),
        )
    } else {
        (format!("{}List", res.kind), res.api_version())
    };
    let items: Vec<Value> = items
        .iter()
        .map(|o| {
            if metadata_only {
                table::partial_metadata(o)
            } else {
                (**o).clone()
            }
        })
        .collect();
    json!({"kind": kind, "apiVersion": api_version, "metadata": meta, "items": items})
}

fn start_watch(
    shared: &Shared,
    res: Arc<Resource>,
    ns: Option<String>,
    query: Query,
    accept: &str,
) -> Response<Body> {
    let shape = Shape::from_accept(accept);
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(watch_stream::run(
        shared.store.clone(),
        res,
        ns,
        query,
        shape,
        shared.bookmark_every,
        tx,
        shared.shutdown.clone(),
    ));
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(ReceiverStream::new(rx))));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
