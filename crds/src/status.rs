//! Status pieces shared by both resources: conditions and spend.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::money::Usd;

/// The condition type every resource reports first (kstatus, Argo CD and Flux read it).
pub const READY: &str = "Ready";

/// Spend counters read from Redis by the proxy. Only the proxy writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendStatus {
    /// Spend in the current UTC day, in dollars.
    #[serde(default)]
    pub today_usd: Usd,
    /// Spend since the credential was issued, in dollars.
    #[serde(default)]
    pub total_usd: Usd,
    /// Calls forwarded to the vendor.
    #[serde(default)]
    pub calls: u64,
    /// Calls refused by a cap, the allowlist, expiry or revocation.
    #[serde(default)]
    pub refused: u64,
    /// When the last call was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_call_at: Option<Time>,
    /// When these counters were read from Redis (Redis time). A proxy writes them about every
    /// 2 s while the key is used: a number observed long after `lastCallAt` is a quiet key; calls
    /// seen failing while this stays old is a stale number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// The proxy replica that read and wrote them (its pod name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_by: Option<String>,
}

/// kstatus's abnormal-true condition: the controller makes no progress until the spec (or an
/// object it names) changes. Flux, `kubectl wait` and cli-utils read it as failed.
pub const STALLED: &str = "Stalled";
/// kstatus's abnormal-true condition: the controller is still working toward the desired state.
pub const RECONCILING: &str = "Reconciling";

/// The reason of the conditions a new object gets from the schema default, before the operator
/// has seen it.
pub const PENDING: &str = "Pending";

/// The conditions every new object carries from the CRD's `status` default (the Gateway API's
/// way): without them a just-created object has no status, and kstatus reads no status as
/// Current, so Flux and `kubectl wait` would call a key healthy before the operator has looked
/// at it. Their `lastTransitionTime` is the epoch, a placeholder [`condition`] does not keep.
pub fn pending() -> serde_json::Value {
    let waiting = |type_: &str, status: &str| {
        // Keys in sorted order: the YAML is the same whether or not serde_json's
        // `preserve_order` is on in the build that writes it.
        serde_json::json!({
            "lastTransitionTime": "1970-01-01T00:00:00Z",
            "message": "Waiting for the Keybrake operator to see this object",
            "reason": PENDING,
            "status": status,
            "type": type_,
        })
    };
    serde_json::json!({"conditions": [waiting(READY, "Unknown"), waiting(RECONCILING, "True")]})
}

/// The three conditions the operator writes, always all three and in this order: `Ready` first,
/// then kstatus's `Reconciling` and `Stalled`, True only for the one named by `abnormal`. All
/// three are written, False included, because a server-side apply replaces only the entries it
/// names: the schema default's `Reconciling=True` would otherwise stay forever.
pub fn conditions(
    ready: bool,
    abnormal: Option<&str>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Vec<Condition> {
    [READY, RECONCILING, STALLED]
        .into_iter()
        .map(|type_| {
            let status = if type_ == READY {
                ready
            } else {
                abnormal == Some(type_)
            };
            condition(
                type_,
                status,
                reason,
                message,
                generation,
                previous,
                now.clone(),
            )
        })
        .collect()
}

/// Builds a condition; `lastTransitionTime` is kept from `previous` when the status is unchanged
/// (and was not the schema default's placeholder), so re-reconciling an unchanged object writes
/// nothing new.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| {
            c.type_ == type_
                && c.status == status
                && c.last_transition_time.0 != jiff::Timestamp::UNIX_EPOCH
        })
        .map_or(now, |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn keeps_transition_time_while_status_holds() {
        let first = condition(
            READY,
            true,
            "Issued",
            "ok",
            Some(1),
            &[],
            at("2026-01-01T00:00:00Z"),
        );
        let again = condition(
            READY,
            true,
            "Issued",
            "ok",
            Some(2),
            std::slice::from_ref(&first),
            at("2026-01-02T00:00:00Z"),
        );
        assert_eq!(again.last_transition_time, first.last_transition_time);
        assert_eq!(again.observed_generation, Some(2));
        let flipped = condition(
            READY,
            false,
            "Revoked",
            "no",
            Some(2),
            &[first],
            at("2026-01-03T00:00:00Z"),
        );
        assert_eq!(flipped.last_transition_time, at("2026-01-03T00:00:00Z"));
        assert_eq!(flipped.status, "False");
    }

    #[test]
    fn spend_defaults_to_zero_and_writes_dollars() {
        let s: SpendStatus = serde_json::from_str("{}").unwrap();
        assert_eq!(s.total_usd, Usd::ZERO);
        let json = serde_json::to_value(SpendStatus {
            today_usd: "1.5".parse().unwrap(),
            ..s
        })
        .unwrap();
        assert_eq!(json["todayUsd"], "1.50");
    }
}
