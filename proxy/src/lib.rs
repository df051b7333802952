//! keybrake-proxy: the metered data path to Stripe, Twilio and Resend. Vendor adapters cost each
//! call before it is sent and after it returns; the ledger's Redis scripts admit and settle it;
//! the real vendor credentials come from the SpendPolicies' Secrets and live only in memory.
#![forbid(unsafe_code)]

pub mod adapters;
pub mod admission;
pub mod app;
pub mod audit;
pub mod auth;
pub mod breaker;
pub mod call;
pub mod config;
pub mod cost;
pub mod forward;
pub mod handler;
pub mod issuance;
pub mod lock;
pub mod metrics;
pub mod path;
pub mod policies;
pub mod refusal;
pub mod scope;
pub mod server;
pub mod settle;
pub mod spend_writer;
pub mod tls;
pub mod upstream;
pub mod vault_keys;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use keybrake_ledger::{Ledger, LedgerConfig};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tracing::{Instrument, info_span};

pub use crate::config::Config;
use crate::{app::App, metrics::Metrics, policies::Policies};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The CRDs are missing or older than this proxy.
    #[error(transparent)]
    Crds(#[from] keybrake_crds::compat::Incompatible),
    /// The listeners' certificate cannot be served.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Neither a certificate nor plain HTTP was asked for.
    #[error(
        "no TLS certificate for the listeners: set KEYBRAKE_TLS_SECRET to the Secret holding the proxy's certificate (namespace/name, cert-manager's tls.crt and tls.key), or KEYBRAKE_PLAINTEXT=true to serve plain HTTP (vault and ServiceAccount tokens then cross the network in clear text)"
    )]
    NoTls,
    /// Redis could not be reached (or its TLS settings are unusable).
    #[error(transparent)]
    Redis(#[from] keybrake_ledger::flags::OpenError),
    /// The audit database settings can never work (its URL or CA file).
    #[error(transparent)]
    AuditDb(#[from] keybrake_audit::DbError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The bind failure.
        source: std::io::Error,
    },
}

/// A running proxy.
pub struct Running {
    /// The data-path address.
    pub addr: SocketAddr,
    /// The admin address (/metrics, /healthz, /readyz).
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, drains open requests, stops the background tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        for t in self.background {
            t.abort();
        }
    }
}

/// Longest wait at start for the first full load of the policies; past it the proxy serves and
/// refuses the calls of policies it has not loaded yet (readiness says so meanwhile).
const POLICY_LOAD_WAIT: Duration = Duration::from_secs(10);
/// Timeout of the API calls of the background tasks (policy reloads, spend write-back).
const BACKGROUND_API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long every call is refused at once after Redis fails (so a Redis outage costs one
/// timeout, not one per call).
const REDIS_BREAKER_OPEN: Duration = Duration::from_millis(250);
/// How often abandoned reservations are looked for, and how many are closed per round.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const SWEEP_BATCH: usize = 500;

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// Starts the proxy: checks the installed CRDs, connects to Redis, loads the policies (waiting
/// up to 10 seconds for the first load), and serves the data path and the admin port. One long
/// function on purpose: the start-up sequence, in the order it must happen.
pub async fn start(
    client: kube::Client,
    config: Config,
    admin: SocketAddr,
) -> Result<Running, StartError> {
    keybrake_crds::compat::check(&client).await?;
    let conn = config
        .redis
        .open(Duration::from_millis(config.redis_timeout_ms.max(100)))
        .await?;
    let ledger = Ledger::new(
        conn,
        config.redis.keyspace(),
        LedgerConfig {
            timeout: Duration::from_millis(config.redis_timeout_ms),
            reservation_deadline: config.upstream_timeout() * 2
                + Duration::from_secs(config.sweep_grace_secs),
            audit_max_len: config.audit_stream_len(),
            ..Default::default()
        },
    );
    let audit_db = match &config.audit_db.url {
        Some(_) => Some(keybrake_audit::Db::open(&config.audit_db)?),
        None => None,
    };
    let policies = Arc::new(Policies::default());
    let watcher = tokio::spawn(
        policies::watch(
            client.clone(),
            policies.clone(),
            BACKGROUND_API_TIMEOUT,
            config.clone(),
        )
        .instrument(info_span!("policy_watch")),
    );
    let loading = tokio::time::Instant::now();
    while !policies.synced() && loading.elapsed() < POLICY_LOAD_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (keys, key_watch) = vault_keys::KeyIndex::start(client.clone());
    let key_watcher = tokio::spawn(key_watch.instrument(info_span!("key_watch")));
    let spend = Arc::new(spend_writer::SpendWriter::default());
    let metrics = Arc::new(Metrics::default());
    let writer = tokio::spawn(
        spend_writer::run(
            spend.clone(),
            ledger.clone(),
            client.clone(),
            metrics.clone(),
            Duration::from_millis(config.spend_interval_ms),
            BACKGROUND_API_TIMEOUT,
        )
        .instrument(info_span!("spend_writer")),
    );
    let app = Arc::new(App {
        client: client.clone(),
        keys,
        policies,
        ledger,
        upstream: upstream::client(),
        config: config.clone(),
        metrics,
        spend,
        redis_breaker: breaker::Breaker::new(REDIS_BREAKER_OPEN),
        audit_db: audit_db.clone(),
    });
    // Each replica is one consumer of the audit streams, named by its pod. Without a database it
    // still reports streams a sink joined once, which the scripts no longer trim.
    let audit_task = match audit_db {
        None => tokio::spawn(
            keybrake_audit::sink::watch_unexported(app.ledger.clone(), app.metrics.audit.clone())
                .instrument(info_span!("audit_unexported")),
        ),
        Some(db) => {
            let consumer = std::env::var("POD_NAME").unwrap_or_else(|_| {
                format!("keybrake-proxy-{}", hex::encode(rand::random::<[u8; 4]>()))
            });
            let sink = keybrake_audit::Sink::new(
                app.ledger.clone(),
                db,
                &consumer,
                &config.audit_db,
                app.metrics.audit.clone(),
            );
            tokio::spawn(sink.run().instrument(info_span!("audit_sink", consumer)))
        }
    };

    let sweeper = {
        let ledger = app.ledger.clone();
        let sweep = async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                match ledger.sweep(SWEEP_BATCH).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        closed = n,
                        "settled abandoned reservations as unknown outcome"
                    ),
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
            }
        };
        tokio::spawn(sweep.instrument(info_span!("sweeper")))
    };
    let (acceptors, tls_follower) = match (&config.tls_secret, config.plaintext) {
        (Some(secret), plaintext) => {
            if plaintext {
                tracing::warn!("KEYBRAKE_PLAINTEXT is ignored: KEYBRAKE_TLS_SECRET is set");
            }
            let certs = Arc::new(tls::load(&client, secret).await?);
            let acceptor = |protocols| {
                tls::server_config(certs.clone(), protocols)
                    .map(tokio_rustls::TlsAcceptor::from)
                    .map_err(|e| tls::TlsError::Invalid {
                        secret: secret.clone(),
                        reason: e.to_string(),
                    })
            };
            let both = (
                acceptor(tls::Protocols::Both)?,
                acceptor(tls::Protocols::Http1)?,
            );
            let follower = tokio::spawn(
                tls::follow(
                    client.clone(),
                    secret.clone(),
                    certs.clone(),
                    app.metrics.clone(),
                )
                .instrument(info_span!("tls_follow", secret)),
            );
            (Some(both), Some(follower))
        }
        (None, true) => (None, None),
        (None, false) => return Err(StartError::NoTls),
    };
    let (data_tls, admin_tls) = match acceptors {
        Some((data, admin)) => (Some(data), Some(admin)),
        None => (None, None),
    };
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let admin_listener = bind(admin).await?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: admin,
            source,
        })?;
    let admin_task = tokio::spawn(
        server::serve_admin(admin_listener, app.clone(), admin_tls)
            .instrument(info_span!("admin_server", %admin_addr)),
    );
    let (stop, mut stopped) = watch::channel(false);
    let server = tokio::spawn(
        server::serve(listener, app, data_tls, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .instrument(info_span!("data_server", %addr)),
    );
    tracing::info!(%addr, %admin_addr, "keybrake-proxy serving");
    Ok(Running {
        addr,
        admin_addr,
        stop,
        server,
        background: [
            watcher,
            key_watcher,
            sweeper,
            admin_task,
            writer,
            audit_task,
        ]
        .into_iter()
        .chain(tls_follower)
        .collect(),
    })
}
