//! The settle stage: what the vendor's answer says the call cost, closed exactly once in Redis.
//! The decision ([`outcome`]) is pure; [`settle`] writes it.

use std::time::Duration;

use bytes::Bytes;
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
    match counted {
        Some(settled) => Ending {
            created: adapters::reach::created(call, status, v.as_ref(), on_own),
            ..ending(Outcome::Ok, settled, Some(status))
        },
        None => ending(Outcome::VendorError, none(Usd::ZERO), Some(status)),
    }
}

/// The vendor object id in a JSON response (`pi_...`, `SM...`, Resend's id), for the audit trail.
fn response_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("id")
        .or_else(|| v.get("sid"))
        .and_then(|i| i.as_str())
        .map(str::to_owned)
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
    let (headers, body) = match forwarded {
        Ok((_, h, b)) => (h.clone(), b.clone()),
        Err(_) => (Vec::new(), Bytes::new()),
    };
    let request_id = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("request-id"))
        .map(|(_, v)| v.clone())
        .or_else(|| response_id(&body))
        .unwrap_or_default();
    let stored = StoredResponse {
        status: ending.status.unwrap_or(0),
        headers_json: serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into()),
        body: body.to_vec(),
        kept: true,
    };
    let request = SettleRequest {
        key_id: &token.key_id,
        vendor: Some(call.vendor),
        reservation,
        outcome: ending.outcome,
        actual: ending.settled.usd,
        status: ending.status,
        request_id: &request_id,
        idempotency_key,
        response: matches!(ending.outcome, Outcome::Ok | Outcome::VendorError).then_some(&stored),
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
            vec![],
            Bytes::from(r#"{"id":"pi_7","amount":900,"currency":"usd","status":"succeeded"}"#),
        ));
        let e = outcome(&call, &ok, &policy(), five, true);
        assert_eq!(
            (e.outcome, e.settled.usd, e.settled.object.as_deref()),
            (Outcome::Ok, "9".parse().unwrap(), Some("pi_7"))
        );
        let declined: Result<Forwarded, UpstreamError> = Ok((402, vec![], Bytes::new()));
        assert_eq!(
            outcome(&call, &declined, &policy(), five, true).settled.usd,
            Usd::ZERO
        );
        let failed: Result<Forwarded, UpstreamError> = Ok((502, vec![], Bytes::new()));
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
