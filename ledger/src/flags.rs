//! The Redis flags the operator and the proxy share: both must reach the same Redis, the same
//! way, under the same key prefix, so the flags are declared once.

use std::{path::PathBuf, time::Duration};

use crate::{
    Keyspace,
    connection::{ConnectConfig, Mode, TlsFiles},
};

/// Where Redis is, how it is deployed, how to reach it over TLS, and the key prefix.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisFlags {
    /// Redis holding key records and spend: one URL, or (cluster mode) seed nodes, or
    /// (sentinel mode) the sentinels, comma-separated.
    #[arg(
        long = "redis-url",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub url: String,
    /// `single` (one primary), `cluster` (Redis Cluster) or `sentinel` (a primary and replicas
    /// managed by Redis Sentinel; `REDIS_URL` then lists the sentinels).
    #[arg(
        long = "redis-mode",
        env = "KEYBRAKE_REDIS_MODE",
        default_value = "single"
    )]
    pub mode: Mode,
    /// The name of the Sentinel-managed set (`sentinel` mode only).
    #[arg(
        long = "redis-sentinel-master",
        env = "KEYBRAKE_REDIS_SENTINEL_MASTER",
        default_value = "mymaster"
    )]
    pub sentinel_master: String,
    /// PEM certificate(s) of a private CA that signs the Redis servers' certificates, trusted
    /// instead of the webpki roots (`rediss://` URLs only).
    #[arg(long = "redis-ca-file", env = "KEYBRAKE_REDIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to Redis for mutual TLS (with its key).
    #[arg(
        long = "redis-client-cert-file",
        env = "KEYBRAKE_REDIS_CLIENT_CERT_FILE"
    )]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long = "redis-client-key-file", env = "KEYBRAKE_REDIS_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    /// Prefix of every Redis key: the same in the operator and the proxy.
    #[arg(
        long = "redis-prefix",
        env = "KEYBRAKE_REDIS_PREFIX",
        default_value = "kb"
    )]
    pub prefix: String,
}

impl RedisFlags {
    /// One Redis primary at `url`, keys under `prefix`, no TLS files (tests, `keybrake dev`).
    pub fn single(url: &str, prefix: &str) -> RedisFlags {
        RedisFlags {
            url: url.to_owned(),
            mode: Mode::Single,
            sentinel_master: "mymaster".to_owned(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            prefix: prefix.to_owned(),
        }
    }

    /// The TLS files.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }

    /// What [`crate::connection::connect`] needs, each response bounded by `timeout`.
    pub fn connect_config(&self, timeout: Duration) -> ConnectConfig {
        ConnectConfig {
            mode: self.mode,
            urls: self.url.clone(),
            sentinel_master: self.sentinel_master.clone(),
            timeout,
            tls: self.tls(),
        }
    }

    /// Connects as these flags say, each response bounded by `timeout`; the error names the
    /// URL without its credentials.
    pub async fn open(
        &self,
        timeout: Duration,
    ) -> Result<crate::connection::Connection, OpenError> {
        crate::connection::connect(&self.connect_config(timeout))
            .await
            .map_err(|source| OpenError {
                url: crate::connection::redacted(&self.url),
                source,
            })
    }

    /// The key layout under the prefix.
    pub fn keyspace(&self) -> Keyspace {
        Keyspace::new(&self.prefix)
    }
}

/// Redis could not be reached (or its TLS settings are unusable).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach redis at {url}: {source}")]
pub struct OpenError {
    /// Where (without credentials).
    pub url: String,
    /// The connection or TLS failure.
    #[source]
    pub source: crate::connection::ConnectError,
}
