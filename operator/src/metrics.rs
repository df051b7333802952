//! Operator metrics and the /metrics, /healthz, /readyz endpoint.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use keybrake_crds::KeyPhase;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels: which controller.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `vaultkey` or `spendpolicy`.
    pub kind: String,
}

/// Labels: which controller, and why it failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `vaultkey` or `spendpolicy`.
    pub kind: String,
    /// The error label.
    pub reason: String,
}

/// Labels: a key phase.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// The phase.
    pub phase: String,
}

/// Everything the operator counts.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Family<KindLabel, Counter>,
    /// Reconciles failed, by reason.
    pub failures: Family<FailureLabels, Counter>,
    keys: Family<PhaseLabel, Gauge>,
    phases: Mutex<BTreeMap<String, KeyPhase>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("keybrake_operator");
        let reconciles = Family::<KindLabel, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let keys = Family::<PhaseLabel, Gauge>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles failed, by reason",
            failures.clone(),
        );
        registry.register("vaultkeys", "VaultKeys by phase", keys.clone());
        Metrics {
            registry,
            reconciles,
            failures,
            keys,
            phases: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Counts a reconcile of `kind`.
    pub fn reconciled(&self, kind: &str) {
        self.reconciles
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Counts a failed reconcile.
    pub fn failed(&self, kind: &str, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                kind: kind.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Records a key's phase (`None` when the key is gone).
    pub fn key_phase(&self, uid: &str, phase: Option<KeyPhase>) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        match phase {
            Some(p) => phases.insert(uid.to_owned(), p),
            None => phases.remove(uid),
        };
        self.keys.clear();
        for p in phases.values() {
            self.keys
                .get_or_create(&PhaseLabel {
                    phase: format!("{p:?}"),
                })
                .inc();
        }
    }

    /// Marks the operator ready (controllers running).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, metrics.encode()),
        "/healthz" | "/livez" => (StatusCode::OK, "ok".to_owned()),
        "/readyz" if metrics.ready.load(Ordering::Acquire) => (StatusCode::OK, "ok".to_owned()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_owned()),
        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
