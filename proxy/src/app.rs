//! What every request and background task of the proxy shares: the API client, the policies
//! and keys it follows, the ledger, the upstream client, the configuration and the counters.
//! Its own module, so the stages (`handler`, `policies`, `cost`, ...) depend on it and not on
//! each other.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use keybrake_ledger::{Ledger, connection::Connection};

use crate::{
    config::Config, metrics::Metrics, policies::Policies, spend_writer::SpendWriter,
    upstream::Upstream,
};

/// What every request shares.
pub struct App {
    /// The Kubernetes API (the issuance API's reviews and VaultKeys).
    pub client: kube::Client,
    /// VaultKeys as the API server has them (revoked or deleted ones are refused).
    pub keys: crate::vault_keys::KeyIndex,
    /// Policies and their real credentials.
    pub policies: Arc<Policies>,
    /// The accounting.
    pub ledger: Ledger<Connection>,
    /// The vendors.
    pub upstream: Upstream,
    /// Limits and timeouts.
    pub config: Config,
    /// The proxy's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Keys whose status.spend needs writing.
    pub spend: Arc<SpendWriter>,
    /// Refuses at once for a moment after Redis fails.
    pub redis_breaker: crate::breaker::Breaker,
    /// The audit database, when one is set: the audit API reads from it.
    pub audit_db: Option<keybrake_audit::Db>,
}

/// Response bodies.
pub type Body = Full<Bytes>;
