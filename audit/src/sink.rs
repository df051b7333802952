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
    export::{Batch, Lag, Reading},
};
use redis::aio::ConnectionLike;
use tokio::time::Instant;

use crate::{
    db::{Db, DbError, Rejected},
    flags::AuditDbFlags,
    metrics::{ExportMetrics, StreamLabel},
    row::CallRow,
};

/// How long an idle sink waits before looking again.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Longest wait between rounds while they fail (the database or Redis is down).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Consumers (pod names) that hold nothing and have been idle this long are removed.
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(24 * 3600);
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
    /// Whether the last round failed somewhere.
    failing: bool,
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
            failing: false,
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
            wait = (wait * 2).min(MAX_BACKOFF);
        }
        let mut backoff = IDLE_POLL;
        loop {
            let full = self.round().await;
            if self.failing {
                // Each failed round re-reads its batch: wait longer while the failure lasts,
                // rather than rereading and logging twice a second.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                backoff = IDLE_POLL;
                if !full {
                    tokio::time::sleep(IDLE_POLL).await;
                }
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
                self.failing = true;
                self.metrics.failed("read");
                tracing::warn!(error = %e, "audit export: cannot list the policies");
                return false;
            }
        };
        let mut full = false;
        self.failing = false;
        for tag in tags {
            match self.export(&tag).await {
                Ok(moved) => full |= moved.read >= self.batch,
                Err(e) => {
                    self.failing = true;
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
        let result = self.export_batch(tag).await;
        if let Err(SinkError::Redis(LedgerError::Redis(e))) = &result
            && e.code() == Some("NOGROUP")
        {
            // The group went with a failover to a replica that never had it, or a flush: join
            // again (from the stream's start: what is already in PostgreSQL is a no-op).
            self.joined.remove(tag);
        }
        result
    }

    async fn export_batch(&mut self, tag: &PolicyTag) -> Result<Moved, SinkError> {
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
            lost,
        } = self
            .ledger
            .export_next(tag, &self.consumer, &reading, self.batch, self.claim_idle)
            .await
            .inspect_err(|_| self.metrics.failed("read"))?;
        if !lost.is_empty() {
            self.metrics.lost.inc_by(lost.len() as u64);
            tracing::error!(stream = tag.as_str(), ids = ?lost, "audit entries were removed from Redis before they were exported");
        }
        let read = entries.len() + malformed.len();
        let mut ids: Vec<String> = Vec::with_capacity(read);
        let mut rejected: Vec<Rejected> = malformed
            .into_iter()
            .map(|bad| {
                ids.push(bad.id.clone());
                Rejected {
                    policy_tag: tag.as_str().to_owned(),
                    stream_id: bad.id,
                    problem: bad.problem,
                    fields: serde_json::to_value(bad.fields).unwrap_or_default(),
                }
            })
            .collect();
        let mut rows = Vec::with_capacity(entries.len());
        for e in &entries {
            ids.push(e.id.clone());
            match CallRow::from_entry(tag, e) {
                Ok(row) => rows.push(row),
                Err(bad) => rejected.push(Rejected {
                    policy_tag: tag.as_str().to_owned(),
                    stream_id: e.id.clone(),
                    problem: bad.problem,
                    fields: serde_json::to_value(e).unwrap_or_default(),
                }),
            }
        }
        let written = self
            .db
            .write(&rows, rejected)
            .await
            .inspect_err(|_| self.metrics.failed("write"))?;
        self.ledger
            .export_ack(tag, &ids)
            .await
            .inspect_err(|_| self.metrics.failed("ack"))?;
        if written.rejected > 0 {
            self.metrics.rejected.inc_by(written.rejected);
            tracing::error!(
                stream = tag.as_str(),
                entries = written.rejected,
                "audit entries kept in calls_rejected: they cannot be rows of calls"
            );
        }
        self.metrics.exported.inc_by(written.new);
        self.reading.insert(tag.clone(), next);
        Ok(Moved {
            read,
            written: written.new,
        })
    }

    async fn trim_and_measure(&self, tag: &PolicyTag) {
        match self.ledger.export_trim(tag).await {
            Ok(lag) => publish(&self.metrics, tag, lag, true),
            Err(e) => {
                self.metrics.failed("trim");
                tracing::warn!(error = %e, stream = tag.as_str(), "audit export: trim failed");
            }
        }
    }

    async fn prune(&mut self) {
        self.pruned_at = Some(Instant::now());
        for tag in self.joined.clone() {
            if let Err(e) = self
                .ledger
                .export_forget_idle_consumers(&tag, FORGET_CONSUMERS_AFTER)
                .await
            {
                tracing::warn!(error = %e, stream = tag.as_str(), "audit export: idle consumers not removed");
            }
        }
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

/// Publishes how far the export trails `tag`'s stream. `exporting`: this process runs a sink, so
/// a stream no sink has joined yet counts whole; otherwise only joined streams count.
fn publish(metrics: &ExportMetrics, tag: &PolicyTag, lag: Lag, exporting: bool) {
    let lag = if lag.joined || exporting {
        lag
    } else {
        Lag::default()
    };
    let label = StreamLabel {
        stream: tag.as_str().to_owned(),
    };
    metrics
        .lag_entries
        .get_or_create(&label)
        .set(lag.entries as i64);
    metrics
        .lag_seconds
        .get_or_create(&label)
        .set(lag.age_ms as f64 / 1000.0);
}

/// How often a replica without a database looks for streams a sink once joined.
const UNWATCHED_EVERY: Duration = Duration::from_secs(30);

/// For a replica running without an audit database: a stream that a sink has joined is never
/// trimmed by the scripts, so if every sink is gone (the database URL removed, or an old
/// replica) its entries pile up in Redis. This keeps publishing the lag of such streams, so the
/// lag alert fires, and says what to do; it exports and trims nothing.
pub async fn watch_unexported<C: ConnectionLike + Clone + Send + Sync>(
    ledger: Ledger<C>,
    metrics: ExportMetrics,
) {
    loop {
        for tag in ledger.policy_tags().await.unwrap_or_default() {
            let lag = match ledger.export_lag(&tag).await {
                Ok(lag) => lag,
                Err(e) => {
                    metrics.failed("lag");
                    tracing::warn!(error = %e, stream = tag.as_str(), "audit export: lag unknown");
                    continue;
                }
            };
            publish(&metrics, &tag, lag, false);
            if lag.joined && lag.entries > 0 {
                tracing::warn!(
                    stream = tag.as_str(),
                    entries = lag.entries,
                    "audit entries wait in Redis for an audit sink, and this replica has no audit database: set KEYBRAKE_AUDIT_DB_URL, or run XGROUP DESTROY on the stream to go back to trimming by length (docs/audit.md)"
                );
            }
        }
        tokio::time::sleep(UNWATCHED_EVERY).await;
    }
}
