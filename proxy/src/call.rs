//! One authenticated call as it passes through the stages: the key, its policy, the request as
//! the adapter read it, the objects it must own, and what it was costed at. Built by [`read`]
//! (the first stage); [`Call::ledger_request`] is what the reserve script sees of it.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Request, body::Incoming};
use keybrake_crds::Usd;
use keybrake_ledger::{Mode, ReserveRequest, Token};

use crate::{
    adapters::{self, Plan},
    app::App,
    path,
    policies::{PolicyConfig, PolicyState},
    refusal::Refusal,
    scope::{self, Owned},
};

/// A call on its way through the stages.
pub struct Call {
    /// The vault key it presents.
    pub token: Token,
    /// The SpendPolicy whose credentials and pricing it uses.
    pub policy: Arc<PolicyConfig>,
    /// The request, as the vendor will read it (the adapter's one reading).
    pub request: adapters::Request,
    /// The vendor path (a Twilio account SID made the real one).
    pub upstream_path: String,
    /// The objects the call must own, under the policy's scope.
    pub owned: Owned,
    /// When a commitment the call starts ends (Unix ms), if it starts one.
    pub commits_until_ms: Option<i64>,
    /// What the call is costed at, once the cost stage has run.
    pub estimate: Option<Usd>,
    secret_hash: String,
    /// What a reused Idempotency-Key must match; only worked out for a call that carries one.
    fingerprint: Option<String>,
}

/// The first stage: the request read as the vendor will read it, checked against the key's
/// policy, and planned; or why it cannot be.
pub async fn read(
    app: &App,
    token: Token,
    req: Request<Incoming>,
) -> Result<(Call, Plan), Refusal> {
    let vendor = token.vendor;
    let path = path::canonical(vendor, req.uri().path())
        .map_err(|e| Refusal::InvalidPath(e.to_string()))?;
    let policy = policy_of(app, &token).await?;
    let upstream_path = path::upstream_path(&token.twilio_sid(), &policy.credentials, &path)
        .ok_or(Refusal::AccountMismatch)?;
    let (parts, incoming) = req.into_parts();
    let body = read_body(app, incoming).await?;
    let request = adapters::read(
        vendor,
        parts.method.as_str(),
        &path,
        parts.uri.query(),
        &parts.headers,
        &body,
    )?;
    adapters::params::check(&request, &policy.scope)?;
    let plan = adapters::plan(&request, &policy.pricing)?;
    let owned = scope::owned(&request, &policy.scope)?;
    let commits_until_ms = adapters::commitment(&request)?;
    let call = Call {
        secret_hash: token.secret_hash(),
        fingerprint: request
            .idempotency_key
            .is_some()
            .then(|| request.fingerprint()),
        token,
        policy,
        request,
        upstream_path,
        owned,
        commits_until_ms,
        estimate: None,
    };
    Ok((call, plan))
}

impl Call {
    /// What the reserve script is asked: `mode` checks only, or reserves the estimate.
    pub fn ledger_request(&self, mode: Mode) -> ReserveRequest<'_> {
        ReserveRequest {
            key_id: &self.token.key_id,
            secret_hash: &self.secret_hash,
            method: &self.request.method,
            path: &self.request.path,
            estimate: self.reserved(),
            idempotency: self
                .idempotency_key()
                .map(|k| (k, self.fingerprint.as_deref().unwrap_or_default())),
            read: self.request.is_read(),
            mode,
            owned: &self.owned.objects,
            run_scope: self.owned.run,
            commits_until_ms: self.commits_until_ms,
        }
    }

    /// The Idempotency-Key the ledger deduplicates on. A replay is what keeps a priced call
    /// from counting twice; a call that costs nothing is deduplicated by the vendor itself, and
    /// storing its answer would only fill Redis.
    pub fn idempotency_key(&self) -> Option<&str> {
        if self.estimate == Some(Usd::ZERO) {
            return None;
        }
        self.request.idempotency_key.as_deref()
    }

    /// What is reserved for the call: its estimate, zero before it is costed.
    pub fn reserved(&self) -> Usd {
        self.estimate.unwrap_or(Usd::ZERO)
    }
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
        Some(PolicyState::Ready(_)) | None => Err(Refusal::PolicyGone),
        Some(PolicyState::Unusable(why)) => Err(Refusal::PolicyUnusable(why)),
    }
}

/// The whole body, within the size limit and the time limit.
async fn read_body(app: &App, body: Incoming) -> Result<Bytes, Refusal> {
    let limit = app.config.max_body_bytes;
    let timeout = Duration::from_secs(app.config.body_timeout_secs);
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Refusal::BodyTooLarge { limit })
        }
        Ok(Err(e)) => Err(Refusal::InvalidBody(e.to_string())),
        Err(_) => Err(Refusal::BodyTimeout),
    }
}
