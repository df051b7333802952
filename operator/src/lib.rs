//! keybrake-operator: reconciles VaultKeys and SpendPolicies into scoped credentials.
//! A VaultKey becomes a key record in Redis (what the proxy enforces) and a Secret holding the
//! SDKs' own environment variables (what workloads mount); a SpendPolicy becomes a policy
//! record with its aggregate budget.
#![forbid(unsafe_code)]

pub mod cached;
pub mod clock;
pub mod config;
pub mod context;
pub mod counts;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod own_writes;
pub mod proxy_ca;
pub mod spendpolicy;
pub mod triggers;
mod unreadable;
pub mod vaultkey;
pub mod watches;

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt;
use keybrake_ledger::{Ledger, LedgerConfig};
use kube::{
    Client, ResourceExt,
    runtime::{
        Controller, controller,
        events::{Recorder, Reporter},
        reflector,
    },
};
use tracing::Instrument;

pub use crate::config::Config;
use crate::{context::Context, metrics::Metrics};

/// VaultKey reconciles in flight at once. Each waits mostly on the API server and Redis;
/// enough to keep both busy, few enough that none of their calls times out in a queue.
pub const KEY_RECONCILES: u16 = 32;

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CRDs are not installed.
    #[error(
        "the keybrake CRDs are not installed: run `kubectl apply -f manifests/crds/` (or `keybrake crds | kubectl apply -f -`)"
    )]
    CrdsMissing,
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
    /// The installed CRDs are older than this operator.
    #[error("{0}")]
    CrdsOutdated(String),
    /// The API server could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Redis could not be reached (or its TLS settings are unusable).
    #[error(transparent)]
    Redis(#[from] keybrake_ledger::flags::OpenError),
    /// The metrics address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Metrics {
        /// The metrics address asked for.
        addr: std::net::SocketAddr,
        /// The bind failure.
        source: std::io::Error,
    },
}

/// Checks that both CRDs are installed and declare every field this build uses, so a missing
/// install or CRDs older than the operator are one clear line, not a crash loop or status
/// writes a real API server refuses.
pub async fn check_crds(client: &Client) -> Result<(), StartError> {
    match keybrake_crds::compat::check(client).await {
        Ok(()) => Ok(()),
        Err(keybrake_crds::compat::Incompatible::Missing { .. }) => Err(StartError::CrdsMissing),
        Err(keybrake_crds::compat::Incompatible::Kube(e)) => Err(StartError::Kube(e)),
        Err(e) => Err(StartError::CrdsOutdated(e.to_string())),
    }
}

/// Runs both controllers until `shutdown` resolves (or leadership is lost). One long function on
/// purpose: it is the start-up sequence (CRDs, Redis, metrics, the proxy's CA, readiness, the
/// Lease, the two controllers and their triggers) in the order it must happen, read top to bottom.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), StartError> {
    check_crds(&client).await?;
    let conn = config.redis.open(config.call_timeout()).await?;
    let ledger = Ledger::new(
        conn,
        config.redis.keyspace(),
        LedgerConfig {
            timeout: config.call_timeout(),
            ..Default::default()
        },
    );
    let metrics = Arc::new(Metrics::default());
    let listener =
        metrics::bind(config.metrics_addr)
            .await
            .map_err(|source| StartError::Metrics {
                addr: config.metrics_addr,
                source,
            })?;
    tracing::info!(addr = %listener.local_addr().map_err(|source| StartError::Metrics { addr: config.metrics_addr, source })?, "serving /metrics, /healthz, /readyz");
    let metrics_task = tokio::spawn(
        metrics::serve(listener, metrics.clone()).instrument(tracing::info_span!("metrics_server")),
    );

    tokio::pin!(shutdown);
    // The proxy's CA, when it has a private one: read before the first key is written, then
    // followed (a change rewrites every key's Secret). Waited for before the Lease (which is
    // not renewed meanwhile) and before readiness, so a rollout whose CA never comes stalls
    // where people look instead of idling.
    let proxy_ca = Arc::new(proxy_ca::ProxyCaCache::default());
    let ca_changes = match &config.proxy_ca_secret {
        Some(secret) => {
            let named = keybrake_crds::validate::namespaced_name(secret)
                .map_err(|e| StartError::Config(format!("KEYBRAKE_PROXY_CA_SECRET: {e}")))?;
            // A CA is for a proxy serving TLS: an http:// URL would send tokens in clear text.
            if !config.proxy_url.starts_with("https://") {
                return Err(StartError::Config(format!(
                    "KEYBRAKE_PROXY_URL {} is not https:// while KEYBRAKE_PROXY_CA_SECRET is set: key Secrets would send vault tokens to the proxy in clear text",
                    config.proxy_url
                )));
            }
            let mut changes = proxy_ca::follow(
                client.clone(),
                named,
                config.ca_mount_path.clone(),
                proxy_ca.clone(),
            )
            .boxed();
            while proxy_ca.get().is_none() {
                tracing::info!(
                    secret,
                    "waiting for the proxy's CA (ca.crt) before issuing keys"
                );
                tokio::select! {
                    _ = changes.next() => {}
                    _ = &mut shutdown => {
                        metrics_task.abort();
                        return Ok(());
                    }
                }
            }
            changes
        }
        None => futures::stream::pending().boxed(),
    };
    // Serving: a standby waiting for the Lease is ready, so a rollout can replace the leader.
    metrics.set_ready();
    let elector = config.leader_election.then(|| {
        leader::Elector::new(
            client.clone(),
            &config.lease_namespace,
            "keybrake-operator",
            &config.identity,
            Duration::from_secs(config.lease_secs),
        )
    });
    if let Some(e) = &elector {
        tokio::select! {
            () = e.acquire() => {}
            _ = &mut shutdown => {
                metrics_task.abort();
                return Ok(());
            }
        }
    }
    metrics.set_leader(true);

    // The watches list objects as stored (`Listed`) and the reconciles parse them: one object
    // our types cannot read must not stop the others from being seen. Each is opened once
    // (`watches`), and tells the other controller what concerns it.
    let own_writes = Arc::new(own_writes::OwnWrites::default());
    let counts = Arc::new(counts::KeyCounts::default());
    let (key_store, key_writer) = reflector::store();
    let (policy_store, policy_writer) = reflector::store();
    let (to_keys, key_refs) = futures::channel::mpsc::unbounded();
    let (to_policies, policy_refs) = futures::channel::mpsc::unbounded();
    let key_events = watches::keys(
        client.clone(),
        key_writer,
        counts.clone(),
        own_writes.clone(),
    );
    let policy_events = watches::policies(
        client.clone(),
        policy_writer,
        key_store.clone(),
        own_writes.clone(),
        to_keys.clone(),
    );
    let routing = {
        let secrets = watches::secrets(
            client.clone(),
            policy_store.clone(),
            own_writes.clone(),
            to_keys,
            to_policies.clone(),
        )
        .instrument(tracing::info_span!("watch", kind = "Secret"));
        let counts = watches::counts(counts.clone(), to_policies)
            .instrument(tracing::info_span!("key_counts"));
        async move { tokio::join!(secrets, counts) }
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: context::MANAGER.into(),
            instance: Some(config.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        ledger,
        config,
        recorder,
        metrics: metrics.clone(),
        counts,
        policies: policy_store.clone(),
        own_writes,
        proxy_ca: proxy_ca.clone(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Bounded: unbounded, 50,000 new keys meant 50,000 reconciles in flight, each call of each
    // timing out behind the others.
    let keys = Controller::for_stream(key_events, key_store.clone())
        .with_config(controller::Config::default().concurrency(KEY_RECONCILES))
        .reconcile_all_on(ca_changes)
        .reconcile_on(key_refs)
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(vaultkey::reconcile, vaultkey::error_policy, ctx.clone())
        .for_each(|_| async {})
        .instrument(tracing::info_span!("controller", kind = "VaultKey"));

    // The unreadable-objects gauge forgets objects that are gone (a reconcile never sees a
    // deleted object that carried no finalizer of ours).
    let pruning = {
        let (keys, policies, metrics) = (key_store, policy_store.clone(), metrics.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                let live: std::collections::HashSet<String> = keys
                    .state()
                    .iter()
                    .filter_map(|k| k.uid())
                    .chain(policies.state().iter().filter_map(|p| p.uid()))
                    .collect();
                metrics.retain_unreadable(&live);
            }
        }
        .instrument(tracing::info_span!("unreadable_pruning"))
    };
    let policies = Controller::for_stream(policy_events, policy_store)
        .reconcile_on(policy_refs)
        .graceful_shutdown_on(stopped(stop_rx))
        .run(spendpolicy::reconcile, spendpolicy::error_policy, ctx)
        .for_each(|_| async {})
        .instrument(tracing::info_span!("controller", kind = "SpendPolicy"));

    let leadership = async {
        match &elector {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let controllers = async {
        tokio::select! {
            _ = async { tokio::join!(keys, policies) } => {}
            () = pruning => {}
            _ = routing => {}
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = leadership => tracing::error!("lost the leader Lease; stopping"),
        _ = async { tokio::pin!(controllers); (&mut controllers).await } => {}
    }
    let _ = stop_tx.send(true);
    metrics.set_leader(false);
    metrics_task.abort();
    Ok(())
}
