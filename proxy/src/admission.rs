//! Admission: the reserve script decides, all or nothing, whether a call may go and reserves its
//! cost; a check-only pass lets the proxy read a vendor object to cost a call only for a key
//! that could make it. A granted reservation is then confirmed (the key record names the
//! policy whose credentials will be used, the reservation is replicated where asked, the
//! VaultKey still stands in the API server) or released. Redis down or slow means the call is
//! refused (fail closed).

use std::time::Duration;

use bytes::Bytes;
use keybrake_crds::Usd;
use keybrake_ledger::{Admission, KeyId, Mode, Outcome, ReserveRequest, SettleRequest};

use crate::{
    app::{App, Body},
    call::Call,
    forward::respond,
    policies::PolicyConfig,
    refusal::{Accounting, Refusal, from_ledger},
};

/// A reservation the call is forwarded under, and what the key record says it belongs to.
pub struct Reservation {
    /// The reservation to settle.
    pub id: String,
    /// `namespace/name` of the VaultKey.
    pub vault_key: String,
    /// `namespace/name` of the SpendPolicy.
    pub policy: String,
}

/// What admission decided for a call that may go on.
pub enum Reserved {
    /// Forward under this reservation.
    Go(Reservation),
    /// Answer at once (an idempotent replay).
    Answer(hyper::Response<Body>),
}

async fn run(app: &App, request: &ReserveRequest<'_>) -> Result<Admission, Refusal> {
    if app.redis_breaker.is_open() {
        return Err(Refusal::accounting());
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
        Refusal::accounting()
    })
}

fn refused(app: &App, request: &ReserveRequest<'_>, r: &keybrake_ledger::Refusal) -> Refusal {
    let refusal = from_ledger(r, request.method, request.path, request.owned);
    let cap_hit = r.rule.is_cap().then(|| refusal.message());
    app.spend
        .touch(request.key_id, &r.vault_key, &r.policy, cap_hit);
    refusal
}

/// Checks the key, its secret, revocation, expiry, the allowlist and that its caps are not
/// spent, reserving nothing; and that its record names the call's policy.
pub async fn check(app: &App, call: &Call) -> Result<(), Refusal> {
    let request = call.ledger_request(Mode::Check);
    match run(app, &request).await? {
        Admission::Admitted { policy, .. } => same_policy(&policy, &call.policy),
        Admission::Refused(r) => Err(refused(app, &request, &r)),
        other => Err(Refusal::AccountingUnavailable(Accounting::Malformed(
            format!("the admission check answered {other:?}"),
        ))),
    }
}

/// Reserves the call's estimate, waiting while a duplicate of the same Idempotency-Key is in
/// flight, then confirms the reservation (releasing it when it cannot be confirmed).
pub async fn reserve(app: &App, call: &Call) -> Result<Reserved, Refusal> {
    let reservation = match reserve_once_in_flight(app, call).await? {
        Reserved::Go(r) => r,
        answer => return Ok(answer),
    };
    tracing::Span::current().record("reservation", reservation.id.as_str());
    if let Err(r) = confirm(app, call, &reservation).await {
        release(app, call, &reservation.id).await;
        // A VaultKey gone or revoked in the API server but not in Redis: revoked in Redis at
        // once, so its next call is refused by the script itself.
        if matches!(r, Refusal::Revoked { .. } | Refusal::Deleted { .. })
            && let Err(e) = app.ledger.revoke(&call.token.key_id).await
        {
            tracing::warn!(error = %e, vault_key = reservation.vault_key, "could not revoke in Redis");
        }
        return Err(r);
    }
    Ok(Reserved::Go(reservation))
}

async fn reserve_once_in_flight(app: &App, call: &Call) -> Result<Reserved, Refusal> {
    let request = call.ledger_request(Mode::Reserve);
    let deadline = tokio::time::Instant::now() + app.config.upstream_timeout();
    loop {
        match run(app, &request).await? {
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
                return Ok(Reserved::Go(Reservation {
                    id: reservation,
                    vault_key,
                    policy,
                }));
            }
            Admission::Refused(r) => return Err(refused(app, &request, &r)),
            Admission::Replay(stored) if !stored.kept => {
                return Err(Refusal::IdempotencyResponseNotKept);
            }
            Admission::Replay(stored) => {
                let mut headers: Vec<(String, String)> = serde_json::from_str(&stored.headers_json)
                    .map_err(|e| {
                        Refusal::AccountingUnavailable(Accounting::Malformed(format!(
                            "a stored response is malformed ({e})"
                        )))
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
                    return Err(Refusal::IdempotencyKeyInFlight);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Admission::Admitted { .. } => {
                return Err(Refusal::AccountingUnavailable(Accounting::Malformed(
                    "reserve answered as a check".into(),
                )));
            }
        }
    }
}

/// What must hold before a reserved call is sent.
async fn confirm(app: &App, call: &Call, reservation: &Reservation) -> Result<(), Refusal> {
    same_policy(&reservation.policy, &call.policy)?;
    replicated(app, &call.token.key_id, &reservation.id).await?;
    still_standing(app, &reservation.vault_key).await
}

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
    Err(Refusal::PolicyMismatch)
}

/// With `KEYBRAKE_REDIS_REPLICA_ACKS`, waits until that many replicas have the reservation; a
/// reservation only the primary holds is refused (and released by the caller), so a failover
/// cannot lose counted money.
async fn replicated(app: &App, key_id: &KeyId, reservation: &str) -> Result<(), Refusal> {
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
            Err(Refusal::AccountingUnavailable(Accounting::NotReplicated(
                wanted,
            )))
        }
    }
}

/// Refuses a granted call whose VaultKey was revoked or deleted in the API server but not yet in
/// Redis (the operator is down or behind).
async fn still_standing(app: &App, vault_key: &str) -> Result<(), Refusal> {
    use crate::vault_keys::Standing;
    let standing = app.keys.standing(vault_key).await;
    if standing == Standing::Live {
        return Ok(());
    }
    let vault_key = vault_key.to_owned();
    Err(match standing {
        Standing::Gone => Refusal::Deleted { vault_key },
        _ => Refusal::Revoked { vault_key },
    })
}

/// Closes a reservation whose call was not sent (best effort: if this fails too, the sweeper
/// keeps the estimate counted, which never under-counts).
pub async fn release(app: &App, call: &Call, reservation: &str) {
    let release = SettleRequest {
        key_id: &call.token.key_id,
        vendor: Some(call.token.vendor),
        reservation,
        outcome: Outcome::NotSent,
        actual: Usd::ZERO,
        status: None,
        request_id: "",
        idempotency_key: call.idempotency_key(),
        response: None,
        object: None,
        created: &[],
    };
    if let Err(e) = app.ledger.settle(&release).await {
        tracing::warn!(error = %e, reservation, "could not release a reservation");
    }
}

#[cfg(test)]
mod tests {
    use keybrake_crds::{Vendor, spend_policy::Pricing};

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
        assert_eq!(r, Refusal::PolicyMismatch);
        assert_eq!(r.code(), "vault_key_invalid");
        assert!(same_policy("", &policy("billing", "stripe")).is_err());
    }
}
