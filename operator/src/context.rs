//! What every reconcile shares.

use std::sync::Arc;

use keybrake_crds::{Listed, SpendPolicy};
use keybrake_ledger::Ledger;
use keybrake_ledger::connection::Connection;
use kube::{
    Client,
    runtime::{events::Recorder, reflector::Store},
};

use crate::{config::Config, counts::KeyCounts, metrics::Metrics, own_writes::OwnWrites};

/// Field manager of everything the operator writes (server-side apply).
pub const MANAGER: &str = "keybrake-operator";

/// Shared by the controllers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Key records and spend in Redis; Redis' clock is the operator's clock.
    pub ledger: Ledger<Connection>,
    /// The flags the operator started with.
    pub config: Config,
    /// Events on VaultKeys and SpendPolicies.
    pub recorder: Recorder,
    /// The operator's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// How many keys each policy has, from the VaultKey watch.
    pub counts: Arc<KeyCounts>,
    /// Every SpendPolicy, from the SpendPolicy watch: a key reconcile reads its policy here
    /// rather than from the API server.
    pub policies: Store<Listed<SpendPolicy>>,
    /// The versions the operator's own writes left, so their echoes start no reconcile.
    pub own_writes: Arc<OwnWrites>,
    /// The proxy's CA, for key Secrets (when configured).
    pub proxy_ca: Arc<crate::proxy_ca::ProxyCaCache>,
}

impl Context {
    /// Runs an API call under the configured timeout.
    pub async fn timed<T>(
        &self,
        what: &'static str,
        fut: impl std::future::Future<Output = kube::Result<T>>,
    ) -> crate::error::Result<T> {
        let limit = self.config.call_timeout();
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(crate::error::Error::Timeout(limit, what)),
        }
    }
}
