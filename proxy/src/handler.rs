//! One request, in the stages of the data path: authenticate; read the call as the vendor will
//! (the adapter); plan its cost; check the key before reading any vendor object; cost; reserve
//! (one EVALSHA); forward the adapter's encoding with the real credential; settle (one EVALSHA);
//! answer. Nothing refused reaches the vendor; nothing forwarded goes unaccounted. The stages
//! after the body is read run in a task of their own, so a caller that hangs up cannot skip
//! settle.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{HeaderMap, Request, Response, body::Incoming, header::AUTHORIZATION};
use keybrake_crds::{Usd, Vendor};
use keybrake_ledger::{Mode, ReserveRequest, Token};

use crate::app::{App, Body};
use crate::{
    adapters::{self, Call},
    admission::{self, Reserved},
    auth, cost,
    forward::{self, Outgoing, UpstreamError, respond},
    path,
    policies::{PolicyConfig, PolicyState},
    refusal::{self, Kind, Refusal},
    settle,
};

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

fn refuse(app: &App, vendor: Vendor, r: &Refusal) -> Response<Body> {
    app.metrics.refused(vendor, r.rule);
    let (status, headers, body) = refusal::render(vendor, r);
    respond(status, headers, body)
}

/// Handles one request end to end, in one span that ties its log lines together: the method
/// and path at once, then the key id and vendor once authenticated, the endpoint once read,
/// and the reservation once made.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    use tracing::Instrument;
    let guess = guess_vendor(req.uri().path(), req.headers());
    let span = tracing::info_span!(
        "call",
        method = %req.method(),
        path = %req.uri().path(),
        key_id = tracing::field::Empty,
        vendor = tracing::field::Empty,
        endpoint = tracing::field::Empty,
        reservation = tracing::field::Empty,
    );
    // Detached: once a reservation exists, forward and settle run to the end even if the
    // caller hangs up and hyper drops this future.
    let task = tokio::spawn({
        let app = app.clone();
        async move { admit_and_forward(&app, req).await }.instrument(span.clone())
    });
    async move {
        match task.await {
            Ok(Ok(resp)) => resp,
            Ok(Err((vendor, r))) => refuse(&app, vendor.unwrap_or(guess), &r),
            Err(e) => {
                tracing::error!(error = %e, "request task failed");
                refuse(
                    &app,
                    guess,
                    &Refusal::new(
                        Kind::Unavailable,
                        "internal_error",
                        "internal",
                        "internal_error: the proxy failed while handling the call",
                    ),
                )
            }
        }
    }
    .instrument(span)
    .await
}

type Refused = (Option<Vendor>, Refusal);

/// The key record names the policy whose credentials are about to be used: a policy tag is a
/// hash, and a key must never be served with another tenant's credentials, however unlikely.
fn same_policy(named: &str, policy: &PolicyConfig) -> Result<(), Refusal> {
    let ours = format!("{}/{}", policy.namespace, policy.name);
    if named == ours {
        return Ok(());
    }
    tracing::error!(
        named,
        ours,
        "a key record names another policy than its tag's"
    );
    Err(Refusal::new(
        Kind::Auth,
        "vault_key_invalid",
        "policy_mismatch",
        "vault_key_invalid: the key's record names another SpendPolicy than the one its id leads to; nothing was sent",
    ))
}

/// The headers to forward, the caller's Idempotency-Key made this vault key's own: two keys
/// that pick the same key (`order-123`) must not get each other's objects from the vendor.
fn vendor_idempotency_key(
    call: &Call,
    key_id: &keybrake_ledger::KeyId,
) -> Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> {
    use sha2::{Digest, Sha256};
    call.headers
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
                hyper::header::HeaderValue::from_str(&scoped).unwrap_or_else(|_| value.clone()),
            )
        })
        .collect()
}

/// Refuses a granted call whose VaultKey was revoked or deleted in the API server but not yet in
/// Redis (the operator is down or behind): the reservation is released, and the key is revoked
/// in Redis at once so its next call is refused by the script itself.
async fn still_standing(
    app: &App,
    token: &Token,
    call: &Call,
    reservation: &str,
    vault_key: &str,
    idempotency_key: Option<&str>,
) -> Result<(), Refusal> {
    use crate::vault_keys::Standing;
    let standing = app.keys.standing(vault_key).await;
    if standing == Standing::Live {
        return Ok(());
    }
    admission::release(
        app,
        &token.key_id,
        call.vendor,
        reservation,
        idempotency_key,
    )
    .await;
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
    Err(Refusal::new(Kind::Auth, code, "revoked", why))
}

/// The policy a key draws on, or why it cannot be used.
async fn policy_of(app: &App, token: &Token) -> Result<Arc<PolicyConfig>, Refusal> {
    let state = match app.policies.get(&token.key_id.tag()) {
        Some(state) => Some(state),
        None => {
            crate::policies::load_missing(
                &app.policies,
                &app.client,
                &app.ledger,
                &app.config,
                &token.key_id,
            )
            .await
        }
    };
    match state {
        Some(PolicyState::Ready(p)) if p.vendor == token.vendor => Ok(p),
        Some(PolicyState::Ready(_)) | None => Err(Refusal::new(
            Kind::Auth,
            "vault_key_invalid",
            "unknown_key",
            "vault_key_invalid: no such vault key, or its SpendPolicy is gone",
        )),
        Some(PolicyState::Unusable(why)) => Err(Refusal::new(
            Kind::Unavailable,
            "policy_unusable",
            "policy_unusable",
            format!("policy_unusable: {why}"),
        )),
    }
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
    let span = tracing::Span::current();
    span.record("key_id", tracing::field::display(&token.key_id));
    span.record("vendor", vendor.as_str());
    serve(app, &token, req).await.map_err(|r| (Some(vendor), r))
}

/// The stages of one authenticated call.
async fn serve(
    app: &App,
    token: &Token,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    let vendor = token.vendor;
    let path = path::canonical(vendor, req.uri().path()).map_err(|e| {
        Refusal::new(
            Kind::BadRequest,
            "invalid_path",
            "bad_request",
            e.to_string(),
        )
    })?;
    let policy = policy_of(app, token).await?;
    let upstream_path =
        forward::upstream_path(&token.twilio_sid(), &policy.credentials, &path).ok_or_else(|| {
            Refusal::new(
                Kind::Forbidden,
                "account_mismatch",
                "account",
                "account_mismatch: the account SID in the path is not the vault key's (use TWILIO_ACCOUNT_SID from the key's Secret)",
            )
        })?;
    let (parts, incoming) = req.into_parts();
    let body = read_body(app, incoming).await?;
    let call = adapters::read(
        vendor,
        parts.method.as_str(),
        &path,
        parts.uri.query(),
        &parts.headers,
        &body,
    )
    .map_err(|e| refusal::unreadable(&e))?;
    adapters::params::check(&call, &policy.scope).map_err(|e| refusal::unreadable(&e))?;
    let plan = adapters::plan(&call, &policy.pricing).map_err(|e| refusal::unreadable(&e))?;
    // A call costed from a vendor object holds that object (for this key) until it is settled:
    // two calls on it would both be costed against its old state.
    let object = match &plan {
        adapters::Plan::Prefetch(p) => p.object.clone(),
        adapters::Plan::Known(_) => None,
    };
    let Some(object) = object else {
        return go(app, token, &policy, &upstream_path, call, plan).await;
    };
    let holder = hex::encode(rand::random::<[u8; 12]>());
    let ttl = app.config.upstream_timeout() * 2 + Duration::from_secs(5);
    let held = app
        .ledger
        .lock_object(&token.key_id, &object, &holder, ttl)
        .await
        .map_err(|e| {
            app.metrics.redis_error();
            tracing::error!(error = %e, "could not lock a vendor object; refusing (fail closed)");
            refusal::accounting_unavailable()
        })?;
    if !held {
        return Err(Refusal::new(
            Kind::Conflict,
            "object_busy",
            "object_busy",
            format!(
                "object_busy: another call on {object} is being costed and sent; retry when it is done"
            ),
        ));
    }
    let result = go(app, token, &policy, &upstream_path, call, plan).await;
    if let Err(e) = app
        .ledger
        .unlock_object(&token.key_id, &object, &holder)
        .await
    {
        tracing::warn!(error = %e, object, "could not release an object lock; it expires on its own");
    }
    result
}

/// Admits, costs, forwards and settles one call already read and planned. Long on purpose: each
/// stage hands the next what it decided (the reservation, the outcome), and the order is the
/// guarantee (nothing forwarded unreserved, nothing reserved left unsettled).
async fn go(
    app: &App,
    token: &Token,
    policy: &PolicyConfig,
    upstream_path: &str,
    call: Call,
    plan: adapters::Plan,
) -> Result<Response<Body>, Refusal> {
    let vendor = call.vendor;

    let fingerprint = call.fingerprint();
    let secret_hash = token.secret_hash();
    let owned = crate::scope::owned(&call, &policy.scope)?;
    let mut request = ReserveRequest {
        key_id: &token.key_id,
        secret_hash: &secret_hash,
        method: &call.method,
        path: &call.path,
        estimate: Usd::ZERO,
        idempotency: call
            .idempotency_key
            .as_deref()
            .map(|k| (k, fingerprint.as_str())),
        read: call.is_read(),
        mode: Mode::Reserve,
        owned: &owned.objects,
        run_scope: owned.run,
        commits_until_ms: adapters::commitment(&call).map_err(|e| refusal::unreadable(&e))?,
    };
    // Nothing is read from the vendor with the real key before the key could make the call.
    if matches!(plan, adapters::Plan::Prefetch(_)) {
        let named = admission::check(app, &request).await?;
        same_policy(&named, policy)?;
    }
    request.estimate = cost::resolve(app, policy, &token.key_id, plan).await?;
    // A replay is what keeps a priced call from counting twice; a call that costs nothing is
    // deduplicated by the vendor itself, and storing its answer would only fill Redis.
    if request.estimate == Usd::ZERO {
        request.idempotency = None;
    }
    tracing::Span::current().record(
        "endpoint",
        crate::metrics::endpoint_label(request.method, request.path).as_str(),
    );
    let (reservation, vault_key, policy_name) = match admission::reserve(app, &request).await? {
        Reserved::Go {
            reservation,
            vault_key,
            policy,
        } => (reservation, vault_key, policy),
        Reserved::Answer(resp) => return Ok(resp),
    };
    tracing::Span::current().record("reservation", reservation.as_str());
    let idempotency_key = request.idempotency.map(|(k, _)| k);
    if let Err(r) = same_policy(&policy_name, policy) {
        admission::release(
            app,
            &token.key_id,
            call.vendor,
            &reservation,
            idempotency_key,
        )
        .await;
        return Err(r);
    }
    admission::replicated(
        app,
        &token.key_id,
        call.vendor,
        &reservation,
        idempotency_key,
    )
    .await?;
    still_standing(app, token, &call, &reservation, &vault_key, idempotency_key).await?;
    let headers = vendor_idempotency_key(&call, &token.key_id);

    let (query, body, content_type) = call.encoded();
    let started = std::time::Instant::now();
    let forwarded = forward::send(
        app,
        policy,
        Outgoing {
            method: &call.method,
            path: upstream_path,
            query: query.as_deref(),
            headers: &headers,
            content_type,
            body,
        },
    )
    .await;
    app.metrics.upstream_latency(vendor, started.elapsed());
    // What the call brings into being is the key's only if it acted on the key's own object.
    let ending = settle::outcome(&call, &forwarded, policy, request.estimate, !owned.existing);
    let closing = settle::Reservation {
        token,
        call: &call,
        id: &reservation,
        reserved: request.estimate,
        idempotency_key,
    };
    settle::settle(app, &closing, &forwarded, &ending).await;
    app.metrics.forwarded(
        vendor,
        crate::metrics::endpoint_label(&call.method, &call.path),
        ending.outcome,
        ending.settled.usd,
    );
    app.spend
        .touch(&token.key_id, &vault_key, &policy_name, None);
    match forwarded {
        Ok((status, headers, body)) => Ok(respond(status, headers, body)),
        Err(UpstreamError::NotSent(e)) => Err(Refusal::new(
            Kind::Unavailable,
            "upstream_unreachable",
            "upstream",
            format!(
                "upstream_unreachable: {} could not be reached ({e}); nothing was sent or counted",
                policy.upstream
            ),
        )),
        Err(UpstreamError::Unknown(e)) => Err(Refusal::new(
            Kind::Unavailable,
            "upstream_outcome_unknown",
            "upstream",
            format!(
                "upstream_outcome_unknown: the call to {} failed after it was sent ({e}); its cost stays counted",
                policy.upstream
            ),
        )),
    }
}

async fn read_body(app: &App, body: Incoming) -> Result<Bytes, Refusal> {
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
            Err(Refusal::new(
                Kind::TooLarge,
                "body_too_large",
                "body_too_large",
                format!(
                    "body_too_large: the request body is larger than {} bytes",
                    app.config.max_body_bytes
                ),
            ))
        }
        Ok(Err(e)) => Err(Refusal::new(
            Kind::BadRequest,
            "invalid_body",
            "bad_request",
            format!("invalid_body: the request body could not be read: {e}"),
        )),
        Err(_) => Err(Refusal::new(
            Kind::BadRequest,
            "body_timeout",
            "bad_request",
            "body_timeout: the request body was not sent in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use keybrake_crds::spend_policy::Pricing;

    use super::*;
    use crate::policies::Credentials;

    fn policy(ns: &str, name: &str) -> PolicyConfig {
        PolicyConfig {
            namespace: ns.into(),
            name: name.into(),
            vendor: Vendor::Stripe,
            upstream: "http://127.0.0.1:1".into(),
            credentials: Credentials::ApiKey("sk_test_x".into()),
            pricing: Pricing::default(),
            scope: Default::default(),
        }
    }

    /// Two policies whose tags collide: the key record names one, the proxy's table holds the
    /// other. The call is refused instead of crossing tenants.
    #[test]
    fn a_key_is_served_only_with_its_own_policys_credentials() {
        assert!(same_policy("billing/stripe", &policy("billing", "stripe")).is_ok());
        let r = same_policy("billing/stripe", &policy("attacker", "collides")).unwrap_err();
        assert_eq!((r.kind, r.code), (Kind::Auth, "vault_key_invalid"));
        assert!(same_policy("", &policy("billing", "stripe")).is_err());
    }
}
