//! The rules a call can be refused by, and a refusal with the figures behind it.

/// Declares [`Rule`] with each rule's name as the scripts and the audit trail write it, so the
/// enum, its names and [`Rule::ALL`] are one list.
macro_rules! rules {
    ($($(#[doc = $doc:literal])* $rule:ident => $name:literal,)*) => {
        /// The rule that refused a call.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Rule {
            $($(#[doc = $doc])* $rule,)*
        }

        impl Rule {
            /// Every rule, in declaration order.
            pub const ALL: &'static [Rule] = &[$(Rule::$rule,)*];

            /// The rule's name, as the scripts and the audit trail write it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Rule::$rule => $name,)*
                }
            }
        }
    };
}

rules! {
    /// No such key id.
    UnknownKey => "unknown_key",
    /// The secret does not match.
    BadSecret => "bad_secret",
    /// The key is revoked.
    Revoked => "revoked",
    /// The key is past its expiry.
    Expired => "expired",
    /// The endpoint is not on the allowlist.
    Endpoint => "endpoint",
    /// An Idempotency-Key reused with another request.
    IdempotencyMismatch => "idempotency_mismatch",
    /// The call costs more than the per-call cap.
    PerCallCap => "per_call_cap",
    /// The key's daily cap would be exceeded.
    DailyCap => "daily_cap",
    /// The key's total cap would be exceeded.
    TotalCap => "total_cap",
    /// The policy's daily budget would be exceeded.
    PolicyDailyBudget => "policy_daily_budget",
    /// The policy's total budget would be exceeded.
    PolicyTotalBudget => "policy_total_budget",
    /// An Idempotency-Key whose earlier outcome is unknown, on a vendor that does not
    /// deduplicate on it (a second attempt could act twice).
    IdempotencyOutcomeUnknown => "idempotency_outcome_unknown",
    /// The call names a vendor object this key (or its run) did not create through the proxy;
    /// `limit` holds its 1-based position in [`crate::ReserveRequest::owned`].
    ObjectNotOwned => "object_not_owned",
    /// The call commits money past the key's expiry (a subscription renewing after it);
    /// `limit` is the expiry and `spent` the commitment's end, both Unix ms.
    CommitmentOutlivesKey => "commitment_outlives_key",
}

impl Rule {
    /// The rule a script or an audit entry names.
    pub(crate) fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// Whether this rule is a spending cap (answered 429 `cap_exhausted`).
    pub fn is_cap(self) -> bool {
        matches!(
            self,
            Rule::PerCallCap
                | Rule::DailyCap
                | Rule::TotalCap
                | Rule::PolicyDailyBudget
                | Rule::PolicyTotalBudget
        )
    }
}

/// A refusal with the figures behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which rule.
    pub rule: Rule,
    /// The cap or budget, micro-dollars (for cap rules).
    pub limit: Option<u64>,
    /// Spent so far against it, micro-dollars.
    pub spent: Option<u64>,
    /// The call's estimate, micro-dollars.
    pub estimate: u64,
    /// `namespace/name` of the VaultKey (empty before authentication).
    pub vault_key: String,
    /// `namespace/name` of the SpendPolicy (empty before authentication).
    pub policy: String,
}
