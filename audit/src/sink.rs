//! The audit sink: reads every policy's audit stream as one consumer of a Redis consumer group,
//! writes each batch to PostgreSQL in one transaction, and acknowledges it only after the
//! commit. At-least-once from Redis, exactly once in the table (a replay hits the primary key).
//! Several sinks (one per proxy replica) share the streams; one that dies leaves its entries
//! pending, and another claims them once they have been idle for `claim_idle`.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use keybrake_ledger::{
    Ledger, LedgerError, PolicyTag,
    export::{Batch, Reading},
};
use redis::aio::ConnectionLike;
use tokio::time::Instant;

use crate::{
    db::{Db, DbError},
    flags::AuditDbFlags,
    metrics::{ExportMetrics, StreamLabel},
    row::CallRow,
};

/// How long an idle sink waits before looking again.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// How often the retention job runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What a round did to one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Entries read.
    pub read: usize,
    /// New rows written.
    pub written: u64,
}

/// A failed step of the export.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] LedgerError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// One sink instance.
pub struct Sink<C> {
    ledger: Ledger<C>,
    db: Db,
    consumer: String,
    batch: usize,
    claim_idle: Duration,
    keep: Duration,
    metrics: ExportMetrics,
    reading: HashMap<PolicyTag, Reading>,
    joined: HashSet<PolicyTag>,
    pruned_at: Option<Instant>,
}

impl<C: ConnectionLike + Clone + Send + Sync> Sink<C> {
    /// A sink named `consumer` (unique per instance: the pod name).
    pub fn new(
        ledger: Ledger<C>,
        db: Db,
        consumer: &str,
        flags: &AuditDbFlags,
        metrics: ExportMetrics,
    ) -> Sink<C> {
        Sink {
            ledger,
            db,
            consumer: consumer.to_owned(),
            batch: flags.batch.max(1),
            claim_idle: Duration::from_secs(flags.claim_idle_secs),
            keep: flags.retention(),
            metrics,
            reading: HashMap::new(),
            joined: HashSet::new(),
            pruned_at: None,
        }
    }

    /// Brings the schema up to date (retrying while the database is down: the entries wait in
    /// Redis meanwhile, and the lag shows it), then exports until the task is dropped.
    pub async fn run(mut self) {
        let mut wait = IDLE_POLL;
        while let Err(e) = self.db.migrate().await {
            self.metrics.failed("write");
            tracing::warn!(error = %e, "audit database not ready; entries wait in Redis");
            for tag in self.ledger.policy_tags().await.unwrap_or_default() {
                self.trim_and_measure(&tag).await;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
        loop {
            let full = self.round().await;
            if !full {
                tokio::time::sleep(IDLE_POLL).await;
            }
            if self.pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune().await;
            }
        }
    }

    /// One pass over every stream: a batch each, then trim and lag. Returns whether some
    /// stream gave a full batch (more is waiting).
    pub async fn round(&mut self) -> bool {
        let tags = match self.ledger.policy_tags().await {
            Ok(tags) => tags,
            Err(e) => {
                self.metrics.failed("read");
                tracing::warn!(error = %e, "audit export: cannot list the policies");
                return false;
            }
        };
        let mut full = false;
        for tag in tags {
            match self.export(&tag).await {
                Ok(moved) => full |= moved.read >= self.batch,
                Err(e) => {
                    tracing::warn!(error = %e, stream = tag.as_str(), "audit export failed; the entries stay in Redis");
                    // What was read and not acknowledged comes again, from this consumer.
                    self.reading.insert(tag.clone(), Reading::default());
                }
            }
            self.trim_and_measure(&tag).await;
        }
        full
    }

    /// One batch of one stream: read, write, acknowledge.
    pub async fn export(&mut self, tag: &PolicyTag) -> Result<Moved, SinkError> {
        if !self.joined.contains(tag) {
            self.ledger
                .export_join(tag)
                .await
                .inspect_err(|_| self.metrics.failed("read"))?;
            self.joined.insert(tag.clone());
        }
        let reading = self.reading.get(tag).cloned().unwrap_or_default();
        let Batch {
            entries,
            malformed,
            next,
        } = self
            .ledger
            .export_next(tag, &self.consumer, &reading, self.batch, self.claim_idle)
            .await
            .inspect_err(|_| self.metrics.failed("read"))?;
        let read = entries.len() + malformed.len();
        for bad in &malformed {
            self.metrics.malformed.inc();
            tracing::error!(stream = tag.as_str(), error = %bad, "audit entry left in Redis: it does not read back");
        }
        let mut rows = Vec::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for e in &entries {
            match CallRow::from_entry(tag, e) {
                Ok(row) => {
                    rows.push(row);
                    ids.push(e.id.clone());
                }
                Err(bad) => {
                    self.metrics.malformed.inc();
                    tracing::error!(stream = tag.as_str(), error = %bad, "audit entry left in Redis: it cannot be a row");
                }
            }
        }
        let written = self
            .db
            .insert(&rows)
            .await
            .inspect_err(|_| self.metrics.failed("write"))?;
        self.ledger
            .export_ack(tag, &ids)
            .await
            .inspect_err(|_| self.metrics.failed("ack"))?;
        self.metrics.exported.inc_by(written);
        self.reading.insert(tag.clone(), next);
        Ok(Moved { read, written })
    }

    async fn trim_and_measure(&self, tag: &PolicyTag) {
        if let Err(e) = self.ledger.export_trim(tag).await {
            self.metrics.failed("trim");
            tracing::warn!(error = %e, stream = tag.as_str(), "audit export: trim failed");
        }
        match self.ledger.export_lag(tag).await {
            Ok(lag) => {
                let label = StreamLabel {
                    stream: tag.as_str().to_owned(),
                };
                self.metrics
                    .lag_entries
                    .get_or_create(&label)
                    .set(lag.entries as i64);
                self.metrics
                    .lag_seconds
                    .get_or_create(&label)
                    .set(lag.age_ms as f64 / 1000.0);
            }
            Err(e) => {
                self.metrics.failed("lag");
                tracing::warn!(error = %e, stream = tag.as_str(), "audit export: lag unknown");
            }
        }
    }

    async fn prune(&mut self) {
        self.pruned_at = Some(Instant::now());
        match self.db.prune(self.keep).await {
            Ok(0) => {}
            Ok(n) => {
                self.metrics.pruned.inc_by(n);
                tracing::info!(rows = n, "audit rows past retention deleted");
            }
            Err(e) => {
                self.metrics.failed("prune");
                tracing::warn!(error = %e, "audit retention job failed");
            }
        }
    }
}
