//! How a forwarded call ended (`Outcome`), the request that closes its reservation
//! (`SettleRequest`) and what closing did (`Settlement`).

use keybrake_crds::{Usd, Vendor};

use crate::{admission::StoredResponse, token::KeyId};

/// How a forwarded call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The vendor did it; the actual cost is known.
    Ok,
    /// The vendor refused it (4xx); nothing moved.
    VendorError,
    /// It never reached the vendor; nothing moved.
    NotSent,
    /// It may or may not have happened (timeout, reset, 5xx): the estimate stays counted.
    Unknown,
}

impl Outcome {
    /// The outcome as the settle script and the audit trail name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::VendorError => "vendor_error",
            Outcome::NotSent => "not_sent",
            Outcome::Unknown => "unknown",
        }
    }
}

/// A reservation to close.
#[derive(Debug, Clone)]
pub struct SettleRequest<'a> {
    /// The key.
    pub key_id: &'a KeyId,
    /// Its vendor (for the audit entry); `None` when nobody knows any more (the sweeper closing
    /// a reservation of a key whose record is gone): the entry says so, rather than guess.
    pub vendor: Option<Vendor>,
    /// The reservation id from [`Admission::Granted`] or [`Admission::Reattempt`].
    pub reservation: &'a str,
    /// How it ended.
    pub outcome: Outcome,
    /// The actual cost (used for [`Outcome::Ok`]).
    pub actual: Usd,
    /// The vendor's HTTP status, if it answered.
    pub status: Option<u16>,
    /// The vendor's request id, if known.
    pub request_id: &'a str,
    /// The Idempotency-Key of the call, if any.
    pub idempotency_key: Option<&'a str>,
    /// What to replay to repeats of the call.
    pub response: Option<&'a StoredResponse>,
    /// The vendor object the call's money belongs to, if any (see [`Ledger::counted`]).
    pub object: Option<&'a str>,
    /// Vendor objects the call created (only read for [`Outcome::Ok`]): recorded as the key's
    /// own, so that it, and no other key, may act on them later.
    pub created: &'a [String],
}

/// What settle did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Closed now.
    Settled {
        /// Actual minus estimate, micro-dollars.
        delta: i64,
        /// Key spend today after.
        today: u64,
        /// Key spend in total after.
        total: u64,
    },
    /// Someone (a sweeper, a duplicate) closed it before.
    AlreadySettled,
}
