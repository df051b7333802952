//! Operator metrics and the /metrics, /healthz, /readyz endpoint.

use std::{
    collections::{BTreeMap, HashMap},
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
use tracing::Instrument;

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

/// Labels: one workload restart the operator attempted on a rotation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    /// The VaultKey's namespace.
    pub namespace: String,
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub workload_kind: String,
    /// `rolled`, `not_opted_in` or `failed`.
    pub result: String,
}

/// Everything the operator counts.
pub struct Metrics {
    registry: Registry,
    /// Reconciles run.
    pub reconciles: Family<KindLabel, Counter>,
    /// Reconciles failed, by reason.
    pub failures: Family<FailureLabels, Counter>,
    keys: Family<PhaseLabel, Gauge>,
    restarts: Family<RestartLabels, Counter>,
    phases: Mutex<HashMap<String, KeyPhase>>,
    unreadable: Family<KindLabel, Gauge>,
    unreadable_uids: Mutex<BTreeMap<String, String>>,
    leader: Gauge,
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
        let restarts = Family::<RestartLabels, Counter>::default();
        registry.register(
            "workload_restarts",
            "Restart targets rolled (or not) because a key's credential changed, by result",
            restarts.clone(),
        );
        let unreadable = Family::<KindLabel, Gauge>::default();
        registry.register(
            "unreadable_objects",
            "Objects the API server stores that the operator cannot read (each is Invalid, with the field and why)",
            unreadable.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica runs the controllers (holds the Lease, or election is off)",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            keys,
            restarts,
            phases: Mutex::default(),
            unreadable,
            unreadable_uids: Mutex::default(),
            leader,
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

    /// Records whether the object `uid` of `kind` (`vaultkey`, `spendpolicy`) is unreadable.
    pub fn unreadable(&self, kind: &str, uid: &str, unreadable: bool) {
        let Ok(mut uids) = self.unreadable_uids.lock() else {
            return;
        };
        if unreadable {
            uids.insert(uid.to_owned(), kind.to_owned());
        } else if uids.remove(uid).is_none() {
            return;
        }
        self.recount(&uids);
    }

    /// Forgets the unreadable objects that no longer exist (`live` holds the uids the watches
    /// list): a deleted object without our finalizer is never reconciled again.
    pub fn retain_unreadable(&self, live: &std::collections::HashSet<String>) {
        let Ok(mut uids) = self.unreadable_uids.lock() else {
            return;
        };
        let before = uids.len();
        uids.retain(|uid, _| live.contains(uid));
        if uids.len() != before {
            self.recount(&uids);
        }
    }

    /// Sets the gauge per kind from the unreadable objects known.
    fn recount(&self, uids: &BTreeMap<String, String>) {
        for kind in ["vaultkey", "spendpolicy"] {
            let count = uids.values().filter(|k| k.as_str() == kind).count();
            self.unreadable
                .get_or_create(&KindLabel { kind: kind.into() })
                .set(count as i64);
        }
    }

    /// Counts a restart target's roll: `rolled`, `not_opted_in` or `failed`.
    pub fn restart(&self, namespace: &str, workload_kind: &str, result: &str) {
        self.restarts
            .get_or_create(&RestartLabels {
                namespace: namespace.into(),
                workload_kind: workload_kind.into(),
                result: result.into(),
            })
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

    /// Records a key's phase (`None` when the key is gone). Only the gauges of the phase left
    /// and the phase entered move: recounting every key on each call was quadratic at scale.
    pub fn key_phase(&self, uid: &str, phase: Option<KeyPhase>) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        let was = match (phase, phases.get_mut(uid)) {
            (Some(p), Some(slot)) => Some(std::mem::replace(slot, p)),
            (Some(p), None) => phases.insert(uid.to_owned(), p),
            (None, _) => phases.remove(uid),
        };
        if was == phase {
            return;
        }
        let label = |p: KeyPhase| PhaseLabel {
            phase: format!("{p:?}"),
        };
        if let Some(p) = was {
            self.keys.get_or_create(&label(p)).dec();
        }
        if let Some(p) = phase {
            self.keys.get_or_create(&label(p)).inc();
        }
    }

    /// Marks the operator ready: it serves its endpoints and reaches Redis and the API server.
    /// A standby replica waiting for the Lease is ready too: readiness means serving, not
    /// leading, or a rollout of two replicas would wait for the standby forever.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The Content-Type of what `prometheus_client`'s text encoder writes. Prometheus 3 refuses
/// to scrape a reply without one unless told a fallback.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Status, Content-Type and body for a path.
fn answer(metrics: &Metrics, path: &str) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/metrics" => (StatusCode::OK, OPENMETRICS, metrics.encode()),
        "/healthz" | "/livez" => (StatusCode::OK, TEXT, "ok".to_owned()),
        "/readyz" if metrics.ready.load(Ordering::Acquire) => (StatusCode::OK, TEXT, "ok".into()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready".into()),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found".to_owned()),
    }
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = answer(metrics, req.uri().path());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(
            async move {
                let service = service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
            .instrument(tracing::info_span!("metrics_connection", %peer)),
        );
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_phases_count_each_key_once() {
        let m = Metrics::default();
        m.key_phase("a", Some(KeyPhase::Pending));
        m.key_phase("a", Some(KeyPhase::Active));
        m.key_phase("b", Some(KeyPhase::Active));
        m.key_phase("b", Some(KeyPhase::Active));
        m.key_phase("c", Some(KeyPhase::Pending));
        m.key_phase("c", None);
        m.key_phase("d", None);
        let body = m.encode();
        assert!(
            body.contains("keybrake_operator_vaultkeys{phase=\"Active\"} 2"),
            "{body}"
        );
        assert!(
            body.contains("keybrake_operator_vaultkeys{phase=\"Pending\"} 0"),
            "{body}"
        );
    }

    #[test]
    fn metrics_say_their_format_and_readiness_follows_set_ready() {
        let m = Metrics::default();
        let (status, content_type, body) = answer(&m, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, OPENMETRICS);
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(answer(&m, "/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        m.set_ready();
        assert_eq!(answer(&m, "/readyz").0, StatusCode::OK);
        m.set_leader(true);
        assert!(
            answer(&m, "/metrics")
                .2
                .contains("keybrake_operator_leader 1")
        );
    }
}
