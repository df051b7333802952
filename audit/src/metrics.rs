//! The sink's metrics: how far the export trails each stream (the alert's input), what it
//! exported, and what failed.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Label: a policy's audit stream (its tag).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// The policy tag.
    pub stream: String,
}

/// Label: the step that failed.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// `read`, `write`, `ack`, `trim`, `lag` or `prune`.
    pub step: String,
}

/// The sink's series (cheap to clone: each is shared).
#[derive(Debug, Clone, Default)]
pub struct ExportMetrics {
    /// Entries not yet in PostgreSQL, per stream.
    pub lag_entries: Family<StreamLabel, Gauge>,
    /// Age of the oldest entry not yet in PostgreSQL, per stream.
    pub lag_seconds: Family<StreamLabel, Gauge<f64, AtomicU64>>,
    /// Entries written (new rows; a replay adds nothing).
    pub exported: Counter,
    /// Failed steps.
    pub failures: Family<StepLabel, Counter>,
    /// Entries kept in `calls_rejected` (they cannot be rows of `calls`).
    pub rejected: Counter,
    /// Entries removed from Redis before they were exported (never by the sink's own trim).
    pub lost: Counter,
    /// Rows deleted by the retention job.
    pub pruned: Counter,
}

impl ExportMetrics {
    /// Registers the series under `registry` (names start `audit_export_`, `audit_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "audit_export_lag_entries",
            "Audit entries in a policy's Redis stream not yet committed to PostgreSQL",
            self.lag_entries.clone(),
        );
        registry.register(
            "audit_export_lag_seconds",
            "Age of the oldest audit entry not yet committed to PostgreSQL",
            self.lag_seconds.clone(),
        );
        registry.register(
            "audit_exported_entries",
            "Audit entries written to PostgreSQL",
            self.exported.clone(),
        );
        registry.register(
            "audit_export_failures",
            "Failed steps of the audit export (read, write, ack, trim, lag, prune)",
            self.failures.clone(),
        );
        registry.register(
            "audit_rejected_entries",
            "Audit entries kept in calls_rejected: they do not read back, PostgreSQL refused them, or their id is taken",
            self.rejected.clone(),
        );
        registry.register(
            "audit_lost_entries",
            "Audit entries removed from Redis before they were exported (a replica trimming by length, or a manual delete)",
            self.lost.clone(),
        );
        registry.register(
            "audit_pruned_rows",
            "Audit rows deleted by the retention job",
            self.pruned.clone(),
        );
    }

    pub(crate) fn failed(&self, step: &str) {
        self.failures
            .get_or_create(&StepLabel {
                step: step.to_owned(),
            })
            .inc();
    }
}
