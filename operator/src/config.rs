//! Operator configuration: flags with environment fallbacks.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

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
    /// Redis holding key records and spend: one URL, or (cluster mode) seed nodes, comma-separated.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// `single` (one primary), `cluster` (Redis Cluster) or `sentinel` (a primary and replicas
    /// managed by Redis Sentinel; `REDIS_URL` then lists the sentinels).
    #[arg(long, env = "KEYBRAKE_REDIS_MODE", default_value = "single")]
    pub redis_mode: keybrake_ledger::connection::Mode,
    /// The name of the Sentinel-managed set (`sentinel` mode only).
    #[arg(
        long,
        env = "KEYBRAKE_REDIS_SENTINEL_MASTER",
        default_value = "mymaster"
    )]
    pub redis_sentinel_master: String,
    /// PEM certificate(s) of a private CA that signs the Redis servers' certificates, trusted
    /// instead of the webpki roots (`rediss://` URLs only).
    #[arg(long, env = "KEYBRAKE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to Redis for mutual TLS (with its key).
    #[arg(long, env = "KEYBRAKE_REDIS_CLIENT_CERT_FILE")]
    pub redis_client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "KEYBRAKE_REDIS_CLIENT_KEY_FILE")]
    pub redis_client_key_file: Option<PathBuf>,
    /// Prefix of every Redis key (share it with the proxy).
    #[arg(long, env = "KEYBRAKE_REDIS_PREFIX", default_value = "kb")]
    pub redis_prefix: String,
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
    /// The Redis TLS files.
    pub fn redis_tls(&self) -> keybrake_ledger::connection::TlsFiles {
        keybrake_ledger::connection::TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert_file: self.redis_client_cert_file.clone(),
            client_key_file: self.redis_client_key_file.clone(),
        }
    }
    /// The per-call timeout.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs)
    }
}
