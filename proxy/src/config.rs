//! Proxy configuration: flags with environment fallbacks.

use std::{net::SocketAddr, time::Duration};

/// keybrake-proxy: the metered data path to Stripe, Twilio and Resend.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "keybrake-proxy", version)]
pub struct Config {
    /// Where workloads' SDKs connect.
    #[arg(long, env = "KEYBRAKE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The Secret (`namespace/name`, cert-manager's shape: `tls.crt`, `tls.key`) whose
    /// certificate both listeners serve; followed, so a renewal needs no restart.
    #[arg(long, env = "KEYBRAKE_TLS_SECRET")]
    pub tls_secret: Option<String>,
    /// Serve plain HTTP when no TLS Secret is set. Off by default: vault tokens and
    /// ServiceAccount tokens would cross the network in clear text.
    #[arg(long, env = "KEYBRAKE_PLAINTEXT", default_value_t = false)]
    pub plaintext: bool,
    /// The audience a ServiceAccount token must be minted for to call the issuance and audit
    /// APIs (a projected token; the default token is the API server's and is refused).
    #[arg(long, env = "KEYBRAKE_TOKEN_AUDIENCE", default_value = "keybrake")]
    pub token_audience: String,
    /// Where Redis is and how to reach it.
    #[command(flatten)]
    pub redis: keybrake_ledger::flags::RedisFlags,
    /// Replicas that must have a reservation before its call is forwarded (Redis `WAIT`): with
    /// 1, a primary that fails over right after a reserve cannot take counted money with it.
    /// 0 forwards on the primary's word alone.
    #[arg(long, env = "KEYBRAKE_REDIS_REPLICA_ACKS", default_value_t = 0)]
    pub redis_replica_acks: u32,
    /// Longest wait for those replicas, in milliseconds; past it the call is refused.
    #[arg(
        long,
        env = "KEYBRAKE_REDIS_REPLICA_ACK_TIMEOUT_MS",
        default_value_t = 100
    )]
    pub redis_replica_ack_timeout_ms: u64,
    /// Longest wait for Redis, in milliseconds; past it the call is refused (fail closed).
    #[arg(long, env = "KEYBRAKE_REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// Longest upstream call (headers and body), in seconds.
    #[arg(long, env = "KEYBRAKE_UPSTREAM_TIMEOUT_SECS", default_value_t = 30)]
    pub upstream_timeout_secs: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "KEYBRAKE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest upstream response body read, in bytes.
    #[arg(long, env = "KEYBRAKE_MAX_RESPONSE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Concurrent connections served; more wait.
    #[arg(long, env = "KEYBRAKE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Time allowed to send request headers, in seconds (slowloris).
    #[arg(long, env = "KEYBRAKE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Upstream for policies that name none, per vendor (`stripe=http://127.0.0.1:8420`);
    /// repeatable. Default: the vendor's public API.
    #[arg(
        long = "default-upstream",
        env = "KEYBRAKE_DEFAULT_UPSTREAMS",
        value_delimiter = ','
    )]
    pub default_upstreams: Vec<String>,
    /// Audit entries kept per SpendPolicy in Redis when no audit database is set (approximate;
    /// older ones are trimmed). With one, entries are trimmed only once exported.
    #[arg(long, env = "KEYBRAKE_AUDIT_MAX_LEN", default_value_t = 100_000)]
    pub audit_max_len: u64,
    /// Where the audit trail is kept beyond Redis (PostgreSQL).
    #[command(flatten)]
    pub audit_db: keybrake_audit::AuditDbFlags,
    /// Shortest time between two status.spend writes of one key, in milliseconds.
    #[arg(long, env = "KEYBRAKE_SPEND_INTERVAL_MS", default_value_t = 2000)]
    pub spend_interval_ms: u64,
    /// Time allowed to send the request body, in seconds.
    #[arg(long, env = "KEYBRAKE_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub body_timeout_secs: u64,
    /// How long past twice the upstream timeout a reservation may stay open before any replica's
    /// sweeper closes it as "unknown" (estimate kept): the replica that made it has died.
    /// Keep it above 5 s, the longest a failing settle is retried: a sweep that overtakes a
    /// retrying settle keeps the money right (the late settle counts any excess), but the call's
    /// audit entry then says "unknown".
    #[arg(long, env = "KEYBRAKE_SWEEP_GRACE_SECS", default_value_t = 30)]
    pub sweep_grace_secs: u64,
    /// Longest `POST /vault/keys` waits for the operator to make a new key work, in seconds.
    #[arg(long, env = "KEYBRAKE_ISSUE_TIMEOUT_SECS", default_value_t = 10)]
    pub issue_timeout_secs: u64,
}

impl Config {
    /// A configuration for tests and embedding: loopback, any free port.
    pub fn local(redis_url: &str, redis_prefix: &str) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_secret: None,
            // Loopback only, in tests and `keybrake dev`.
            plaintext: true,
            token_audience: "keybrake".into(),
            redis: keybrake_ledger::flags::RedisFlags::single(redis_url, redis_prefix),
            redis_replica_acks: 0,
            redis_replica_ack_timeout_ms: 100,
            redis_timeout_ms: 500,
            upstream_timeout_secs: 30,
            max_body_bytes: 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_connections: 10_000,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            spend_interval_ms: 2000,
            default_upstreams: Vec::new(),
            audit_max_len: 100_000,
            audit_db: keybrake_audit::AuditDbFlags::default(),
            issue_timeout_secs: 10,
            sweep_grace_secs: 30,
        }
    }

    /// The default upstream of `vendor`: an override, else the vendor's public API.
    pub fn default_upstream(&self, vendor: keybrake_crds::Vendor) -> String {
        self.default_upstreams
            .iter()
            .filter_map(|o| o.split_once('='))
            .find(|(v, _)| *v == vendor.as_str())
            .map_or_else(
                || vendor.default_upstream().to_owned(),
                |(_, url)| url.to_owned(),
            )
    }

    /// How long issuance waits for the operator.
    pub fn issue_timeout(&self) -> Duration {
        Duration::from_secs(self.issue_timeout_secs)
    }

    /// The audit stream length the scripts trim to: none (0) when the sink exports the
    /// streams, which then trims them only below what PostgreSQL holds.
    pub fn audit_stream_len(&self) -> u64 {
        if self.audit_db.url.is_some() {
            0
        } else {
            self.audit_max_len.max(1)
        }
    }

    /// The upstream timeout.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    /// Flags flattened from other crates (Redis, the audit database) must not share an id:
    /// clap refuses the whole command at start if they do.
    #[test]
    fn the_flags_parse_and_name_the_audit_database() {
        Config::command().debug_assert();
        let c = Config::try_parse_from([
            "keybrake-proxy",
            "--redis-url",
            "redis://r:6379/",
            "--audit-db-url",
            "postgres://db/audit",
        ])
        .unwrap();
        assert_eq!(c.audit_db.url.as_deref(), Some("postgres://db/audit"));
        assert_eq!(c.audit_stream_len(), 0, "the sink trims");
    }
}
