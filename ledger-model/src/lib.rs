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
pub mod steps;

use std::collections::BTreeMap;

use stateright::{Model, Property};

use crate::steps::{Step, take};

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

/// What reserve.lua returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Granted(u8),
    Reattempt(u8),
    Admitted,
    Refused,
    Replay,
    InFlight,
}

impl Ledger {
    fn call_of(&self, attempt: usize) -> &Call {
        &self.calls[attempt / ATTEMPTS]
    }

    /// reserve.lua, step for step.
    fn reserve(&self, r: &mut Redis, call_id: usize, check: bool, next_res: u8) -> Reply {
        let call = &self.calls[call_id];
        let rec = r.keys[call.key];
        if !rec.present {
            take(Step::ReserveUnknownKey);
            return Reply::Refused;
        }
        let secret_ok = rec.generation == 0 || (rec.generation == 1 && rec.previous_open);
        if !secret_ok {
            take(Step::ReserveBadSecret);
            return Reply::Refused;
        }
        if rec.revoked || rec.retired {
            take(Step::ReserveRevoked);
            return Reply::Refused;
        }
        if rec.expired {
            take(Step::ReserveExpired);
            return Reply::Refused;
        }
        if !call.allowed {
            take(Step::ReserveEndpoint);
            return Reply::Refused;
        }
        let (per_call, daily, total_cap) = rec.caps;
        let s = r.spend[call.key];
        let today = if s.day == r.day { s.today } else { 0 };
        let total = s.total;
        if check {
            take(Step::ReserveCheck);
            // Every modelled call is a write.
            if today >= daily || total >= total_cap {
                return Reply::Refused;
            }
            return Reply::Admitted;
        }
        if let Some(idem) = call.idem
            && let Some(d) = r.idem.get(&idem).copied()
        {
            if d.fingerprint != call.fingerprint {
                take(Step::ReserveIdemMismatch);
                return Reply::Refused;
            }
            match d.state {
                IdemState::Done => {
                    take(Step::ReserveIdemReplay);
                    return Reply::Replay;
                }
                IdemState::Pending => {
                    take(Step::ReserveIdemInFlight);
                    return Reply::InFlight;
                }
                IdemState::Unknown => {}
            }
            if call.vendor == Vendor::NoDedup || d.aged {
                take(Step::ReserveIdemUnknownRefused);
                return Reply::Refused;
            }
            if d.amount > per_call || today > daily || total > total_cap {
                take(Step::ReserveIdemReattemptCaps);
                return Reply::Refused;
            }
            take(Step::ReserveIdemReattempt);
            r.reservations.insert(
                next_res,
                Reservation {
                    key: call.key,
                    amount: d.amount,
                    day: d.day,
                    idem: Some(idem),
                    floor: true,
                    call: call_id,
                },
            );
            if let Some(rec) = r.idem.get_mut(&idem) {
                rec.state = IdemState::Pending;
                rec.res = next_res;
            }
            return Reply::Reattempt(next_res);
        }
        let estimate = call.amount;
        let over = |spent: u8, cap: u8| spent + estimate > cap || spent >= cap;
        if estimate > per_call {
            take(Step::ReservePerCallCap);
            return Reply::Refused;
        }
        if over(today, daily) || over(total, total_cap) {
            take(Step::ReserveKeyCaps);
            return Reply::Refused;
        }
        let p = r.policy;
        let p_today = if p.day == r.day { p.today } else { 0 };
        if over(p_today, self.budget.0) || over(p.total, self.budget.1) {
            take(Step::ReservePolicyBudgets);
            return Reply::Refused;
        }
        take(Step::ReserveGrant);
        r.spend[call.key] = Spend {
            day: r.day,
            today: today + estimate,
            total: total + estimate,
        };
        r.policy = Spend {
            day: r.day,
            today: p_today + estimate,
            total: p.total + estimate,
        };
        r.counted[call_id] += estimate;
        r.reservations.insert(
            next_res,
            Reservation {
                key: call.key,
                amount: estimate,
                day: r.day,
                idem: call.idem,
                floor: false,
                call: call_id,
            },
        );
        if let Some(idem) = call.idem {
            r.idem.insert(
                idem,
                IdemRecord {
                    state: IdemState::Pending,
                    fingerprint: call.fingerprint,
                    amount: estimate,
                    day: r.day,
                    aged: false,
                    res: next_res,
                    late: 0,
                },
            );
        }
        Reply::Granted(next_res)
    }

    /// settle.lua, step for step. `actual` is the vendor's cost for `Outcome::Ok`.
    /// `swept`: the sweeper closes it (only then can a late settle follow).
    fn settle(&self, r: &mut Redis, res: u8, outcome: Outcome, actual: u8, swept: bool) {
        let Some(v) = r.reservations.get(&res).copied() else {
            take(Step::SettleLate);
            if self.late_settle
                && outcome == Outcome::Ok
                && let Some(c) = r.closed_unknown.remove(&res)
            {
                // What is counted for the call now: the estimate kept, or what its record holds.
                let record = c.idem.and_then(|i| r.idem.get_mut(&i));
                let held = record.as_ref().map_or(c.amount, |d| d.amount);
                if actual > held {
                    let excess = actual - held;
                    // A re-attempt in flight or to come carries the whole actual, and does not add
                    // to the object what this settle adds.
                    if let Some(d) = record {
                        d.amount = actual;
                        d.late = actual;
                    }
                    r.objects[c.call] += actual;
                    for s in [&mut r.spend[c.key], &mut r.policy] {
                        s.total += excess;
                        if s.day == c.day {
                            s.today += excess;
                        }
                    }
                    r.counted[c.call] += excess;
                    return;
                }
            }
            take(Step::SettleAlreadySettled);
            return;
        };
        take(Step::SettleActual);
        let mut v = v;
        let mut added_late = 0;
        if v.floor
            && let Some(d) = v.idem.and_then(|i| r.idem.get(&i))
            && d.res == res
        {
            v.amount = v.amount.max(d.amount);
            added_late = d.late;
        }
        let mut actual = match outcome {
            Outcome::Unknown => v.amount,
            Outcome::NotSent | Outcome::VendorError => 0,
            Outcome::Ok => actual,
        };
        if v.floor && actual < v.amount {
            take(Step::SettleFloor);
            actual = v.amount;
        }
        take(Step::SettleAdjust);
        let delta = i16::from(actual) - i16::from(v.amount);
        let adjust = |s: &mut Spend| {
            s.total = clamp(i16::from(s.total) + delta);
            if s.day == v.day {
                s.today = clamp(i16::from(s.today) + delta);
            }
        };
        adjust(&mut r.spend[v.key]);
        adjust(&mut r.policy);
        r.counted[v.call] = clamp(i16::from(r.counted[v.call]) + delta);
        take(Step::SettleObjects);
        // The proxy names the object only for an answer it costed ("ok").
        if outcome == Outcome::Ok && actual > added_late {
            r.objects[v.call] += actual - added_late;
        }
        if let Some(idem) = v.idem {
            match outcome {
                Outcome::VendorError if !v.floor => {
                    take(Step::SettleIdemForgetRefused);
                    r.idem.remove(&idem);
                }
                Outcome::Ok | Outcome::VendorError => {
                    take(Step::SettleIdemDone);
                    if let Some(d) = r.idem.get_mut(&idem) {
                        d.state = IdemState::Done;
                        d.amount = actual;
                    }
                }
                Outcome::NotSent if !v.floor => {
                    take(Step::SettleIdemForgetNotSent);
                    r.idem.remove(&idem);
                }
                _ => {
                    take(Step::SettleIdemUnknown);
                    if let Some(d) = r.idem.get_mut(&idem) {
                        d.state = IdemState::Unknown;
                        d.amount = v.amount;
                    }
                }
            }
        }
        take(Step::SettleTombstone);
        if outcome == Outcome::Unknown && swept {
            r.closed_unknown.insert(
                res,
                Closed {
                    key: v.key,
                    amount: actual,
                    day: v.day,
                    idem: v.idem,
                    call: v.call,
                },
            );
        }
        take(Step::SettleClose);
        r.reservations.remove(&res);
    }

    /// A write the operator or a script made: with `Always`, it is durable at once.
    fn written(&self, s: &mut State) {
        if self.durability == Durability::Always {
            s.durable = s.redis.clone();
        }
    }

    fn initial_redis(&self) -> Redis {
        let mut keys = [KeyRecord {
            present: true,
            generation: 0,
            previous_open: false,
            revoked: false,
            retired: false,
            expired: false,
            caps: (0, 0, 0),
        }; KEYS];
        for (k, rec) in keys.iter_mut().enumerate() {
            rec.caps = self.caps[k];
            rec.present = self.present[k];
        }
        Redis {
            day: 0,
            keys,
            spend: [Spend::default(); KEYS],
            policy: Spend::default(),
            reservations: BTreeMap::new(),
            idem: BTreeMap::new(),
            closed_unknown: BTreeMap::new(),
            counted: vec![0; self.calls.len()],
            objects: vec![0; self.calls.len()],
        }
    }
}

fn clamp(n: i16) -> u8 {
    u8::try_from(n.max(0)).unwrap_or(u8::MAX)
}

impl Model for Ledger {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let redis = self.initial_redis();
        vec![State {
            durable: redis.clone(),
            redis,
            attempts: vec![Phase::Idle; self.calls.len() * ATTEMPTS],
            moved: [[0; 2]; KEYS],
            moved_by_call: vec![0; self.calls.len()],
            overshot: [0; KEYS],
            total_at_lowering: None,
            forwarded_over_per_call: false,
            vendor_seen: Vec::new(),
            spec_revoked: false,
            revoke_acked: false,
            crashed: [false; PROXIES],
            done: [false; 4],
            restarted: false,
            next_res: 0,
            forwarded_after_revoke: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        for (a, phase) in s.attempts.iter().enumerate() {
            let call = self.call_of(a);
            // A retry starts once the first attempt has (the caller hung up or timed out).
            let may_start = a % ATTEMPTS == 0 || s.attempts[a - 1] != Phase::Idle;
            match phase {
                Phase::Idle if may_start => actions.push(if call.prefetch {
                    Action::Check(a)
                } else {
                    Action::Reserve(a)
                }),
                Phase::Checked => actions.push(Action::Reserve(a)),
                Phase::Reserved { .. } => {
                    for does in [
                        VendorDoes::ActsAndAnswers,
                        VendorDoes::Refuses,
                        VendorDoes::ActsSilently,
                        VendorDoes::LosesIt,
                        VendorDoes::Unreachable,
                    ] {
                        actions.push(Action::Forward(a, does));
                    }
                    if self.overshoot {
                        actions.push(Action::Forward(a, VendorDoes::ActsMore));
                    }
                    if s.spec_revoked && call.key == 0 {
                        actions.push(Action::Release(a));
                    }
                }
                Phase::Sent { .. } => actions.push(Action::Settle(a)),
                _ => {}
            }
        }
        for res in s.redis.reservations.keys() {
            actions.push(Action::Sweep(*res));
        }
        let f = self.faults;
        if f.crashes {
            for p in 0..PROXIES {
                if !s.crashed[p] {
                    actions.push(Action::Crash(p));
                }
            }
        }
        if f.revoke && !s.spec_revoked {
            actions.push(Action::UserRevokes);
        }
        if f.revoke && s.spec_revoked && !s.revoke_acked {
            actions.push(Action::OperatorRevokes);
        }
        if f.lower_caps && !s.done[0] {
            actions.push(Action::LowerCaps);
        }
        if f.rotation && !s.done[1] {
            actions.push(Action::Rotate);
        }
        if f.rotation && s.done[1] && !s.done[2] {
            actions.push(Action::EndOverlap);
        }
        if f.time && !s.done[3] {
            actions.push(Action::Expire);
        }
        if f.time && s.redis.day == 0 {
            actions.push(Action::NextDay);
        }
        if f.aging {
            for (idem, d) in &s.redis.idem {
                if !d.aged {
                    actions.push(Action::Age(*idem));
                }
            }
        }
        if f.restart && self.durability == Durability::EverySec && s.redis != s.durable {
            actions.push(Action::Fsync);
        }
        if f.restart && !s.restarted && s.redis != s.durable {
            actions.push(Action::Restart);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Check(a) => {
                let reply = self.reserve(&mut s.redis, a / ATTEMPTS, true, s.next_res);
                s.attempts[a] = if reply == Reply::Admitted {
                    Phase::Checked
                } else {
                    Phase::Done
                };
            }
            Action::Reserve(a) => {
                let call = *self.call_of(a);
                let reply = self.reserve(&mut s.redis, a / ATTEMPTS, false, s.next_res);
                match reply {
                    Reply::Granted(res) | Reply::Reattempt(res) => {
                        s.next_res += 1;
                        let after_revoke = s.revoke_acked && call.key == 0;
                        let day = s.redis.reservations.get(&res).map_or(0, |r| r.day);
                        s.attempts[a] = Phase::Reserved {
                            res,
                            day,
                            after_revoke,
                        };
                    }
                    _ => s.attempts[a] = Phase::Done,
                }
                self.written(&mut s);
            }
            Action::Forward(a, does) => {
                let Phase::Reserved {
                    res,
                    day,
                    after_revoke,
                } = s.attempts[a]
                else {
                    return None;
                };
                let call = *self.call_of(a);
                if after_revoke {
                    s.forwarded_after_revoke = true;
                }
                if call.amount > self.caps[call.key].0 {
                    s.forwarded_over_per_call = true;
                }
                // A deduplicating vendor answers a repeated key with its first answer.
                let first = call
                    .idem
                    .filter(|_| call.vendor == Vendor::Dedup)
                    .and_then(|i| s.vendor_seen.iter().find(|(k, _)| *k == i).map(|(_, c)| *c));
                let replayed = first.is_some();
                let charged = match (first, does) {
                    (Some(c), _) => c,
                    (None, VendorDoes::ActsMore) => call.amount + 1,
                    (None, _) => call.amount,
                };
                let acts = matches!(
                    does,
                    VendorDoes::ActsAndAnswers | VendorDoes::ActsMore | VendorDoes::ActsSilently
                );
                if acts && !replayed {
                    s.moved[call.key][usize::from(day)] += charged;
                    s.moved_by_call[a / ATTEMPTS] += charged;
                    s.overshot[call.key] += charged - call.amount;
                    if let Some(i) = call.idem
                        && call.vendor == Vendor::Dedup
                    {
                        s.vendor_seen.push((i, charged));
                        s.vendor_seen.sort_unstable();
                    }
                }
                let outcome = match does {
                    VendorDoes::ActsAndAnswers | VendorDoes::ActsMore => Outcome::Ok,
                    VendorDoes::Refuses if replayed => Outcome::Ok,
                    VendorDoes::Refuses => Outcome::VendorError,
                    VendorDoes::ActsSilently | VendorDoes::LosesIt => Outcome::Unknown,
                    VendorDoes::Unreachable => Outcome::NotSent,
                };
                s.attempts[a] = Phase::Sent {
                    res,
                    outcome,
                    actual: charged,
                };
            }
            Action::Release(a) => {
                let Phase::Reserved { res, .. } = s.attempts[a] else {
                    return None;
                };
                self.settle(&mut s.redis, res, Outcome::NotSent, 0, false);
                s.attempts[a] = Phase::Done;
                self.written(&mut s);
            }
            Action::Settle(a) => {
                let Phase::Sent {
                    res,
                    outcome,
                    actual,
                } = s.attempts[a]
                else {
                    return None;
                };
                self.settle(&mut s.redis, res, outcome, actual, false);
                s.attempts[a] = Phase::Done;
                self.written(&mut s);
            }
            Action::Sweep(res) => {
                self.settle(&mut s.redis, res, Outcome::Unknown, 0, true);
                self.written(&mut s);
            }
            Action::Crash(p) => {
                s.crashed[p] = true;
                for (a, phase) in s.attempts.iter_mut().enumerate() {
                    if a % ATTEMPTS == p
                        && matches!(
                            phase,
                            Phase::Checked | Phase::Reserved { .. } | Phase::Sent { .. }
                        )
                    {
                        *phase = Phase::Dead;
                    }
                }
            }
            Action::UserRevokes => s.spec_revoked = true,
            Action::OperatorRevokes => {
                s.redis.keys[0].revoked = true;
                s.redis.keys[0].retired = true;
                self.written(&mut s);
                s.revoke_acked = true;
            }
            Action::LowerCaps => {
                s.done[0] = true;
                s.total_at_lowering = Some(s.redis.spend[0].total);
                s.redis.keys[0].caps = self.lowered;
                self.written(&mut s);
            }
            Action::Rotate => {
                s.done[1] = true;
                s.redis.keys[0].generation = 1;
                s.redis.keys[0].previous_open = true;
                self.written(&mut s);
            }
            Action::EndOverlap => {
                s.done[2] = true;
                s.redis.keys[0].previous_open = false;
                self.written(&mut s);
            }
            Action::Expire => {
                s.done[3] = true;
                s.redis.keys[0].expired = true;
                self.written(&mut s);
            }
            Action::NextDay => {
                s.redis.day = 1;
                s.durable.day = 1;
            }
            Action::Age(idem) => {
                if let Some(d) = s.redis.idem.get_mut(&idem) {
                    d.aged = true;
                }
                if let Some(d) = s.durable.idem.get_mut(&idem) {
                    d.aged = true;
                }
            }
            Action::Fsync => s.durable = s.redis.clone(),
            Action::Restart => {
                s.restarted = true;
                let day = s.redis.day;
                s.redis = s.durable.clone();
                s.redis.day = day;
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        check::properties()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check, steps};

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
