//! The reserve and settle scripts against a real Redis: every refusal rule, caps at the exact
//! boundary, expiry at the exact instant, day rollover, policy budgets shared by keys,
//! idempotency, exactly-once settle, the sweeper, 500 concurrent callers, and Redis Cluster.

use anyhow::{Context, Result};
use keybrake_crds::{EndpointPattern, Usd, Vendor};
use keybrake_ledger::{
    Admission, KeyId, Ledger, LedgerConfig, Outcome, PolicyRecord, PolicyTag, ReserveRequest, Rule,
    SettleRequest, Settlement, StoredResponse, Token,
};
use keybrake_redis_harness::{RedisCluster, RedisServer};
use redis::AsyncCommands;

use crate::fixture::{Conn, Fixture, Issued, granted, refused, usd};

/// Runs a script test on a single Redis, then unchanged on a fresh three-node Redis Cluster.
macro_rules! on_single_node_and_cluster {
    ($($test:ident => $case:ident($config:expr);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() -> Result<()> {
            let server = RedisServer::start().await?;
            $case(Fixture::new(server.connect().await?, $config).await?).await.context("on a single Redis")?;
            let cluster = RedisCluster::start().await?;
            $case(Fixture::new(cluster.connect().await?, $config).await?).await.context("on a three-node Redis Cluster")?;
            Ok(())
        }
    )*};
}

fn swept_at_once() -> LedgerConfig {
    LedgerConfig {
        reservation_deadline: std::time::Duration::ZERO,
        ..Default::default()
    }
}

on_single_node_and_cluster! {
    script_authentication_rules => authentication_rules(LedgerConfig::default());
    script_expiry_at_the_exact_instant => expiry_at_the_exact_instant(LedgerConfig::default());
    script_rotation_overlap => rotation_overlap_accepts_the_previous_secret_until_it_ends(LedgerConfig::default());
    script_endpoint_allowlist => the_endpoint_allowlist_matches_like_the_crds_matcher(LedgerConfig::default());
    script_caps_at_the_exact_boundary => caps_hold_at_the_exact_boundary(LedgerConfig::default());
    script_day_rollover => a_new_utc_day_resets_the_daily_cap_but_not_the_total(LedgerConfig::default());
    script_policy_budget => a_policy_budget_is_shared_by_its_keys(LedgerConfig::default());
    script_settle_exactly_once => settle_replaces_the_estimate_exactly_once(LedgerConfig::default());
    script_idempotency => idempotency_keys_count_once_and_replay(LedgerConfig::default());
    script_sweeper => the_sweeper_settles_abandoned_reservations_as_unknown(swept_at_once());
    script_sweeper_past_a_bad_record => a_bad_key_record_does_not_stop_the_sweeper(swept_at_once());
    script_late_settle => a_late_settle_counts_what_the_vendor_showed_above_a_swept_estimate(swept_at_once());
    script_late_settle_and_reattempt => a_late_settle_and_a_reattempt_count_the_excess_once(swept_at_once());
    script_check_mode => a_check_admits_or_refuses_and_reserves_nothing(LedgerConfig::default());
    script_counted_objects => what_a_key_counted_for_an_object_adds_up(LedgerConfig::default());
    script_overshoot => an_actual_above_the_estimate_is_counted_in_full(LedgerConfig::default());
    script_unknown_outcome_retries => unknown_outcomes_are_retried_only_where_the_vendor_deduplicates(LedgerConfig::default());
    script_large_responses => responses_too_large_to_keep_are_not_replayed(LedgerConfig::default());
    script_slot_claims => a_policy_slot_belongs_to_its_first_owner(LedgerConfig::default());
    script_reattempt_window => no_reattempt_after_the_vendors_idempotency_window(LedgerConfig {
        reattempt_window: std::time::Duration::from_millis(1),
        ..Default::default()
    });
}

const PI: &str = "/v1/payment_intents";

async fn authentication_rules<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    granted(&fx.reserve(&key, PI, usd("1")).await?);
    // A Redis restart or failover empties the script cache: EVALSHA reloads on NOSCRIPT.
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut fx.conn.clone())
        .await?;
    granted(&fx.reserve(&key, PI, usd("1")).await?);
    let other = Token::generate(Vendor::Stripe, key.id().clone());
    assert_eq!(
        refused(
            &fx.reserve_with(&key, &other.secret_hash(), "POST", PI, usd("1"), None)
                .await?
        ),
        Rule::BadSecret
    );
    let unknown = Issued {
        token: Token::generate(Vendor::Stripe, KeyId::generate(&fx.tag)),
        record: key.record.clone(),
    };
    assert_eq!(
        refused(&fx.reserve(&unknown, PI, usd("1")).await?),
        Rule::UnknownKey
    );
    fx.ledger.revoke(key.id()).await?;
    assert_eq!(
        refused(&fx.reserve(&key, PI, usd("1")).await?),
        Rule::Revoked
    );
    // Revoked for good: a rewrite of the record (revoked = "0") does not bring the key back.
    let retired = fx.issue(|_| {}).await?;
    fx.ledger.retire(retired.id()).await?;
    fx.ledger.write_key(retired.id(), &retired.record).await?;
    assert!(fx.ledger.is_retired(retired.id()).await?);
    assert_eq!(
        refused(&fx.reserve(&retired, PI, usd("1")).await?),
        Rule::Revoked
    );
    Ok(())
}

async fn expiry_at_the_exact_instant<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let (now_ms, _) = fx.ledger.now().await?;
    let later = fx
        .issue(|r| r.expires_at_ms = Some(now_ms + 60_000))
        .await?;
    granted(&fx.reserve(&later, PI, usd("1")).await?);
    // Redis time has reached (or passed) the expiry: refused, whatever the pod's clock says.
    let now = fx.issue(|r| r.expires_at_ms = Some(now_ms)).await?;
    assert_eq!(
        refused(&fx.reserve(&now, PI, usd("1")).await?),
        Rule::Expired
    );
    Ok(())
}

async fn rotation_overlap_accepts_the_previous_secret_until_it_ends<C: Conn>(
    fx: Fixture<C>,
) -> Result<()> {
    let (now_ms, _) = fx.ledger.now().await?;
    let old = Token::generate(Vendor::Stripe, KeyId::generate(&fx.tag));
    let key = fx
        .issue(|r| {
            r.prev_secret_hash = Some(old.secret_hash());
            r.prev_valid_until_ms = Some(now_ms + 60_000);
        })
        .await?;
    let old_hash = old.secret_hash();
    granted(
        &fx.reserve_with(&key, &old_hash, "POST", PI, usd("1"), None)
            .await?,
    );
    granted(&fx.reserve(&key, PI, usd("1")).await?);
    let mut ended = key.record.clone();
    ended.prev_valid_until_ms = Some(now_ms);
    fx.ledger.write_key(key.id(), &ended).await?;
    assert_eq!(
        refused(
            &fx.reserve_with(&key, &old_hash, "POST", PI, usd("1"), None)
                .await?
        ),
        Rule::BadSecret
    );
    granted(&fx.reserve(&key, PI, usd("1")).await?);
    Ok(())
}

/// Whether the reserve script lets `key` call `method path` (only the allowlist can refuse).
async fn allowed<C: Conn>(fx: &Fixture<C>, key: &Issued, method: &str, path: &str) -> Result<bool> {
    Ok(
        match fx
            .reserve_with(key, &key.token.secret_hash(), method, path, Usd::ZERO, None)
            .await?
        {
            Admission::Granted { .. } => true,
            Admission::Refused(r) if r.rule == Rule::Endpoint => false,
            other => panic!("{other:?}"),
        },
    )
}

async fn the_endpoint_allowlist_matches_like_the_crds_matcher<C: Conn>(
    fx: Fixture<C>,
) -> Result<()> {
    let patterns: Vec<EndpointPattern> = [
        "POST /v1/payment_intents",
        "GET /v1/balance",
        "GET /v1/customers/*",
        "POST /2010-04-01/Accounts/*/Messages.json",
        "GET /",
    ]
    .iter()
    .map(|p| p.parse().unwrap())
    .collect();
    let key = fx.issue(|r| r.endpoints = patterns.clone()).await?;
    // The crds matcher, plus: `*` is one object id of the key's vendor, never a word of its API.
    let cases = [
        ("POST", "/v1/payment_intents", true),
        ("GET", "/v1/payment_intents", false),
        ("POST", "/v1/payment_intents/pi_1", false),
        ("GET", "/v1/customers/cus_1", true),
        ("GET", "/v1/customers/cus_Nf3xZ9", true),
        ("GET", "/v1/customers/sub_sched_1Mr3", true),
        ("GET", "/v1/customers/balance_transactions", false),
        ("GET", "/v1/customers/create_force_capture", false),
        ("GET", "/v1/customers/search", false),
        ("GET", "/v1/customers/create_preview", false),
        ("GET", "/v1/customers/cus", false),
        ("GET", "/v1/customers/Cus_1", false),
        ("GET", "/v1/customers", false),
        ("GET", "/v1/customers/cus_1/sources", false),
        ("POST", "/2010-04-01/Accounts/AC123/Messages.json", false),
        ("POST", "/2010-04-01/Accounts/AC123/Calls.json", false),
        ("GET", "/", true),
        ("DELETE", "/v1/customers/cus_1", false),
        ("POST", "/V1/payment_intents", false),
        ("GET", "/v1/balance", true),
        // The script's whole-line search must not widen the match: a literal `*` is no id, and
        // a call spanning two lines of the allowlist is neither.
        ("GET", "/v1/customers/*", false),
        ("POST", "/v1/payment_intents\nGET /v1/balance", false),
    ];
    for (method, path, want) in cases {
        let by_crds = keybrake_crds::endpoint::any_matches(&patterns, method, path);
        assert!(
            by_crds || !want,
            "{method} {path}: the crds matcher is the wider one"
        );
        assert_eq!(
            allowed(&fx, &key, method, path).await?,
            want,
            "{method} {path}"
        );
    }
    let sms = "SM0123456789abcdef0123456789abcdef";
    let twilio = fx
        .issue(|r| {
            r.vendor = Vendor::Twilio;
            r.endpoints = vec!["GET /2010-04-01/Accounts/*/Messages/*".parse().unwrap()];
        })
        .await?;
    for (path, want) in [
        (
            format!("/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/{sms}.json"),
            true,
        ),
        (
            format!("/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/{sms}"),
            true,
        ),
        (
            "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages/Media.json"
                .to_owned(),
            false,
        ),
        (
            format!("/2010-04-01/Accounts/keys/Messages/{sms}.json"),
            false,
        ),
    ] {
        assert_eq!(allowed(&fx, &twilio, "GET", &path).await?, want, "{path}");
    }
    let resend = fx
        .issue(|r| {
            r.vendor = Vendor::Resend;
            r.endpoints = vec!["GET /emails/*".parse().unwrap()];
        })
        .await?;
    for (path, want) in [
        ("/emails/4ef9a417-02e9-4d39-ad75-9611e0fcc33c", true),
        ("/emails/batch", false),
        ("/emails/4ef9a417-02e9-4d39-ad75-9611e0fcc33", false),
    ] {
        assert_eq!(allowed(&fx, &resend, "GET", path).await?, want, "{path}");
    }
    Ok(())
}

async fn caps_hold_at_the_exact_boundary<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?; // daily 10, total 25, per call 4
    assert_eq!(
        refused(&fx.reserve(&key, PI, usd("4.000001")).await?),
        Rule::PerCallCap
    );
    granted(&fx.reserve(&key, PI, usd("4")).await?);
    granted(&fx.reserve(&key, PI, usd("4")).await?);
    granted(&fx.reserve(&key, PI, usd("2")).await?); // exactly 10.00 today
    match fx.reserve(&key, PI, usd("0.000001")).await? {
        Admission::Refused(r) => {
            assert_eq!(r.rule, Rule::DailyCap);
            assert_eq!(
                (r.limit, r.spent, r.estimate),
                (Some(10_000_000), Some(10_000_000), 1)
            );
        }
        other => panic!("{other:?}"),
    }
    // Only reads pass a spent cap: a write costed at nothing may set up money that moves later.
    assert_eq!(
        refused(&fx.reserve(&key, PI, Usd::ZERO).await?),
        Rule::DailyCap
    );
    let hash = key.token.secret_hash();
    let read = || fx.reserve_with(&key, &hash, "GET", "/v1/customers/cus_1", Usd::ZERO, None);
    granted(&read().await?);
    // A cap lowered below what is spent refuses spending and writes, not reads.
    let mut lowered = key.record.clone();
    lowered.daily_cap = Some(usd("5"));
    fx.ledger.write_key(key.id(), &lowered).await?;
    assert_eq!(
        refused(&fx.reserve(&key, PI, usd("0.000001")).await?),
        Rule::DailyCap
    );
    assert_eq!(
        refused(&fx.reserve(&key, PI, Usd::ZERO).await?),
        Rule::DailyCap
    );
    granted(&read().await?);
    let spend = fx.ledger.key_spend(key.id()).await?;
    assert_eq!(
        (spend.today, spend.total, spend.refused),
        (10_000_000, 10_000_000, 5)
    );
    Ok(())
}

async fn a_new_utc_day_resets_the_daily_cap_but_not_the_total<C: Conn>(
    fx: Fixture<C>,
) -> Result<()> {
    let key = fx.issue(|r| r.total_cap = Some(usd("15"))).await?; // daily 10, total 15
    for amount in ["4", "4", "2"] {
        granted(&fx.reserve(&key, PI, usd(amount)).await?);
    }
    assert_eq!(
        refused(&fx.reserve(&key, PI, usd("1")).await?),
        Rule::DailyCap
    );
    // Yesterday's counters: what the key's spend looks like once the UTC day has turned.
    let (_, day) = fx.ledger.now().await?;
    let spend_key = fx.ledger.keys().policy(&fx.tag).key_spend(key.id());
    let mut conn = fx.conn.clone();
    let _: () = conn.hset(&spend_key, "day", day - 1).await?;
    assert_eq!(fx.ledger.key_spend(key.id()).await?.today, 0);
    granted(&fx.reserve(&key, PI, usd("4")).await?);
    // 14 of the 15 total: 4 more fits today's cap but not the total.
    assert_eq!(
        refused(&fx.reserve(&key, PI, usd("4")).await?),
        Rule::TotalCap
    );
    granted(&fx.reserve(&key, PI, usd("1")).await?);
    let spend = fx.ledger.key_spend(key.id()).await?;
    assert_eq!((spend.today, spend.total), (5_000_000, 15_000_000));
    Ok(())
}

async fn a_policy_budget_is_shared_by_its_keys<C: Conn>(fx: Fixture<C>) -> Result<()> {
    fx.ledger
        .write_policy(
            &fx.tag,
            &PolicyRecord {
                daily_budget: Some(usd("6")),
                total_budget: Some(usd("100")),
            },
        )
        .await?;
    let a = fx.issue(|_| {}).await?;
    let b = fx.issue(|_| {}).await?;
    granted(&fx.reserve(&a, PI, usd("4")).await?);
    assert_eq!(
        refused(&fx.reserve(&b, PI, usd("3")).await?),
        Rule::PolicyDailyBudget
    );
    granted(&fx.reserve(&b, PI, usd("2")).await?);
    assert_eq!(fx.ledger.policy_spend(&fx.tag).await?.today, 6_000_000);
    // Nothing was counted for the refused call, on the key or the policy.
    assert_eq!(fx.ledger.key_spend(b.id()).await?.total, 2_000_000);
    Ok(())
}

async fn settle_replaces_the_estimate_exactly_once<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let r1 = granted(&fx.reserve(&key, PI, usd("4")).await?);
    assert_eq!(
        fx.settle(&key, &r1, Outcome::Ok, usd("3.50"), None, None)
            .await?,
        Settlement::Settled {
            delta: -500_000,
            today: 3_500_000,
            total: 3_500_000
        }
    );
    assert_eq!(
        fx.settle(&key, &r1, Outcome::Ok, usd("3.50"), None, None)
            .await?,
        Settlement::AlreadySettled
    );
    let r2 = granted(&fx.reserve(&key, PI, usd("4")).await?);
    fx.settle(&key, &r2, Outcome::NotSent, Usd::ZERO, None, None)
        .await?;
    let r3 = granted(&fx.reserve(&key, PI, usd("4")).await?);
    fx.settle(&key, &r3, Outcome::VendorError, Usd::ZERO, None, None)
        .await?;
    let r4 = granted(&fx.reserve(&key, PI, usd("2")).await?);
    fx.settle(&key, &r4, Outcome::Unknown, Usd::ZERO, None, None)
        .await?;
    let spend = fx.ledger.key_spend(key.id()).await?;
    // 3.50 actual + 2.00 of unknown outcome; released what surely did not happen.
    assert_eq!((spend.total, spend.calls), (5_500_000, 3));
    let audit = fx.ledger.audit(&fx.tag, None, None, 100).await?;
    let outcomes: Vec<&str> = audit.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["ok", "not_sent", "vendor_error", "unknown"]);
    assert_eq!(audit[0].request_id, "req_123");
    assert_eq!(audit[0].run_label, "hatchet/billing-agent/run-1");
    assert_eq!(audit[0].actual, 3_500_000);
    Ok(())
}

async fn idempotency_keys_count_once_and_replay<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let h = key.token.secret_hash();
    let idem = Some(("run-1-cus_1", "fp-a"));
    let r = granted(
        &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
            .await?,
    );
    assert_eq!(
        fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
            .await?,
        Admission::InFlight
    );
    let response = StoredResponse {
        status: 200,
        headers_json: r#"{"request-id":"req_1"}"#.into(),
        body: br#"{"id":"pi_1"}"#.to_vec(),
        kept: true,
    };
    fx.settle(
        &key,
        &r,
        Outcome::Ok,
        usd("4"),
        Some("run-1-cus_1"),
        Some(&response),
    )
    .await?;
    assert_eq!(
        fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
            .await?,
        Admission::Replay(response)
    );
    assert_eq!(
        refused(
            &fx.reserve_with(
                &key,
                &h,
                "POST",
                PI,
                usd("4"),
                Some(("run-1-cus_1", "fp-b"))
            )
            .await?
        ),
        Rule::IdempotencyMismatch
    );
    assert_eq!(
        fx.ledger.key_spend(key.id()).await?.total,
        4_000_000,
        "counted once"
    );

    // An unknown outcome keeps the money counted; the retry is forwarded without a new charge.
    let idem2 = Some(("run-1-cus_2", "fp-c"));
    let r2 = granted(
        &fx.reserve_with(&key, &h, "POST", PI, usd("3"), idem2)
            .await?,
    );
    fx.settle(
        &key,
        &r2,
        Outcome::Unknown,
        Usd::ZERO,
        Some("run-1-cus_2"),
        None,
    )
    .await?;
    let again = match fx
        .reserve_with(&key, &h, "POST", PI, usd("3"), idem2)
        .await?
    {
        Admission::Reattempt { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    };
    assert_eq!(fx.ledger.key_spend(key.id()).await?.total, 7_000_000);
    fx.settle(
        &key,
        &again,
        Outcome::Ok,
        usd("3"),
        Some("run-1-cus_2"),
        Some(&StoredResponse {
            status: 200,
            headers_json: "{}".into(),
            body: b"{}".to_vec(),
            kept: true,
        }),
    )
    .await?;
    assert_eq!(
        fx.ledger.key_spend(key.id()).await?.total,
        7_000_000,
        "still counted once"
    );
    Ok(())
}

/// The ledger model's counterexample (scenario "a vendor that charges more than estimated"): a
/// replica stalled past its reservation's deadline is swept (the estimate stays counted), then
/// the vendor's answer shows more. Its late settle must count the excess, once.
async fn a_late_settle_counts_what_the_vendor_showed_above_a_swept_estimate<C: Conn>(
    fx: Fixture<C>,
) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let stalled = granted(&fx.reserve(&key, PI, usd("4")).await?);
    let cheaper = granted(&fx.reserve(&key, PI, usd("2")).await?);
    assert_eq!(fx.ledger.sweep(100).await?, 2);
    assert_eq!(fx.ledger.key_spend(key.id()).await?.total, 6_000_000);
    assert!(matches!(
        fx.settle(&key, &stalled, Outcome::Ok, usd("6"), None, None)
            .await?,
        Settlement::Settled {
            delta: 2_000_000,
            ..
        }
    ));
    assert_eq!(fx.ledger.key_spend(key.id()).await?.total, 8_000_000);
    assert_eq!(
        fx.settle(&key, &stalled, Outcome::Ok, usd("6"), None, None)
            .await?,
        Settlement::AlreadySettled,
        "the excess is counted once"
    );
    // Less than the estimate kept: nothing is taken back (the sweep could not know).
    assert_eq!(
        fx.settle(&key, &cheaper, Outcome::Ok, usd("1"), None, None)
            .await?,
        Settlement::AlreadySettled
    );
    let spend = fx.ledger.key_spend(key.id()).await?;
    assert_eq!((spend.today, spend.total), (8_000_000, 8_000_000));
    assert_eq!(
        fx.ledger.policy_spend(&fx.tag).await?.total,
        8_000_000,
        "the policy counts the excess too"
    );
    Ok(())
}

/// The ledger model's counterexamples while `settle.late` was built: a late settle and a
/// re-attempt of the same Idempotency-Key each counted the excess (twice), or neither did (a
/// re-attempt never sent settles at its floor). The re-attempt now carries what the record holds.
async fn a_late_settle_and_a_reattempt_count_the_excess_once<C: Conn>(
    fx: Fixture<C>,
) -> Result<()> {
    let h = |k: &Issued| k.token.secret_hash();
    for (reattempt_outcome, actual) in [(Outcome::NotSent, "0"), (Outcome::Ok, "6")] {
        let key = fx.issue(|_| {}).await?;
        let idem = Some(("k", "fp"));
        let first = granted(
            &fx.reserve_with(&key, &h(&key), "POST", PI, usd("4"), idem)
                .await?,
        );
        assert_eq!(fx.ledger.sweep(100).await?, 1);
        let again = match fx
            .reserve_with(&key, &h(&key), "POST", PI, usd("4"), idem)
            .await?
        {
            Admission::Reattempt { reservation, .. } => reservation,
            other => panic!("{other:?}"),
        };
        // The stalled first attempt's answer arrives: $6, not $4, on PaymentIntent pi_x.
        assert!(matches!(
            fx.settle_object(
                &key,
                &first,
                Outcome::Ok,
                usd("6"),
                Some("k"),
                None,
                Some("pi_x")
            )
            .await?,
            Settlement::Settled {
                delta: 2_000_000,
                ..
            }
        ));
        let object = (reattempt_outcome == Outcome::Ok).then_some("pi_x");
        fx.settle_object(
            &key,
            &again,
            reattempt_outcome,
            usd(actual),
            Some("k"),
            None,
            object,
        )
        .await?;
        assert_eq!(
            fx.ledger.key_spend(key.id()).await?.total,
            6_000_000,
            "re-attempt {reattempt_outcome:?}: the $2 excess counted once"
        );
        // What the key counted for the PaymentIntent discounts later calls on it (a raise, a
        // confirm): counting it twice would let $6 more move for free (an attacker review).
        assert_eq!(
            fx.ledger.counted(key.id(), "pi_x").await?,
            usd("6"),
            "re-attempt {reattempt_outcome:?}: the object counted once"
        );
    }
    Ok(())
}

/// A review of the ledger model found that one key record whose vendor did not parse stopped
/// the whole sweep, in every round, for every policy.
async fn a_bad_key_record_does_not_stop_the_sweeper<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let bad = fx.issue(|_| {}).await?;
    let good = fx.issue(|_| {}).await?;
    granted(&fx.reserve(&bad, PI, usd("2")).await?);
    granted(&fx.reserve(&good, PI, usd("3")).await?);
    let mut conn = fx.conn.clone();
    let _: () = conn
        .hset(
            fx.ledger.key_record_name(bad.id()),
            "vendor",
            "not-a-vendor",
        )
        .await?;
    assert_eq!(fx.ledger.sweep(100).await?, 2, "both reservations closed");
    assert_eq!(fx.ledger.key_spend(good.id()).await?.total, 3_000_000);
    assert_eq!(fx.ledger.key_spend(bad.id()).await?.total, 2_000_000);
    Ok(())
}

async fn the_sweeper_settles_abandoned_reservations_as_unknown<C: Conn>(
    fx: Fixture<C>,
) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let r = granted(
        &fx.reserve_with(
            &key,
            &key.token.secret_hash(),
            "POST",
            PI,
            usd("4"),
            Some(("k", "fp")),
        )
        .await?,
    );
    // The proxy "died" here. The sweeper closes the reservation; the money stays counted.
    assert_eq!(fx.ledger.sweep(100).await?, 1);
    assert_eq!(fx.ledger.sweep(100).await?, 0);
    assert_eq!(
        fx.settle(&key, &r, Outcome::Ok, usd("1"), None, None)
            .await?,
        Settlement::AlreadySettled
    );
    assert_eq!(fx.ledger.key_spend(key.id()).await?.total, 4_000_000);
    let audit = fx.ledger.audit(&fx.tag, None, None, 100).await?;
    assert_eq!(audit[0].outcome, "unknown");
    assert!(matches!(
        fx.reserve_with(
            &key,
            &key.token.secret_hash(),
            "POST",
            PI,
            usd("4"),
            Some(("k", "fp"))
        )
        .await?,
        Admission::Reattempt { .. }
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_callers_never_overshoot() -> Result<()> {
    let server = RedisServer::start().await?;
    // Eight connections stand in for several proxy replicas sharing one Redis.
    let mut ledgers = Vec::new();
    let first = Fixture::new(server.connect().await?, LedgerConfig::default()).await?;
    let key = first
        .issue(|r| {
            r.daily_cap = Some(usd("100"));
            r.total_cap = None;
            r.per_call_cap = None;
        })
        .await?;
    for _ in 0..8 {
        ledgers.push(Ledger::new(
            server.connect().await?,
            first.ledger.keys().clone(),
            LedgerConfig::default(),
        ));
    }
    let mut tasks = Vec::new();
    for i in 0..500 {
        let ledger = ledgers[i % ledgers.len()].clone();
        let id = key.id().clone();
        let hash = key.token.secret_hash();
        tasks.push(tokio::spawn(async move {
            let estimate = usd(if i % 3 == 0 { "0.33" } else { "0.50" });
            let req = ReserveRequest {
                key_id: &id,
                secret_hash: &hash,
                method: "POST",
                path: PI,
                estimate,
                idempotency: None,
                read: false,
                mode: keybrake_ledger::Mode::Reserve,
                owned: &[],
                run_scope: false,
                commits_until_ms: None,
            };
            anyhow::Ok((ledger.reserve(&req).await?, estimate))
        }));
    }
    let (mut granted_sum, mut grants, mut refusals) = (0u64, 0, 0);
    for t in tasks {
        match t.await?? {
            (Admission::Granted { .. }, est) => {
                granted_sum += est.micros();
                grants += 1;
            }
            (Admission::Refused(r), _) => {
                assert_eq!(r.rule, Rule::DailyCap);
                refusals += 1;
            }
            (other, _) => panic!("{other:?}"),
        }
    }
    let spend = first.ledger.key_spend(key.id()).await?;
    println!(
        "500 callers: {grants} granted, {refusals} refused, counted {} of a 100.00 cap",
        Usd::from_micros(spend.total).unwrap()
    );
    assert!(spend.total <= 100_000_000, "overshoot: {}", spend.total);
    assert_eq!(
        spend.total, granted_sum,
        "every grant counted, nothing else"
    );
    assert!(
        spend.total > 99_000_000,
        "the cap was used up to within the last call"
    );
    Ok(())
}

/// A settle that names the vendor object the money belongs to.
async fn settle_object<C: Conn>(
    fx: &Fixture<C>,
    key: &Issued,
    reservation: &str,
    actual: Usd,
    object: &str,
) -> Result<Settlement> {
    Ok(fx
        .ledger
        .settle(&SettleRequest {
            key_id: key.id(),
            vendor: Some(Vendor::Stripe),
            reservation,
            outcome: Outcome::Ok,
            actual,
            status: Some(200),
            request_id: "",
            idempotency_key: None,
            response: None,
            object: Some(object),
            created: &[],
        })
        .await?)
}

async fn a_check_admits_or_refuses_and_reserves_nothing<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let check = |secret: String, path: &'static str| {
        let key_id = key.id().clone();
        let ledger = fx.ledger.clone();
        async move {
            ledger
                .reserve(&ReserveRequest {
                    key_id: &key_id,
                    secret_hash: &secret,
                    method: "POST",
                    path,
                    estimate: Usd::ZERO,
                    idempotency: None,
                    read: false,
                    mode: keybrake_ledger::Mode::Check,
                    owned: &[],
                    run_scope: false,
                    commits_until_ms: None,
                })
                .await
        }
    };
    assert!(matches!(
        check(key.token.secret_hash(), PI).await?,
        Admission::Admitted { ref vault_key, .. } if vault_key == "billing/run-1"
    ));
    let forged = Token::generate(Vendor::Stripe, key.id().clone()).secret_hash();
    assert_eq!(refused(&check(forged, PI).await?), Rule::BadSecret);
    assert_eq!(
        refused(&check(key.token.secret_hash(), "/v1/refunds").await?),
        Rule::Endpoint
    );
    let spend = fx.ledger.key_spend(key.id()).await?;
    assert_eq!(
        (spend.today, spend.total),
        (0, 0),
        "a check reserves nothing"
    );
    // With the cap spent a write cannot go, so nothing may be read from the vendor for it.
    for amount in ["4", "4", "2"] {
        granted(&fx.reserve(&key, PI, usd(amount)).await?);
    }
    assert_eq!(
        refused(&check(key.token.secret_hash(), PI).await?),
        Rule::DailyCap
    );
    fx.ledger.revoke(key.id()).await?;
    assert_eq!(
        refused(&check(key.token.secret_hash(), PI).await?),
        Rule::Revoked
    );
    Ok(())
}

async fn what_a_key_counted_for_an_object_adds_up<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let other = fx.issue(|_| {}).await?;
    assert_eq!(fx.ledger.counted(key.id(), "pi_1").await?, Usd::ZERO);
    let r = granted(&fx.reserve(&key, PI, usd("3")).await?);
    settle_object(&fx, &key, &r, usd("3"), "pi_1").await?;
    let r = granted(&fx.reserve(&key, PI, usd("1.5")).await?);
    settle_object(&fx, &key, &r, usd("1.5"), "pi_1").await?;
    assert_eq!(fx.ledger.counted(key.id(), "pi_1").await?, usd("4.5"));
    assert_eq!(
        fx.ledger.counted(other.id(), "pi_1").await?,
        Usd::ZERO,
        "one key's count never covers another's"
    );
    // A vendor error moved nothing and counts nothing for the object.
    let r = granted(&fx.reserve(&key, PI, usd("1")).await?);
    fx.settle(&key, &r, Outcome::VendorError, Usd::ZERO, None, None)
        .await?;
    assert_eq!(fx.ledger.counted(key.id(), "pi_1").await?, usd("4.5"));
    Ok(())
}

async fn an_actual_above_the_estimate_is_counted_in_full<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?; // daily 10
    let r = granted(&fx.reserve(&key, PI, usd("4")).await?);
    fx.settle(&key, &r, Outcome::Ok, usd("3"), None, None)
        .await?;
    let r = granted(&fx.reserve(&key, PI, usd("4")).await?);
    fx.settle(&key, &r, Outcome::Ok, usd("9"), None, None)
        .await?;
    let spend = fx.ledger.key_spend(key.id()).await?;
    assert_eq!(spend.today, 12_000_000, "past the $10 cap, never clipped");
    let audit = fx.ledger.audit(&fx.tag, None, None, 10).await?;
    let overshoots: Vec<u64> = audit.iter().map(|e| e.overshoot).collect();
    assert_eq!(overshoots, [0, 5_000_000]);
    assert_eq!(
        refused(&fx.reserve(&key, PI, Usd::ZERO).await?),
        Rule::DailyCap,
        "the key is spent"
    );
    Ok(())
}

async fn unknown_outcomes_are_retried_only_where_the_vendor_deduplicates<C: Conn>(
    fx: Fixture<C>,
) -> Result<()> {
    for vendor in [Vendor::Stripe, Vendor::Twilio] {
        let key = fx.issue(|r| r.vendor = vendor).await?;
        let h = key.token.secret_hash();
        let idem = Some(("retry-1", "fp"));
        let r = granted(
            &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
                .await?,
        );
        fx.settle(&key, &r, Outcome::Unknown, Usd::ZERO, Some("retry-1"), None)
            .await?;
        let again = fx
            .reserve_with(&key, &h, "POST", PI, usd("4"), idem)
            .await?;
        match &again {
            Admission::Reattempt { reservation, .. } if vendor == Vendor::Stripe => {
                // The vendor refuses the re-attempt: the first attempt's money stays counted.
                fx.settle(
                    &key,
                    reservation,
                    Outcome::VendorError,
                    Usd::ZERO,
                    Some("retry-1"),
                    None,
                )
                .await?;
            }
            _ if vendor == Vendor::Twilio => {
                assert_eq!(refused(&again), Rule::IdempotencyOutcomeUnknown)
            }
            other => panic!("{other:?}"),
        }
        let spend = fx.ledger.key_spend(key.id()).await?;
        assert_eq!(spend.today, 4_000_000, "{vendor}: counted once");
    }
    // A re-attempt re-checks the caps: lowered below what is counted, it is refused.
    let key = fx.issue(|_| {}).await?;
    let h = key.token.secret_hash();
    let idem = Some(("retry-2", "fp"));
    let r = granted(
        &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
            .await?,
    );
    fx.settle(&key, &r, Outcome::Unknown, Usd::ZERO, Some("retry-2"), None)
        .await?;
    let mut lowered = key.record.clone();
    lowered.daily_cap = Some(usd("3"));
    fx.ledger.write_key(key.id(), &lowered).await?;
    assert_eq!(
        refused(
            &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
                .await?
        ),
        Rule::DailyCap
    );
    let mut lowered = key.record.clone();
    lowered.per_call_cap = Some(usd("3"));
    fx.ledger.write_key(key.id(), &lowered).await?;
    assert_eq!(
        refused(
            &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
                .await?
        ),
        Rule::PerCallCap
    );
    fx.ledger.revoke(key.id()).await?;
    assert_eq!(
        refused(
            &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
                .await?
        ),
        Rule::Revoked
    );
    Ok(())
}

async fn responses_too_large_to_keep_are_not_replayed<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let h = key.token.secret_hash();
    let idem = Some(("big-1", "fp"));
    let r = granted(
        &fx.reserve_with(&key, &h, "POST", PI, usd("1"), idem)
            .await?,
    );
    let big = StoredResponse {
        status: 200,
        headers_json: "[]".into(),
        body: vec![b'x'; 64 * 1024 + 1],
        kept: true,
    };
    fx.settle(&key, &r, Outcome::Ok, usd("1"), Some("big-1"), Some(&big))
        .await?;
    match fx
        .reserve_with(&key, &h, "POST", PI, usd("1"), idem)
        .await?
    {
        Admission::Replay(stored) => {
            assert!(!stored.kept);
            assert!(stored.body.is_empty(), "nothing of the body was stored");
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

async fn no_reattempt_after_the_vendors_idempotency_window<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let key = fx.issue(|_| {}).await?;
    let h = key.token.secret_hash();
    let idem = Some(("late-1", "fp"));
    let r = granted(
        &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
            .await?,
    );
    fx.settle(&key, &r, Outcome::Unknown, Usd::ZERO, Some("late-1"), None)
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert_eq!(
        refused(
            &fx.reserve_with(&key, &h, "POST", PI, usd("4"), idem)
                .await?
        ),
        Rule::IdempotencyOutcomeUnknown,
        "the vendor may have forgotten the key: a re-attempt would be a new, uncounted call"
    );
    Ok(())
}

async fn a_policy_slot_belongs_to_its_first_owner<C: Conn>(fx: Fixture<C>) -> Result<()> {
    // Two policies whose 48-bit tags collide share one slot: the first keeps it.
    let tag = PolicyTag::from_index(fx.tag.as_str().to_owned());
    assert_eq!(fx.ledger.claim_tag(&tag, "billing/stripe").await?, None);
    assert_eq!(
        fx.ledger.claim_tag(&tag, "billing/stripe").await?,
        None,
        "idempotent"
    );
    assert_eq!(
        fx.ledger.claim_tag(&tag, "attacker/collides").await?,
        Some("billing/stripe".to_owned())
    );
    // Writing the budget keeps the owner.
    fx.ledger
        .write_policy(&tag, &PolicyRecord::default())
        .await?;
    assert_eq!(
        fx.ledger.claim_tag(&tag, "attacker/collides").await?,
        Some("billing/stripe".to_owned())
    );
    Ok(())
}

/// The workspace root (the parent of the ledger crate's folder).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// The model checker's counterexample (ledger-model, `appendfsync everysec`): a Redis that
/// restarts from an AOF fsynced once a second forgets a reservation whose call the vendor already
/// did (money moved, nothing counted, the cap passed) and forgets an acknowledged revoke. A process
/// crash loses nothing either way (the AOF is written before the reply; only its fsync waits),
/// but a node crash loses what was not fsynced, and no test here can crash a kernel: the shipped
/// Redis must fsync every write, and keep a grant and a revoke through a SIGKILL right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_redis_keeps_a_grant_and_a_revoke_through_a_crash() -> Result<()> {
    for file in [
        "manifests/deploy/redis.yaml",
        "manifests/helm/keybrake/templates/redis.yaml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file))?;
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            flat.contains(r#"--appendfsync always"#)
                || flat.contains(r#"--appendfsync, always"#)
                || flat.contains(r#"- --appendfsync - always"#),
            "{file}: the AOF must be fsynced on every write (appendfsync always)"
        );
        assert!(!flat.contains("everysec"), "{file}: appendfsync everysec");
    }
    let mut server = RedisServer::start_shipped().await?;
    let f = Fixture::new(server.connect().await?, LedgerConfig::default()).await?;
    let key = f.issue(|_| {}).await?;
    let reservation = granted(&f.reserve(&key, "/v1/payment_intents", usd("3")).await?);
    server.restart().await?; // SIGKILL, no shutdown save
    let f = Fixture {
        ledger: Ledger::new(
            server.connect().await?,
            f.ledger.keys().clone(),
            LedgerConfig::default(),
        ),
        tag: f.tag.clone(),
        conn: server.connect().await?,
    };
    assert_eq!(
        f.ledger.key_spend(key.id()).await?.total,
        usd("3").micros(),
        "the granted estimate was lost with the crash"
    );
    assert!(
        matches!(
            f.settle(&key, &reservation, Outcome::Ok, usd("3"), None, None)
                .await?,
            Settlement::Settled { .. }
        ),
        "the reservation was lost with the crash"
    );
    f.ledger.retire(key.id()).await?;
    server.restart().await?;
    let ledger = Ledger::new(
        server.connect().await?,
        f.ledger.keys().clone(),
        LedgerConfig::default(),
    );
    let after = ledger
        .reserve(&ReserveRequest {
            key_id: key.id(),
            secret_hash: &key.token.secret_hash(),
            method: "POST",
            path: "/v1/payment_intents",
            estimate: usd("1"),
            idempotency: None,
            read: false,
            mode: keybrake_ledger::Mode::Reserve,
            owned: &[],
            run_scope: false,
            commits_until_ms: None,
        })
        .await?;
    assert_eq!(
        refused(&after),
        Rule::Revoked,
        "the revoke was lost with the crash"
    );
    Ok(())
}
