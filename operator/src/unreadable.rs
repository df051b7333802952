//! What the operator writes on an object the API server stores and our types cannot read
//! (a VaultKey or a SpendPolicy): `Stalled=True` with reason `Unreadable`, the field and the
//! parser's words, and a Warning Event, once per generation and message.

use k8s_openapi::serde::de::DeserializeOwned;
use keybrake_crds::{
    Listed,
    status::{STALLED, conditions},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::NamespaceResourceScope,
    runtime::events::{Event, EventType},
};
use serde_json::{Map, Value, json};
use tracing::warn;

use crate::{
    clock,
    context::{Context, MANAGER},
    error::Result,
};

/// The `Ready` and `Stalled` reason of an unreadable object.
pub const REASON: &str = "Unreadable";

/// Writes the status (the conditions, `observedGeneration` and the `fields` given) and
/// announces it, unless the status already says it for this generation.
pub async fn report<K>(
    listed: &Listed<K>,
    ctx: &Context,
    message: &str,
    fields: Map<String, Value>,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + DeserializeOwned,
{
    let generation = listed.meta().generation;
    if said(listed.status.as_ref(), generation, message, &fields) {
        return Ok(());
    }
    let previous = listed.conditions();
    let (now_ms, _) = ctx.ledger.now().await?;
    let mut status = fields;
    status.insert("observedGeneration".into(), json!(generation));
    status.insert(
        "conditions".into(),
        json!(conditions(
            false,
            Some(STALLED),
            REASON,
            message,
            generation,
            &previous,
            clock::time(now_ms)
        )),
    );
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let api: Api<Listed<K>> =
        Api::namespaced(ctx.client.clone(), &listed.namespace().unwrap_or_default());
    ctx.timed(
        "write status",
        api.patch_status(
            &listed.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        ),
    )
    .await?;
    let event = Event {
        type_: EventType::Warning,
        reason: REASON.into(),
        note: Some(keybrake_crds::events::note(message)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &listed.object_ref(&())).await {
        warn!(error = %e, "could not publish an Event");
    }
    Ok(())
}

/// Whether `status` already says `message` for `generation`, with the `fields` given (a
/// re-reconcile writes and announces nothing).
fn said(
    status: Option<&Value>,
    generation: Option<i64>,
    message: &str,
    fields: &Map<String, Value>,
) -> bool {
    let Some(status) = status else {
        return false;
    };
    let stalled = status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == STALLED));
    status.get("observedGeneration").and_then(Value::as_i64) == generation
        && stalled.is_some_and(|c| c["status"] == "True" && c["message"] == message)
        && fields.iter().all(|(k, v)| status.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_that_already_says_it_is_not_written_again() {
        let m = "spec.ttl: duration \"0s\" is zero";
        let fields = Map::from_iter([("phase".to_owned(), json!("Invalid"))]);
        let status = |generation: i64, phase: &str| {
            json!({
                "phase": phase, "observedGeneration": generation,
                "conditions": [{"type": "Stalled", "status": "True", "message": m}],
            })
        };
        assert!(said(Some(&status(2, "Invalid")), Some(2), m, &fields));
        assert!(
            !said(Some(&status(1, "Invalid")), Some(2), m, &fields),
            "a new generation is announced again"
        );
        assert!(!said(Some(&status(2, "Active")), Some(2), m, &fields));
        assert!(!said(
            Some(&status(2, "Invalid")),
            Some(2),
            "another message",
            &fields
        ));
        assert!(!said(None, Some(2), m, &fields));
        assert!(said(Some(&status(2, "Active")), Some(2), m, &Map::new()));
    }
}
