//! The settle stage: what the vendor's answer says the call cost, closed exactly once in Redis.
//! The decision ([`outcome`]) is pure; [`settle`] writes it.

use std::time::Duration;

use keybrake_crds::Usd;
use keybrake_ledger::{Outcome, SettleRequest, Settlement, StoredResponse};

use crate::{
    adapters::{self, Request, Settled},
    admission::Reservation,
    app::App,
    forward::{Forwarded, UpstreamError},
    policies::PolicyConfig,
};

/// How a forwarded call ended, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The outcome.
    pub outcome: Outcome,
    /// The cost, and the object it belongs to.
    pub settled: Settled,
    /// The vendor's status, if it answered.
    pub status: Option<u16>,
    /// Vendor objects the answer shows the call created (recorded as the key's own).
    pub created: Vec<String>,
    /// The id of the object the answer shows (`pi_...`, `SM...`), for the audit trail.
    pub response_id: Option<String>,
}

/// What a vendor's answer means for the accounting. A 2xx costs what the adapter reads from it
/// (never less than reserved for the vendors whose answers under-report); a 4xx moved nothing; a
/// 5xx, a timeout or a reset may have moved the reservation, which stays counted. `on_own`: the
/// call acts on the key's own object (see [`adapters::reach::created`]). The answer is read as
/// JSON once, for its cost and for what it created.
pub fn outcome(
    call: &Request,
    forwarded: &Result<Forwarded, UpstreamError>,
    policy: &PolicyConfig,
    reserved: Usd,
    on_own: bool,
) -> Ending {
    let none = |usd| Settled { usd, object: None };
    let ending = |outcome, settled, status| Ending {
        outcome,
        settled,
        status,
        created: Vec::new(),
        response_id: None,
    };
    let (status, v) = match forwarded {
        Ok((status, _, body)) if *status < 500 => (
            *status,
            serde_json::from_slice::<serde_json::Value>(body).ok(),
        ),
        Ok((status, _, _)) => return ending(Outcome::Unknown, none(reserved), Some(*status)),
        Err(UpstreamError::NotSent(_)) => return ending(Outcome::NotSent, none(Usd::ZERO), None),
        Err(UpstreamError::Unknown(_)) => return ending(Outcome::Unknown, none(reserved), None),
    };
    let counted = if (200..300).contains(&status) {
        Some(adapters::actual(
            call,
            v.as_ref(),
            &policy.pricing,
            reserved,
        ))
    } else {
        adapters::refused_but_counted(call, status, v.as_ref(), reserved)
    };
    let response_id = v
        .as_ref()
        .and_then(|v| v.get("id").or_else(|| v.get("sid")))
        .and_then(|i| i.as_str())
        .map(str::to_owned);
    match counted {
        Some(settled) => Ending {
            created: adapters::reach::created(call, status, v.as_ref(), on_own),
            response_id,
            ..ending(Outcome::Ok, settled, Some(status))
        },
        None => Ending {
            response_id,
            ..ending(Outcome::VendorError, none(Usd::ZERO), Some(status))
        },
    }
}

/// The settle stage: what the answer means for the accounting, closed in Redis, counted in
/// metrics and marked for the spend writer.
pub async fn close(
    app: &App,
    call: &crate::call::Call,
    reservation: &Reservation,
    forwarded: &Result<Forwarded, UpstreamError>,
) {
    let reserved = call.reserved();
    // What the call brings into being is the key's only if it acted on the key's own object.
    let ending = outcome(
        &call.request,
        forwarded,
        &call.policy,
        reserved,
        !call.owned.existing,
    );
    settle(app, call, &reservation.id, forwarded, &ending).await;
    app.metrics.forwarded(
        call.token.vendor,
        crate::metrics::endpoint_label(&call.request.method, &call.request.path),
        ending.outcome,
        ending.settled.usd,
    );
    app.spend.touch(
        &call.token.key_id,
        &reservation.vault_key,
        &reservation.policy,
        None,
    );
}

/// Closes the reservation with what the call cost.
async fn settle(
    app: &App,
    call: &crate::call::Call,
    reservation: &str,
    forwarded: &Result<Forwarded, UpstreamError>,
    ending: &Ending,
) {
    let (token, reserved) = (&call.token, call.reserved());
    let idempotency_key = call.idempotency_key();
    let call = &call.request;
    let answer = forwarded.as_ref().ok();
    let request_id = answer
        .and_then(|(_, headers, _)| headers.get("request-id"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| ending.response_id.clone())
        .unwrap_or_default();
    // Only a call with an Idempotency-Key has its answer kept for a replay: nothing else is
    // copied or sent to Redis.
    let stored = answer
        .filter(|_| idempotency_key.is_some())
        .filter(|_| matches!(ending.outcome, Outcome::Ok | Outcome::VendorError))
        .map(|(_, headers, body)| StoredResponse {
            status: ending.status.unwrap_or(0),
            headers_json: stored_headers(headers),
            body: body.to_vec(),
            kept: true,
        });
    let request = SettleRequest {
        key_id: &token.key_id,
        vendor: Some(call.vendor),
        reservation,
        outcome: ending.outcome,
        actual: ending.settled.usd,
        status: ending.status,
        request_id: &request_id,
        idempotency_key,
        response: stored.as_ref(),
        object: ending.settled.object.as_deref(),
        created: &ending.created,
    };
    if ending.outcome == Outcome::Ok && ending.settled.usd > reserved {
        let over = ending.settled.usd.saturating_sub(reserved);
        app.metrics.overshoot(call.vendor, over);
        tracing::warn!(
            reservation,
            reserved = %reserved,
            actual = %ending.settled.usd,
            "the vendor's answer shows more than was reserved; counted in full"
        );
    }
    let settled = settle_with_retries(app, &request).await;
    match settled {
        // In the call's span: the key id, vendor, endpoint and reservation are on the line.
        Ok(Settlement::Settled { .. }) => tracing::debug!(
            outcome = request.outcome.as_str(),
            actual_micros = request.actual.micros(),
            "settled"
        ),
        Ok(Settlement::AlreadySettled) => {
            tracing::warn!(reservation, "reservation was already settled (swept?)")
        }
        // The vendor has acted: the caller gets its answer; the sweeper closes the reservation
        // later, keeping its estimate counted.
        Err(e) => {
            tracing::error!(error = %e, reservation, "could not settle; the sweeper will keep the estimate counted");
        }
    }
}

/// The headers of an answer kept for a replay, as `[name, value]` pairs (values that are not
/// text are left out).
fn stored_headers(headers: &hyper::HeaderMap) -> String {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

/// How long a failing settle is retried. Settling is exactly once (a retry after a lost reply
/// finds the reservation gone), so retrying is safe; giving up hands the reservation to the
/// sweeper, which keeps only the estimate: money the vendor's answer showed above it would be
/// lost from the counters. Well inside the reservation's deadline (twice the upstream timeout
/// plus the grace), so the sweeper does not race the retries.
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(5);

/// The first wait between settle attempts; it doubles after each.
const SETTLE_FIRST_BACKOFF: Duration = Duration::from_millis(50);

async fn settle_with_retries(
    app: &App,
    request: &SettleRequest<'_>,
) -> Result<Settlement, keybrake_ledger::LedgerError> {
    let first = std::time::Instant::now();
    let mut backoff = SETTLE_FIRST_BACKOFF;
    loop {
        let started = std::time::Instant::now();
        let settled = app.ledger.settle(request).await;
        app.metrics.redis_latency("settle", started.elapsed());
        match settled {
            Err(e) if e.is_transient() && first.elapsed() + backoff < SETTLE_RETRY_FOR => {
                app.metrics.redis_error();
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "settle failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                app.metrics.redis_error();
                return Err(e);
            }
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use keybrake_crds::Vendor;

    use super::*;
    use crate::{adapters::testing, policies::Credentials};

    fn policy() -> PolicyConfig {
        PolicyConfig {
            namespace: "ns".into(),
            name: "p".into(),
            vendor: Vendor::Stripe,
            upstream: "http://127.0.0.1:1".into(),
            credentials: Credentials::ApiKey("sk".into()),
            pricing: testing::pricing(),
            scope: Default::default(),
        }
    }

    #[test]
    fn each_answer_settles_by_what_the_vendor_may_have_done() {
        let call = testing::call(
            Vendor::Stripe,
            "POST",
            "/v1/payment_intents",
            "amount=500&currency=usd",
        );
        let five: Usd = "5".parse().unwrap();
        let ok: Result<Forwarded, UpstreamError> = Ok((
            200,
            Default::default(),
            Bytes::from(r#"{"id":"pi_7","amount":900,"currency":"usd","status":"succeeded"}"#),
        ));
        let e = outcome(&call, &ok, &policy(), five, true);
        assert_eq!(
            (e.outcome, e.settled.usd, e.settled.object.as_deref()),
            (Outcome::Ok, "9".parse().unwrap(), Some("pi_7"))
        );
        let declined: Result<Forwarded, UpstreamError> =
            Ok((402, Default::default(), Bytes::new()));
        assert_eq!(
            outcome(&call, &declined, &policy(), five, true).settled.usd,
            Usd::ZERO
        );
        let failed: Result<Forwarded, UpstreamError> = Ok((502, Default::default(), Bytes::new()));
        let e = outcome(&call, &failed, &policy(), five, true);
        assert_eq!((e.outcome, e.settled.usd), (Outcome::Unknown, five));
        let lost: Result<Forwarded, UpstreamError> = Err(UpstreamError::Unknown("reset".into()));
        assert_eq!(
            outcome(&call, &lost, &policy(), five, true).settled.usd,
            five
        );
        let never: Result<Forwarded, UpstreamError> = Err(UpstreamError::NotSent("refused".into()));
        assert_eq!(
            outcome(&call, &never, &policy(), five, true).outcome,
            Outcome::NotSent
        );
    }
}
