//! The listeners: the data path (HTTP/1.1 and h2c) with a connection cap, header and body
//! timeouts and header size limits; the admin port (/metrics, /healthz, /readyz); graceful
//! shutdown that stops accepting and drains open requests under a deadline.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{app::App, audit, handler, issuance};
use tracing::Instrument;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Longest TLS handshake; a client that stalls it holds a connection slot no longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS session of a new connection, or `None` when the handshake fails (a plain-HTTP
/// client on a TLS port, a stalled or bad handshake): the connection is then closed.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Serves the data path until `shutdown` resolves, then drains for up to 30 seconds. With
/// `tls`, every connection is TLS (HTTP/2 or HTTP/1.1 by ALPN); a plain one is closed.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(app.config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(app.config.header_timeout_secs))
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    tokio::pin!(shutdown);
    loop {
        // Backpressure: past the cap, new connections wait in the kernel's backlog.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move {
                // The issuance API is on the data port too, so workflow code written for
                // Keybrake needs only its base URL changed.
                if issuance::owns(req.uri().path()) {
                    return Ok::<_, Infallible>(issuance::serve(&app, req).await);
                }
                Ok::<_, Infallible>(handler::handle(app, req).await)
            }
        });
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(
            async move {
                match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    Some(acceptor) => {
                        if let Some(stream) = handshake(&acceptor, stream).await {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            let _ = watcher.watch(conn.into_owned()).await;
                        }
                    }
                }
                drop(permit);
            }
            .instrument(tracing::info_span!("connection", %peer)),
        );
    }
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30s of draining");
    }
}

async fn admin_response(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if issuance::owns(req.uri().path()) {
        return issuance::serve(app, req).await;
    }
    let content_type = match req.uri().path() {
        // What prometheus_client's text encoder writes; Prometheus 3 refuses a reply without it.
        "/metrics" => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "/audit" => "application/json",
        _ => "text/plain; charset=utf-8",
    };
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, app.metrics.encode()),
        "/healthz" | "/livez" => (StatusCode::OK, "ok".into()),
        "/readyz" if app.policies.synced() => (StatusCode::OK, "ok".into()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "policies not loaded yet".into(),
        ),
        "/audit" => match keybrake_audit::query::parse(req.uri().query()) {
            Err(e) => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": e}).to_string(),
            ),
            Ok(q) => match issuance::authorize_audit(app, req.headers(), &q).await {
                Err(e) => return issuance::error_response(&e),
                Ok(()) => match audit::run(app, &q).await {
                    Ok(v) => (StatusCode::OK, v.to_string()),
                    Err(e) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"error": format!("audit trail unavailable: {e}")})
                            .to_string(),
                    ),
                },
            },
        },
        _ => (StatusCode::NOT_FOUND, "not found".into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Serves the admin port until the task is dropped.
pub async fn serve_admin(listener: TcpListener, app: Arc<App>, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(
            async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(admin_response(&app, req).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                    Some(acceptor) => {
                        if let Some(stream) = handshake(&acceptor, stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("admin_connection", %peer)),
        );
    }
}
