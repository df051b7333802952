//! Errors of the ledger, and the strict readers of script replies: a reply of an unexpected
//! shape is an error, never a default.

use std::time::Duration;

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Redis refused or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// An answer of the wrong shape.
    #[error("unexpected reply from a ledger script: {0}")]
    Reply(String),
    /// A stored record that does not read back as its type.
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    /// An audit stream entry that does not read back.
    #[error(transparent)]
    Audit(#[from] crate::audit::MalformedEntry),
}

impl LedgerError {
    /// Whether the same call may succeed if tried again: a timeout, a dropped or refused
    /// connection, or a cluster or failover state that passes. A script error or a malformed
    /// reply fails the same way every time.
    pub fn is_transient(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind::*};
        match self {
            LedgerError::Timeout(_) => true,
            LedgerError::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            TryAgain | ClusterDown | MasterDown | BusyLoading | ReadOnly
                        ) | ErrorKind::ClusterConnectionNotFound
                    )
            }
            LedgerError::Reply(_) | LedgerError::Record(_) | LedgerError::Audit(_) => false,
        }
    }
}

/// Results of ledger calls.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

pub(crate) fn reply_int(v: Option<&String>, what: &str) -> Result<u64> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| LedgerError::Reply(format!("{what} is not an integer")))
}

/// An optional integer of a reply: `""` is none; anything else must parse.
pub(crate) fn opt_int(v: Option<&String>, what: &str) -> Result<Option<u64>> {
    match v.map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| LedgerError::Reply(format!("{what} {s:?} is not an integer"))),
    }
}

/// A field the script always returns (possibly empty).
pub(crate) fn present(text: &[String], i: usize, what: &str) -> Result<String> {
    text.get(i)
        .cloned()
        .ok_or_else(|| LedgerError::Reply(format!("no {what} in the reply")))
}
