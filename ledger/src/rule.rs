//! The rules a call can be refused by, and a refusal with the figures behind it.

/// The rule that refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// No such key id.
    UnknownKey,
    /// The secret does not match.
    BadSecret,
    /// The key is revoked.
    Revoked,
    /// The key is past its expiry.
    Expired,
    /// The endpoint is not on the allowlist.
    Endpoint,
    /// An Idempotency-Key reused with another request.
    IdempotencyMismatch,
    /// The call costs more than the per-call cap.
    PerCallCap,
    /// The key's daily cap would be exceeded.
    DailyCap,
    /// The key's total cap would be exceeded.
    TotalCap,
    /// The policy's daily budget would be exceeded.
    PolicyDailyBudget,
    /// The policy's total budget would be exceeded.
    PolicyTotalBudget,
    /// An Idempotency-Key whose earlier outcome is unknown, on a vendor that does not
    /// deduplicate on it (a second attempt could act twice).
    IdempotencyOutcomeUnknown,
}

impl Rule {
    /// The rule's name, as the scripts and the audit trail write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::UnknownKey => "unknown_key",
            Rule::BadSecret => "bad_secret",
            Rule::Revoked => "revoked",
            Rule::Expired => "expired",
            Rule::Endpoint => "endpoint",
            Rule::IdempotencyMismatch => "idempotency_mismatch",
            Rule::PerCallCap => "per_call_cap",
            Rule::DailyCap => "daily_cap",
            Rule::TotalCap => "total_cap",
            Rule::PolicyDailyBudget => "policy_daily_budget",
            Rule::PolicyTotalBudget => "policy_total_budget",
            Rule::IdempotencyOutcomeUnknown => "idempotency_outcome_unknown",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Rule> {
        use Rule::*;
        [
            UnknownKey,
            BadSecret,
            Revoked,
            Expired,
            Endpoint,
            IdempotencyMismatch,
            PerCallCap,
            DailyCap,
            TotalCap,
            PolicyDailyBudget,
            PolicyTotalBudget,
            IdempotencyOutcomeUnknown,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
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
