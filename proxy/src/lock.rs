//! A call costed from a vendor object holds that object (for its key) until it is settled: two
//! calls on it would both be costed against its old state. The lock lives in Redis, with a
//! deadline past the longest a call can take, so a crashed proxy never holds it for good.

use std::time::Duration;

use crate::{adapters::Plan, app::App, call::Call, refusal::Refusal};

/// An object held by one call.
pub struct Held {
    object: String,
    holder: String,
}

/// The object `plan` is costed from, if any.
pub fn object_of(plan: &Plan) -> Option<String> {
    match plan {
        Plan::Prefetch(p) => p.object.clone(),
        Plan::Known(_) => None,
    }
}

/// Holds `object` (see [`object_of`]) for the call; refuses when another call holds it.
pub async fn hold(app: &App, call: &Call, object: Option<String>) -> Result<Option<Held>, Refusal> {
    let Some(object) = object else {
        return Ok(None);
    };
    let holder = hex::encode(rand::random::<[u8; 12]>());
    let ttl = app.config.upstream_timeout() * 2 + Duration::from_secs(5);
    let held = app
        .ledger
        .lock_object(&call.token.key_id, &object, &holder, ttl)
        .await
        .map_err(|e| {
            app.metrics.redis_error();
            tracing::error!(error = %e, "could not lock a vendor object; refusing (fail closed)");
            Refusal::accounting()
        })?;
    if !held {
        return Err(Refusal::ObjectBusy { object });
    }
    Ok(Some(Held { object, holder }))
}

impl Held {
    /// Lets the object go (if this fails, the lock's deadline does it).
    pub async fn release(self, app: &App, call: &Call) {
        let unlocked = app
            .ledger
            .unlock_object(&call.token.key_id, &self.object, &self.holder)
            .await;
        if let Err(e) = unlocked {
            tracing::warn!(error = %e, object = self.object, "could not release an object lock; it expires on its own");
        }
    }
}
