//! Operator configuration: flags with environment fallbacks.

use std::{net::SocketAddr, time::Duration};

/// keybrake-operator: reconciles VaultKeys and SpendPolicies into scoped credentials.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "keybrake-operator", version)]
pub struct Config {
    /// Public URL of the keybrake proxy, written into every credential Secret.
    #[arg(long, env = "KEYBRAKE_PROXY_URL")]
    pub proxy_url: String,
    /// The Secret (`namespace/name`) whose `ca.crt` signs the proxy's certificate: copied into
    /// every key's Secret with the variables the SDKs read, when the proxy serves TLS from a
    /// private CA.
    #[arg(long, env = "KEYBRAKE_PROXY_CA_SECRET", value_parser = namespaced)]
    pub proxy_ca_secret: Option<String>,
    /// Where workloads mount their key's Secret as files (for the CA bundle's path).
    #[arg(long, env = "KEYBRAKE_CA_MOUNT_PATH", default_value = keybrake_ledger::secret_env::DEFAULT_MOUNT_PATH)]
    pub ca_mount_path: String,
    /// Where Redis is and how to reach it.
    #[command(flatten)]
    pub redis: keybrake_ledger::flags::RedisFlags,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "KEYBRAKE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Run only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "KEYBRAKE_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "keybrake-system")]
    pub lease_namespace: String,
    /// How long a leader Lease lasts without renewal, in seconds (3 to 300); the leader renews
    /// every third of it, and a standby takes over after it.
    #[arg(long, env = "KEYBRAKE_LEASE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_secs: u64,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "keybrake-operator")]
    pub identity: String,
    /// Timeout of every API-server and Redis call, in seconds.
    #[arg(long, env = "KEYBRAKE_CALL_TIMEOUT_SECS", default_value_t = 10)]
    pub call_timeout_secs: u64,
    /// How long a VaultKey created by the proxy's issuance API is kept once it is Revoked or
    /// Expired, in seconds, before the operator deletes it (per-run keys would otherwise pile up).
    /// Keys created any other way are never deleted.
    #[arg(
        long,
        env = "KEYBRAKE_ISSUED_KEY_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub issued_key_retention_secs: u64,
}

/// `namespace/name`, both parts required (an empty namespace would follow every namespace's
/// Secret of that name, so any tenant could choose the CA every key trusts).
fn namespaced(text: &str) -> Result<String, String> {
    keybrake_crds::validate::namespaced_name(text).map(|_| text.to_owned())
}

impl Config {
    /// The per-call timeout.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs)
    }
}
