//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and (optionally)
//! kube-controller-manager, built from source by `scripts/control-plane/build` at one pinned
//! release, started the way envtest starts them. The end-to-end tests, `keybrake dev` and the
//! operator benchmark run on it, so what they see is what a user's cluster does: the real
//! OpenAPI and CEL validation of our CRDs, RBAC, TokenRequest and TokenReview, garbage
//! collection and namespace deletion.
//!
//! There is no kubelet and no scheduler: Pods are created but never run.
#![forbid(unsafe_code)]

mod binaries;
mod error;
mod kubeconfig;
mod pki;
mod process;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use binaries::{Binaries, RELEASE};
pub use error::Error;
use error::io;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
pub use kubeconfig::kubeconfig_yaml;
use process::Child;

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Run kube-controller-manager too (garbage collection, namespace deletion, Deployments into
    /// ReplicaSets, ServiceAccounts and the root CA ConfigMap in each namespace).
    pub controllers: bool,
    /// Keep the control plane's files here (etcd data, certificates, logs) instead of a temporary
    /// folder deleted on drop; an existing folder is reused, so its objects survive a restart.
    pub dir: Option<PathBuf>,
    /// The kube-apiserver port (0 or None: a free one).
    pub port: Option<u16>,
    /// Record the requests of these groups to `audit.log` (e.g.
    /// `system:serviceaccounts:keybrake-system`), to tell what the server refused them.
    pub audit_groups: Vec<String>,
}

/// A running control plane; its processes are stopped when it is dropped.
pub struct ControlPlane {
    // Fields drop in order: the processes stop before their folder is deleted.
    controllers: Option<Child>,
    apiserver: Child,
    _etcd: Child,
    files: Files,
    binaries: Binaries,
    opts: Options,
    etcd_url: String,
    addr: SocketAddr,
    admin_token: String,
}

/// The control plane's folder: a temporary one (deleted on drop) or one the caller keeps.
enum Files {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl Files {
    fn path(&self) -> &Path {
        match self {
            Files::Temporary(t) => t.path(),
            Files::Kept(p) => p,
        }
    }
}

/// The audience kube-apiserver's own tokens carry (its ServiceAccount issuer).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

impl ControlPlane {
    /// Starts etcd, then kube-apiserver, then (with `controllers`) kube-controller-manager, and
    /// waits until the server answers `/readyz`.
    pub async fn start(opts: Options) -> Result<ControlPlane, Error> {
        let binaries = Binaries::locate()?;
        let files = match &opts.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| io(format!("creating {}", dir.display()), e))?;
                Files::Kept(dir.clone())
            }
            None => Files::Temporary(
                tempfile::tempdir().map_err(|e| io("making a temporary folder".into(), e))?,
            ),
        };
        let dir = files.path().to_path_buf();
        let pki = pki::Pki::ensure(&dir)?;
        let etcd_port = process::free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd = start_etcd(&binaries, &dir, etcd_port).await?;
        let port = match opts.port {
            Some(p) if p != 0 => p,
            _ => process::free_port()?,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let apiserver = start_apiserver(&binaries, &dir, &opts, &etcd_url, addr, &pki).await?;
        let mut plane = ControlPlane {
            files,
            binaries,
            opts,
            _etcd: etcd,
            apiserver,
            controllers: None,
            etcd_url,
            addr,
            admin_token: pki.admin_token,
        };
        if plane.opts.controllers {
            plane.start_controllers()?;
        }
        Ok(plane)
    }

    /// The server's URL (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The folder holding the control plane's files.
    pub fn dir(&self) -> &Path {
        self.files.path()
    }

    /// The CA that signed the server's certificate, PEM.
    pub fn ca_pem(&self) -> Result<String, Error> {
        let path = self.dir().join(pki::CA);
        std::fs::read_to_string(&path).map_err(|e| io(format!("reading {}", path.display()), e))
    }

    /// kube-apiserver's serving certificate and key files (PEM), for a test front that stands
    /// at another address under the same name.
    pub fn serving_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir().join(pki::SERVING),
            self.dir().join(pki::SERVING_KEY),
        )
    }

    /// A kubeconfig for a cluster administrator (`system:masters`).
    pub fn kubeconfig(&self) -> Result<String, Error> {
        self.kubeconfig_with_token(&self.admin_token)
    }

    /// A kubeconfig that presents `token`.
    pub fn kubeconfig_with_token(&self, token: &str) -> Result<String, Error> {
        Ok(kubeconfig_yaml(&self.url(), &self.ca_pem()?, token))
    }

    /// A kube-rs client as a cluster administrator.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        self.client_with_token(&self.admin_token).await
    }

    /// A kube-rs client that presents `token`.
    pub async fn client_with_token(&self, token: &str) -> Result<kube::Client, Error> {
        let yaml = self.kubeconfig_with_token(token)?;
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml)
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?;
        kube::Client::try_from(config).map_err(|source| Error::Kube {
            what: "making a client".into(),
            source,
        })
    }

    /// A token of ServiceAccount `namespace/name` from the TokenRequest API, for `audiences`
    /// (none: the API server's own, as a Pod's default token), valid for `ttl`.
    pub async fn token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        ttl: Duration,
    ) -> Result<String, Error> {
        let api = kube::Api::<ServiceAccount>::namespaced(self.client().await?, namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                expiration_seconds: Some(ttl.as_secs() as i64),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api
            .create_token_request(name, &Default::default(), &request)
            .await
            .map_err(|source| Error::Kube {
                what: format!("requesting a token for {namespace}/{name}"),
                source,
            })?;
        answer.status.map(|s| s.token).ok_or_else(|| {
            Error::Kubeconfig(format!("no token in the answer for {namespace}/{name}"))
        })
    }

    /// The requests the server refused (RBAC `forbid`) to the groups in
    /// [`Options::audit_groups`], as `user verb resource namespace/name` lines.
    pub fn forbidden(&self) -> Result<Vec<String>, Error> {
        let path = self.dir().join("audit.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(format!("reading {}", path.display()), e)),
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["annotations"]["authorization.k8s.io/decision"] == "forbid")
            .map(|e| {
                let o = &e["objectRef"];
                format!(
                    "{} {} {}{} {}/{}",
                    e["user"]["username"].as_str().unwrap_or("?"),
                    e["verb"].as_str().unwrap_or("?"),
                    o["resource"].as_str().unwrap_or("?"),
                    o["subresource"]
                        .as_str()
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default(),
                    o["namespace"].as_str().unwrap_or(""),
                    o["name"].as_str().unwrap_or(""),
                )
            })
            .collect())
    }

    /// Stops kube-apiserver and starts it again on the same address and etcd: a server
    /// restart as its clients see one (watches end, connections are refused for a while).
    pub async fn restart_apiserver(&mut self) -> Result<(), Error> {
        self.apiserver.stop();
        let pki = pki::Pki::ensure(self.files.path())?;
        self.apiserver = start_apiserver(
            &self.binaries,
            self.files.path(),
            &self.opts,
            &self.etcd_url,
            self.addr,
            &pki,
        )
        .await?;
        Ok(())
    }

    /// Starts kube-controller-manager: garbage collection of owned objects, namespace deletion,
    /// Deployments into ReplicaSets, each namespace's `default` ServiceAccount and root CA
    /// ConfigMap. Start it after installing CRDs: its garbage collector reads discovery again
    /// only every 30 s.
    pub fn start_controllers(&mut self) -> Result<(), Error> {
        if self.controllers.is_none() {
            self.controllers = Some(self.spawn_controllers()?);
        }
        Ok(())
    }

    fn spawn_controllers(&self) -> Result<Child, Error> {
        let dir = self.files.path();
        let kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, self.kubeconfig()?)
            .map_err(|e| io("writing the admin kubeconfig".into(), e))?;
        let path = |n: &str| dir.join(n).display().to_string();
        // The controllers a test or a local stack relies on; none that needs a node or a cloud.
        let controllers = [
            "garbage-collector-controller",
            "namespace-controller",
            "deployment-controller",
            "replicaset-controller",
            "serviceaccount-controller",
            "root-ca-certificate-publisher-controller",
        ]
        .join(",");
        let args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--controllers={controllers}"),
            format!("--service-account-private-key-file={}", path(pki::SA_KEY)),
            format!("--root-ca-file={}", path(pki::CA)),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
            "--use-service-account-credentials=false".into(),
        ];
        Child::spawn(
            &self.binaries.controller_manager(),
            &args,
            dir,
            "kube-controller-manager",
        )
    }
}

async fn start_etcd(binaries: &Binaries, dir: &Path, port: u16) -> Result<Child, Error> {
    let peer = process::free_port()?;
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer}");
    let args = vec![
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=default={peer}"),
        // A test store: durability across a machine crash is not what it is for.
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ];
    let mut child = Child::spawn(&binaries.etcd(), &args, dir, "etcd")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    child
        .ready("etcd", Duration::from_secs(20), || {
            process::http_ok(addr, "/health")
        })
        .await?;
    Ok(child)
}

async fn start_apiserver(
    binaries: &Binaries,
    dir: &Path,
    opts: &Options,
    etcd_url: &str,
    addr: SocketAddr,
    pki: &pki::Pki,
) -> Result<Child, Error> {
    let path = |n: &str| dir.join(n).display().to_string();
    let mut args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={}", addr.port()),
        // Without a default route the server cannot pick an address of its own; with a loopback
        // one, the endpoint reconciler refuses to start (no Service endpoints are needed here).
        "--advertise-address=127.0.0.1".into(),
        "--endpoint-reconciler-type=none".into(),
        format!("--cert-dir={}", path("apiserver-certs")),
        format!("--tls-cert-file={}", path(pki::SERVING)),
        format!("--tls-private-key-file={}", path(pki::SERVING_KEY)),
        format!("--client-ca-file={}", path(pki::CA)),
        format!("--token-auth-file={}", path(pki::TOKENS)),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-issuer={ISSUER}"),
        format!("--service-account-key-file={}", path(pki::SA_PUB)),
        format!("--service-account-signing-key-file={}", path(pki::SA_KEY)),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--allow-privileged=true".into(),
        // No controller may be running to make each namespace's `default` ServiceAccount, and
        // no Pod ever runs here.
        "--disable-admission-plugins=ServiceAccount".into(),
        "--profiling=false".into(),
    ];
    if !opts.audit_groups.is_empty() {
        let policy = dir.join("audit-policy.yaml");
        std::fs::write(&policy, audit_policy(&opts.audit_groups))
            .map_err(|e| io("writing the audit policy".into(), e))?;
        args.push(format!("--audit-policy-file={}", policy.display()));
        args.push(format!("--audit-log-path={}", path("audit.log")));
        // Each event is written before the answer: a test reads the file right after.
        args.push("--audit-log-mode=blocking".into());
    }
    let mut child = Child::spawn(&binaries.apiserver(), &args, dir, "kube-apiserver")?;
    let token = pki.admin_token.clone();
    let ca = pki.ca_pem.clone();
    child
        .ready("kube-apiserver", Duration::from_secs(60), move || {
            let (token, ca) = (token.clone(), ca.clone());
            async move { process::apiserver_ready(addr, &ca, &token).await }
        })
        .await?;
    Ok(child)
}

/// An audit policy that records, at Metadata level, only what `groups` ask.
fn audit_policy(groups: &[String]) -> String {
    let groups = serde_json::to_string(groups).unwrap_or_else(|_| "[]".into());
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  userGroups: {groups}\n- level: None\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole life of a control plane: it starts, a TokenRequest token authenticates as its
    /// ServiceAccount, and a restart keeps the objects (etcd stays up).
    #[tokio::test]
    async fn starts_mints_tokens_and_restarts() -> Result<(), Box<dyn std::error::Error>> {
        use k8s_openapi::api::core::v1::Namespace;
        let started = std::time::Instant::now();
        let mut plane = ControlPlane::start(Options::default()).await?;
        println!("etcd and kube-apiserver ready in {:?}", started.elapsed());
        let client = plane.client().await?;
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "demo"}}))?;
        kube::Api::<Namespace>::all(client.clone())
            .create(&Default::default(), &ns)
            .await?;
        let sa: ServiceAccount =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "worker"}}))?;
        kube::Api::<ServiceAccount>::namespaced(client, "demo")
            .create(&Default::default(), &sa)
            .await?;
        let token = plane
            .token("demo", "worker", &[], Duration::from_secs(600))
            .await?;
        let as_worker = plane.client_with_token(&token).await?;
        let info = as_worker.apiserver_version().await?;
        assert_eq!(info.git_version, RELEASE);
        let started = std::time::Instant::now();
        plane.restart_apiserver().await?;
        println!("kube-apiserver restarted in {:?}", started.elapsed());
        kube::Api::<Namespace>::all(plane.client().await?)
            .get("demo")
            .await?;
        Ok(())
    }
}
