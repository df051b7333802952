//! One connection type for the deployables, whatever Redis they are pointed at: a single node
//! (a managed primary, the bundled StatefulSet), a Redis Cluster, or a primary/replica set
//! managed by Redis Sentinel. The ledger's scripts run
//! unchanged on both, because every key one script touches shares its policy's hash tag; the
//! cluster client follows MOVED and ASK redirects, refreshes the topology and reloads a script
//! on a node that answers NOSCRIPT (after a failover or on a new primary).
//!
//! `rediss://` URLs connect over TLS (rustls) in every mode, trusting the webpki roots or, when
//! set, a private CA ([`TlsFiles`]); with `rediss://` sentinels the primary they name is reached
//! over TLS too.

use std::{
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisFuture, TlsCertificates, TlsMode, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
};

pub use crate::tls::{TlsError, TlsFiles};

/// How Redis is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One primary (`REDIS_URL` is one URL).
    #[default]
    Single,
    /// A Redis Cluster (`REDIS_URL` lists one or more seed nodes, comma-separated).
    Cluster,
    /// A primary and its replicas managed by Redis Sentinel (`REDIS_URL` lists the sentinels,
    /// comma-separated; `KEYBRAKE_REDIS_SENTINEL_MASTER` names the set).
    Sentinel,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "single" => Ok(Mode::Single),
            "cluster" => Ok(Mode::Cluster),
            "sentinel" => Ok(Mode::Sentinel),
            other => Err(format!(
                "redis mode {other:?} is not one of single, cluster, sentinel"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Single => "single",
            Mode::Cluster => "cluster",
            Mode::Sentinel => "sentinel",
        })
    }
}

/// A connection to Redis in either mode; clones share it.
#[derive(Clone)]
pub enum Connection {
    /// A single node, reconnecting on its own.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// Whichever node the sentinels name as the primary.
    Sentinel(Arc<Sentinelled>),
}

/// The primary of a Sentinel-managed set: asked of the sentinels when there is no connection,
/// and asked again after any failure (a failover demotes the old primary, which then answers
/// READONLY or not at all). The call that meets the failure is refused; the next one goes to
/// the new primary.
pub struct Sentinelled {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    timeout: Duration,
    current: Mutex<Option<MultiplexedConnection>>,
    connecting: std::sync::atomic::AtomicBool,
}

impl Sentinelled {
    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The primary's connection: the cached one, or a new one found through the sentinels. The
    /// new one is made in a task of its own, so a caller that gives up (the ledger's per-call
    /// timeout) does not cancel it: on a loaded machine, finding and connecting to a new primary
    /// can take longer than one call may wait, and each attempt must still end with a
    /// connection for the next call, not start again from nothing.
    async fn primary(this: &Arc<Sentinelled>) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = this.cached() {
            return Ok(c);
        }
        use std::sync::atomic::Ordering;
        // One connect at a time; a call that finds one under way is refused at once (it fails
        // closed) instead of queueing behind it.
        if this
            .connecting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "a connection to the primary is being made",
            )));
        }
        let me = this.clone();
        let connecting = tokio::spawn(async move {
            // Clears the flag however the task ends.
            struct Done<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(&me.connecting);
            // Bounded, so a sentinel that never answers cannot hold the connect for good.
            let made = tokio::time::timeout(me.timeout * 20, async {
                let client = me.sentinel.lock().await.async_get_client().await?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(me.timeout))
                    .set_response_timeout(Some(me.timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
            })
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "finding and connecting to the primary timed out",
                )))
            });
            if let Ok(conn) = &made {
                *me.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
            }
            made
        });
        connecting.await.map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "connecting to the primary",
                e.to_string(),
            ))
        })?
    }

    fn forget(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn listed(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Everything [`connect`] needs to reach Redis.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// How Redis is deployed.
    pub mode: Mode,
    /// `REDIS_URL`: one URL; or comma-separated seed nodes or sentinels.
    pub urls: String,
    /// The Sentinel set's name (Sentinel mode only).
    pub sentinel_master: String,
    /// Bounds connecting and each response.
    pub timeout: Duration,
    /// A private CA and a client certificate for `rediss://` URLs.
    pub tls: TlsFiles,
}

impl ConnectConfig {
    /// `mode` at `urls`, without TLS files (`rediss://` URLs then trust the webpki roots).
    pub fn new(mode: Mode, urls: &str, sentinel_master: &str, timeout: Duration) -> ConnectConfig {
        ConnectConfig {
            mode,
            urls: urls.to_owned(),
            sentinel_master: sentinel_master.to_owned(),
            timeout,
            tls: TlsFiles::default(),
        }
    }
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A TLS file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// TLS files are set for a URL that is not `rediss://`: they would be ignored.
    #[error(
        "{url} is not a rediss:// URL, but Redis TLS files are set (KEYBRAKE_REDIS_CA_FILE, KEYBRAKE_REDIS_CLIENT_CERT_FILE, KEYBRAKE_REDIS_CLIENT_KEY_FILE): use rediss:// or unset them"
    )]
    NotTls {
        /// The URL, without credentials.
        url: String,
    },
    /// A `rediss://` URL asks for no certificate check (`#insecure`).
    #[error(
        "REDIS_URL asks for TLS without certificate checks (#insecure): remove it, and give the CA with KEYBRAKE_REDIS_CA_FILE"
    )]
    Insecure,
    /// `REDIS_URL` names no node.
    #[error("REDIS_URL is empty")]
    NoUrl,
    /// Some URLs are `redis://` and some `rediss://`.
    #[error("REDIS_URL mixes redis:// and rediss:// URLs: use one scheme for every node")]
    MixedSchemes,
    /// The sentinels' URLs carry different credentials (with TLS they are given once for all).
    #[error(
        "the rediss:// sentinel URLs carry different usernames or passwords: use the same in each"
    )]
    SentinelCredentials,
    /// Redis refused or could not be reached.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// `urls` with any username and password replaced by `***`, for logs and errors.
pub fn redacted(urls: &str) -> String {
    listed(urls)
        .iter()
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            _ => (*url).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), ConnectionAddr::TcpTls { .. })
}

/// Parses `urls` and checks their schemes agree with each other and with the TLS files.
fn parse(
    urls: Vec<&str>,
    certs: Option<&TlsCertificates>,
) -> Result<(Vec<ConnectionInfo>, bool), ConnectError> {
    let infos = urls
        .into_iter()
        .map(IntoConnectionInfo::into_connection_info)
        .collect::<Result<Vec<_>, _>>()?;
    // Certificate checks cannot be turned off: `#insecure` is refused whatever features a
    // dependency enables in the redis crate.
    if infos
        .iter()
        .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { insecure: true, .. }))
    {
        return Err(ConnectError::Insecure);
    }
    let tls = infos.first().ok_or(ConnectError::NoUrl).map(is_tls)?;
    if infos.iter().any(|i| is_tls(i) != tls) {
        return Err(ConnectError::MixedSchemes);
    }
    if certs.is_some()
        && let Some(plain) = infos.iter().find(|i| !is_tls(i))
    {
        return Err(ConnectError::NotTls {
            url: format!("redis://{}", plain.addr()),
        });
    }
    Ok((infos, tls))
}

/// A client for the primary of the Sentinel set `master`. With `rediss://` sentinels the
/// primary is reached over TLS too, both trusting `certs` (and presenting its client
/// certificate) when given.
fn sentinel_client(
    infos: Vec<ConnectionInfo>,
    tls: bool,
    master: &str,
    certs: Option<TlsCertificates>,
) -> Result<SentinelClient, ConnectError> {
    if !tls {
        return Ok(SentinelClient::build(
            infos,
            master,
            None,
            SentinelServerType::Master,
        )?);
    }
    // Only the builder carries certificates to the primary; it takes one set of credentials
    // for all the sentinels.
    let first = infos.first().map(|i| i.redis_settings().clone());
    let first = first.unwrap_or_default();
    if infos.iter().any(|i| {
        i.redis_settings().username() != first.username()
            || i.redis_settings().password() != first.password()
    }) {
        return Err(ConnectError::SentinelCredentials);
    }
    let mut builder = SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        master,
        SentinelServerType::Master,
    )?
    .set_client_to_redis_tls_mode(TlsMode::Secure);
    if let Some(user) = first.username() {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = first.password() {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let Some(certs) = certs {
        builder = builder
            .set_client_to_sentinel_certificates(certs.clone())
            .set_client_to_redis_certificates(certs);
    }
    Ok(builder.build()?)
}

/// Connects as `config` says. TLS files are read and checked first; with them every URL must be
/// `rediss://`. A `rediss://` URL never falls back to plain TCP.
pub async fn connect(config: &ConnectConfig) -> Result<Connection, ConnectError> {
    let certs = config.tls.load()?;
    // One URL in single mode is taken whole (a password may hold a comma).
    let urls = match config.mode {
        Mode::Single => vec![config.urls.trim()],
        Mode::Cluster | Mode::Sentinel => listed(&config.urls),
    };
    let (mut infos, tls) = parse(urls, certs.as_ref())?;
    let timeout = config.timeout;
    match config.mode {
        Mode::Sentinel => {
            let client = sentinel_client(infos, tls, &config.sentinel_master, certs)?;
            let sentinelled = Sentinelled {
                sentinel: tokio::sync::Mutex::new(client),
                timeout,
                current: Mutex::new(None),
                connecting: std::sync::atomic::AtomicBool::new(false),
            };
            // Fail at start, not on the first call, when no sentinel names a primary.
            let sentinelled = Arc::new(sentinelled);
            Sentinelled::primary(&sentinelled).await?;
            Ok(Connection::Sentinel(sentinelled))
        }
        Mode::Single => {
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout));
            let info = infos.pop().ok_or(ConnectError::NoUrl)?;
            let client = match certs {
                Some(certs) => redis::Client::build_with_tls(info, certs)?,
                None => redis::Client::open(info)?,
            };
            Ok(Connection::Single(
                ConnectionManager::new_with_config(client, manager).await?,
            ))
        }
        Mode::Cluster => {
            let mut builder = ClusterClient::builder(infos)
                .connection_timeout(timeout)
                .response_timeout(timeout);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            Ok(Connection::Cluster(
                builder.build()?.get_async_connection().await?,
            ))
        }
    }
}

impl Connection {
    /// Waits until `replicas` replicas of the primary holding `key` have every write this
    /// connection sent it so far (Redis `WAIT`), at most `timeout`; returns how many did.
    pub async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<u32> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout.as_millis() as u64);
        let acked: i64 = match self {
            Connection::Single(c) => wait.query_async(c).await?,
            Connection::Sentinel(_) => wait.query_async(self).await?,
            Connection::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                redis::from_redis_value(c.route_command(wait, route).await?)?
            }
        };
        Ok(u32::try_from(acked.max(0)).unwrap_or(u32::MAX))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = Sentinelled::primary(&s).await?;
                    let reply = conn.req_packed_command(cmd).await;
                    if reply.is_err() {
                        s.forget();
                    }
                    reply
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut conn = Sentinelled::primary(&s).await?;
                    let reply = conn.req_packed_commands(pipeline, offset, count).await;
                    if reply.is_err() {
                        s.forget();
                    }
                    reply
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("cluster".parse::<Mode>(), Ok(Mode::Cluster));
        assert_eq!("single".parse::<Mode>(), Ok(Mode::Single));
        assert_eq!("sentinel".parse::<Mode>(), Ok(Mode::Sentinel));
        assert!(
            "replica"
                .parse::<Mode>()
                .unwrap_err()
                .contains("single, cluster, sentinel")
        );
        assert_eq!(Mode::Cluster.to_string(), "cluster");
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redacted("rediss://user:p@ss@redis.example:6380/0, redis://b:6379"),
            "rediss://***@redis.example:6380/0,redis://b:6379"
        );
        assert_eq!(redacted("redis://a:6379/"), "redis://a:6379/");
    }

    #[test]
    fn schemes_must_agree_with_each_other_and_with_the_tls_files() {
        let (_, tls) = parse(vec!["rediss://a:1", "rediss://b:2"], None).unwrap();
        assert!(tls);
        assert!(matches!(
            parse(vec!["rediss://a:1", "redis://b:2"], None),
            Err(ConnectError::MixedSchemes)
        ));
        let certs = TlsCertificates {
            client_tls: None,
            root_cert: None,
        };
        let err = parse(vec!["redis://:secret@a:1"], Some(&certs)).unwrap_err();
        assert!(matches!(err, ConnectError::NotTls { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.starts_with("redis://a:1 is not a rediss:// URL") && !err.contains("secret"),
            "{err}"
        );
        assert!(matches!(parse(vec![], None), Err(ConnectError::NoUrl)));
    }

    #[test]
    fn tls_sentinels_share_their_credentials() {
        let (infos, tls) = parse(
            vec!["rediss://:one@127.0.0.1:1", "rediss://:two@127.0.0.1:2"],
            None,
        )
        .unwrap();
        assert!(matches!(
            sentinel_client(infos, tls, "mymaster", None),
            Err(ConnectError::SentinelCredentials)
        ));
        let (infos, tls) = parse(
            vec!["rediss://:one@127.0.0.1:1", "rediss://:one@127.0.0.1:2"],
            None,
        )
        .unwrap();
        assert!(sentinel_client(infos, tls, "mymaster", None).is_ok());
    }

    #[tokio::test]
    async fn tls_files_with_a_plain_url_stop_the_start() {
        let mut config = ConnectConfig::new(
            Mode::Single,
            "redis://127.0.0.1:1/",
            "mymaster",
            Duration::from_millis(100),
        );
        config.tls.client_key_file = Some("/tmp/key.pem".into());
        // The files are checked before anything is dialled.
        assert!(matches!(
            connect(&config).await.err(),
            Some(ConnectError::Tls(TlsError::HalfPair))
        ));
    }
}
