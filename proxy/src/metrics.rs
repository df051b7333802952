//! Proxy metrics: requests by vendor and outcome, refusals by rule, spend, upstream latency,
//! Redis errors.

use std::time::Duration;

use keybrake_crds::{Usd, Vendor};
use keybrake_ledger::Outcome;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Labels: vendor and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Forwarded {
    /// Vendor.
    pub vendor: String,
    /// `ok`, `vendor_error`, `not_sent`, `unknown`.
    pub outcome: String,
}

/// Labels: vendor and refusing rule.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refused {
    /// Vendor.
    pub vendor: String,
    /// Rule.
    pub rule: String,
}

/// Labels: vendor.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VendorLabel {
    /// Vendor.
    pub vendor: String,
}

/// Everything the proxy counts.
pub struct Metrics {
    registry: Registry,
    forwarded: Family<Forwarded, Counter>,
    refused: Family<Refused, Counter>,
    spend_micros: Family<VendorLabel, Counter>,
    upstream_seconds: Family<VendorLabel, Histogram>,
    redis_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("keybrake_proxy");
        let forwarded = Family::<Forwarded, Counter>::default();
        let refused = Family::<Refused, Counter>::default();
        let spend_micros = Family::<VendorLabel, Counter>::default();
        let upstream_seconds = Family::<VendorLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let redis_errors = Counter::default();
        registry.register(
            "forwarded",
            "Calls sent to a vendor, by outcome",
            forwarded.clone(),
        );
        registry.register("refused", "Calls refused, by rule", refused.clone());
        registry.register(
            "spend_micros",
            "Settled spend in micro-dollars",
            spend_micros.clone(),
        );
        registry.register(
            "upstream_seconds",
            "Upstream call latency",
            upstream_seconds.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis calls that failed or timed out (calls refused: fail closed)",
            redis_errors.clone(),
        );
        Metrics {
            registry,
            forwarded,
            refused,
            spend_micros,
            upstream_seconds,
            redis_errors,
        }
    }
}

impl Metrics {
    /// Counts a forwarded call and its settled cost.
    pub fn forwarded(&self, vendor: Vendor, outcome: Outcome, actual: Usd) {
        let outcome = format!("{outcome:?}").to_ascii_lowercase();
        self.forwarded
            .get_or_create(&Forwarded {
                vendor: vendor.to_string(),
                outcome,
            })
            .inc();
        self.spend_micros
            .get_or_create(&VendorLabel {
                vendor: vendor.to_string(),
            })
            .inc_by(actual.micros());
    }

    /// Counts a refusal.
    pub fn refused(&self, vendor: Vendor, rule: &str) {
        self.refused
            .get_or_create(&Refused {
                vendor: vendor.to_string(),
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// Records an upstream latency.
    pub fn upstream_latency(&self, vendor: Vendor, d: Duration) {
        self.upstream_seconds
            .get_or_create(&VendorLabel {
                vendor: vendor.to_string(),
            })
            .observe(d.as_secs_f64());
    }

    /// Counts a Redis failure.
    pub fn redis_error(&self) {
        self.redis_errors.inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
