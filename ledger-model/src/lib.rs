//! keybrake-ledger-model: the ledger's accounting protocol as a state machine, checked over every
//! reachable state by `stateright`.
//!
//! Actors: proxy replicas that check, reserve, forward and settle attempts of calls (a retry with
//! the same Idempotency-Key lands on the other replica, while the first may still be running);
//! the sweeper, which may close any open reservation at any time (a replica stalled past the
//! deadline is allowed for); the operator, which revokes, lowers caps and rotates key records; the
//! clock (expiry, the UTC day, the re-attempt window); Redis, which may restart from
//! its last fsync; and the vendor, which acts or not, answers or times out, and deduplicates on
//! the Idempotency-Key (Stripe, Resend) or not (Twilio).
//!
//! Redis is [`Redis`]: each script runs as one atomic transition that mirrors its Lua step by step
//! ([`steps`]). Money is in whole units; the bounds are small on purpose (the checker explores
//! every order of every action within them).

pub mod check;
mod model;
pub mod steps;

use std::collections::BTreeMap;

/// Keys in the model.
pub const KEYS: usize = 2;
/// Proxy replicas in the model: attempt 0 of a call runs on replica 0, its retry on replica 1.
pub const PROXIES: usize = 2;
/// Attempts per call: the first and one retry.
pub const ATTEMPTS: usize = 2;

/// How the vendor treats a repeated Idempotency-Key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// Stripe and Resend: a repeated key returns the first answer and acts once.
    Dedup,
    /// Twilio: every request acts.
    NoDedup,
}

/// One call a workflow makes (and may retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Call {
    /// Which key it is made with.
    pub key: usize,
    /// Its estimated (and actual) cost.
    pub amount: u8,
    /// Its Idempotency-Key, if any (calls sharing one with another fingerprint are mismatches).
    pub idem: Option<u8>,
    /// Its request fingerprint (what a reused Idempotency-Key must match).
    pub fingerprint: u8,
    /// The vendor.
    pub vendor: Vendor,
    /// Whether the proxy checks the key before reading a vendor object to cost it.
    pub prefetch: bool,
    /// Whether the endpoint is on the key's allowlist.
    pub allowed: bool,
}

/// How durable a Redis write is when the script returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// `appendfsync always` (or a replica acknowledged it): a restart loses nothing.
    Always,
    /// `appendfsync everysec`: a restart loses what was not fsynced yet.
    EverySec,
}

/// Which faults and operator actions a run explores (each adds states; runs split them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Faults {
    /// Replicas may crash (once each), abandoning their attempts.
    pub crashes: bool,
    /// The operator may revoke key 0.
    pub revoke: bool,
    /// The operator may lower key 0's caps below what it has spent.
    pub lower_caps: bool,
    /// The operator may rotate key 0, and later end the overlap.
    pub rotation: bool,
    /// The UTC day may roll over once, and key 0 may expire.
    pub time: bool,
    /// The re-attempt window of an Idempotency-Key may pass.
    pub aging: bool,
    /// Redis may restart (once), from its last fsync.
    pub restart: bool,
}

/// A model: the calls, the caps, how durable Redis is, and the faults explored.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// The calls workflows make.
    pub calls: Vec<Call>,
    /// Per key: per-call cap, daily cap, total cap.
    pub caps: [(u8, u8, u8); KEYS],
    /// The caps the operator lowers key 0 to.
    pub lowered: (u8, u8, u8),
    /// The policy's daily and total budget.
    pub budget: (u8, u8),
    /// Which keys have a record (a deleted key has none).
    pub present: [bool; KEYS],
    /// The vendor may charge one unit more than the estimate (its answer shows it).
    pub overshoot: bool,
    /// settle.lua counts a late "ok" over a reservation closed as unknown (`settle.late`);
    /// false models the script before that step, to keep its counterexample.
    pub late_settle: bool,
    /// Redis durability.
    pub durability: Durability,
    /// The faults explored.
    pub faults: Faults,
}

/// A key record, as the operator writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyRecord {
    /// The record exists.
    pub present: bool,
    /// The current secret's generation (attempts present generation 0).
    pub generation: u8,
    /// The previous secret is still within its overlap.
    pub previous_open: bool,
    /// `revoked`.
    pub revoked: bool,
    /// `retired`: set by a revoke, never cleared.
    pub retired: bool,
    /// Past `expires_at_ms`.
    pub expired: bool,
    /// Per-call, daily and total caps.
    pub caps: (u8, u8, u8),
}

/// A spend hash: the day of `today`, today, total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Spend {
    /// The day `today` belongs to.
    pub day: u8,
    /// Spent on that day.
    pub today: u8,
    /// Spent in all.
    pub total: u8,
}

/// An open reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// The key.
    pub key: usize,
    /// What it counts.
    pub amount: u8,
    /// The day it counts on.
    pub day: u8,
    /// Its Idempotency-Key record, if any.
    pub idem: Option<u8>,
    /// A re-attempt: never settled below its amount.
    pub floor: bool,
    /// Ghost: which call it belongs to (the script knows it by method and path).
    pub call: usize,
}

/// An Idempotency-Key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdemState {
    /// An attempt holds it.
    Pending,
    /// Its answer is kept.
    Done,
    /// Its outcome is unknown; its amount stays counted.
    Unknown,
}

/// An Idempotency-Key record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdemRecord {
    /// Its state.
    pub state: IdemState,
    /// The fingerprint of the request that made it.
    pub fingerprint: u8,
    /// The amount counted for it.
    pub amount: u8,
    /// The day it counts on.
    pub day: u8,
    /// Its re-attempt window has passed.
    pub aged: bool,
    /// The reservation of its latest attempt.
    pub res: u8,
    /// What a late settle counted and added to the vendor object (`late`).
    pub late: u8,
}

/// A reservation closed as unknown, kept for a late settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Closed {
    /// The key.
    pub key: usize,
    /// What stayed counted.
    pub amount: u8,
    /// The day it counts on.
    pub day: u8,
    /// Its Idempotency-Key record, if any.
    pub idem: Option<u8>,
    /// Ghost: the call.
    pub call: usize,
}

/// Everything Redis holds for one policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Redis {
    /// The clock's UTC day.
    pub day: u8,
    /// Key records.
    pub keys: [KeyRecord; KEYS],
    /// Key spend.
    pub spend: [Spend; KEYS],
    /// Policy spend.
    pub policy: Spend,
    /// Open reservations by id.
    pub reservations: BTreeMap<u8, Reservation>,
    /// Idempotency records by key.
    pub idem: BTreeMap<u8, IdemRecord>,
    /// Reservations closed as unknown, by id: key, amount, day, and (ghost) the call
    /// (`settle.tombstone`).
    pub closed_unknown: BTreeMap<u8, Closed>,
    /// Ghost: what the counters hold for each call (for "counted once").
    pub counted: Vec<u8>,
    /// What the key has counted for each call's vendor object (`objects`, which discounts later
    /// calls on the same object).
    pub objects: Vec<u8>,
}

/// Where one attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Not started.
    Idle,
    /// Checked (a prefetch call), about to reserve.
    Checked,
    /// Holds reservation `res`; `after_revoke` if it was granted after a revoke was acknowledged.
    Reserved {
        /// The reservation.
        res: u8,
        /// The day its money counts on.
        day: u8,
        /// Ghost: granted after the key's revoke was acknowledged.
        after_revoke: bool,
    },
    /// Forwarded; the proxy saw `outcome` with cost `actual` and is about to settle.
    Sent {
        /// The reservation.
        res: u8,
        /// What the proxy saw.
        outcome: Outcome,
        /// The cost the vendor's answer shows.
        actual: u8,
    },
    /// Finished (answered, refused or replayed).
    Done,
    /// Its replica crashed.
    Dead,
}

/// What the proxy saw of a forward, as it settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The vendor did it (actual = amount).
    Ok,
    /// The vendor refused; nothing moved.
    VendorError,
    /// Never reached the vendor.
    NotSent,
    /// Sent; no answer.
    Unknown,
}

/// What the vendor does with a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VendorDoes {
    /// Acts and answers.
    ActsAndAnswers,
    /// Acts, charges one unit more than the estimate, and answers so.
    ActsMore,
    /// Refuses (4xx).
    Refuses,
    /// Acts, but the answer is lost (timeout after acting).
    ActsSilently,
    /// Never gets it, and the proxy cannot tell (timeout before acting).
    LosesIt,
    /// The connection is refused.
    Unreachable,
}

/// The whole system.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// Redis now.
    pub redis: Redis,
    /// Redis as of its last fsync (what a restart returns to).
    pub durable: Redis,
    /// Attempts: call `c`, attempt `a` at `c * ATTEMPTS + a`.
    pub attempts: Vec<Phase>,
    /// What the vendor moved, per key and per day the money was counted on.
    pub moved: [[u8; 2]; KEYS],
    /// Ghost: what the vendor moved for each call, all attempts together.
    pub moved_by_call: Vec<u8>,
    /// Ghost: what the vendor charged beyond the estimates, per key.
    pub overshot: [u8; KEYS],
    /// Ghost: key 0's counted total when the operator lowered its caps.
    pub total_at_lowering: Option<u8>,
    /// Ghost: a forward of a call over the per-call cap.
    pub forwarded_over_per_call: bool,
    /// Idempotency-Keys the vendor has acted on (for deduplicating vendors).
    pub vendor_seen: Vec<(u8, u8)>,
    /// The user set `spec.revoked` on key 0 (the proxies' watch may see it).
    pub spec_revoked: bool,
    /// The operator acknowledged the revoke (status Revoked), after writing it to Redis.
    pub revoke_acked: bool,
    /// Replicas that crashed (each once).
    pub crashed: [bool; PROXIES],
    /// Operator actions taken (each at most once): lower caps, rotate, end overlap, expire.
    pub done: [bool; 4],
    /// Redis restarted.
    pub restarted: bool,
    /// The next reservation id.
    pub next_res: u8,
    /// Ghost: an attempt granted after the revoke was acknowledged was forwarded.
    pub forwarded_after_revoke: bool,
}

/// A transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A prefetch call's replica runs reserve.lua in mode "check".
    Check(usize),
    /// A replica runs reserve.lua for an attempt.
    Reserve(usize),
    /// A replica forwards an attempt; the vendor does what it does.
    Forward(usize, VendorDoes),
    /// A replica's watch saw the revoke after the reservation: it releases it (not sent).
    Release(usize),
    /// A replica runs settle.lua for an attempt.
    Settle(usize),
    /// The sweeper closes a reservation as unknown.
    Sweep(u8),
    /// A replica crashes.
    Crash(usize),
    /// The user revokes key 0.
    UserRevokes,
    /// The operator writes the revoke to Redis and acknowledges it.
    OperatorRevokes,
    /// The operator lowers key 0's caps.
    LowerCaps,
    /// The operator rotates key 0.
    Rotate,
    /// Key 0's overlap ends.
    EndOverlap,
    /// Key 0 expires.
    Expire,
    /// The UTC day rolls over.
    NextDay,
    /// An Idempotency-Key's re-attempt window passes.
    Age(u8),
    /// Redis fsyncs its AOF.
    Fsync,
    /// Redis restarts from its AOF.
    Restart,
}

#[cfg(test)]
mod tests {
    use crate::{check, steps, steps::Step};

    const SCRIPTS: [(&str, &str); 3] = [
        ("reserve", include_str!("../../ledger/lua/reserve.lua")),
        ("settle", include_str!("../../ledger/lua/settle.lua")),
        ("unlock", include_str!("../../ledger/lua/unlock.lua")),
    ];

    /// Steps the model names but does not take: object locks are not modelled yet.
    const NAMED_ONLY: &[Step] = &[Step::UnlockRelease];

    /// One test, so the steps taken are this test's alone (the record is per process).
    #[test]
    fn every_interleaving_keeps_the_promises() {
        println!(
            "{:<88} {:>10} {:>10} {:>6} {:>8}",
            "scenario", "states", "unique", "depth", "seconds"
        );
        for (name, model) in check::scenarios() {
            let run = check::run(model);
            println!(
                "{name:<88} {:>10} {:>10} {:>6} {:>8.1}",
                run.states,
                run.unique,
                run.depth,
                run.elapsed.as_secs_f64()
            );
            assert!(run.failed.is_empty(), "{name}: {:#?}", run.failed);
        }
        // Every step of every script is taken in some scenario: none is modelled dead.
        let taken = steps::taken();
        let missed: Vec<_> = Step::ALL
            .iter()
            .filter(|s| !taken.contains(s) && !NAMED_ONLY.contains(s))
            .map(|s| s.name())
            .collect();
        assert!(missed.is_empty(), "steps no scenario takes: {missed:?}");

        // The counterexamples found on the way stay found: the model still sees what the fixes
        // are for.
        for (what, model, broken) in [
            (
                "appendfsync everysec",
                check::everysec(),
                &[
                    "money moved is always recorded",
                    "no call granted after a revoke is acknowledged is forwarded",
                ][..],
            ),
            (
                "settle.lua without settle.late",
                check::overcharged(false),
                &["money moved is always recorded"][..],
            ),
        ] {
            let run = check::run(model);
            for (name, path) in &run.failed {
                println!("{what}: {name}:\n  {path}");
            }
            for b in broken {
                assert!(
                    run.failed.iter().any(|(n, _)| n == b),
                    "{what}: no counterexample to {b:?} any more"
                );
            }
        }
    }

    #[test]
    fn the_scripts_and_the_model_name_the_same_steps_in_the_same_order() {
        for (script, text) in SCRIPTS {
            let marked = steps::markers(text);
            let modelled: Vec<_> = Step::ALL
                .iter()
                .map(|s| s.name())
                .filter(|n| n.starts_with(&format!("{script}.")))
                .collect();
            assert_eq!(marked, modelled, "{script}.lua's `-- model:` markers");
        }
    }
}
