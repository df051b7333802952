//! The ledger's decision, as a refusal. The scripts report a rule and a few integers whose
//! meaning depends on the rule (see `ledger/src/rule.rs`); this is the one place that reads them.

use keybrake_ledger::{Refusal as Decision, Rule};

use super::catalog::{CapHit, Refusal};

/// The refusal for the reserve script's decision on `method path`; `owned` is the list of
/// objects the call was checked against (the script names a position in it).
pub fn from_ledger(r: &Decision, method: &str, path: &str, owned: &[String]) -> Refusal {
    let vault_key = r.vault_key.clone();
    let (method, path) = (method.to_owned(), path.to_owned());
    match r.rule {
        Rule::DailyCap
        | Rule::TotalCap
        | Rule::PerCallCap
        | Rule::PolicyDailyBudget
        | Rule::PolicyTotalBudget => Refusal::CapExhausted(CapHit {
            cap: r.rule,
            limit: r.limit,
            spent: r.spent,
            estimate: r.estimate,
            vault_key,
            policy: r.policy.clone(),
        }),
        Rule::Revoked => Refusal::Revoked { vault_key },
        Rule::Expired => Refusal::Expired { vault_key },
        Rule::UnknownKey | Rule::BadSecret => Refusal::UnknownKey { rule: r.rule },
        Rule::Endpoint => Refusal::EndpointNotAllowed {
            method,
            path,
            vault_key,
        },
        Rule::IdempotencyMismatch => Refusal::IdempotencyKeyInUse,
        // `limit` is the 1-based position of the first object not owned.
        Rule::ObjectNotOwned => Refusal::ObjectNotOwned {
            object: r
                .limit
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| owned.get(i.checked_sub(1)?))
                .cloned()
                .unwrap_or_else(|| "an object the call names".to_owned()),
            vault_key,
            method,
            path,
        },
        // `spent` is when the commitment ends, `limit` when the key expires (0: never).
        Rule::CommitmentOutlivesKey => Refusal::CommitmentOutlivesKey {
            method,
            path,
            until_ms: r.spent,
            key_expires_ms: r.limit.filter(|&ms| ms != 0),
            vault_key,
        },
        Rule::IdempotencyOutcomeUnknown => Refusal::IdempotencyOutcomeUnknown { method, path },
    }
}
