//! One request: authenticate, cost, reserve (one EVALSHA), forward with the real credential,
//! settle (one EVALSHA), answer. Nothing refused reaches the vendor; nothing forwarded goes
//! unaccounted: if Redis cannot be reached the call is refused (fail closed).

use std::{sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    HeaderMap, Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue},
};
use keybrake_crds::{Usd, Vendor};
use keybrake_ledger::{
    Admission, Ledger, Outcome, ReserveRequest, SettleRequest, Settlement, StoredResponse, Token,
};
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use crate::{
    auth,
    config::Config,
    metrics::Metrics,
    path,
    policies::{Credentials, Policies, PolicyConfig, PolicyState},
    refusal::{self, Kind, Refusal},
    spend_writer::SpendWriter,
    upstream::Upstream,
    vendor::{self, Estimate},
};

/// What every request shares.
pub struct App {
    /// The Kubernetes API (the issuance API's reviews and VaultKeys).
    pub client: kube::Client,
    /// VaultKeys as the API server has them (revoked or deleted ones are refused).
    pub keys: crate::vault_keys::KeyIndex,
    /// Policies and their real credentials.
    pub policies: Arc<Policies>,
    /// The accounting.
    pub ledger: Ledger<ConnectionManager>,
    /// The vendors.
    pub upstream: Upstream,
    /// Limits and timeouts.
    pub config: Config,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Keys whose status.spend needs writing.
    pub spend: Arc<SpendWriter>,
    /// Refuses at once for a moment after Redis fails.
    pub redis_breaker: crate::breaker::Breaker,
}

/// Response bodies.
pub type Body = Full<Bytes>;

/// Headers never passed on in either direction (hop-by-hop, or ours to set). `accept-encoding`
/// goes too: the proxy must read the vendor's answer to settle the actual cost, so it asks for
/// it uncompressed.
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
    "accept-encoding",
];

/// The vendor a request is for when its credential cannot tell (for the shape of the refusal).
fn guess_vendor(raw_path: &str, headers: &HeaderMap) -> Vendor {
    let first = raw_path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if let Ok(v) = first.parse::<Vendor>() {
        return v;
    }
    let basic = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("basic"));
    match first {
        "2010-04-01" => Vendor::Twilio,
        _ if basic => Vendor::Twilio,
        "v1" => Vendor::Stripe,
        "emails" | "domains" | "api-keys" | "audiences" | "contacts" | "broadcasts" => {
            Vendor::Resend
        }
        _ => Vendor::Stripe,
    }
}

/// A response with `headers` (hop-by-hop ones dropped, invalid ones skipped).
fn respond<K: AsRef<str>>(
    status: u16,
    headers: impl IntoIterator<Item = (K, String)>,
    body: Bytes,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in headers {
        let k = k.as_ref().to_ascii_lowercase();
        if DROPPED.contains(&k.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

fn refuse(app: &App, vendor: Vendor, r: &Refusal) -> Response<Body> {
    app.metrics.refused(vendor, r.rule);
    let (status, headers, body) = refusal::render(vendor, r);
    respond(status, headers, body)
}

/// Handles one request end to end.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let guess = guess_vendor(req.uri().path(), req.headers());
    match admit_and_forward(&app, req).await {
        Ok(resp) => resp,
        Err((vendor, r)) => refuse(&app, vendor.unwrap_or(guess), &r),
    }
}

type Refused = (Option<Vendor>, Refusal);

/// Refuses a granted call whose VaultKey was revoked or deleted in the API server but not yet in
/// Redis (the operator is down or behind): the reservation is released, and the key is revoked
/// in Redis at once so its next call is refused by the script itself.
async fn still_standing(
    app: &App,
    token: &Token,
    vendor: Vendor,
    reservation: &str,
    vault_key: &str,
    idempotency_key: Option<&str>,
) -> Result<(), Refused> {
    use crate::vault_keys::Standing;
    let standing = app.keys.standing(vault_key).await;
    if standing == Standing::Live {
        return Ok(());
    }
    let release = SettleRequest {
        key_id: &token.key_id,
        vendor,
        reservation,
        outcome: Outcome::NotSent,
        actual: Usd::ZERO,
        status: None,
        request_id: "",
        idempotency_key,
        response: None,
    };
    if let Err(e) = app.ledger.settle(&release).await {
        tracing::warn!(error = %e, reservation, "could not release the reservation of a revoked key");
    }
    if let Err(e) = app.ledger.revoke(&token.key_id).await {
        tracing::warn!(error = %e, vault_key, "could not revoke in Redis");
    }
    let (code, why) = match standing {
        Standing::Gone => (
            "vault_key_invalid",
            format!("vault_key_invalid: VaultKey {vault_key} no longer exists"),
        ),
        _ => (
            "vault_key_revoked",
            format!("vault_key_revoked: VaultKey {vault_key} was revoked; issue a new key"),
        ),
    };
    Err((Some(vendor), Refusal::new(Kind::Auth, code, "revoked", why)))
}

fn bad(vendor: Vendor, code: &'static str, message: impl Into<String>) -> Refused {
    (
        Some(vendor),
        Refusal::new(Kind::BadRequest, code, "bad_request", message),
    )
}

async fn admit_and_forward(app: &App, req: Request<Incoming>) -> Result<Response<Body>, Refused> {
    let token = auth::credential(req.headers()).map_err(|e| {
        (
            None,
            Refusal::new(
                Kind::Auth,
                "vault_key_invalid",
                "auth",
                format!("vault_key_invalid: {e}"),
            ),
        )
    })?;
    let vendor = token.vendor;
    let method = req.method().as_str().to_ascii_uppercase();
    let path = path::canonical(vendor, req.uri().path())
        .map_err(|e| bad(vendor, "invalid_path", e.to_string()))?;
    let query = req.uri().query().map(str::to_owned);

    let state = match app.policies.get(&token.key_id.tag()) {
        Some(state) => Some(state),
        None => crate::policies::load_missing(app, &token.key_id).await,
    };
    let policy = match state {
        Some(PolicyState::Ready(p)) if p.vendor == vendor => p,
        Some(PolicyState::Ready(_)) | None => {
            return Err((
                Some(vendor),
                Refusal::new(
                    Kind::Auth,
                    "vault_key_invalid",
                    "unknown_key",
                    "vault_key_invalid: no such vault key, or its SpendPolicy is gone",
                ),
            ));
        }
        Some(PolicyState::Unusable(why)) => {
            return Err((
                Some(vendor),
                Refusal::new(
                    Kind::Unavailable,
                    "policy_unusable",
                    "policy_unusable",
                    format!("policy_unusable: {why}"),
                ),
            ));
        }
    };
    let upstream_path = upstream_path(&token, &policy, &path)?;

    let headers = req.headers().clone();
    // Stripe-Account makes the platform's real key act on a connected account: a scope no
    // VaultKey grants.
    if vendor == Vendor::Stripe && headers.contains_key("stripe-account") {
        return Err((
            Some(vendor),
            Refusal::new(
                Kind::Forbidden,
                "stripe_account_not_allowed",
                "endpoint",
                "stripe_account_not_allowed: the Stripe-Account header (acting on a connected account) is not allowed through a vault key",
            ),
        ));
    }
    let body = read_body(app, req.into_body(), vendor).await?;
    let estimate = match vendor::estimate(vendor, &method, &path, &body, &policy.pricing)
        .map_err(|e| bad(vendor, "invalid_request", format!("invalid_request: {e}")))?
    {
        Estimate::Known(u) => u,
        Estimate::Unknown => match prefetched_cost(app, &token, &policy, &method, &path).await {
            Some(u) => u,
            None => policy.pricing.unknown_call_usd.ok_or_else(|| {
                bad(
                    vendor,
                    "cost_unknown",
                    format!(
                        "cost_unknown: the cost of {method} {path} cannot be read from the request and SpendPolicy {}/{} sets no pricing.unknownCallUsd",
                        policy.namespace, policy.name
                    ),
                )
            })?,
        },
    };

    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fingerprint = hex::encode(Sha256::digest(
        [
            method.as_bytes(),
            b"\n",
            path.as_bytes(),
            b"\n",
            query.as_deref().unwrap_or("").as_bytes(),
            b"\n",
            &body,
        ]
        .concat(),
    ));
    let secret_hash = token.secret_hash();
    let request = ReserveRequest {
        key_id: &token.key_id,
        secret_hash: &secret_hash,
        method: &method,
        path: &path,
        estimate,
        idempotency: idempotency_key
            .as_deref()
            .map(|k| (k, fingerprint.as_str())),
    };
    let (reservation, vault_key, policy_name) = match reserve(app, &request, vendor).await? {
        Reserved::Go(r, k, p) => (r, k, p),
        Reserved::Answer(resp) => return Ok(resp),
    };
    still_standing(
        app,
        &token,
        vendor,
        &reservation,
        &vault_key,
        idempotency_key.as_deref(),
    )
    .await?;

    let started = std::time::Instant::now();
    let forwarded = forward(
        app,
        &policy,
        &method,
        &upstream_path,
        query.as_deref(),
        &headers,
        body,
    )
    .await;
    app.metrics.upstream_latency(vendor, started.elapsed());
    let (outcome, actual, status, resp_headers, resp_body) = match &forwarded {
        Ok((status, h, b)) if (200..300).contains(status) => (
            Outcome::Ok,
            vendor::actual(vendor, &method, &path, b, &policy.pricing, estimate),
            Some(*status),
            h.clone(),
            b.clone(),
        ),
        Ok((status, h, b)) if *status >= 500 => (
            Outcome::Unknown,
            estimate,
            Some(*status),
            h.clone(),
            b.clone(),
        ),
        Ok((status, h, b)) => (
            Outcome::VendorError,
            Usd::ZERO,
            Some(*status),
            h.clone(),
            b.clone(),
        ),
        Err(UpstreamError::NotSent(_)) => {
            (Outcome::NotSent, Usd::ZERO, None, Vec::new(), Bytes::new())
        }
        Err(UpstreamError::Unknown(_)) => {
            (Outcome::Unknown, estimate, None, Vec::new(), Bytes::new())
        }
    };
    let request_id = resp_headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("request-id"))
        .map(|(_, v)| v.clone())
        .or_else(|| response_id(&resp_body))
        .unwrap_or_default();
    let stored = StoredResponse {
        status: status.unwrap_or(0),
        headers_json: serde_json::to_string(&resp_headers).unwrap_or_default(),
        body: resp_body.to_vec(),
    };
    let settle = SettleRequest {
        key_id: &token.key_id,
        vendor,
        reservation: &reservation,
        outcome,
        actual,
        status,
        request_id: &request_id,
        idempotency_key: idempotency_key.as_deref(),
        response: matches!(outcome, Outcome::Ok | Outcome::VendorError).then_some(&stored),
    };
    let settle_started = std::time::Instant::now();
    let settled = app.ledger.settle(&settle).await;
    app.metrics
        .redis_latency("settle", settle_started.elapsed());
    match settled {
        Ok(Settlement::Settled { .. }) => {}
        Ok(Settlement::AlreadySettled) => {
            tracing::warn!(reservation, "reservation was already settled (swept?)")
        }
        // The vendor has acted: answer the caller; the sweeper closes the reservation later,
        // keeping its estimate counted.
        Err(e) => {
            app.metrics.redis_error();
            tracing::error!(error = %e, reservation, "could not settle; the sweeper will keep the estimate counted");
        }
    }
    app.metrics.forwarded(
        vendor,
        crate::metrics::endpoint_label(&method, &path),
        outcome,
        actual,
    );
    app.spend
        .touch(&token.key_id, &vault_key, &policy_name, None);
    match forwarded {
        Ok((status, headers, body)) => Ok(respond(status, headers, body)),
        Err(UpstreamError::NotSent(e)) => Err((
            Some(vendor),
            Refusal::new(
                Kind::Unavailable,
                "upstream_unreachable",
                "upstream",
                format!(
                    "upstream_unreachable: {} could not be reached ({e}); nothing was sent or counted",
                    policy.upstream
                ),
            ),
        )),
        Err(UpstreamError::Unknown(e)) => Err((
            Some(vendor),
            Refusal::new(
                Kind::Unavailable,
                "upstream_outcome_unknown",
                "upstream",
                format!(
                    "upstream_outcome_unknown: the call to {} failed after it was sent ({e}); its cost stays counted",
                    policy.upstream
                ),
            ),
        )),
    }
}

enum Reserved {
    /// Forward under this reservation; the key's VaultKey and SpendPolicy names.
    Go(String, String, String),
    Answer(Response<Body>),
}

/// Reserves, waiting while a duplicate of the same Idempotency-Key is in flight.
async fn reserve(
    app: &App,
    request: &ReserveRequest<'_>,
    vendor: Vendor,
) -> Result<Reserved, Refused> {
    let deadline = tokio::time::Instant::now() + app.config.upstream_timeout();
    loop {
        let unavailable = || {
            (
                Some(vendor),
                Refusal::new(
                    Kind::Unavailable,
                    "accounting_unavailable",
                    "redis",
                    "accounting_unavailable: spend cannot be checked right now, so the call was not sent; retry shortly",
                ),
            )
        };
        if app.redis_breaker.is_open() {
            return Err(unavailable());
        }
        let started = std::time::Instant::now();
        let admission = app.ledger.reserve(request).await;
        app.metrics.redis_latency("reserve", started.elapsed());
        let admission = admission.map_err(|e| {
            app.metrics.redis_error();
            app.redis_breaker.trip();
            tracing::error!(error = %e, "reserve failed; refusing (fail closed)");
            unavailable()
        })?;
        match admission {
            Admission::Granted {
                reservation,
                vault_key,
                policy,
                ..
            } => {
                return Ok(Reserved::Go(reservation, vault_key, policy));
            }
            Admission::Reattempt { reservation } => {
                return Ok(Reserved::Go(reservation, String::new(), String::new()));
            }
            Admission::Refused(r) => {
                let refusal = refusal::from_ledger(&r, request.method, request.path);
                let cap_hit = r.rule.is_cap().then(|| refusal.message.clone());
                app.spend
                    .touch(request.key_id, &r.vault_key, &r.policy, cap_hit);
                return Err((Some(vendor), refusal));
            }
            Admission::Replay(stored) => {
                let mut headers: Vec<(String, String)> =
                    serde_json::from_str(&stored.headers_json).unwrap_or_default();
                headers.push(("idempotent-replayed".into(), "true".into()));
                return Ok(Reserved::Answer(respond(
                    stored.status,
                    headers,
                    Bytes::from(stored.body),
                )));
            }
            Admission::InFlight => {
                if tokio::time::Instant::now() >= deadline {
                    return Err((
                        Some(vendor),
                        Refusal::new(
                            Kind::Unavailable,
                            "idempotency_key_in_flight",
                            "idempotency_in_flight",
                            "idempotency_key_in_flight: a request with this Idempotency-Key is still being processed",
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// The exact cost of a call whose amount lives on an existing vendor object (Stripe confirm,
/// invoice pay), read from the vendor first; `None` when there is no such object or the read
/// fails (then `unknownCallUsd` is reserved). Only a caller whose secret matches the key record
/// makes the proxy read anything with the real key; the reserve script still decides.
async fn prefetched_cost(
    app: &App,
    token: &Token,
    policy: &PolicyConfig,
    method: &str,
    path: &str,
) -> Option<Usd> {
    if policy.vendor != Vendor::Stripe {
        return None;
    }
    let (object, field) = vendor::stripe::prefetch(method, path)?;
    let record = app.ledger.key_fields(&token.key_id).await.ok()?;
    let hash = token.secret_hash();
    if record.get("secret_hash") != Some(&hash) && record.get("prev_secret_hash") != Some(&hash) {
        return None;
    }
    match forward(
        app,
        policy,
        "GET",
        &object,
        None,
        &HeaderMap::new(),
        Bytes::new(),
    )
    .await
    {
        Ok((200, _, body)) => vendor::stripe::prefetched_cost(&body, field, &policy.pricing),
        _ => None,
    }
}

/// The upstream path: Twilio's account SID in the path must be the key's, and becomes the real one.
fn upstream_path(token: &Token, policy: &PolicyConfig, path: &str) -> Result<String, Refused> {
    let Credentials::Twilio { account_sid, .. } = &policy.credentials else {
        return Ok(path.to_owned());
    };
    let segs: Vec<&str> = path.split('/').collect();
    match segs.iter().position(|s| *s == "Accounts") {
        Some(i) if segs.get(i + 1) == Some(&token.twilio_sid().as_str()) => {
            let mut out: Vec<&str> = segs.clone();
            out[i + 1] = account_sid;
            Ok(out.join("/"))
        }
        Some(_) => Err((
            Some(Vendor::Twilio),
            Refusal::new(
                Kind::Forbidden,
                "account_mismatch",
                "account",
                "account_mismatch: the account SID in the path is not the vault key's (use TWILIO_ACCOUNT_SID from the key's Secret)",
            ),
        )),
        None => Ok(path.to_owned()),
    }
}

async fn read_body(app: &App, body: Incoming, vendor: Vendor) -> Result<Bytes, Refused> {
    let limited = Limited::new(body, app.config.max_body_bytes);
    match tokio::time::timeout(
        Duration::from_secs(app.config.body_timeout_secs),
        limited.collect(),
    )
    .await
    {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err((
                Some(vendor),
                Refusal::new(
                    Kind::TooLarge,
                    "body_too_large",
                    "body_too_large",
                    format!(
                        "body_too_large: the request body is larger than {} bytes",
                        app.config.max_body_bytes
                    ),
                ),
            ))
        }
        Ok(Err(e)) => Err(bad(
            vendor,
            "invalid_body",
            format!("invalid_body: the request body could not be read: {e}"),
        )),
        Err(_) => Err(bad(
            vendor,
            "body_timeout",
            "body_timeout: the request body was not sent in time",
        )),
    }
}

/// Why an upstream call failed.
enum UpstreamError {
    /// It never reached the vendor.
    NotSent(String),
    /// It may have reached the vendor.
    Unknown(String),
}

type Forwarded = (u16, Vec<(String, String)>, Bytes);

async fn forward(
    app: &App,
    policy: &PolicyConfig,
    method: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Forwarded, UpstreamError> {
    let uri = match query {
        Some(q) => format!("{}{path}?{q}", policy.upstream),
        None => format!("{}{path}", policy.upstream),
    };
    let mut builder = Request::builder().method(method).uri(&uri);
    for (name, value) in headers {
        if !DROPPED.contains(&name.as_str()) && name != AUTHORIZATION {
            builder = builder.header(name, value);
        }
    }
    let auth = match &policy.credentials {
        Credentials::ApiKey(k) => format!("Bearer {k}"),
        Credentials::Twilio {
            account_sid,
            auth_token,
        } => {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{account_sid}:{auth_token}"))
            )
        }
    };
    let host = uri
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("")
        .to_owned();
    let request = builder
        .header(AUTHORIZATION, auth)
        .header(HOST, host)
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(body))
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
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(k, _)| !DROPPED.contains(&k.as_str()))
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_owned(), v.to_owned()))
        })
        .collect();
    let limited = Limited::new(response.into_body(), app.config.max_response_bytes);
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

/// The vendor object id in a JSON response (`pi_...`, `SM...`, Resend's id), for the audit trail.
fn response_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("id")
        .or_else(|| v.get("sid"))
        .and_then(|i| i.as_str())
        .map(str::to_owned)
}
