//! The promises, as properties over every reachable state, and the scenarios they are checked in.

use std::time::{Duration, Instant};

use stateright::{Checker, Model, Property};

use crate::{Call, Durability, Faults, KEYS, Ledger, Phase, State, Vendor};

/// The properties every scenario must keep.
pub fn properties() -> Vec<Property<Ledger>> {
    vec![
        Property::always("money moved never exceeds the caps", within_caps),
        Property::always("money moved is always recorded", recorded),
        Property::always("no call is counted twice", counted_once),
        Property::always(
            "no call granted after a revoke is acknowledged is forwarded",
            |_, s: &State| !s.forwarded_after_revoke,
        ),
        Property::always(
            "the vendor acts at most once per Idempotency-Key",
            acts_once,
        ),
        Property::always(
            "a vendor object never holds more than the vendor moved for it",
            |_, s: &State| {
                s.redis
                    .objects
                    .iter()
                    .zip(&s.moved_by_call)
                    .all(|(counted, moved)| counted <= moved)
            },
        ),
        Property::eventually("every reservation is closed", |_, s: &State| {
            s.redis.reservations.is_empty()
        }),
        // Not promises: proof that the scenarios reach what they are for.
        Property::sometimes("the vendor moves money", |_, s: &State| {
            s.moved.iter().flatten().any(|m| *m > 0)
        }),
        Property::sometimes("every attempt finishes", |_, s: &State| {
            s.attempts
                .iter()
                .all(|p| matches!(p, Phase::Done | Phase::Dead))
        }),
    ]
}

/// Per key and per day, and per policy, what the vendor moved is within the caps and budgets the
/// model was given (not the records the scripts read), beyond only what the vendor charged over
/// its own estimates (counted in full, by design). No call over the per-call cap goes out, and
/// after the caps are lowered a key moves at most the lowered cap or what it had counted then.
fn within_caps(m: &Ledger, s: &State) -> bool {
    let mut policy_days = [0u16; 2];
    let over: u16 = s.overshot.iter().map(|o| u16::from(*o)).sum();
    for k in 0..KEYS {
        let (_, daily, total) = m.caps[k];
        let (moved, extra) = (s.moved[k], u16::from(s.overshot[k]));
        let sum = u16::from(moved[0]) + u16::from(moved[1]);
        if moved
            .iter()
            .any(|d| u16::from(*d) > u16::from(daily) + extra)
            || sum > u16::from(total) + extra
        {
            return false;
        }
        for (d, day) in policy_days.iter_mut().enumerate() {
            *day += u16::from(moved[d]);
        }
    }
    let lowered_held = s.total_at_lowering.is_none_or(|at| {
        let moved = u16::from(s.moved[0][0]) + u16::from(s.moved[0][1]);
        moved <= u16::from(m.lowered.2.max(at)) + u16::from(s.overshot[0])
    });
    !s.forwarded_over_per_call
        && lowered_held
        && policy_days
            .iter()
            .all(|d| *d <= u16::from(m.budget.0) + over)
        && policy_days.iter().sum::<u16>() <= u16::from(m.budget.1) + over
}

/// What the vendor moved for a key is at most what its counters hold, and the policy's too:
/// always, and with a vendor that charges above its estimate, once no attempt is between its
/// forward and its settle (the excess is known only from the answer).
fn recorded(m: &Ledger, s: &State) -> bool {
    if m.overshoot
        && s.attempts
            .iter()
            .any(|p| matches!(p, Phase::Reserved { .. } | Phase::Sent { .. }))
    {
        return true;
    }
    let mut all = 0u16;
    for k in 0..KEYS {
        let moved = u16::from(s.moved[k][0]) + u16::from(s.moved[k][1]);
        if moved > u16::from(s.redis.spend[k].total) {
            return false;
        }
        all += moved;
    }
    all <= u16::from(s.redis.policy.total)
}

/// A call with an Idempotency-Key holds at most its amount in the counters (and what the vendor
/// showed above it), and the key and policy counters hold exactly what the calls do.
fn counted_once(m: &Ledger, s: &State) -> bool {
    let slack = u8::from(m.overshoot);
    let once = m
        .calls
        .iter()
        .zip(&s.redis.counted)
        .all(|(c, n)| c.idem.is_none() || *n <= c.amount + slack);
    let per_key = (0..KEYS).all(|k| {
        let calls: u16 = m
            .calls
            .iter()
            .zip(&s.redis.counted)
            .filter(|(c, _)| c.key == k)
            .map(|(_, n)| u16::from(*n))
            .sum();
        calls == u16::from(s.redis.spend[k].total)
    });
    let policy: u16 = s.redis.counted.iter().map(|n| u16::from(*n)).sum();
    once && per_key && policy == u16::from(s.redis.policy.total)
}

/// What the vendor moved for a call with an Idempotency-Key, over all its attempts, is one
/// call's charge: a re-attempt never makes the vendor act twice (Twilio, which would, is refused
/// one).
fn acts_once(m: &Ledger, s: &State) -> bool {
    let slack = u8::from(m.overshoot);
    m.calls
        .iter()
        .zip(&s.moved_by_call)
        .all(|(c, moved)| c.idem.is_none() || *moved <= c.amount + slack)
}

const NONE: Faults = Faults {
    crashes: false,
    revoke: false,
    lower_caps: false,
    rotation: false,
    time: false,
    aging: false,
    restart: false,
};

/// A Stripe call with an Idempotency-Key.
const STRIPE_IDEM: Call = Call {
    key: 0,
    amount: 2,
    idem: Some(0),
    fingerprint: 0,
    vendor: Vendor::Dedup,
    prefetch: false,
    allowed: true,
};
/// A Stripe call without one (each attempt is a new call).
const STRIPE_PLAIN: Call = Call {
    idem: None,
    ..STRIPE_IDEM
};
/// A Twilio call with an Idempotency-Key, on the second key.
const TWILIO_IDEM: Call = Call {
    key: 1,
    amount: 2,
    idem: Some(1),
    fingerprint: 1,
    vendor: Vendor::NoDedup,
    prefetch: false,
    allowed: true,
};

fn ledger(calls: Vec<Call>, faults: Faults) -> Ledger {
    Ledger {
        calls,
        // Each key fits one call, the policy one call and a half: the caps bind on every retry.
        caps: [(2, 2, 2), (2, 2, 2)],
        lowered: (2, 1, 1),
        budget: (3, 3),
        present: [true; KEYS],
        overshoot: false,
        late_settle: true,
        durability: Durability::Always,
        faults,
    }
}

/// The scenarios: each explores every order of its calls under some of the faults.
pub fn scenarios() -> Vec<(&'static str, Ledger)> {
    vec![
        (
            "retries on the other replica, replica crashes, the sweeper",
            ledger(
                vec![STRIPE_IDEM, TWILIO_IDEM],
                Faults {
                    crashes: true,
                    ..NONE
                },
            ),
        ),
        (
            "three calls and their retries, replica crashes, the sweeper",
            ledger(
                vec![STRIPE_IDEM, STRIPE_PLAIN, TWILIO_IDEM],
                Faults {
                    crashes: true,
                    ..NONE
                },
            ),
        ),
        (
            "two calls and their retries on one key, one without an Idempotency-Key",
            Ledger {
                caps: [(2, 4, 4), (2, 2, 2)],
                ..ledger(vec![STRIPE_IDEM, STRIPE_PLAIN], NONE)
            },
        ),
        (
            "a daily cap below the total, the day rolling over between reserve and settle",
            Ledger {
                caps: [(2, 2, 4), (2, 2, 2)],
                budget: (3, 6),
                ..ledger(
                    vec![STRIPE_IDEM, STRIPE_PLAIN],
                    Faults {
                        crashes: true,
                        time: true,
                        ..NONE
                    },
                )
            },
        ),
        (
            "a vendor that charges more than estimated, a stalled replica swept",
            overcharged(true),
        ),
        (
            "revocation and lowered caps, with replica crashes",
            ledger(
                vec![STRIPE_IDEM, STRIPE_PLAIN, TWILIO_IDEM],
                Faults {
                    crashes: true,
                    revoke: true,
                    lower_caps: true,
                    ..NONE
                },
            ),
        ),
        (
            "rotation, expiry, day rollover, the re-attempt window, with replica crashes",
            ledger(
                vec![STRIPE_IDEM, TWILIO_IDEM],
                Faults {
                    crashes: true,
                    rotation: true,
                    time: true,
                    aging: true,
                    ..NONE
                },
            ),
        ),
        (
            "a reused Idempotency-Key, a checked prefetch, an endpoint off the list, a deleted key",
            Ledger {
                present: [true, false],
                ..ledger(
                    vec![
                        STRIPE_IDEM,
                        Call {
                            amount: 1,
                            fingerprint: 9,
                            ..STRIPE_IDEM
                        },
                        // Checked, then over the per-call cap once costed.
                        Call {
                            amount: 3,
                            prefetch: true,
                            ..STRIPE_PLAIN
                        },
                        Call {
                            allowed: false,
                            ..STRIPE_PLAIN
                        },
                        TWILIO_IDEM,
                    ],
                    NONE,
                )
            },
        ),
    ]
}

/// The vendor charges one unit more than estimated, and the sweeper may close a stalled
/// replica's reservation before its settle. `late_settle` false is settle.lua before
/// `settle.late`: the checker's second counterexample.
pub fn overcharged(late_settle: bool) -> Ledger {
    Ledger {
        overshoot: true,
        late_settle,
        ..ledger(vec![STRIPE_IDEM, TWILIO_IDEM], NONE)
    }
}

/// What the checker does with the scenario that loses the last second of writes.
pub fn everysec() -> Ledger {
    Ledger {
        durability: Durability::EverySec,
        ..ledger(
            vec![STRIPE_IDEM, TWILIO_IDEM],
            Faults {
                restart: true,
                revoke: true,
                ..NONE
            },
        )
    }
}

/// One scenario's run.
pub struct Run {
    /// States generated.
    pub states: usize,
    /// Distinct states.
    pub unique: usize,
    /// The longest path.
    pub depth: usize,
    /// How long it took.
    pub elapsed: Duration,
    /// Properties with a counterexample (or a `sometimes` without an example), with the path.
    pub failed: Vec<(&'static str, String)>,
}

/// Explores every reachable state of `model`, breadth first.
pub fn run(model: Ledger) -> Run {
    let started = Instant::now();
    let props: Vec<(&'static str, stateright::Expectation)> = model
        .properties()
        .into_iter()
        .map(|p| (p.name, p.expectation))
        .collect();
    let checker = model.checker().threads(2).spawn_bfs().join();
    let mut failed = Vec::new();
    for (name, expectation) in props {
        let found = checker.discovery(name);
        let bad = match expectation {
            stateright::Expectation::Sometimes => found.is_none(),
            _ => found.is_some(),
        };
        if bad {
            let path = found.map_or_else(String::new, |p| {
                p.into_actions()
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect::<Vec<_>>()
                    .join(" → ")
            });
            failed.push((name, path));
        }
    }
    Run {
        states: checker.state_count(),
        unique: checker.unique_state_count(),
        depth: checker.max_depth(),
        elapsed: started.elapsed(),
        failed,
    }
}
