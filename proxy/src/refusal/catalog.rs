//! The catalog: every refusal with its data, and what is derived from it (kind, code, rule,
//! message).

use keybrake_crds::Usd;
use keybrake_ledger::Rule;

use crate::adapters::BadRequest;

/// What kind of refusal, which fixes the status and the vendor's error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A spending cap or budget: 429.
    Cap,
    /// No usable vault key: 401.
    Auth,
    /// Not allowed for this key: 403.
    Forbidden,
    /// A request that cannot be costed or read: 400.
    BadRequest,
    /// An Idempotency-Key reused with other parameters: 400.
    IdempotencyMismatch,
    /// A body or header over the limits: 413.
    TooLarge,
    /// The proxy cannot account for the call (Redis unreachable, policy not loaded): 503.
    Unavailable,
    /// Another call on the same vendor object is being costed and sent: 409, as Stripe answers
    /// for an object locked by a concurrent request (its SDKs retry it, which is safe here).
    Conflict,
}

impl Kind {
    /// The HTTP status of this kind.
    pub fn status(self) -> u16 {
        match self {
            Kind::Cap => 429,
            Kind::Auth => 401,
            Kind::Forbidden => 403,
            Kind::BadRequest | Kind::IdempotencyMismatch => 400,
            Kind::TooLarge => 413,
            Kind::Unavailable => 503,
            Kind::Conflict => 409,
        }
    }
}

/// Why the proxy could not account for a call; nothing was sent in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Accounting {
    /// Redis is unreachable, slow, or the breaker is open.
    #[error("spend cannot be checked right now, so the call was not sent; retry shortly")]
    Unreachable,
    /// Redis answered something the proxy cannot read.
    #[error("{0}")]
    Malformed(String),
    /// The reservation reached fewer replicas than `KEYBRAKE_REDIS_REPLICA_ACKS` in time.
    #[error(
        "the reservation reached fewer than {0} Redis replica(s) in time, so the call was not sent; retry shortly"
    )]
    NotReplicated(u32),
}

/// A spending cap or budget the call would exceed, as the ledger reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapHit {
    /// Which cap (one of the ledger's cap rules).
    pub cap: Rule,
    /// The cap, micro-dollars.
    pub limit: Option<u64>,
    /// Spent against it so far, micro-dollars.
    pub spent: Option<u64>,
    /// What this call needs, micro-dollars.
    pub estimate: u64,
    /// `namespace/name` of the VaultKey (may be empty).
    pub vault_key: String,
    /// `namespace/name` of the SpendPolicy.
    pub policy: String,
}

/// Everything the proxy refuses. The message of each is its `Display`, without the code, which
/// [`Refusal::message`] puts first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    // 401: no usable vault key.
    /// The credential is missing or not a vault token.
    #[error("{0}")]
    BadCredential(String),
    /// No such key id, or its secret does not match (`rule` says which).
    #[error(
        "no such vault key, or its secret does not match (it may have been deleted or rotated)"
    )]
    UnknownKey {
        /// `unknown_key` or `bad_secret`.
        rule: Rule,
    },
    /// The key's SpendPolicy is not in the proxy's table, or is for another vendor.
    #[error("no such vault key, or its SpendPolicy is gone")]
    PolicyGone,
    /// The key record names another policy than the one its id's tag leads to.
    #[error(
        "the key's record names another SpendPolicy than the one its id leads to; nothing was sent"
    )]
    PolicyMismatch,
    /// The key is revoked (in Redis, or in the API server ahead of Redis).
    #[error("{} was revoked; issue a new key", named(.vault_key))]
    Revoked {
        /// `namespace/name`, or empty.
        vault_key: String,
    },
    /// The VaultKey was deleted in the API server ahead of Redis.
    #[error("VaultKey {vault_key} no longer exists")]
    Deleted {
        /// `namespace/name`.
        vault_key: String,
    },
    /// The key is past its expiry.
    #[error("{} has expired; issue a new key", named(.vault_key))]
    Expired {
        /// `namespace/name`, or empty.
        vault_key: String,
    },

    // 403: not this key's to do.
    /// The endpoint is not on the key's allowlist.
    #[error("{method} {path} is not in the allowedEndpoints of {}", named(.vault_key))]
    EndpointNotAllowed {
        /// The method.
        method: String,
        /// The canonical path.
        path: String,
        /// `namespace/name`, or empty.
        vault_key: String,
    },
    /// A Twilio path names another account than the key's.
    #[error(
        "the account SID in the path is not the vault key's (use TWILIO_ACCOUNT_SID from the key's Secret)"
    )]
    AccountMismatch,
    /// The call names an object the key did not create.
    #[error(
        "{object} was not created through the proxy by VaultKey {vault_key} (or by its run, where the SpendPolicy sets spec.scope.objects: Run); nothing was sent. To let keys act on objects they did not create through {method} {path}, list it in the SpendPolicy's spec.scope.existingObjects; for customers and their saved payment methods, set spec.scope.customers: Any"
    )]
    ObjectNotOwned {
        /// The object the call names.
        object: String,
        /// `namespace/name` of the VaultKey.
        vault_key: String,
        /// The method.
        method: String,
        /// The canonical path.
        path: String,
    },
    /// A list, a search or an account read, which reaches objects no key created.
    #[error(
        "{method} {path} reads objects no key created (a list, a search or the account); to allow it, list the endpoint in the SpendPolicy's spec.scope.existingObjects"
    )]
    ListingNotOwned {
        /// The method.
        method: String,
        /// The canonical path.
        path: String,
    },
    /// The call commits money past the key's expiry.
    #[error(
        "{method} {path} commits money until {} (cancel_at), but {} {}; nothing the key starts may charge after it is gone: send a cancel_at no later than its expiry",
        instant(*.until_ms), named(.vault_key), key_expiry(*.key_expires_ms)
    )]
    CommitmentOutlivesKey {
        /// The method.
        method: String,
        /// The canonical path.
        path: String,
        /// When the commitment ends, Unix milliseconds.
        until_ms: Option<u64>,
        /// When the key expires, Unix milliseconds (`None`: never).
        key_expires_ms: Option<u64>,
        /// `namespace/name`, or empty.
        vault_key: String,
    },
    /// The adapter cannot read or cost the request exactly as the vendor would (400), or the
    /// policy does not allow what it reads (403).
    #[error(transparent)]
    Request(#[from] BadRequest),

    // 429: a cap.
    /// A spending cap or budget would be exceeded.
    #[error("{}", cap_message(.0))]
    CapExhausted(CapHit),

    // 400: a request to fix.
    /// The request path is not one the proxy reads.
    #[error("{0}")]
    InvalidPath(String),
    /// The body could not be read.
    #[error("the request body could not be read: {0}")]
    InvalidBody(String),
    /// The body did not arrive in time.
    #[error("the request body was not sent in time")]
    BodyTimeout,
    /// A vendor object the cost depends on could not be read.
    #[error("the call is costed from {path}, which could not be read ({why}); nothing was sent")]
    CostUnreadable {
        /// The vendor path read.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// An Idempotency-Key reused with other parameters.
    #[error(
        "keys for idempotent requests can only be used with the same parameters they were first used with"
    )]
    IdempotencyKeyInUse,
    /// An earlier attempt with this Idempotency-Key may have reached a vendor that does not
    /// deduplicate on it.
    #[error(
        "an earlier {method} {path} with this Idempotency-Key may have reached the vendor (its cost stays counted), and the vendor does not deduplicate on the key, so it is not sent again; check the vendor, then use a new key to send again"
    )]
    IdempotencyOutcomeUnknown {
        /// The method.
        method: String,
        /// The canonical path.
        path: String,
    },
    /// The answer to replay was too large to keep.
    #[error(
        "the call with this Idempotency-Key was done, but its response was too large to keep for replay; read the object from the vendor instead"
    )]
    IdempotencyResponseNotKept,

    // 413.
    /// The body is over the limit.
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, bytes.
        limit: usize,
    },

    // 409.
    /// Another call on the same vendor object is being costed and sent.
    #[error("another call on {object} is being costed and sent; retry when it is done")]
    ObjectBusy {
        /// The object.
        object: String,
    },

    // 503: nothing was sent; retry later.
    /// The proxy cannot account for the call.
    #[error(transparent)]
    AccountingUnavailable(Accounting),
    /// A request with the same Idempotency-Key is still in flight.
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInFlight,
    /// The key's SpendPolicy cannot be used (its credentials or pricing are unreadable).
    #[error("{0}")]
    PolicyUnusable(String),
    /// The vendor could not be reached; nothing was sent.
    #[error("{upstream} could not be reached ({detail}); nothing was sent or counted")]
    UpstreamUnreachable {
        /// The vendor's base URL.
        upstream: String,
        /// The transport error.
        detail: String,
    },
    /// A vendor object the cost depends on could not be read from the vendor.
    #[error(
        "{path} could not be read from {upstream} to cost the call ({detail}); nothing was sent"
    )]
    CostUpstreamUnreachable {
        /// The vendor path read.
        path: String,
        /// The vendor's base URL.
        upstream: String,
        /// The transport error.
        detail: String,
    },
    /// The call failed after it was sent; its reservation stays counted.
    #[error("the call to {upstream} failed after it was sent ({detail}); its cost stays counted")]
    UpstreamOutcomeUnknown {
        /// The vendor's base URL.
        upstream: String,
        /// The transport error.
        detail: String,
    },
    /// The proxy itself failed while handling the call.
    #[error("the proxy failed while handling the call")]
    Internal,
}

impl Refusal {
    /// The refusal for when Redis cannot be reached: nothing was sent.
    pub fn accounting() -> Refusal {
        Refusal::AccountingUnavailable(Accounting::Unreachable)
    }

    /// The kind, which fixes the status and the vendor's error type.
    pub fn kind(&self) -> Kind {
        use Refusal::*;
        match self {
            BadCredential(_)
            | UnknownKey { .. }
            | PolicyGone
            | PolicyMismatch
            | Revoked { .. }
            | Deleted { .. }
            | Expired { .. } => Kind::Auth,
            EndpointNotAllowed { .. }
            | AccountMismatch
            | ObjectNotOwned { .. }
            | ListingNotOwned { .. }
            | CommitmentOutlivesKey { .. } => Kind::Forbidden,
            Request(e) if e.is_policy() => Kind::Forbidden,
            Request(_) | InvalidPath(_) | InvalidBody(_) | BodyTimeout | CostUnreadable { .. } => {
                Kind::BadRequest
            }
            CapExhausted(_) => Kind::Cap,
            IdempotencyKeyInUse | IdempotencyOutcomeUnknown { .. } | IdempotencyResponseNotKept => {
                Kind::IdempotencyMismatch
            }
            BodyTooLarge { .. } => Kind::TooLarge,
            ObjectBusy { .. } => Kind::Conflict,
            AccountingUnavailable(_)
            | IdempotencyKeyInFlight
            | PolicyUnusable(_)
            | UpstreamUnreachable { .. }
            | CostUpstreamUnreachable { .. }
            | UpstreamOutcomeUnknown { .. }
            | Internal => Kind::Unavailable,
        }
    }

    /// The machine-readable code the vendor's error carries.
    pub fn code(&self) -> &'static str {
        use Refusal::*;
        match self {
            BadCredential(_) | UnknownKey { .. } | PolicyGone | PolicyMismatch | Deleted { .. } => {
                "vault_key_invalid"
            }
            Revoked { .. } => "vault_key_revoked",
            Expired { .. } => "vault_key_expired",
            EndpointNotAllowed { .. } => "endpoint_not_allowed",
            AccountMismatch => "account_mismatch",
            ObjectNotOwned { .. } | ListingNotOwned { .. } => "object_not_owned",
            CommitmentOutlivesKey { .. } => "commitment_outlives_key",
            Request(e) => e.code(),
            CapExhausted(_) => "cap_exhausted",
            InvalidPath(_) => "invalid_path",
            InvalidBody(_) => "invalid_body",
            BodyTimeout => "body_timeout",
            CostUnreadable { .. } => "cost_unreadable",
            IdempotencyKeyInUse => "idempotency_key_in_use",
            IdempotencyOutcomeUnknown { .. } => "idempotency_outcome_unknown",
            IdempotencyResponseNotKept => "idempotency_response_not_kept",
            BodyTooLarge { .. } => "body_too_large",
            ObjectBusy { .. } => "object_busy",
            AccountingUnavailable(_) => "accounting_unavailable",
            IdempotencyKeyInFlight => "idempotency_key_in_flight",
            PolicyUnusable(_) => "policy_unusable",
            UpstreamUnreachable { .. } | CostUpstreamUnreachable { .. } => "upstream_unreachable",
            UpstreamOutcomeUnknown { .. } => "upstream_outcome_unknown",
            Internal => "internal_error",
        }
    }

    /// The rule that refused, for the `X-Keybrake-Rule` header and the refusal metric.
    pub fn rule(&self) -> &'static str {
        use Refusal::*;
        match self {
            BadCredential(_) => "auth",
            UnknownKey { rule } => rule.as_str(),
            PolicyGone => "unknown_key",
            PolicyMismatch => "policy_mismatch",
            Revoked { .. } | Deleted { .. } => "revoked",
            Expired { .. } => "expired",
            EndpointNotAllowed { .. } => "endpoint",
            AccountMismatch => "account",
            ObjectNotOwned { .. } | ListingNotOwned { .. } => "object_not_owned",
            CommitmentOutlivesKey { .. } => "commitment_outlives_key",
            Request(e) => match e {
                BadRequest::Header(..) => "header",
                BadRequest::Unbounded(_) | BadRequest::Refused(_) => "cost",
                BadRequest::NoRate(_) => "currency",
                BadRequest::NotAllowed { .. } => "parameter",
                _ => "bad_request",
            },
            CapExhausted(hit) => hit.cap.as_str(),
            InvalidPath(_) | InvalidBody(_) | BodyTimeout => "bad_request",
            CostUnreadable { .. } => "cost",
            IdempotencyKeyInUse => "idempotency_mismatch",
            IdempotencyOutcomeUnknown { .. } => "idempotency_outcome_unknown",
            IdempotencyResponseNotKept => "idempotency_replay",
            BodyTooLarge { .. } => "body_too_large",
            ObjectBusy { .. } => "object_busy",
            AccountingUnavailable(_) => "redis",
            IdempotencyKeyInFlight => "idempotency_in_flight",
            PolicyUnusable(_) => "policy_unusable",
            UpstreamUnreachable { .. }
            | CostUpstreamUnreachable { .. }
            | UpstreamOutcomeUnknown { .. } => "upstream",
            Internal => "internal",
        }
    }

    /// The sentence for people: the code, then what happened and what to do.
    pub fn message(&self) -> String {
        format!("{}: {self}", self.code())
    }
}

/// `VaultKey ns/name`, or `the VaultKey` before the key is known.
fn named(vault_key: &str) -> String {
    if vault_key.is_empty() {
        "the VaultKey".to_owned()
    } else {
        format!("VaultKey {vault_key}")
    }
}

fn usd(micros: Option<u64>) -> String {
    micros
        .and_then(Usd::from_micros)
        .map_or_else(|| "?".into(), |u| format!("${u}"))
}

fn instant(ms: Option<u64>) -> String {
    ms.and_then(|ms| i64::try_from(ms).ok())
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| "never".to_owned(), |t| t.to_string())
}

fn key_expiry(ms: Option<u64>) -> String {
    match ms {
        None => "never expires".to_owned(),
        Some(_) => format!("expires at {}", instant(ms)),
    }
}

fn cap_message(hit: &CapHit) -> String {
    let (limit, spent, est) = (usd(hit.limit), usd(hit.spent), usd(Some(hit.estimate)));
    let key = named(&hit.vault_key);
    let policy = &hit.policy;
    match hit.cap {
        Rule::DailyCap => format!(
            "the daily cap of {limit} on {key} is spent ({spent} today; this call needs {est}); it resets at 00:00 UTC"
        ),
        Rule::TotalCap => format!(
            "the total cap of {limit} on {key} is spent ({spent} so far; this call needs {est})"
        ),
        Rule::PerCallCap => {
            format!("this call costs {est}, above the per-call cap of {limit} on {key}")
        }
        Rule::PolicyDailyBudget => format!(
            "the daily budget of {limit} on SpendPolicy {policy} is spent ({spent} today; this call needs {est})"
        ),
        Rule::PolicyTotalBudget => format!(
            "the total budget of {limit} on SpendPolicy {policy} is spent ({spent} so far; this call needs {est})"
        ),
        // Only cap rules make a CapHit (see `from_ledger`); still, never an empty message.
        other => format!(
            "the {} limit of {limit} is spent ({spent}; this call needs {est})",
            other.as_str()
        ),
    }
}
