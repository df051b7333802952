//! The steps of the Lua scripts, one name each, in the order they stand in the scripts. Every
//! step is marked in its script with a `-- model: <script>.<step>` comment, and the model takes
//! the step by the same name: `tests` read the markers and compare both lists, so a script
//! changed without its model (or the reverse) fails a test.

use std::sync::atomic::{AtomicU64, Ordering};

/// Declares [`Step`] with each step's name as its script marks it.
macro_rules! steps {
    ($($(#[doc = $doc:literal])* $step:ident => $name:literal,)*) => {
        /// One step of a ledger script, as the model takes it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Step {
            $($(#[doc = $doc])* $step,)*
        }

        impl Step {
            /// Every step, in the scripts' order (reserve.lua, settle.lua, unlock.lua).
            pub const ALL: &'static [Step] = &[$(Step::$step,)*];

            /// The step's marker name, `<script>.<step>`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Step::$step => $name,)*
                }
            }
        }
    };
}

steps! {
    /// No key record: refused.
    ReserveUnknownKey => "reserve.unknown_key",
    /// Neither the current secret nor the previous one within its overlap: refused.
    ReserveBadSecret => "reserve.bad_secret",
    /// Revoked (or retired for good): refused.
    ReserveRevoked => "reserve.revoked",
    /// Past its expiry: refused.
    ReserveExpired => "reserve.expired",
    /// Off the allowlist: refused.
    ReserveEndpoint => "reserve.endpoint",
    /// Mode "check": a write on a spent cap is refused, else admitted without a reservation.
    ReserveCheck => "reserve.check",
    /// An Idempotency-Key reused with another request: refused.
    ReserveIdemMismatch => "reserve.idem_mismatch",
    /// The earlier attempt is done: its answer is replayed.
    ReserveIdemReplay => "reserve.idem_replay",
    /// The earlier attempt is still pending: refused as in flight.
    ReserveIdemInFlight => "reserve.idem_in_flight",
    /// The earlier outcome is unknown on a vendor that does not deduplicate, or too long ago.
    ReserveIdemUnknownRefused => "reserve.idem_unknown_refused",
    /// A re-attempt over a lowered cap: refused.
    ReserveIdemReattemptCaps => "reserve.idem_reattempt_caps",
    /// A re-attempt: a reservation carrying the first attempt's amount, counting nothing new.
    ReserveIdemReattempt => "reserve.idem_reattempt",
    /// Over the per-call cap: refused.
    ReservePerCallCap => "reserve.per_call_cap",
    /// Over the key's daily or total cap: refused.
    ReserveKeyCaps => "reserve.key_caps",
    /// Over the policy's daily or total budget: refused.
    ReservePolicyBudgets => "reserve.policy_budgets",
    /// Granted: the estimate is counted and a reservation opened.
    ReserveGrant => "reserve.grant",
    /// The reservation was closed as unknown: a late "ok" counts what it shows above the estimate.
    SettleLate => "settle.late",
    /// The reservation is gone: nothing is counted again.
    SettleAlreadySettled => "settle.already_settled",
    /// The actual cost from the outcome (unknown keeps the estimate, not sent and refused are 0).
    SettleActual => "settle.actual",
    /// A re-attempt never settles below what it carried.
    SettleFloor => "settle.floor",
    /// The counters move by actual minus estimate (today only on the reservation's day).
    SettleAdjust => "settle.adjust",
    /// The vendor object's counted money grows by the actual.
    SettleObjects => "settle.objects",
    /// Refused by the vendor (not a re-attempt): the idempotency record is forgotten.
    SettleIdemForgetRefused => "settle.idem_forget_refused",
    /// Done: the answer is kept for replays.
    SettleIdemDone => "settle.idem_done",
    /// Never sent (not a re-attempt): the idempotency record is forgotten.
    SettleIdemForgetNotSent => "settle.idem_forget_not_sent",
    /// Unknown: the record says so, with the amount counted.
    SettleIdemUnknown => "settle.idem_unknown",
    /// Closed as unknown: its amount and day are kept for a late settle.
    SettleTombstone => "settle.tombstone",
    /// The reservation is closed.
    SettleClose => "settle.close",
    /// An object lock is released only by its holder.
    UnlockRelease => "unlock.release",
}

/// The steps the model has taken in this process, one bit each.
static TAKEN: AtomicU64 = AtomicU64::new(0);

/// Records that the model took `step`.
pub fn take(step: Step) {
    if let Some(i) = Step::ALL.iter().position(|s| *s == step) {
        TAKEN.fetch_or(1 << i, Ordering::Relaxed);
    }
}

/// The steps the model has taken in this process so far.
pub fn taken() -> Vec<Step> {
    let bits = TAKEN.load(Ordering::Relaxed);
    Step::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect()
}

/// The `-- model: <name>` markers of a script's text, in order.
pub fn markers(script: &str) -> Vec<&str> {
    script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-- model: "))
        .map(str::trim)
        .collect()
}
