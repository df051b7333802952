//! Vendor sandboxes: one local server that answers like Stripe's, Twilio's and Resend's test
//! modes for the calls Keybrake meters (so `keybrake dev` works offline), and records every
//! request it received (so a test can prove what was, and was not, forwarded).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Authorization header.
    pub authorization: String,
    /// Idempotency-Key header.
    pub idempotency_key: Option<String>,
    /// Accept-Encoding header.
    pub accept_encoding: Option<String>,
    /// Body.
    pub body: String,
}

/// How the upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Like the vendor.
    Normal,
    /// 500 to everything.
    Fail,
    /// Waits this long before answering.
    Slow(Duration),
}

/// A running sandbox.
pub struct Sandbox {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

fn form_value(body: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn answer(method: &str, path: &str, body: &str, n: usize) -> (u16, Value) {
    let amount = || {
        form_value(body, "amount")
            .and_then(|a| a.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let currency = || form_value(body, "currency").unwrap_or_else(|| "usd".into());
    match (method, path) {
        ("POST", "/v1/payment_intents") => {
            // Test mode: a PaymentIntent confirmed with a card succeeds; otherwise it waits for one.
            let confirmed = form_value(body, "confirm").as_deref() == Some("true")
                || form_value(body, "payment_method").is_some();
            let status = if confirmed {
                "succeeded"
            } else {
                "requires_payment_method"
            };
            let received = if confirmed { amount() } else { 0 };
            (
                200,
                json!({"id": format!("pi_sandbox{n}"), "object": "payment_intent", "amount": amount(), "amount_received": received, "currency": currency(), "status": status}),
            )
        }
        ("POST", "/v1/charges") => (
            200,
            json!({"id": format!("ch_sandbox{n}"), "object": "charge", "amount": amount(), "amount_captured": amount(), "captured": true, "paid": true, "currency": currency(), "status": "succeeded"}),
        ),
        ("POST", "/v1/refunds") => (
            200,
            json!({"id": format!("re_sandbox{n}"), "object": "refund", "amount": amount(), "status": "succeeded"}),
        ),
        ("POST", "/v1/customers") => (
            200,
            json!({"id": format!("cus_sandbox{n}"), "object": "customer", "email": form_value(body, "email")}),
        ),
        (_, p) if p.starts_with("/v1/") => (
            200,
            json!({"id": format!("obj_sandbox{n}"), "object": "list", "data": []}),
        ),
        ("POST", p) if p.ends_with("/Messages.json") => {
            let text = form_value(body, "Body").unwrap_or_default();
            let media = form_urlencoded::parse(body.as_bytes())
                .filter(|(k, _)| k == "MediaUrl")
                .count();
            let segments = keybrake_proxy::vendor::twilio::sms_segments(&text);
            (
                201,
                json!({"sid": format!("SM{n:032}"), "status": "queued", "num_segments": segments.to_string(), "num_media": media.to_string(), "price": null, "body": text}),
            )
        }
        ("POST", "/emails") => (200, json!({"id": format!("email-sandbox-{n}")})),
        ("POST", "/emails/batch") => {
            let count = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(0);
            (
                200,
                json!({"data": (0..count).map(|i| json!({"id": format!("email-sandbox-{n}-{i}")})).collect::<Vec<_>>()}),
            )
        }
        _ => (200, json!({"id": format!("obj_sandbox{n}")})),
    }
}

impl Sandbox {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Sandbox> {
        Sandbox::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Sandbox> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let (reqs, md) = (requests.clone(), mode.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reqs, md) = (reqs.clone(), md.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (reqs, md) = (reqs.clone(), md.clone());
                        async move {
                            let method = req.method().to_string();
                            let uri = req.uri().to_string();
                            let header = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let authorization = header("authorization").unwrap_or_default();
                            let idempotency_key = header("idempotency-key");
                            let accept_encoding = header("accept-encoding");
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            let n = {
                                let mut r = reqs.lock().unwrap_or_else(|p| p.into_inner());
                                r.push(Recorded {
                                    method: method.clone(),
                                    uri: uri.clone(),
                                    authorization,
                                    idempotency_key,
                                    accept_encoding,
                                    body: body.clone(),
                                });
                                r.len()
                            };
                            let mode = *md.lock().unwrap_or_else(|p| p.into_inner());
                            let (status, value) = match mode {
                                Mode::Fail => (
                                    500,
                                    json!({"error": {"type": "api_error", "message": "upstream exploded"}}),
                                ),
                                Mode::Slow(d) => {
                                    tokio::time::sleep(d).await;
                                    answer(&method, uri.split('?').next().unwrap_or(""), &body, n)
                                }
                                Mode::Normal => {
                                    answer(&method, uri.split('?').next().unwrap_or(""), &body, n)
                                }
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status)
                                .unwrap_or(hyper::StatusCode::OK);
                            resp.headers_mut().insert(
                                "content-type",
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                            resp.headers_mut().insert(
                                "request-id",
                                hyper::header::HeaderValue::from_str(&format!("req_{n}"))
                                    .unwrap_or(hyper::header::HeaderValue::from_static("req")),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Sandbox {
            addr,
            requests,
            mode,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes how it answers.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.task.abort();
    }
}
