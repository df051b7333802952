//! A real control plane, a real Redis and the operator (in-process, the binary's own `run`), with the
//! CRDs installed and a namespace to work in.

use std::{future::Future, time::Duration};

use anyhow::{Context, Result, bail};
use keybrake_ledger::{
    Keyspace, Ledger, LedgerConfig,
    connection::{ConnectConfig, TlsFiles},
};
use kube::Client;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    Cluster,
    redis_server::{RedisCluster, RedisSentinelSet, RedisServer},
    workspace_root,
};

/// The name of the test Sentinel set.
pub const SENTINEL_MASTER: &str = "keybrake";

/// Where the shipped manifests let the operator hold its Lease.
pub const LEASE_NAMESPACE: &str = "keybrake-system";

/// The proxy URL the operator writes into Secrets in tests.
pub const PROXY_URL: &str = "http://127.0.0.1:18080";

/// A running stack.
pub struct Stack {
    /// The API server and kubectl.
    pub cluster: Cluster,
    /// Redis (in cluster mode a spare: the stack uses `redis_cluster`).
    pub redis: RedisServer,
    /// A Redis Cluster the operator and proxies use instead, when set.
    pub redis_cluster: Option<RedisCluster>,
    /// A Sentinel-managed primary and replica the operator and proxies use instead, when set.
    pub redis_sentinel: Option<RedisSentinelSet>,
    /// The TLS files the operator and proxies are given (a `rediss://` Redis with a test CA).
    pub redis_tls: TlsFiles,
    /// The Redis key prefix of this stack.
    pub prefix: String,
    /// An administrator's client for the API server (what a test itself does).
    pub client: Client,
    /// The operator's client: its ServiceAccount, with what the shipped RBAC grants.
    pub operator_client: Client,
    /// The proxy's client: its ServiceAccount, with what the shipped RBAC grants.
    pub proxy_client: Client,
    operator: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    /// The proxy URL the operator writes into Secrets.
    pub proxy_url: String,
}

/// Which Redis a stack runs on.
enum RedisChoice {
    /// A fresh single node.
    Plain,
    /// A single node with AOF on, that tests can kill and restart.
    Durable,
    /// A given node (TLS-only, say) and the files the deployables are given to reach it.
    Given(Box<(RedisServer, TlsFiles)>),
    /// A Sentinel-managed primary and replica.
    Sentinel,
    /// A three-primary Redis Cluster with this many replicas per primary.
    Cluster(usize),
}

/// How a [`Stack`] is made: `Stack::builder().durable_redis().start_with_proxy()`.
pub struct StackBuilder {
    redis: RedisChoice,
}

impl StackBuilder {
    /// A Redis with AOF on, that tests can kill and restart.
    pub fn durable_redis(mut self) -> StackBuilder {
        self.redis = RedisChoice::Durable;
        self
    }

    /// `redis` (a TLS-only server, say), the operator and the proxy given `tls`.
    pub fn tls_redis(mut self, redis: RedisServer, tls: TlsFiles) -> StackBuilder {
        self.redis = RedisChoice::Given(Box::new((redis, tls)));
        self
    }

    /// A Sentinel-managed primary and replica.
    pub fn redis_sentinel(mut self) -> StackBuilder {
        self.redis = RedisChoice::Sentinel;
        self
    }

    /// A three-primary Redis Cluster with `replicas` replicas per primary.
    pub fn redis_cluster(mut self, replicas: usize) -> StackBuilder {
        self.redis = RedisChoice::Cluster(replicas);
        self
    }

    /// Starts the API server, Redis and the operator.
    pub async fn start(self) -> Result<Stack> {
        Ok(self.start_inner(false).await?.0)
    }

    /// Starts a proxy before the operator, so the Secrets the operator writes carry the proxy's
    /// real URL (what a pod would use).
    pub async fn start_with_proxy(self) -> Result<(Stack, keybrake_proxy::Running)> {
        let (stack, proxy) = self.start_inner(true).await?;
        Ok((stack, proxy.context("no proxy")?))
    }

    async fn start_inner(
        self,
        with_proxy: bool,
    ) -> Result<(Stack, Option<keybrake_proxy::Running>)> {
        let mut cluster = Cluster::start().await?;
        let (mut redis_cluster, mut redis_sentinel) = (None, None);
        let (redis, redis_tls) = match self.redis {
            RedisChoice::Durable => (RedisServer::start_durable().await?, TlsFiles::default()),
            RedisChoice::Given(given) => *given,
            RedisChoice::Plain => (RedisServer::start().await?, TlsFiles::default()),
            RedisChoice::Sentinel => {
                redis_sentinel = Some(RedisSentinelSet::start(SENTINEL_MASTER).await?);
                (RedisServer::start().await?, TlsFiles::default())
            }
            RedisChoice::Cluster(replicas) => {
                redis_cluster = Some(RedisCluster::start_with_replicas(replicas).await?);
                (RedisServer::start().await?, TlsFiles::default())
            }
        };
        let crds = workspace_root().join("manifests/crds");
        cluster
            .kubectl_ok(&["apply", "-f", crds.to_str().unwrap_or_default()])
            .await?;
        cluster.apply_namespace("billing").await?;
        cluster.install_shipped_rbac().await?;
        // After the CRDs: the garbage collector reads discovery again only every 30 s.
        cluster.start_controllers()?;
        let client = cluster.admin_client().await?;
        let tokens = cluster.tokens().await?.clone();
        let operator_client = cluster.client_as(&tokens.operator).await?;
        let proxy_client = cluster.client_as(&tokens.proxy).await?;
        let mut stack = Stack {
            cluster,
            redis,
            redis_cluster,
            redis_sentinel,
            redis_tls,
            prefix: format!("op{}", rand_suffix()),
            client,
            operator_client,
            proxy_client,
            operator: None,
            proxy_url: PROXY_URL.into(),
        };
        let proxy = if with_proxy {
            let p = stack.start_proxy().await?;
            stack.proxy_url = format!("http://{}", p.addr);
            Some(p)
        } else {
            None
        };
        stack.start_operator().await?;
        Ok((stack, proxy))
    }
}

impl Stack {
    /// A stack on a fresh API server and Redis, to be changed before it starts.
    pub fn builder() -> StackBuilder {
        StackBuilder {
            redis: RedisChoice::Plain,
        }
    }

    /// Starts everything and installs the CRDs and the `billing` namespace.
    pub async fn start() -> Result<Stack> {
        Stack::builder().start().await
    }

    /// Like [`Stack::start`], with a proxy started before the operator.
    pub async fn start_with_proxy() -> Result<(Stack, keybrake_proxy::Running)> {
        Stack::builder().start_with_proxy().await
    }

    /// The operator's configuration in this stack.
    pub fn operator_config(&self) -> keybrake_operator::Config {
        keybrake_operator::Config {
            proxy_url: self.proxy_url.clone(),
            redis: self.redis_flags(),
            metrics_addr: "127.0.0.1:0"
                .parse()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            leader_election: false,
            lease_namespace: LEASE_NAMESPACE.into(),
            lease_secs: 3,
            identity: "test".into(),
            call_timeout_secs: 5,
            issued_key_retention_secs: 86_400,
            proxy_ca_secret: None,
            ca_mount_path: keybrake_ledger::secret_env::DEFAULT_MOUNT_PATH.into(),
        }
    }

    /// How the operator and the proxy reach this stack's Redis.
    pub fn redis_flags(&self) -> keybrake_ledger::flags::RedisFlags {
        keybrake_ledger::flags::RedisFlags {
            mode: self.redis_mode(),
            sentinel_master: SENTINEL_MASTER.into(),
            ca_file: self.redis_tls.ca_file.clone(),
            client_cert_file: self.redis_tls.client_cert_file.clone(),
            client_key_file: self.redis_tls.client_key_file.clone(),
            ..keybrake_ledger::flags::RedisFlags::single(&self.redis_url(), &self.prefix)
        }
    }

    /// Starts the operator (again).
    pub async fn start_operator(&mut self) -> Result<()> {
        let config = self.operator_config();
        self.start_operator_with(config).await
    }

    /// Starts the operator with a given configuration.
    pub async fn start_operator_with(&mut self, config: keybrake_operator::Config) -> Result<()> {
        self.operator = Some(self.spawn_replica(config));
        Ok(())
    }

    /// Starts one more operator replica beside the first; stops when the sender is dropped.
    pub fn spawn_replica(
        &self,
        config: keybrake_operator::Config,
    ) -> (oneshot::Sender<()>, JoinHandle<()>) {
        let (tx, rx) = oneshot::channel();
        let client = self.operator_client.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) = keybrake_operator::run(client, config, shutdown).await {
                eprintln!("operator replica stopped: {e}");
            }
        });
        (tx, task)
    }

    /// Stops the operator and waits for it.
    pub async fn stop_operator(&mut self) {
        if let Some((tx, task)) = self.operator.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Starts a proxy replica on this stack's Redis and keyspace.
    pub async fn start_proxy(&self) -> Result<keybrake_proxy::Running> {
        self.start_proxy_with(|_| {}).await
    }

    /// Starts a proxy replica with its configuration changed by `edit`.
    pub async fn start_proxy_with(
        &self,
        edit: impl FnOnce(&mut keybrake_proxy::Config),
    ) -> Result<keybrake_proxy::Running> {
        self.start_proxy_on(self.proxy_client.clone(), edit).await
    }

    /// Starts a proxy replica that reaches the API server with `client` (through a test front,
    /// say), its configuration changed by `edit`.
    pub async fn start_proxy_on(
        &self,
        client: Client,
        edit: impl FnOnce(&mut keybrake_proxy::Config),
    ) -> Result<keybrake_proxy::Running> {
        let mut config = keybrake_proxy::Config::local(&self.redis_url(), &self.prefix);
        config.redis = self.redis_flags();
        edit(&mut config);
        Ok(keybrake_proxy::start(client, config, "127.0.0.1:0".parse()?).await?)
    }

    /// `REDIS_URL` as the deployables take it: one URL, or the cluster's seed nodes.
    pub fn redis_url(&self) -> String {
        match (&self.redis_cluster, &self.redis_sentinel) {
            (Some(c), _) => c.urls(),
            (None, Some(s)) => s.urls(),
            (None, None) => self.redis.url(),
        }
    }

    /// `KEYBRAKE_REDIS_MODE`.
    pub fn redis_mode(&self) -> keybrake_ledger::connection::Mode {
        use keybrake_ledger::connection::Mode;
        match (&self.redis_cluster, &self.redis_sentinel) {
            (Some(_), _) => Mode::Cluster,
            (None, Some(_)) => Mode::Sentinel,
            (None, None) => Mode::Single,
        }
    }

    /// Fails if the API server refused the operator or the proxy anything: a refusal the code
    /// only logs (an Event, a status write) would otherwise pass unseen.
    pub fn assert_deployables_never_refused(&self) -> Result<()> {
        let refused: Vec<String> = self
            .cluster
            .forbidden()?
            .into_iter()
            .filter(|d| d.contains("system:serviceaccount:keybrake-system:"))
            .collect();
        if !refused.is_empty() {
            bail!("the shipped RBAC refused the deployables: {refused:#?}");
        }
        Ok(())
    }

    /// Waits (up to 20 s) until a VaultKey reaches `phase`, and returns it.
    pub async fn key_in_phase(
        &self,
        ns: &str,
        name: &str,
        phase: keybrake_crds::KeyPhase,
    ) -> Result<keybrake_crds::VaultKey> {
        let api: kube::Api<keybrake_crds::VaultKey> =
            kube::Api::namespaced(self.client.clone(), ns);
        eventually(&format!("{ns}/{name} to be {phase:?}"), 20, || {
            let api = api.clone();
            async move {
                api.get(name)
                    .await
                    .ok()
                    .filter(|k| k.status.as_ref().and_then(|s| s.phase) == Some(phase))
            }
        })
        .await
    }

    /// A Secret's data, decoded: what a pod with `envFrom` would see.
    pub async fn secret_data(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let secret =
            kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(self.client.clone(), ns)
                .get(name)
                .await?;
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
            .collect())
    }

    /// Waits for a VaultKey to be Active and returns its Secret's data.
    pub async fn active_key_env(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let vk = self
            .key_in_phase(ns, name, keybrake_crds::KeyPhase::Active)
            .await?;
        let secret = vk
            .status
            .and_then(|s| s.secret_name)
            .unwrap_or_else(|| name.to_owned());
        self.secret_data(ns, &secret).await
    }

    /// Applies the example Stripe policy (its upstream set to `upstream_url`) and the seeds' run
    /// key `billing/billing-agent-run-7f3a`, waits for the key, and returns its Secret's data.
    pub async fn apply_stripe_run_key(
        &self,
        upstream_url: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        self.apply_stripe_run_key_in("billing", upstream_url).await
    }

    /// [`Stack::apply_stripe_run_key`] in namespace `ns` (created first unless it is `billing`,
    /// which every stack starts with).
    pub async fn apply_stripe_run_key_in(
        &self,
        ns: &str,
        upstream_url: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let in_ns = |yaml: &str| yaml.replace("namespace: billing", &format!("namespace: {ns}"));
        if ns != "billing" {
            self.cluster.apply_namespace(ns).await?;
        }
        self.cluster
            .apply_ok(&in_ns(&crate::with_upstream(
                &crate::example("stripe-policy.yaml"),
                upstream_url,
            )))
            .await?;
        self.cluster
            .apply_ok(&in_ns(&crate::example("stripe-run-key.yaml")))
            .await?;
        self.active_key_env(ns, "billing-agent-run-7f3a").await
    }

    /// Creates namespace `agents` and applies the example Twilio and Resend policies there,
    /// their upstream set to `upstream_url`.
    pub async fn apply_agents_policies(&self, upstream_url: &str) -> Result<()> {
        self.cluster.apply_namespace("agents").await?;
        for policy in ["twilio-policy.yaml", "resend-policy.yaml"] {
            let yaml = crate::with_upstream(&crate::example(policy), upstream_url);
            self.cluster.apply_ok(&yaml).await?;
        }
        Ok(())
    }

    /// `kubectl patch vk NAME --type merge -p '{"spec":{"revoked":true}}'`.
    pub async fn revoke_with_kubectl(&self, ns: &str, name: &str) -> Result<()> {
        self.patch_key_with_kubectl(ns, name, r#"{"spec":{"revoked":true}}"#)
            .await
    }

    /// `kubectl patch vk NAME --type merge -p PATCH`.
    pub async fn patch_key_with_kubectl(&self, ns: &str, name: &str, patch: &str) -> Result<()> {
        self.cluster
            .kubectl_ok(&[
                "patch", "vk", "-n", ns, name, "--type", "merge", "-p", patch,
            ])
            .await?;
        Ok(())
    }

    /// The pod template annotations of Deployment `ns/name` (where a roll is stamped).
    pub async fn template_annotations(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let deploy = kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
            self.client.clone(),
            ns,
        )
        .get(name)
        .await?;
        Ok(deploy
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .unwrap_or_default())
    }

    /// A ledger on the operator's keyspace.
    pub async fn ledger(&self) -> Result<Ledger<keybrake_ledger::connection::Connection>> {
        Ok(Ledger::new(
            keybrake_ledger::connection::connect(&ConnectConfig {
                tls: self.redis_tls.clone(),
                ..ConnectConfig::new(
                    self.redis_mode(),
                    &self.redis_url(),
                    SENTINEL_MASTER,
                    Duration::from_secs(2),
                )
            })
            .await?,
            Keyspace::new(&self.prefix),
            LedgerConfig::default(),
        ))
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Polls `check` until it yields `Some`, for at most `secs` seconds.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
