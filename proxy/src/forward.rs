//! Forwarding: the call as the adapter encoded it, with the real credential, to the policy's
//! upstream; and answers back to the caller with hop-by-hop headers dropped.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue},
};

use crate::{
    app::{App, Body},
    call::Call,
    policies::{Credentials, PolicyConfig},
};

/// Response headers never passed back (hop-by-hop, or ours to set).
const DROPPED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-encoding",
];

/// Why an upstream call failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// It never reached the vendor.
    NotSent(String),
    /// It may have reached the vendor.
    Unknown(String),
}

/// A vendor's answer: status, headers (hop-by-hop ones already dropped), body.
pub type Forwarded = (u16, HeaderMap, Bytes);

/// What to send upstream.
pub struct Outgoing<'a> {
    /// HTTP method, as the caller sent it.
    pub method: &'a str,
    /// Upstream path (Twilio's account SID already the real one).
    pub path: &'a str,
    /// Query string, the adapter's encoding.
    pub query: Option<&'a str>,
    /// Headers from the adapter's allowlist.
    pub headers: &'a [(HeaderName, HeaderValue)],
    /// Content type of `body`.
    pub content_type: Option<&'static str>,
    /// Body, the adapter's encoding.
    pub body: Bytes,
}

/// A response with `headers` (hop-by-hop ones dropped, invalid ones skipped).
pub fn respond<K: AsRef<str>>(
    status: u16,
    headers: impl IntoIterator<Item = (K, String)>,
    body: Bytes,
) -> Response<Body> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let k = k.as_ref().to_ascii_lowercase();
        if DROPPED.contains(&k.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            map.append(name, value);
        }
    }
    pass_back(status, map, body)
}

/// The vendor's answer passed back as it came (its headers were filtered when it arrived).
pub fn pass_back(status: u16, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.headers_mut() = headers;
    resp
}

/// Sends one call to the policy's upstream with the real credential.
pub async fn send(
    app: &App,
    policy: &PolicyConfig,
    out: Outgoing<'_>,
) -> Result<Forwarded, UpstreamError> {
    let uri = match out.query {
        Some(q) => format!("{}{}?{q}", policy.upstream, out.path),
        None => format!("{}{}", policy.upstream, out.path),
    };
    let mut builder = Request::builder().method(out.method).uri(&uri);
    for (name, value) in out.headers {
        builder = builder.header(name, value);
    }
    if let Some(ct) = out.content_type {
        builder = builder.header(CONTENT_TYPE, ct);
    }
    let auth = match &policy.credentials {
        Credentials::ApiKey(k) => format!("Bearer {k}"),
        Credentials::Twilio {
            account_sid,
            auth_token,
        } => format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{auth_token}"))
        ),
    };
    let host = uri
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
        .to_owned();
    // The proxy reads the vendor's answer to settle the actual cost: no Accept-Encoding is
    // sent, so it comes uncompressed.
    let request = builder
        .header(AUTHORIZATION, auth)
        .header(HOST, host)
        .header(CONTENT_LENGTH, out.body.len())
        .body(Full::new(out.body))
        .map_err(|e| UpstreamError::NotSent(format!("bad upstream request: {e}")))?;
    let timeout = app.config.upstream_timeout();
    let response = match tokio::time::timeout(timeout, app.upstream.request(request)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_connect() => return Err(UpstreamError::NotSent(e.to_string())),
        Ok(Err(e)) => return Err(UpstreamError::Unknown(e.to_string())),
        Err(_) => {
            return Err(UpstreamError::Unknown(format!(
                "no answer within {timeout:?}"
            )));
        }
    };
    let status = response.status().as_u16();
    let (parts, incoming) = response.into_parts();
    // Hop-by-hop headers dropped, and values that are not text (a replay keeps only text, and
    // the caller gets the same headers first time and replayed).
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if !DROPPED.contains(&name.as_str()) && value.to_str().is_ok() {
            headers.append(name.clone(), value.clone());
        }
    }
    let limited = Limited::new(incoming, app.config.max_response_bytes);
    let body = match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return Err(UpstreamError::Unknown(format!("reading the response: {e}"))),
        Err(_) => {
            return Err(UpstreamError::Unknown(
                "the response body did not arrive in time".into(),
            ));
        }
    };
    Ok((status, headers, body))
}

/// The forward stage: the call as the adapter encoded it, with the caller's Idempotency-Key
/// made this vault key's own, to the policy's upstream.
pub async fn forward(app: &App, call: &Call) -> Result<Forwarded, UpstreamError> {
    let headers = vendor_idempotency_key(&call.request, &call.token.key_id);
    let (query, body, content_type) = call.request.encoded();
    let started = std::time::Instant::now();
    let forwarded = send(
        app,
        &call.policy,
        Outgoing {
            method: &call.request.method,
            path: &call.upstream_path,
            query: query.as_deref(),
            headers: &headers,
            content_type,
            body,
        },
    )
    .await;
    app.metrics
        .upstream_latency(call.token.vendor, started.elapsed());
    forwarded
}

/// The headers to forward, the caller's Idempotency-Key made this vault key's own: two keys
/// that pick the same key (`order-123`) must not get each other's objects from the vendor.
fn vendor_idempotency_key(
    request: &crate::adapters::Request,
    key_id: &keybrake_ledger::KeyId,
) -> Vec<(HeaderName, HeaderValue)> {
    use sha2::{Digest, Sha256};
    request
        .headers
        .iter()
        .map(|(name, value)| {
            if name.as_str() != "idempotency-key" {
                return (name.clone(), value.clone());
            }
            let digest =
                Sha256::digest([key_id.as_str().as_bytes(), b":", value.as_bytes()].concat());
            let scoped = format!("kb-{}", &hex::encode(digest)[..48]);
            (
                name.clone(),
                HeaderValue::from_str(&scoped).unwrap_or_else(|_| value.clone()),
            )
        })
        .collect()
}
