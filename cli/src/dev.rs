//! `keybrake dev`: the whole stack on one machine, in the foreground. A real control plane
//! (etcd, kube-apiserver and kube-controller-manager from `scripts/control-plane/build`, its
//! objects kept in the state folder) with the CRDs applied, or an existing cluster
//! (`--kubeconfig`), a `redis-server` child (or `--redis-url`),
//! a PostgreSQL child for the audit trail (or `--audit-db-url`),
//! the operator and the proxy (their own `run`/`start`, the code paths of their binaries), and a
//! vendor sandbox for every vendor not pointed elsewhere with `--upstream`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use keybrake_crds::Vendor;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};

use keybrake_control_plane::{ControlPlane, Options};

use crate::sandbox::Sandbox;

/// Options of `keybrake dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the kubeconfig, env file, Redis data and API objects are kept.
    #[arg(long, default_value = ".keybrake")]
    pub state_dir: PathBuf,
    /// API server port (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub api_port: u16,
    /// Use the cluster of this kubeconfig (kind, k3d, minikube) instead of starting a control
    /// plane: the CRDs are installed there and the operator and the proxy run here against it.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Proxy port (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub proxy_port: u16,
    /// Use this Redis instead of starting one (cluster mode: seed nodes, comma-separated).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// `single`, `cluster` or `sentinel`: how the Redis of `--redis-url` is deployed.
    #[arg(long, default_value = "single")]
    pub redis_mode: keybrake_ledger::connection::Mode,
    /// The Sentinel-managed set's name (`--redis-mode sentinel`).
    #[arg(long, default_value = "mymaster")]
    pub redis_sentinel_master: String,
    /// Keep the audit trail in this PostgreSQL instead of starting one
    /// (`postgres://user:pass@host/db`).
    #[arg(long)]
    pub audit_db_url: Option<String>,
    /// Send a vendor's calls to this URL instead of the sandbox, e.g.
    /// `stripe=http://127.0.0.1:8420` (localstripe) or `stripe=https://api.stripe.com`.
    #[arg(long = "upstream", value_name = "VENDOR=URL")]
    pub upstreams: Vec<String>,
}

/// A child process killed on drop.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_redis(dir: &Path) -> Result<(Child, String)> {
    if which("redis-server").is_none() {
        bail!(
            "redis-server not found: install it (`apt-get install redis-server`, or `bash scripts/install-deps`) or pass --redis-url"
        );
    }
    let port = free_port()?;
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&data)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting redis-server")?;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((Child(child), format!("redis://127.0.0.1:{port}/")));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("redis-server did not start on port {port}")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Parses `VENDOR=URL` overrides, refusing unknown vendors by name.
pub fn parse_upstreams(items: &[String]) -> Result<Vec<(Vendor, String)>> {
    items
        .iter()
        .map(|item| {
            let (vendor, url) = item
                .split_once('=')
                .with_context(|| format!("--upstream {item:?} is not VENDOR=URL"))?;
            let vendor: Vendor = vendor
                .parse()
                .map_err(|e| anyhow::anyhow!("--upstream {item:?}: {e}"))?;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("--upstream {item:?}: the URL must start with http:// or https://");
            }
            Ok((vendor, url.trim_end_matches('/').to_owned()))
        })
        .collect()
}

/// Applies the CRDs (server-side) and waits until the server serves them.
async fn apply_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in keybrake_crds::manifests::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("keybrake-dev").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        let established = kube::runtime::wait::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), &name, established),
        )
        .await
        .with_context(|| format!("CRD {name} was not established after 30 s"))??;
    }
    Ok(())
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The ServiceAccount (`namespace`, `name`) whose token `keybrake dev` writes as
/// `KEYBRAKE_API_KEY` for the issuance and audit APIs; keys it issues land in its namespace.
pub const DEV_ACCOUNT: (&str, &str) = ("billing", "workflow-runner");

/// What the dev account may do: every verb of the issuance API, and `list` in all namespaces
/// for `keybrake audit`. Nothing else, so pointing `keybrake dev` at a cluster of one's own
/// adds no broad credential to it.
const DEV_ACCOUNT_RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: keybrake-dev-issuer}
rules:
- apiGroups: [keybrake.com]
  resources: [vaultkeys]
  verbs: [create, get, list, watch, delete, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: keybrake-dev-issuer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: keybrake-dev-issuer}
subjects:
- {kind: ServiceAccount, name: workflow-runner, namespace: billing}
"#;

/// Creates the dev account (its namespace, ServiceAccount and RBAC) and mints its token for the
/// `keybrake` audience with the TokenRequest API: what a projected token in a pod would be.
async fn dev_token(client: &Client) -> Result<String> {
    use k8s_openapi::api::{
        authentication::v1::{TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    let (ns, name) = DEV_ACCOUNT;
    let apply = PatchParams::apply("keybrake-dev").force();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .patch(ns, &apply, &Patch::Apply(&namespace))
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}))?;
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    accounts
        .patch(name, &apply, &Patch::Apply(&account))
        .await
        .with_context(|| format!("creating ServiceAccount {ns}/{name}"))?;
    for doc in DEV_ACCOUNT_RBAC.split("\n---\n") {
        let value: serde_json::Value = serde_yaml_ng::from_str(doc)?;
        let rbac_name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if value["kind"] == "ClusterRole" {
            let role: ClusterRole = serde_json::from_value(value)?;
            Api::<ClusterRole>::all(client.clone())
                .patch(&rbac_name, &apply, &Patch::Apply(&role))
                .await
                .context("creating the dev account's ClusterRole")?;
        } else {
            let binding: ClusterRoleBinding = serde_json::from_value(value)?;
            Api::<ClusterRoleBinding>::all(client.clone())
                .patch(&rbac_name, &apply, &Patch::Apply(&binding))
                .await
                .context("creating the dev account's ClusterRoleBinding")?;
        }
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["keybrake".into()],
            // A working day and then some: `keybrake dev` mints a new one at each start.
            expiration_seconds: Some(24 * 3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(name, &Default::default(), &request)
        .await
        .with_context(|| format!("requesting a token for {ns}/{name}"))?;
    answer
        .status
        .map(|s| s.token)
        .context("the TokenRequest answer has no token")
}

/// Runs the stack until SIGINT or SIGTERM. One function: the local start-up sequence (Redis,
/// control plane, sandboxes, proxy, operator, env file) in the order it must happen.
pub async fn run(args: DevArgs) -> Result<()> {
    let overrides = parse_upstreams(&args.upstreams)?;
    let dir = args.state_dir.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let (redis_child, redis_url) = match &args.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let (child, url) = start_redis(&dir).await?;
            (Some(child), url)
        }
    };

    let (_postgres, audit_db_url) = match &args.audit_db_url {
        Some(url) => (None, url.clone()),
        None => {
            let pg = crate::postgres::LocalPostgres::start(&dir).await?;
            let url = pg.url();
            (Some(pg), url)
        }
    };

    // A control plane of our own (its objects kept in the state folder), or the user's cluster.
    let (plane, kubeconfig, client) = match &args.kubeconfig {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::from_yaml(&text)
                    .with_context(|| format!("{} is not a kubeconfig", path.display()))?,
                &Default::default(),
            )
            .await
            .with_context(|| format!("using {}", path.display()))?;
            (None, path.clone(), Client::try_from(config)?)
        }
        None => {
            let plane = ControlPlane::start(Options {
                dir: Some(dir.join("control-plane")),
                port: Some(args.api_port),
                ..Default::default()
            })
            .await?;
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, plane.kubeconfig()?)?;
            let client = plane.client().await?;
            (Some(plane), kubeconfig, client)
        }
    };
    apply_crds(&client).await?;
    let mut plane = plane;
    if let Some(plane) = plane.as_mut() {
        // After the CRDs: the garbage collector reads discovery again only every 30 s.
        plane.start_controllers()?;
    }
    let api_token = dev_token(&client).await?;

    let mut sandboxes = Vec::new();
    let mut default_upstreams = Vec::new();
    for vendor in Vendor::ALL {
        match overrides.iter().find(|(v, _)| *v == vendor) {
            Some((_, url)) => default_upstreams.push(format!("{vendor}={url}")),
            None => {
                let sandbox = Sandbox::start().await?;
                default_upstreams.push(format!("{vendor}={}", sandbox.url()));
                sandboxes.push(sandbox);
            }
        }
    }

    let redis = keybrake_ledger::flags::RedisFlags {
        mode: args.redis_mode,
        sentinel_master: args.redis_sentinel_master.clone(),
        ..keybrake_ledger::flags::RedisFlags::single(&redis_url, "kb")
    };
    let mut proxy_config = keybrake_proxy::Config::local(&redis_url, "kb");
    proxy_config.redis = redis.clone();
    proxy_config.listen = SocketAddr::from(([127, 0, 0, 1], args.proxy_port));
    proxy_config.default_upstreams = default_upstreams.clone();
    proxy_config.audit_db = keybrake_audit::AuditDbFlags::at(&audit_db_url);
    let proxy = keybrake_proxy::start(
        client.clone(),
        proxy_config,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    let proxy_url = format!("http://{}", proxy.addr);
    let admin_url = format!("http://{}", proxy.admin_addr);

    let operator_metrics = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let operator_config = keybrake_operator::Config {
        proxy_url: proxy_url.clone(),
        redis,
        metrics_addr: operator_metrics,
        leader_election: false,
        lease_namespace: "default".into(),
        lease_secs: 15,
        identity: "keybrake-dev".into(),
        call_timeout_secs: 10,
        issued_key_retention_secs: 86_400,
        proxy_ca_secret: None,
        ca_mount_path: keybrake_ledger::secret_env::DEFAULT_MOUNT_PATH.into(),
    };
    let (stop_operator, operator_stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(keybrake_operator::run(
        client.clone(),
        operator_config,
        async move {
            let _ = operator_stopped.await;
        },
    ));

    // "ready" means the operator reconciles: a key applied right after it gets its Secret.
    let readyz = format!("http://{operator_metrics}/readyz");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if operator.is_finished() {
            match operator.await {
                Ok(Err(e)) => bail!("the operator did not start: {e}"),
                _ => bail!("the operator stopped while starting"),
            }
        }
        if matches!(crate::views::get(&readyz, None).await, Ok((200, _))) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the operator was not ready after 30 s ({readyz})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let env = format!(
        "KUBECONFIG={}\nKEYBRAKE_PROXY_URL={proxy_url}\nKEYBRAKE_ADMIN_URL={admin_url}\nREDIS_URL={redis_url}\nKEYBRAKE_AUDIT_DB_URL={audit_db_url}\nKEYBRAKE_API_KEY={api_token}\n",
        std::fs::canonicalize(&kubeconfig)
            .unwrap_or(kubeconfig.clone())
            .display()
    );
    std::fs::write(dir.join("env"), &env)?;
    println!(
        "keybrake dev: ready (api {}, proxy {proxy_url}, admin {admin_url}, upstreams {}); `set -a; . {}/env; set +a` to use it",
        plane
            .as_ref()
            .map(|p| p.url())
            .unwrap_or_else(|| format!("from {}", kubeconfig.display())),
        default_upstreams.join(" "),
        dir.display()
    );

    tokio::select! {
        _ = shutdown_signal() => {}
        result = operator => {
            match result {
                Ok(Err(e)) => eprintln!("keybrake dev: the operator stopped: {e}"),
                _ => eprintln!("keybrake dev: the operator stopped"),
            }
        }
    }
    let _ = stop_operator.send(());
    proxy.shutdown().await;
    drop(plane);
    drop(sandboxes);
    drop(redis_child);
    println!("keybrake dev: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_overrides_name_what_is_wrong() {
        let ok = parse_upstreams(&["stripe=http://127.0.0.1:8420/".into()]).unwrap();
        assert_eq!(ok, vec![(Vendor::Stripe, "http://127.0.0.1:8420".into())]);
        assert!(
            parse_upstreams(&["paypal=http://x".into()])
                .unwrap_err()
                .to_string()
                .contains("unknown vendor \"paypal\"")
        );
        assert!(
            parse_upstreams(&["stripe".into()])
                .unwrap_err()
                .to_string()
                .contains("VENDOR=URL")
        );
        assert!(
            parse_upstreams(&["stripe=ftp://x".into()])
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
    }
}
