//! The audit streams read by the audit sink through one Redis consumer group: every sink
//! instance is a consumer, an entry is acknowledged only once the sink has committed it
//! elsewhere, entries a dead consumer held are claimed by another, and a stream is trimmed only
//! below what the group has acknowledged.

use std::time::Duration;

use redis::{
    AsyncCommands,
    aio::ConnectionLike,
    streams::{
        StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamInfoConsumersReply,
        StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply, StreamReadOptions,
        StreamReadReply, StreamTrimOptions, StreamTrimmingMode,
    },
};

use crate::{
    audit::{AuditEntry, MalformedEntry, split},
    error::{LedgerError, Result},
    ledger::Ledger,
    token::PolicyTag,
};

/// Most undelivered entries counted one by one when Redis cannot say how many there are.
const LAG_COUNT_BOUND: usize = 10_000;

/// The consumer group of the audit sink.
pub const GROUP: &str = "keybrake-audit-sink";

/// Where a consumer reads next in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Its own unacknowledged entries after this id ("0" for all): after a start or a failed
    /// write, what it was given before comes first.
    Own(String),
    /// Entries other consumers left idle, scanning their pending entries from this id (Redis
    /// looks at a bounded number per call, so the scan resumes where the last one stopped),
    /// then new ones.
    New(String),
}

/// One batch for a consumer.
#[derive(Debug, Default)]
pub struct Batch {
    /// Entries to export, oldest first.
    pub entries: Vec<AuditEntry>,
    /// Entries that do not read back: never acknowledged, so they stay in the stream (and in the
    /// export lag) until someone looks.
    pub malformed: Vec<MalformedEntry>,
    /// Where to read next.
    pub next: Reading,
    /// Pending entries Redis no longer holds (trimmed or deleted before they were exported:
    /// never by the sink's own trim).
    pub lost: Vec<String>,
}

impl Default for Reading {
    fn default() -> Reading {
        Reading::Own("0".into())
    }
}

/// A policy's stream as the export finds it.
enum Found {
    /// No stream: the policy has had no call.
    NoStream,
    /// A stream no sink has joined.
    NoGroup,
    /// A stream with the sink's group.
    Group(redis::streams::StreamInfoGroup),
}

/// How far the export trails one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// Entries not yet acknowledged (delivered and pending, or not yet delivered).
    pub entries: u64,
    /// Age of the oldest of them, ms (0 when there is none).
    pub age_ms: u64,
    /// Whether a sink has joined the stream (it has the group); before that, every entry in it
    /// counts as not exported.
    pub joined: bool,
}

/// Stream ids are `<ms>-<seq>`; the time part of one.
fn id_ms(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// The id below which every entry has been acknowledged: the oldest pending entry, or, with
/// none pending, the last one delivered (kept itself; the next trim takes it). `None` before
/// anything was delivered.
pub fn trim_below(oldest_pending: Option<&str>, last_delivered: &str) -> Option<String> {
    match oldest_pending {
        Some(id) => Some(id.to_owned()),
        None if last_delivered != "0-0" => Some(last_delivered.to_owned()),
        None => None,
    }
}

/// How far the export trails, from the group's counts and the oldest unacknowledged id.
pub fn lag(pending: u64, undelivered: u64, oldest: Option<&str>, now_ms: u64) -> Lag {
    Lag {
        entries: pending + undelivered,
        age_ms: oldest
            .and_then(id_ms)
            .map_or(0, |ms| now_ms.saturating_sub(ms)),
        joined: true,
    }
}

impl<C: ConnectionLike + Clone + Send + Sync> Ledger<C> {
    /// The name of a policy's audit stream.
    pub fn audit_stream(&self, tag: &PolicyTag) -> String {
        self.keys.policy(tag).audit()
    }

    /// Creates the group on a policy's stream if it has none, from the stream's first entry, so
    /// the history already there is exported too.
    pub async fn export_join(&self, tag: &PolicyTag) -> Result<()> {
        let mut conn = self.conn.clone();
        match self
            .timed::<()>(conn.xgroup_create_mkstream(self.audit_stream(tag), GROUP, "0"))
            .await
        {
            Err(LedgerError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// The next batch for `consumer`: its own unacknowledged entries first; once those are done,
    /// entries other consumers have held longer than `claim_idle` (a sink that died mid-batch),
    /// then new ones.
    pub async fn export_next(
        &self,
        tag: &PolicyTag,
        consumer: &str,
        reading: &Reading,
        count: usize,
        claim_idle: Duration,
    ) -> Result<Batch> {
        let mut conn = self.conn.clone();
        let stream = self.audit_stream(tag);
        let group = StreamReadOptions::default()
            .group(GROUP, consumer)
            .count(count);
        if let Reading::Own(after) = reading {
            let reply: StreamReadReply = self
                .timed(conn.xread_options(&[&stream], &[after.as_str()], &group))
                .await?;
            let ids: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
            if let Some(last) = ids.last() {
                let next = Reading::Own(last.id.clone());
                let (entries, malformed) = split(ids);
                return Ok(Batch {
                    entries,
                    malformed,
                    next,
                    lost: Vec::new(),
                });
            }
        }
        let claim_from = match reading {
            Reading::New(from) => from.as_str(),
            Reading::Own(_) => "0-0",
        };
        let claimed: StreamAutoClaimReply = self
            .timed(conn.xautoclaim_options(
                &stream,
                GROUP,
                consumer,
                claim_idle.as_millis() as u64,
                claim_from,
                StreamAutoClaimOptions::default().count(count),
            ))
            .await?;
        let next = Reading::New(claimed.next_stream_id.clone());
        let ids = if claimed.claimed.is_empty() {
            let reply: StreamReadReply = self
                .timed(conn.xread_options(&[&stream], &[">"], &group))
                .await?;
            reply.keys.into_iter().flat_map(|k| k.ids).collect()
        } else {
            claimed.claimed
        };
        let (entries, malformed) = split(ids);
        Ok(Batch {
            entries,
            malformed,
            next,
            lost: claimed.deleted_ids,
        })
    }

    /// Acknowledges exported entries (after the commit that holds them).
    pub async fn export_ack(&self, tag: &PolicyTag, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        // Fewer than asked is fine: another consumer may have claimed and acknowledged some.
        let _acked: u64 = self
            .timed(conn.xack(self.audit_stream(tag), GROUP, ids))
            .await?;
        Ok(())
    }

    fn group_of(reply: StreamInfoGroupsReply) -> Option<redis::streams::StreamInfoGroup> {
        reply.groups.into_iter().find(|g| g.name == GROUP)
    }

    async fn oldest_pending(&self, stream: &str) -> Result<Option<String>> {
        let mut conn = self.conn.clone();
        let pending: StreamPendingReply = self.timed(conn.xpending(stream, GROUP)).await?;
        Ok(match pending {
            StreamPendingReply::Data(d) if d.count > 0 => Some(d.start_id),
            _ => None,
        })
    }

    /// Removes the group's consumers that hold nothing and have been idle longer than `idle`
    /// (replicas long gone: a pod name per restart would otherwise pile up). A live consumer
    /// removed this way is recreated by its next read. Returns how many went.
    pub async fn export_forget_idle_consumers(
        &self,
        tag: &PolicyTag,
        idle: Duration,
    ) -> Result<u64> {
        let mut conn = self.conn.clone();
        let stream = self.audit_stream(tag);
        let Found::Group(_) = self.found(&stream).await? else {
            return Ok(0);
        };
        let consumers: StreamInfoConsumersReply =
            self.timed(conn.xinfo_consumers(&stream, GROUP)).await?;
        let mut forgotten = 0;
        for c in consumers.consumers {
            if c.pending == 0 && c.idle as u128 >= idle.as_millis() {
                let _: u64 = self
                    .timed(conn.xgroup_delconsumer(&stream, GROUP, &c.name))
                    .await?;
                forgotten += 1;
            }
        }
        Ok(forgotten)
    }

    /// The stream and the sink's group on it, as they are now (XINFO refuses a missing key; a
    /// policy without calls has no stream).
    async fn found(&self, stream: &str) -> Result<Found> {
        let mut conn = self.conn.clone();
        if !self.timed::<bool>(conn.exists(stream)).await? {
            return Ok(Found::NoStream);
        }
        let groups: StreamInfoGroupsReply = self.timed(conn.xinfo_groups(stream)).await?;
        Ok(Self::group_of(groups).map_or(Found::NoGroup, Found::Group))
    }

    /// Trims a policy's stream below what the group has acknowledged, never an entry not yet
    /// exported, then says how far the export trails it (one read of the group for both).
    pub async fn export_trim(&self, tag: &PolicyTag) -> Result<Lag> {
        let mut conn = self.conn.clone();
        let stream = self.audit_stream(tag);
        let found = self.found(&stream).await?;
        let mut oldest = None;
        if let Found::Group(group) = &found {
            // Read after the group: an entry acknowledged in between only makes the trim shorter.
            oldest = self.oldest_pending(&stream).await?;
            if let Some(below) = trim_below(oldest.as_deref(), &group.last_delivered_id) {
                let _trimmed: u64 = self
                    .timed(conn.xtrim_options(
                        &stream,
                        &StreamTrimOptions::minid(StreamTrimmingMode::Exact, below),
                    ))
                    .await?;
            }
        }
        self.lag_of(&stream, &found, oldest).await
    }

    /// How far the export trails a policy's stream, by Redis' clock.
    pub async fn export_lag(&self, tag: &PolicyTag) -> Result<Lag> {
        let stream = self.audit_stream(tag);
        let found = self.found(&stream).await?;
        let oldest = match &found {
            Found::Group(_) => self.oldest_pending(&stream).await?,
            _ => None,
        };
        self.lag_of(&stream, &found, oldest).await
    }

    /// The lag of `stream` in state `found`, whose oldest pending entry is `oldest_pending`.
    async fn lag_of(
        &self,
        stream: &str,
        found: &Found,
        oldest_pending: Option<String>,
    ) -> Result<Lag> {
        let mut conn = self.conn.clone();
        let group = match found {
            Found::NoStream => return Ok(Lag::default()),
            Found::Group(group) => group,
            Found::NoGroup => {
                // No sink has joined: everything in the stream is unexported.
                let (now_ms, _) = self.now().await?;
                let len: u64 = self.timed(conn.xlen(stream)).await?;
                let first: StreamRangeReply =
                    self.timed(conn.xrange_count(stream, "-", "+", 1)).await?;
                let oldest = first.ids.first().map(|e| e.id.clone());
                return Ok(Lag {
                    joined: false,
                    ..lag(0, len, oldest.as_deref(), now_ms as u64)
                });
            }
        };
        let (now_ms, _) = self.now().await?;
        let oldest = match oldest_pending {
            Some(id) => Some(id),
            None => {
                let after = format!("({}", group.last_delivered_id);
                let next: StreamRangeReply =
                    self.timed(conn.xrange_count(stream, after, "+", 1)).await?;
                next.ids.first().map(|e| e.id.clone())
            }
        };
        // `lag` is Redis 7's count of undelivered entries; without it (older servers, or after
        // deletions it cannot see past) they are counted, up to a bound past which the stream's
        // length stands in.
        let undelivered = match group.lag {
            Some(n) => n as u64,
            None if oldest.is_none() => 0,
            None => {
                let after = format!("({}", group.last_delivered_id);
                let counted: StreamRangeReply = self
                    .timed(conn.xrange_count(stream, after, "+", LAG_COUNT_BOUND))
                    .await?;
                match counted.ids.len() {
                    n if n < LAG_COUNT_BOUND => n as u64,
                    _ => self.timed(conn.xlen(stream)).await?,
                }
            }
        };
        Ok(lag(
            group.pending as u64,
            undelivered,
            oldest.as_deref(),
            now_ms as u64,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_below_what_was_acknowledged() {
        assert_eq!(trim_below(Some("5-0"), "9-0").as_deref(), Some("5-0"));
        assert_eq!(trim_below(None, "9-0").as_deref(), Some("9-0"));
        assert_eq!(trim_below(None, "0-0"), None, "nothing delivered yet");
    }

    #[test]
    fn lag_counts_pending_and_undelivered_and_ages_the_oldest() {
        assert_eq!(
            lag(2, 3, Some("1000-4"), 4000),
            Lag {
                entries: 5,
                age_ms: 3000,
                joined: true
            }
        );
        assert_eq!(lag(0, 0, None, 4000).entries, 0);
        assert_eq!(
            lag(1, 0, Some("9000-0"), 4000).age_ms,
            0,
            "clock skew reads 0"
        );
    }
}
