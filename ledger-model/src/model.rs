//! The scripts as transitions: each of reserve.lua, settle.lua and unlock.lua mirrored step by
//! step ([`crate::steps`]) on the model's [`Redis`], and every action of the actors around them
//! (proxies, sweeper, operator, clock, vendor, Redis restarts), checked against the properties of
//! [`crate::check`].

use std::collections::BTreeMap;

use stateright::{Model, Property};

use crate::{
    check,
    steps::{Step, take},
    *,
};

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
