//! One request, in the stages of the data path ([`meter`] reads as their list): authenticate;
//! read the call as the vendor will (the adapter) and plan its cost; hold the vendor object it
//! is costed from; check the key before reading any vendor object; cost; reserve (one EVALSHA)
//! and confirm; forward the adapter's encoding with the real credential; settle (one EVALSHA);
//! answer. Nothing refused reaches the vendor; nothing forwarded goes unaccounted. The stages
//! run in a task of their own, so a caller that hangs up cannot skip settle.

use std::sync::Arc;

use hyper::{HeaderMap, Request, Response, body::Incoming, header::AUTHORIZATION};
use keybrake_crds::Vendor;
use keybrake_ledger::Token;

use crate::{
    adapters::Plan,
    admission::{self, Reserved},
    app::{App, Body},
    auth,
    call::{self, Call},
    cost,
    forward::{self, Forwarded, UpstreamError, pass_back, respond},
    lock,
    policies::PolicyConfig,
    refusal::{self, Refusal},
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
    app.metrics.refused(vendor, r.rule());
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
        async move { authenticate_and_meter(&app, req).await }.instrument(span.clone())
    });
    async move {
        match task.await {
            Ok(Ok(resp)) => resp,
            Ok(Err((vendor, r))) => refuse(&app, vendor.unwrap_or(guess), &r),
            Err(e) => {
                tracing::error!(error = %e, "request task failed");
                refuse(&app, guess, &Refusal::Internal)
            }
        }
    }
    .instrument(span)
    .await
}

type Refused = (Option<Vendor>, Refusal);

/// Authenticates the call, then meters it.
async fn authenticate_and_meter(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<Body>, Refused> {
    let token = auth::credential(req.headers())
        .map_err(|e| (None, Refusal::BadCredential(e.to_string())))?;
    let vendor = token.vendor;
    let span = tracing::Span::current();
    span.record("key_id", tracing::field::display(&token.key_id));
    span.record("vendor", vendor.as_str());
    meter(app, token, req).await.map_err(|r| (Some(vendor), r))
}

/// The stages of one authenticated call, in order: read it as the vendor will, hold the object
/// it is costed from, then check, cost, reserve, forward and settle.
async fn meter(app: &App, token: Token, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let (mut call, plan) = call::read(app, token, req).await?;
    let held = lock::hold(app, &call, lock::object_of(&plan)).await?;
    let answered = reserve_forward_settle(app, &mut call, plan).await;
    if let Some(held) = held {
        held.release(app, &call).await;
    }
    answered
}

/// The order is the guarantee: nothing read from the vendor before the key could make the call,
/// nothing forwarded unreserved, nothing reserved left unsettled.
async fn reserve_forward_settle(
    app: &App,
    call: &mut Call,
    plan: Plan,
) -> Result<Response<Body>, Refusal> {
    if matches!(plan, Plan::Prefetch(_)) {
        admission::check(app, call).await?;
    }
    call.estimate = Some(cost::resolve(app, call, plan).await?);
    let endpoint = crate::metrics::endpoint_label(&call.request.method, &call.request.path);
    tracing::Span::current().record("endpoint", endpoint.as_str());
    let reservation = match admission::reserve(app, call).await? {
        Reserved::Go(reservation) => reservation,
        Reserved::Answer(replayed) => return Ok(replayed),
    };
    let forwarded = forward::forward(app, call).await;
    settle::close(app, call, &reservation, &forwarded).await;
    answer(forwarded, &call.policy)
}

/// The vendor's answer, or why there is none.
fn answer(
    forwarded: Result<Forwarded, UpstreamError>,
    policy: &PolicyConfig,
) -> Result<Response<Body>, Refusal> {
    let upstream = policy.upstream.clone();
    match forwarded {
        Ok((status, headers, body)) => Ok(pass_back(status, headers, body)),
        Err(UpstreamError::NotSent(detail)) => {
            Err(Refusal::UpstreamUnreachable { upstream, detail })
        }
        Err(UpstreamError::Unknown(detail)) => {
            Err(Refusal::UpstreamOutcomeUnknown { upstream, detail })
        }
    }
}
