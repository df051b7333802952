//! Proxy metrics: requests by vendor and outcome, refusals by rule, spend (by vendor, and per
//! VaultKey with the share of its caps used), upstream latency, Redis errors.

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use keybrake_crds::{Usd, Vendor};
use keybrake_ledger::Outcome;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels: vendor, endpoint and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Forwarded {
    /// Vendor name (label `vendor`).
    pub vendor: String,
    /// Method and path with ids folded to `*` (`POST /v1/payment_intents/*/confirm`).
    pub endpoint: String,
    /// `ok`, `vendor_error`, `not_sent`, `unknown`.
    pub outcome: String,
}

/// Labels: which script.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptLabel {
    /// `reserve` or `settle`.
    pub script: String,
}

/// A path with object ids folded to `*`, so metric labels stay few: Stripe ids (`pi_3N...`),
/// Twilio SIDs (`AC` + 32 hex), UUIDs and other long tokens.
pub fn endpoint_label(method: &str, path: &str) -> String {
    fn fold(seg: &str) -> &str {
        let stripe_id = seg.split_once('_').is_some_and(|(p, rest)| {
            (2..=6).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_lowercase())
                && !rest.is_empty()
                && rest
                    .bytes()
                    .any(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        });
        let sid = seg.len() == 34 && seg.bytes().take(2).all(|b| b.is_ascii_uppercase());
        let long = seg.len() >= 24
            || (seg.contains('-')
                && seg.len() >= 16
                && !seg.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
        if stripe_id || sid || long { "*" } else { seg }
    }
    let folded: Vec<&str> = path.split('/').map(fold).collect();
    format!("{method} {}", folded.join("/"))
}

/// Labels: vendor and refusing rule.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refused {
    /// Vendor name (label `vendor`).
    pub vendor: String,
    /// The refusing rule's name (label `rule`).
    pub rule: String,
}

/// Labels: vendor.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VendorLabel {
    /// Vendor name (label `vendor`).
    pub vendor: String,
}

/// Labels: one VaultKey (`namespace`, `vaultkey`) and its policy.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The VaultKey's namespace (label `namespace`).
    pub namespace: String,
    /// VaultKey name.
    pub vaultkey: String,
    /// SpendPolicy name.
    pub policy: String,
}

/// Labels: one cap window (`daily` or `total`) of a VaultKey.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapLabels {
    /// The VaultKey's namespace (label `namespace`).
    pub namespace: String,
    /// VaultKey name.
    pub vaultkey: String,
    /// `daily` or `total`.
    pub window: String,
}

/// Per-key gauges; keys not seen for a day are dropped so the series stay few.
#[derive(Default)]
struct KeySeries {
    spend_today: Family<KeyLabels, Gauge>,
    spend_total: Family<KeyLabels, Gauge>,
    cap_used: Family<CapLabels, Gauge<f64, AtomicU64>>,
    last_seen: Mutex<HashMap<KeyLabels, Instant>>,
}

/// How long a key's gauges outlive its last call.
const KEY_SERIES_TTL: Duration = Duration::from_secs(26 * 3600);

/// Everything the proxy counts.
pub struct Metrics {
    keys: KeySeries,
    registry: Registry,
    forwarded: Family<Forwarded, Counter>,
    refused: Family<Refused, Counter>,
    spend_micros: Family<VendorLabel, Counter>,
    overshoot_micros: Family<VendorLabel, Counter>,
    upstream_seconds: Family<VendorLabel, Histogram>,
    redis_seconds: Family<ScriptLabel, Histogram>,
    redis_errors: Counter,
    tls_reloads: Family<ResultLabel, Counter>,
    /// The audit sink's series (`keybrake_proxy_audit_*`).
    pub audit: keybrake_audit::ExportMetrics,
}

/// Labels: whether something worked.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: String,
}

impl Default for Metrics {
    /// Registers every metric with its help text: as long as the list of metrics.
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("keybrake_proxy");
        let forwarded = Family::<Forwarded, Counter>::default();
        let refused = Family::<Refused, Counter>::default();
        let spend_micros = Family::<VendorLabel, Counter>::default();
        let overshoot_micros = Family::<VendorLabel, Counter>::default();
        let upstream_seconds = Family::<VendorLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let redis_seconds = Family::<ScriptLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5])
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
            "overshoot_micros",
            "Settled cost above what was reserved, in micro-dollars (counted in full; it can take a key past its cap)",
            overshoot_micros.clone(),
        );
        registry.register(
            "upstream_seconds",
            "Upstream call latency",
            upstream_seconds.clone(),
        );
        registry.register(
            "redis_seconds",
            "Reserve and settle script latency",
            redis_seconds.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis calls that failed or timed out (calls refused: fail closed)",
            redis_errors.clone(),
        );
        let tls_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_reloads",
            "Certificates read from the TLS Secret (error: the Secret changed into something unusable; the last good one is served)",
            tls_reloads.clone(),
        );
        let keys = KeySeries::default();
        registry.register(
            "key_spend_today_micros",
            "A VaultKey's spend in the current UTC day, in micro-dollars (as of its last call)",
            keys.spend_today.clone(),
        );
        registry.register(
            "key_spend_total_micros",
            "A VaultKey's spend since issue, in micro-dollars (as of its last call)",
            keys.spend_total.clone(),
        );
        registry.register(
            "key_cap_used_ratio",
            "Share of a VaultKey's daily or total cap spent (1 = the cap is reached)",
            keys.cap_used.clone(),
        );
        let audit = keybrake_audit::ExportMetrics::default();
        audit.register(&mut registry);
        Metrics {
            audit,
            keys,
            registry,
            forwarded,
            refused,
            spend_micros,
            overshoot_micros,
            upstream_seconds,
            redis_seconds,
            redis_errors,
            tls_reloads,
        }
    }
}

impl Metrics {
    /// Counts a read of the TLS Secret.
    pub fn tls_reloaded(&self, ok: bool) {
        self.tls_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// Counts a forwarded call and its settled cost.
    pub fn forwarded(&self, vendor: Vendor, endpoint: String, outcome: Outcome, actual: Usd) {
        let outcome = format!("{outcome:?}").to_ascii_lowercase();
        self.forwarded
            .get_or_create(&Forwarded {
                vendor: vendor.to_string(),
                endpoint,
                outcome,
            })
            .inc();
        self.spend_micros
            .get_or_create(&VendorLabel {
                vendor: vendor.to_string(),
            })
            .inc_by(actual.micros());
    }

    /// Counts what a settled call cost above its reservation.
    pub fn overshoot(&self, vendor: Vendor, over: Usd) {
        self.overshoot_micros
            .get_or_create(&VendorLabel {
                vendor: vendor.to_string(),
            })
            .inc_by(over.micros());
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

    /// Records a script's latency.
    pub fn redis_latency(&self, script: &str, d: Duration) {
        self.redis_seconds
            .get_or_create(&ScriptLabel {
                script: script.into(),
            })
            .observe(d.as_secs_f64());
    }

    /// Records a key's spend and how much of its caps it used (micro-dollars), and drops the
    /// series of keys not seen for a day.
    pub fn key_spend(
        &self,
        vault_key: &str,
        policy: &str,
        spend: &keybrake_ledger::Spend,
        daily_cap: Option<u64>,
        total_cap: Option<u64>,
    ) {
        let (Some((namespace, vaultkey)), Some((_, policy))) =
            (vault_key.split_once('/'), policy.split_once('/'))
        else {
            return;
        };
        let labels = KeyLabels {
            namespace: namespace.into(),
            vaultkey: vaultkey.into(),
            policy: policy.into(),
        };
        let as_gauge = |m: u64| i64::try_from(m).unwrap_or(i64::MAX);
        self.keys
            .spend_today
            .get_or_create(&labels)
            .set(as_gauge(spend.today));
        self.keys
            .spend_total
            .get_or_create(&labels)
            .set(as_gauge(spend.total));
        for (window, spent, cap) in [
            ("daily", spend.today, daily_cap),
            ("total", spend.total, total_cap),
        ] {
            if let Some(cap) = cap.filter(|c| *c > 0) {
                self.keys
                    .cap_used
                    .get_or_create(&cap_labels(&labels, window))
                    .set(spent as f64 / cap as f64);
            }
        }
        let Ok(mut seen) = self.keys.last_seen.lock() else {
            return;
        };
        seen.insert(labels, Instant::now());
        seen.retain(|l, at| {
            let keep = at.elapsed() < KEY_SERIES_TTL;
            if !keep {
                self.keys.spend_today.remove(l);
                self.keys.spend_total.remove(l);
                self.keys.cap_used.remove(&cap_labels(l, "daily"));
                self.keys.cap_used.remove(&cap_labels(l, "total"));
            }
            keep
        });
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

fn cap_labels(k: &KeyLabels, window: &str) -> CapLabels {
    CapLabels {
        namespace: k.namespace.clone(),
        vaultkey: k.vaultkey.clone(),
        window: window.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_fold_ids() {
        assert_eq!(
            endpoint_label("POST", "/v1/payment_intents"),
            "POST /v1/payment_intents"
        );
        assert_eq!(
            endpoint_label("POST", "/v1/payment_intents/pi_3NkE2x/confirm"),
            "POST /v1/payment_intents/*/confirm"
        );
        assert_eq!(
            endpoint_label("GET", "/v1/customers/cus_Abc123"),
            "GET /v1/customers/*"
        );
        let sid = format!("AC{}", "a".repeat(32));
        assert_eq!(
            endpoint_label("POST", &format!("/2010-04-01/Accounts/{sid}/Messages.json")),
            "POST /2010-04-01/Accounts/*/Messages.json"
        );
        assert_eq!(
            endpoint_label("GET", "/emails/4ef9a417-02e9-4d39-ad75-9611e0fcc33c"),
            "GET /emails/*"
        );
        assert_eq!(
            endpoint_label("POST", "/emails/batch"),
            "POST /emails/batch"
        );
    }
}
