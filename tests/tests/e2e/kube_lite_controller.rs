//! An unmodified kube-runtime `Controller` with `.owns(Secret)`, `finalizer()`, a server-side
//! applied child and `patch_status`, against kube-lite: it converges without a hot loop and
//! cleans up on delete.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::Secret,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use keybrake_e2e::Cluster;
use kube::{
    Api, Client, Config, CustomResource, CustomResourceExt, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::{Action, Controller},
        finalizer::{Event, finalizer},
        watcher,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "example.com",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
pub struct WidgetSpec {
    size: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WidgetStatus {
    ready: bool,
    observed_generation: Option<i64>,
}

struct Ctx {
    client: Client,
    reconciles: AtomicUsize,
}

async fn reconcile(
    w: Arc<Widget>,
    ctx: Arc<Ctx>,
) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = w.namespace().unwrap_or_default();
    let widgets: Api<Widget> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let status_api = widgets.clone();
    finalizer(&widgets, "example.com/cleanup", w, |event| async move {
        match event {
            Event::Apply(w) => {
                let name = format!("{}-secret", w.name_any());
                let owner = w.controller_owner_ref(&()).unwrap();
                let child = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "ownerReferences": [owner]},
                    "stringData": {"size": w.spec.size.to_string()},
                });
                secrets
                    .patch(
                        &name,
                        &PatchParams::apply("widget-operator").force(),
                        &Patch::Apply(child),
                    )
                    .await?;
                let status =
                    json!({"status": {"ready": true, "observedGeneration": w.metadata.generation}});
                status_api
                    .patch_status(
                        &w.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(status),
                    )
                    .await?;
                Ok(Action::requeue(Duration::from_secs(300)))
            }
            Event::Cleanup(w) => {
                match secrets
                    .delete(
                        &format!("{}-secret", w.name_any()),
                        &DeleteParams::default(),
                    )
                    .await
                {
                    Ok(_) => Ok(Action::await_change()),
                    Err(kube::Error::Api(s)) if s.is_not_found() => Ok(Action::await_change()),
                    Err(e) => Err(e),
                }
            }
        }
    })
    .await
}

fn error_policy(
    _: Arc<Widget>,
    _: &kube::runtime::finalizer::Error<kube::Error>,
    _: Arc<Ctx>,
) -> Action {
    Action::requeue(Duration::from_millis(200))
}

async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("timed out waiting for {what}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_runtime_controller_converges_and_cleans_up() -> Result<()> {
    let cluster = Cluster::start().await?;
    let client = Client::try_from(Config::new(cluster.url().parse()?))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Widget::crd()).await?;

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        reconciles: AtomicUsize::new(0),
    });
    let controller = Controller::new(
        Api::<Widget>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile, error_policy, ctx.clone())
    .for_each(|_| async {});
    let running = tokio::spawn(controller);

    let widgets: Api<Widget> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    widgets
        .create(
            &PostParams::default(),
            &Widget::new("w1", WidgetSpec { size: 3 }),
        )
        .await?;
    eventually("the widget to be ready with its secret", || async {
        let ready = widgets
            .get("w1")
            .await
            .ok()
            .and_then(|w| w.status)
            .is_some_and(|s| s.ready && s.observed_generation == Some(1));
        ready && secrets.get_opt("w1-secret").await.ok().flatten().is_some()
    })
    .await?;
    let w = widgets.get("w1").await?;
    assert_eq!(w.finalizers(), ["example.com/cleanup"]);
    let secret = secrets.get("w1-secret").await?;
    assert_eq!(secret.owner_references()[0].uid, w.uid().unwrap());

    // Converged: the status and child writes are no-ops from here, so reconciles stop.
    let settle = ctx.reconciles.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ctx.reconciles.load(Ordering::SeqCst);
    assert!(after <= 6, "{after} reconciles to converge one object");
    assert_eq!(
        after, settle,
        "reconciles continued after convergence: a hot loop"
    );

    // A spec change reconciles again and updates the child.
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await?;
    eventually("the child to follow the spec", || async {
        secrets
            .get("w1-secret")
            .await
            .ok()
            .and_then(|s| s.data)
            .and_then(|d| d.get("size").cloned())
            .is_some_and(|v| v.0 == b"5")
    })
    .await?;

    widgets.delete("w1", &DeleteParams::default()).await?;
    eventually("the widget and its secret to be gone", || async {
        widgets.get_opt("w1").await.ok().flatten().is_none()
            && secrets.get_opt("w1-secret").await.ok().flatten().is_none()
    })
    .await?;
    let total = ctx.reconciles.load(Ordering::SeqCst);
    assert!(
        total <= 14,
        "{total} reconciles for create, one change and delete"
    );
    running.abort();
    Ok(())
}
