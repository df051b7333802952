//! Admission: the reserve script decides, all or nothing, whether a call may go and reserves its
//! cost; a check-only pass lets the proxy read a vendor object to cost a call only for a key
//! that could make it. Redis down or slow means the call is refused (fail closed).

use std::time::Duration;

use bytes::Bytes;
use keybrake_crds::Usd;
use keybrake_ledger::{Admission, KeyId, Mode, Outcome, ReserveRequest, SettleRequest};

use crate::{
    app::{App, Body},
    forward::respond,
    refusal::{self, Kind, Refusal},
};

/// What admission decided for a call that may go on.
pub enum Reserved {
    /// Forward under this reservation.
    Go {
        /// The reservation to settle.
        reservation: String,
        /// `namespace/name` of the VaultKey.
        vault_key: String,
        /// `namespace/name` of the SpendPolicy.
        policy: String,
    },
    /// Answer at once (an idempotent replay).
    Answer(hyper::Response<Body>),
}

async fn run(app: &App, request: &ReserveRequest<'_>) -> Result<Admission, Refusal> {
    if app.redis_breaker.is_open() {
        return Err(refusal::accounting_unavailable());
    }
    let started = std::time::Instant::now();
    let admission = app.ledger.reserve(request).await;
    app.metrics.redis_latency(
        match request.mode {
            Mode::Reserve => "reserve",
            Mode::Check => "check",
        },
        started.elapsed(),
    );
    admission.map_err(|e| {
        app.metrics.redis_error();
        app.redis_breaker.trip();
        tracing::error!(error = %e, "reserve failed; refusing (fail closed)");
        refusal::accounting_unavailable()
    })
}

fn refused(app: &App, request: &ReserveRequest<'_>, r: &keybrake_ledger::Refusal) -> Refusal {
    let refusal = match (r.rule, r.limit) {
        (keybrake_ledger::Rule::ObjectNotOwned, Some(i)) => refusal::not_owned(
            request
                .owned
                .get((i as usize).saturating_sub(1))
                .map_or("an object it names", String::as_str),
            &r.vault_key,
            request.method,
            request.path,
        ),
        _ => refusal::from_ledger(r, request.method, request.path),
    };
    let cap_hit = r.rule.is_cap().then(|| refusal.message.clone());
    app.spend
        .touch(request.key_id, &r.vault_key, &r.policy, cap_hit);
    refusal
}

/// Checks the key, its secret, revocation, expiry, the allowlist and that its caps are not
/// spent, reserving nothing; returns the SpendPolicy its record names.
pub async fn check(app: &App, request: &ReserveRequest<'_>) -> Result<String, Refusal> {
    let request = ReserveRequest {
        mode: Mode::Check,
        ..request.clone()
    };
    match run(app, &request).await? {
        Admission::Admitted { policy, .. } => Ok(policy),
        Admission::Refused(r) => Err(refused(app, &request, &r)),
        other => Err(Refusal::new(
            Kind::Unavailable,
            "accounting_unavailable",
            "redis",
            format!("accounting_unavailable: the admission check answered {other:?}"),
        )),
    }
}

/// Reserves, waiting while a duplicate of the same Idempotency-Key is in flight.
pub async fn reserve(app: &App, request: &ReserveRequest<'_>) -> Result<Reserved, Refusal> {
    let deadline = tokio::time::Instant::now() + app.config.upstream_timeout();
    loop {
        match run(app, request).await? {
            Admission::Granted {
                reservation,
                vault_key,
                policy,
                ..
            }
            | Admission::Reattempt {
                reservation,
                vault_key,
                policy,
            } => {
                return Ok(Reserved::Go {
                    reservation,
                    vault_key,
                    policy,
                });
            }
            Admission::Refused(r) => return Err(refused(app, request, &r)),
            Admission::Replay(stored) if !stored.kept => {
                return Err(Refusal::new(
                    Kind::IdempotencyMismatch,
                    "idempotency_response_not_kept",
                    "idempotency_replay",
                    "idempotency_response_not_kept: the call with this Idempotency-Key was done, but its response was too large to keep for replay; read the object from the vendor instead",
                ));
            }
            Admission::Replay(stored) => {
                let mut headers: Vec<(String, String)> = serde_json::from_str(&stored.headers_json)
                    .map_err(|e| {
                        Refusal::new(
                            Kind::Unavailable,
                            "accounting_unavailable",
                            "redis",
                            format!("accounting_unavailable: a stored response is malformed ({e})"),
                        )
                    })?;
                headers.push(("idempotent-replayed".into(), "true".into()));
                return Ok(Reserved::Answer(respond(
                    stored.status,
                    headers,
                    Bytes::from(stored.body),
                )));
            }
            Admission::InFlight => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Refusal::new(
                        Kind::Unavailable,
                        "idempotency_key_in_flight",
                        "idempotency_in_flight",
                        "idempotency_key_in_flight: a request with this Idempotency-Key is still being processed",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Admission::Admitted { .. } => {
                return Err(Refusal::new(
                    Kind::Unavailable,
                    "accounting_unavailable",
                    "redis",
                    "accounting_unavailable: reserve answered as a check",
                ));
            }
        }
    }
}

/// Closes a reservation whose call was not sent (best effort: if this fails too, the sweeper
/// keeps the estimate counted, which never under-counts).
pub async fn release(
    app: &App,
    key_id: &KeyId,
    vendor: keybrake_crds::Vendor,
    reservation: &str,
    idempotency_key: Option<&str>,
) {
    let release = SettleRequest {
        key_id,
        vendor: Some(vendor),
        reservation,
        outcome: Outcome::NotSent,
        actual: Usd::ZERO,
        status: None,
        request_id: "",
        idempotency_key,
        response: None,
        object: None,
        created: &[],
    };
    if let Err(e) = app.ledger.settle(&release).await {
        tracing::warn!(error = %e, reservation, "could not release a reservation");
    }
}

/// With `KEYBRAKE_REDIS_REPLICA_ACKS`, waits until that many replicas have the reservation; a
/// reservation only the primary holds is released and the call refused (fail closed), so a
/// failover cannot lose counted money.
pub async fn replicated(
    app: &App,
    key_id: &KeyId,
    vendor: keybrake_crds::Vendor,
    reservation: &str,
    idempotency_key: Option<&str>,
) -> Result<(), Refusal> {
    let wanted = app.config.redis_replica_acks;
    if wanted == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut conn = app.ledger.connection();
    let acked = conn
        .wait_for_replicas(
            &app.ledger.key_record_name(key_id),
            wanted,
            Duration::from_millis(app.config.redis_replica_ack_timeout_ms),
        )
        .await;
    app.metrics.redis_latency("wait", started.elapsed());
    match acked {
        Ok(n) if n >= wanted => Ok(()),
        other => {
            app.metrics.redis_error();
            tracing::error!(
                ?other,
                wanted,
                reservation,
                "a reservation was not replicated in time; refusing"
            );
            release(app, key_id, vendor, reservation, idempotency_key).await;
            Err(Refusal::new(
                Kind::Unavailable,
                "accounting_unavailable",
                "redis",
                format!(
                    "accounting_unavailable: the reservation reached fewer than {wanted} Redis replica(s) in time, so the call was not sent; retry shortly"
                ),
            ))
        }
    }
}
