//! Harness for the end-to-end tests: a real control plane (etcd, kube-apiserver and
//! kube-controller-manager, `keybrake-control-plane`) with a kubeconfig, and kubectl of the same
//! release pointed at it.
#![forbid(unsafe_code)]

pub mod api_faults;
pub mod identities;
pub mod pki;
pub mod postgres;
pub mod processes;
pub mod refusals;
pub mod sdk;
pub mod stack;
pub mod upstream;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use keybrake_control_plane::{Binaries, ControlPlane, Options};
use tempfile::TempDir;

pub use identities::Tokens;
/// Real redis-server processes, under the name the e2e tests know them by (the harness is a crate of
/// its own, which the ledger's script tests use too).
pub use keybrake_redis_harness as redis_server;

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// An example manifest from `manifests/examples/`.
pub fn example(name: &str) -> String {
    std::fs::read_to_string(workspace_root().join("manifests/examples").join(name))
        .unwrap_or_default()
}

/// A SpendPolicy manifest with its `upstream` set to `url` (a sandbox or localstripe).
pub fn with_upstream(policy_yaml: &str, url: &str) -> String {
    policy_yaml.replace(
        "  credentialsSecretRef:\n",
        &format!("  upstream: {url}\n  credentialsSecretRef:\n"),
    )
}

/// A busybox Deployment `billing/name`, with `metadata` (YAML lines: labels, annotations) added
/// under its metadata.
pub fn busybox_deployment(name: &str, metadata: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: billing\n{metadata}spec:\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n      - {{name: worker, image: busybox}}\n"
    )
}

/// The metadata lines that opt a workload in to be rolled when VaultKey `key` rotates.
pub fn restart_on_rotation(key: &str) -> String {
    format!("  annotations:\n    keybrake.com/restart-on-rotation: {key}\n")
}

/// kubectl of the control plane's release (or `KUBECTL`).
pub fn kubectl_path() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("KUBECTL") {
        return Ok(PathBuf::from(p));
    }
    Ok(Binaries::locate()?.kubectl())
}

/// The group whose requests the API server's audit log records: Keybrake's own
/// ServiceAccounts, so a test can tell what the shipped RBAC refused them.
const AUDITED: &str = "system:serviceaccounts:keybrake-system";

/// A running control plane with an administrator's kubeconfig and a private kubectl cache.
pub struct Cluster {
    plane: ControlPlane,
    tokens: tokio::sync::OnceCell<Tokens>,
    dir: TempDir,
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct Output {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Fails unless the command exited 0.
    pub fn ok(self) -> Result<String> {
        if self.code != 0 {
            bail!(
                "kubectl failed ({}): {}{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self.stdout)
    }
}

impl Cluster {
    /// Starts etcd and kube-apiserver on free loopback ports (kube-controller-manager comes
    /// with [`Cluster::start_controllers`], once the CRDs are installed).
    pub async fn start() -> Result<Cluster> {
        let plane = ControlPlane::start(Options {
            audit_groups: vec![AUDITED.into()],
            ..Default::default()
        })
        .await?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("kubeconfig"), plane.kubeconfig()?)?;
        Ok(Cluster {
            plane,
            tokens: tokio::sync::OnceCell::new(),
            dir,
        })
    }

    /// Starts kube-controller-manager (garbage collection, namespace deletion, Deployments).
    pub fn start_controllers(&mut self) -> Result<()> {
        Ok(self.plane.start_controllers()?)
    }

    /// The control plane.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// Stops kube-apiserver and starts it again on the same address and etcd: an API server
    /// restart, as its clients see one.
    pub async fn restart(&mut self) -> Result<()> {
        Ok(self.plane.restart_apiserver().await?)
    }

    /// What the API server refused Keybrake's own ServiceAccounts (from its audit log).
    pub fn forbidden(&self) -> Result<Vec<String>> {
        Ok(self.plane.forbidden()?)
    }

    /// The administrator's kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubeconfig file that presents `token` (written beside the admin one).
    pub fn kubeconfig_as(&self, token: &str) -> Result<PathBuf> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        token.hash(&mut h);
        let path = self.dir.path().join(format!("kubeconfig-{:x}", h.finish()));
        std::fs::write(&path, self.plane.kubeconfig_with_token(token)?)?;
        Ok(path)
    }

    /// A kube-rs client as the administrator.
    pub async fn admin_client(&self) -> Result<kube::Client> {
        Ok(self.plane.client().await?)
    }

    /// A kube-rs client that presents `token`.
    pub async fn client_as(&self, token: &str) -> Result<kube::Client> {
        Ok(self.plane.client_with_token(token).await?)
    }

    /// The test identities' tokens, minted by the TokenRequest API on first use (their
    /// namespaces and ServiceAccounts are created when missing).
    pub async fn tokens(&self) -> Result<&Tokens> {
        self.tokens
            .get_or_try_init(|| identities::mint(&self.plane))
            .await
    }

    /// Installs what the shipped kustomization (`manifests/`) grants Keybrake's own
    /// ServiceAccounts: its namespace, ServiceAccounts, Roles, ClusterRoles and their bindings,
    /// rendered by `kubectl kustomize` as an install would.
    pub async fn install_shipped_rbac(&self) -> Result<()> {
        static RENDERED: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
        let rbac = RENDERED
            .get_or_try_init(|| async {
                let root = workspace_root().join("manifests");
                let all = self
                    .kubectl_ok(&["kustomize", root.to_str().unwrap_or_default()])
                    .await?;
                Ok::<_, anyhow::Error>(rbac_documents(&all))
            })
            .await?;
        self.apply_ok(rbac).await?;
        Ok(())
    }

    /// A scratch folder that lives as long as the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs kubectl with `args` (and `stdin`), against this server.
    pub async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use tokio::io::AsyncWriteExt;
        let mut cmd = self.kubectl_command(args)?;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().context("starting kubectl")?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.unwrap_or("").as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs kubectl and returns its stdout, failing on a non-zero exit.
    pub async fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        self.kubectl(args, None).await?.ok()
    }

    /// `kubectl apply -f -` of a manifest.
    pub async fn apply(&self, manifest: &str) -> Result<Output> {
        self.kubectl(&["apply", "-f", "-"], Some(manifest)).await
    }

    /// `kubectl apply -f -` of a manifest that must succeed; its output.
    pub async fn apply_ok(&self, manifest: &str) -> Result<String> {
        self.apply(manifest).await?.ok()
    }

    /// Applies Namespace `name`.
    pub async fn apply_namespace(&self, name: &str) -> Result<String> {
        self.apply_ok(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
        ))
        .await
    }

    /// A kubectl command with `args` against this server, to spawn and watch while it runs.
    pub fn kubectl_command(&self, args: &[&str]) -> Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(kubectl_path()?);
        cmd.args(args)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .env("KUBECONFIG", self.kubeconfig())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        self.plane.url()
    }
}

/// The documents of a rendered manifest that say who may do what.
fn rbac_documents(all: &str) -> String {
    const KINDS: [&str; 6] = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    all.split("\n---\n")
        .filter(|doc| {
            doc.lines().any(|l| {
                l.strip_prefix("kind: ")
                    .is_some_and(|k| KINDS.contains(&k.trim()))
            })
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A raw HTTP/1.1 exchange returning the status and the body (the JSON document inside a chunked
/// body): [`http`] without the headers.
pub async fn raw_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let reply = http(addr, method, path, headers, body).await?;
    Ok((reply.status, reply.body))
}

/// A full raw HTTP/1.1 reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body (de-chunked when the server chunked it).
    pub body: String,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// The `Content-Type` header of a form-encoded call (Stripe's, Twilio's).
pub const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// A Stripe charge: `POST /v1/payment_intents` with the form `body`, sent with `authorization`.
pub async fn payment_intent(
    addr: std::net::SocketAddr,
    authorization: &str,
    body: &[u8],
) -> Result<Reply> {
    let headers = [("Authorization", authorization), FORM];
    http(addr, "POST", "/v1/payment_intents", &headers, body).await
}

/// `n` Stripe charges (`POST /v1/payment_intents` with the form `body`) spawned over `addrs` in
/// turn, the i-th sent `i * gap` after the start; each answers its reply and how long it took
/// from being sent. The load the concurrency and failover tests share.
pub fn spawn_charges(
    addrs: &[std::net::SocketAddr],
    authorization: &str,
    n: u64,
    gap: std::time::Duration,
    body: &'static [u8],
) -> Vec<tokio::task::JoinHandle<Result<(Reply, std::time::Duration)>>> {
    (0..n)
        .map(|i| {
            let addr = addrs[i as usize % addrs.len()];
            let authorization = authorization.to_owned();
            tokio::spawn(async move {
                if !gap.is_zero() {
                    tokio::time::sleep(gap * i as u32).await;
                }
                let sent = std::time::Instant::now();
                let reply = payment_intent(addr, &authorization, body).await?;
                Ok((reply, sent.elapsed()))
            })
        })
        .collect()
}

/// Sends one request on a fresh connection and reads the whole reply.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    exchange(stream, &addr.to_string(), method, path, headers, body).await
}

/// [`http`] over TLS, trusting only the CA(s) in `ca_pem`; also returns the server's leaf
/// certificate (DER), to tell which certificate served the call.
pub async fn https(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(Reply, Vec<u8>)> {
    let tls = tls_connect(addr, ca_pem, &[]).await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let reply = exchange(tls, &addr.to_string(), method, path, headers, body).await?;
    Ok((reply, leaf))
}

/// The protocol a TLS listener picks (ALPN) for a client offering `offered`, as a kubelet probe
/// (which prefers h2) or a scraper would offer them.
pub async fn tls_alpn(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    offered: &[&[u8]],
) -> Result<Option<Vec<u8>>> {
    let tls = tls_connect(addr, ca_pem, offered).await?;
    Ok(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
}

/// A TLS connection to `addr` trusting only the CA(s) in `ca_pem`, offering `alpn`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    Ok(connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?)
}

/// One HTTP/1.1 request on `stream`, and the whole reply.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let write = async {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(body).await;
        let _ = wr.flush().await;
    };
    let mut buf = Vec::new();
    let (_, read) = tokio::join!(write, rd.read_to_end(&mut buf));
    if buf.is_empty() {
        read?;
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no HTTP status line")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
