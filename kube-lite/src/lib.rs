//! kube-lite: an in-memory Kubernetes API server that kubectl 1.32 and kube-rs work against,
//! for the local stack (`keybrake dev`) and the end-to-end tests. It follows the behaviour
//! recorded in `shared/kube-api/SPEC.md`: list/watch with resourceVersions, the four patch
//! types, the status subresource, finalizers, CRDs served on creation with their schemas and
//! CEL rules enforced, discovery, the minimal OpenAPI kubectl needs, and Table output.
#![forbid(unsafe_code)]

pub mod auth;
pub mod builtin;
pub mod clock;
pub mod discovery;
pub mod error;
pub mod meta;
pub mod patch;
pub mod persist;
pub mod request;
pub mod resources;
pub mod review;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod watch;
pub mod write;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::{net::TcpListener, sync::watch as signal, task::JoinHandle};

pub use store::Store;

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Address to bind (port 0 picks a free port). Default `127.0.0.1:0`.
    pub bind: Option<SocketAddr>,
    /// File to load objects from and save them to.
    pub state_file: Option<PathBuf>,
    /// Watch history length (default [`store::DEFAULT_HISTORY`]).
    pub history: Option<usize>,
    /// How often idle watches get a bookmark (default [`watch::BOOKMARK_EVERY`]).
    pub bookmark_interval: Option<std::time::Duration>,
    /// Bearer tokens the server accepts, on requests and in TokenReview (the
    /// `--token-auth-file` lines).
    pub tokens: Vec<review::StaticToken>,
}

/// A failure the server answers to the next writes whose path contains `path_contains`, for
/// tests of what clients do when a real API server is overloaded (429) or failing (5xx).
#[derive(Debug, Clone)]
pub struct Fault {
    /// 429, or a 5xx code.
    pub code: u16,
    /// Which writes (POST, PUT, PATCH, DELETE): a part of their path.
    pub path_contains: String,
    /// How many more writes get it.
    pub remaining: usize,
}

/// A running server; dropping it does not stop it, [`KubeLite::shutdown`] does.
pub struct KubeLite {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The store, for tests that look inside.
    pub store: Arc<Store>,
    stop: signal::Sender<bool>,
    task: JoinHandle<()>,
    saver: Option<JoinHandle<()>>,
    state_file: Option<PathBuf>,
    denials: Arc<std::sync::Mutex<Vec<String>>>,
    faults: Arc<std::sync::Mutex<Vec<Fault>>>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The bind failure (in use, not permitted).
        source: std::io::Error,
    },
    /// The state file could not be loaded.
    #[error(transparent)]
    State(#[from] persist::PersistError),
}

impl KubeLite {
    /// Binds and starts serving in the background.
    pub async fn start(opts: Options) -> Result<KubeLite, StartError> {
        let bind = opts
            .bind
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| StartError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr: bind, source })?;
        let store = Arc::new(Store::new(opts.history.unwrap_or(store::DEFAULT_HISTORY)));
        if let Some(path) = &opts.state_file {
            persist::load(&store, path)?;
        }
        let (stop, stopped) = signal::channel(false);
        let denials = Arc::new(std::sync::Mutex::new(Vec::new()));
        let faults = Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = Arc::new(server::Shared {
            store: store.clone(),
            addr,
            shutdown: stopped.clone(),
            bookmark_every: opts.bookmark_interval.unwrap_or(watch::BOOKMARK_EVERY),
            tokens: opts.tokens.clone(),
            denials: denials.clone(),
            faults: faults.clone(),
        });
        let mut until = stopped;
        let task = tokio::spawn(server::serve(listener, shared, async move {
            let _ = until.wait_for(|s| *s).await;
        }));
        let saver = opts
            .state_file
            .clone()
            .map(|p| tokio::spawn(persist::keep_saving(store.clone(), p)));
        Ok(KubeLite {
            addr,
            store,
            stop,
            task,
            saver,
            state_file: opts.state_file,
            denials,
            faults,
        })
    }

    /// The 403 messages of every request RBAC refused so far.
    pub fn denials(&self) -> Vec<String> {
        self.denials.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Makes the next `fault.remaining` writes whose path contains `fault.path_contains` fail.
    pub fn inject(&self, fault: Fault) {
        if let Ok(mut f) = self.faults.lock() {
            f.push(fault);
        }
    }

    /// How many injected failures have not been answered yet.
    pub fn faults_pending(&self) -> usize {
        self.faults
            .lock()
            .map(|f| f.iter().map(|f| f.remaining).sum())
            .unwrap_or(0)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig that points kubectl at this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.url())
    }

    /// Stops accepting, ends watches, lets requests finish, and saves the state file.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some(s) = self.saver {
            s.abort();
        }
        if let Some(path) = &self.state_file
            && let Err(e) = persist::save(&self.store, path)
        {
            tracing::error!(error = %e, "could not save state at shutdown");
        }
    }
}

/// A kubeconfig for a plain-HTTP server with no credentials (the administrator).
pub fn kubeconfig(server: &str) -> String {
    kubeconfig_for(server, "{}")
}

/// A kubeconfig that presents a bearer token, as a ServiceAccount's mounted token would.
pub fn kubeconfig_with_token(server: &str, token: &str) -> String {
    kubeconfig_for(server, &format!("{{token: {token}}}"))
}

fn kubeconfig_for(server: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-lite\n  cluster:\n    server: {server}\n\
         contexts:\n- name: kube-lite\n  context:\n    cluster: kube-lite\n    user: kube-lite\n    namespace: default\n\
         current-context: kube-lite\nusers:\n- name: kube-lite\n  user: {user}\n"
    )
}
