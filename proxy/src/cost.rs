//! The cost stage: turns an adapter's [`Plan`] into the amount to reserve. A plan that needs
//! vendor objects reads them with the real key (the key was admitted first) and subtracts what
//! this key already counted for the object; anything that cannot be read is a refusal, never an
//! estimate.

use keybrake_crds::Usd;
use keybrake_ledger::KeyId;
use serde_json::Value;

use crate::{
    adapters::{Plan, Prefetch},
    app::App,
    call::Call,
    forward::{self, Outgoing, UpstreamError},
    policies::PolicyConfig,
    refusal::Refusal,
};

/// The amount to reserve for `call`, by its `plan`.
pub async fn resolve(app: &App, call: &Call, plan: Plan) -> Result<Usd, Refusal> {
    match plan {
        Plan::Known(usd) => Ok(usd),
        Plan::Prefetch(p) => prefetched(app, &call.policy, &call.token.key_id, p).await,
    }
}

async fn prefetched(
    app: &App,
    policy: &PolicyConfig,
    key_id: &KeyId,
    p: Prefetch,
) -> Result<Usd, Refusal> {
    let mut objects = Vec::with_capacity(p.reads.len());
    // Objects are read in the API version the adapters were written for.
    let version: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> = match policy.vendor
    {
        keybrake_crds::Vendor::Stripe => vec![(
            hyper::header::HeaderName::from_static("stripe-version"),
            hyper::header::HeaderValue::from_static(crate::adapters::headers::STRIPE_VERSION),
        )],
        _ => Vec::new(),
    };
    for path in &p.reads {
        // The adapters build these paths from checked ids only; a list read carries its query.
        let (only_path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path.as_str(), None),
        };
        let read = forward::send(
            app,
            policy,
            Outgoing {
                method: "GET",
                path: only_path,
                query,
                headers: &version,
                content_type: None,
                body: bytes::Bytes::new(),
            },
        )
        .await;
        let unreadable = |why: String| Refusal::CostUnreadable {
            path: path.clone(),
            why,
        };
        match read {
            Ok((200, _, body)) => objects.push(
                serde_json::from_slice::<Value>(&body)
                    .map_err(|e| unreadable(format!("not JSON: {e}")))?,
            ),
            Ok((status, _, _)) => return Err(unreadable(format!("the vendor answered {status}"))),
            Err(UpstreamError::NotSent(e) | UpstreamError::Unknown(e)) => {
                return Err(Refusal::CostUpstreamUnreachable {
                    path: path.clone(),
                    upstream: policy.upstream.clone(),
                    detail: e,
                });
            }
        }
    }
    let counted = match &p.object {
        Some(object) => app.ledger.counted(key_id, object).await.map_err(|e| {
            app.metrics.redis_error();
            tracing::error!(error = %e, "reading what a key counted failed; refusing (fail closed)");
            Refusal::accounting()
        })?,
        None => Usd::ZERO,
    };
    Ok((p.cost)(&objects, counted)?)
}
