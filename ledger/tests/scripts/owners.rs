//! Who owns a vendor object, and how long a key may commit money, in the reserve and settle
//! scripts themselves: on a real Redis and a three-node Redis Cluster, with racing claims.

use anyhow::{Context, Result};
use keybrake_crds::Usd;
use keybrake_ledger::{
    Admission, LedgerConfig, Mode, Outcome, ReserveRequest, Rule, SettleRequest, Settlement,
};
use keybrake_redis_harness::{RedisCluster, RedisServer};

use crate::fixture::{Conn, Fixture, Issued, granted, usd};

const PI: &str = "/v1/payment_intents";

/// A reserve naming `owned`, as the proxy sends it.
async fn reserve<C: Conn>(
    fx: &Fixture<C>,
    key: &Issued,
    owned: &[&str],
    run_scope: bool,
    commits_until_ms: Option<i64>,
    mode: Mode,
) -> Result<Admission> {
    let owned: Vec<String> = owned.iter().map(|s| (*s).to_owned()).collect();
    Ok(fx
        .ledger
        .reserve(&ReserveRequest {
            key_id: key.id(),
            secret_hash: &key.token.secret_hash(),
            method: "POST",
            path: PI,
            estimate: usd("1"),
            idempotency: None,
            read: false,
            mode,
            owned: &owned,
            run_scope,
            commits_until_ms,
        })
        .await?)
}

/// Settles `reservation` with `outcome`, recording `created`.
async fn settle<C: Conn>(
    fx: &Fixture<C>,
    key: &Issued,
    reservation: &str,
    outcome: Outcome,
    created: &[&str],
) -> Result<Settlement> {
    let created: Vec<String> = created.iter().map(|s| (*s).to_owned()).collect();
    Ok(fx
        .ledger
        .settle(&SettleRequest {
            key_id: key.id(),
            vendor: Some(keybrake_crds::Vendor::Stripe),
            reservation,
            outcome,
            actual: usd("1"),
            status: Some(200),
            request_id: "",
            idempotency_key: None,
            response: None,
            object: None,
            created: &created,
        })
        .await?)
}

/// A key creates `objects` through one granted call.
async fn create<C: Conn>(fx: &Fixture<C>, key: &Issued, objects: &[&str]) -> Result<()> {
    let r = granted(&reserve(fx, key, &[], false, None, Mode::Reserve).await?);
    settle(fx, key, &r, Outcome::Ok, objects).await?;
    Ok(())
}

/// A key of `label`'s run, without caps (the races make many calls).
fn run(r: &mut keybrake_ledger::KeyRecord, label: &str) {
    r.run_label = label.into();
    r.daily_cap = None;
    r.total_cap = None;
}

fn not_owned(a: &Admission) -> Option<u64> {
    match a {
        Admission::Refused(r) if r.rule == Rule::ObjectNotOwned => r.limit,
        other => panic!("expected object_not_owned, got {other:?}"),
    }
}

async fn objects_belong_to_their_creator<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let a = fx.issue(|r| run(r, "run-1")).await?;
    let b = fx.issue(|r| run(r, "run-2")).await?;
    let c = fx.issue(|r| run(r, "run-1")).await?;
    let lone = fx.issue(|r| run(r, "")).await?;
    create(&fx, &a, &["pi_3A", "ch_3A"]).await?;

    granted(&reserve(&fx, &a, &["ch_3A", "pi_3A"], false, None, Mode::Reserve).await?);
    // Another key, in both modes; the position names the object refused.
    assert_eq!(
        not_owned(&reserve(&fx, &b, &["pi_3A"], false, None, Mode::Reserve).await?),
        Some(1)
    );
    assert_eq!(
        not_owned(&reserve(&fx, &b, &["pi_3A"], true, None, Mode::Check).await?),
        Some(1)
    );
    assert_eq!(
        not_owned(
            &reserve(
                &fx,
                &a,
                &["pi_3A", "pi_3Nobody"],
                false,
                None,
                Mode::Reserve
            )
            .await?
        ),
        Some(2)
    );
    // The same run: only where the policy says so; an empty run label is nobody's run.
    assert_eq!(
        not_owned(&reserve(&fx, &c, &["pi_3A"], false, None, Mode::Reserve).await?),
        Some(1)
    );
    granted(&reserve(&fx, &c, &["pi_3A"], true, None, Mode::Reserve).await?);
    create(&fx, &lone, &["pi_3Lone"]).await?;
    let other_lone = fx.issue(|r| run(r, "")).await?;
    not_owned(&reserve(&fx, &other_lone, &["pi_3Lone"], true, None, Mode::Reserve).await?);

    // Nothing is owned from a refused or unknown outcome, and an answer never hands an owned
    // object to another key.
    for outcome in [Outcome::VendorError, Outcome::NotSent, Outcome::Unknown] {
        let r = granted(&reserve(&fx, &a, &[], false, None, Mode::Reserve).await?);
        settle(&fx, &a, &r, outcome, &["pi_3Failed"]).await?;
    }
    not_owned(&reserve(&fx, &a, &["pi_3Failed"], false, None, Mode::Reserve).await?);
    create(&fx, &b, &["pi_3A"]).await?;
    not_owned(&reserve(&fx, &b, &["pi_3A"], false, None, Mode::Reserve).await?);

    // An owner record outlives a long-lived key's last day, not only the 30-day default.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let long = fx
        .issue(|r| {
            run(r, "run-3");
            r.expires_at_ms = Some(now_ms + 90 * 86_400_000);
        })
        .await?;
    create(&fx, &long, &["sub_1Long"]).await?;
    let ttl: i64 = redis::cmd("TTL")
        .arg(fx.ledger.keys().policy(&fx.tag).owner("sub_1Long"))
        .query_async(&mut fx.conn.clone())
        .await?;
    assert!(ttl > 90 * 86_400, "owner record kept {ttl} s");
    let ttl: i64 = redis::cmd("TTL")
        .arg(fx.ledger.keys().policy(&fx.tag).owner("ch_3A"))
        .query_async(&mut fx.conn.clone())
        .await?;
    assert!(
        (29 * 86_400..=30 * 86_400).contains(&ttl),
        "default {ttl} s"
    );

    // Two keys racing to record the same new id: exactly one owns it.
    let mut racers = Vec::new();
    for i in 0..40 {
        let key = if i % 2 == 0 { &a } else { &b };
        racers.push(create(&fx, key, &["pi_3Race"]));
    }
    for r in futures::future::join_all(racers).await {
        r?;
    }
    let a_owns = matches!(
        reserve(&fx, &a, &["pi_3Race"], false, None, Mode::Reserve).await?,
        Admission::Granted { .. }
    );
    let b_owns = matches!(
        reserve(&fx, &b, &["pi_3Race"], false, None, Mode::Reserve).await?,
        Admission::Granted { .. }
    );
    assert!(a_owns != b_owns, "a owns: {a_owns}, b owns: {b_owns}");
    Ok(())
}

async fn commitments_end_with_the_key<C: Conn>(fx: Fixture<C>) -> Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let hour = 3_600_000;
    let key = fx.issue(|r| r.expires_at_ms = Some(now_ms + hour)).await?;
    granted(
        &reserve(
            &fx,
            &key,
            &[],
            false,
            Some(now_ms + hour / 2),
            Mode::Reserve,
        )
        .await?,
    );
    granted(&reserve(&fx, &key, &[], false, Some(now_ms + hour), Mode::Reserve).await?);
    for (mode, until) in [
        (Mode::Reserve, now_ms + hour + 1),
        (Mode::Check, now_ms + 30 * 24 * hour),
    ] {
        match reserve(&fx, &key, &[], false, Some(until), mode).await? {
            Admission::Refused(r) => {
                assert_eq!(r.rule, Rule::CommitmentOutlivesKey);
                assert_eq!(r.limit, Some((now_ms + hour) as u64));
                assert_eq!(r.spent, Some(until as u64));
            }
            other => panic!("{other:?}"),
        }
    }
    // A key without an expiry bounds no commitment.
    let forever = fx.issue(|r| r.expires_at_ms = None).await?;
    match reserve(
        &fx,
        &forever,
        &[],
        false,
        Some(now_ms + 1000),
        Mode::Reserve,
    )
    .await?
    {
        Admission::Refused(r) => assert_eq!(r.rule, Rule::CommitmentOutlivesKey),
        other => panic!("{other:?}"),
    }
    // Nothing was counted for the refusals: two grants of $1.
    let spend = fx.ledger.key_spend(key.id()).await?;
    assert_eq!(Usd::from_micros(spend.total), Some(usd("2")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_object_owners_and_commitments() -> Result<()> {
    let server = RedisServer::start().await?;
    let conn = server.connect().await?;
    objects_belong_to_their_creator(Fixture::new(conn.clone(), LedgerConfig::default()).await?)
        .await
        .context("owners, on a single Redis")?;
    commitments_end_with_the_key(Fixture::new(conn, LedgerConfig::default()).await?)
        .await
        .context("commitments, on a single Redis")?;
    let cluster = RedisCluster::start().await?;
    let conn = cluster.connect().await?;
    objects_belong_to_their_creator(Fixture::new(conn.clone(), LedgerConfig::default()).await?)
        .await
        .context("owners, on a three-node Redis Cluster")?;
    commitments_end_with_the_key(Fixture::new(conn, LedgerConfig::default()).await?)
        .await
        .context("commitments, on a three-node Redis Cluster")?;
    Ok(())
}
