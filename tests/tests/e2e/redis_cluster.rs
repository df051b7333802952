//! The operator and the proxy on a real three-primary Redis Cluster (`KEYBRAKE_REDIS_MODE=
//! cluster`, `REDIS_URL` listing the seed nodes): policies whose slots live on different
//! primaries all work, and 500 callers through two proxies never overshoot a cap.

use std::time::Duration;

use anyhow::Result;
use keybrake_e2e::{
    payment_intent, spawn_charges,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
};
use keybrake_ledger::{Keyspace, PolicyTag, Token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_on_every_primary_work_and_500_callers_never_overshoot() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::builder().redis_cluster(0).start_with_proxy().await?;
    // The real operator binary, configured by its environment as in a Deployment.
    stack.stop_operator().await;
    let _operator = keybrake_e2e::processes::operator(&stack).await?;
    // Five teams: their policies' slots spread over the three primaries.
    let teams: Vec<String> = (1..=5).map(|i| format!("team{i}")).collect();
    let mut slots = std::collections::BTreeSet::new();
    let mut bearers = Vec::new();
    for ns in &teams {
        let env = stack.apply_stripe_run_key_in(ns, &upstream.url()).await?;
        bearers.push(format!("Bearer {}", env["STRIPE_API_KEY"]));
        slots.insert(
            redis_slot(&format!("{}:{}", stack.prefix, PolicyTag::of(ns, "stripe"))) * 3 / 16384,
        );
    }
    println!("five policies over {} of 3 primaries", slots.len());
    assert!(
        slots.len() >= 2,
        "the test needs policies on more than one primary"
    );
    for b in &bearers {
        let r = payment_intent(proxy.addr, b, b"amount=100&currency=usd&confirm=true").await?;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // 500 callers on one key ($500 a day, $3 each) through two proxy replicas, one of them the
    // real keybrake-proxy binary.
    let (_second, second) = keybrake_e2e::processes::proxy(&stack).await?;
    let calls = spawn_charges(
        &[proxy.addr, second],
        &bearers[0],
        500,
        Duration::ZERO,
        b"amount=300&currency=usd&confirm=true",
    );
    let (mut ok, mut capped) = (0, 0);
    for c in calls {
        match c.await??.0.status {
            200 => ok += 1,
            429 => capped += 1,
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    let token = Token::parse_bearer(bearers[0].trim_start_matches("Bearer "))?;
    let recorded = stack.ledger().await?.key_spend(&token.key_id).await?.total;
    let moved: u64 = upstream
        .moved()
        .iter()
        .map(|m| m.units * 10_000)
        .sum::<u64>()
        - 4 * 1_000_000; // the other four teams' $1 charges
    println!(
        "cluster: 500 callers, {ok} charged, {capped} refused; moved {moved} micros, recorded {recorded}"
    );
    assert_eq!(ok + capped, 500);
    assert!(recorded <= 500_000_000, "overshoot: {recorded}");
    assert_eq!(moved, recorded, "what the vendor moved is what was counted");
    proxy.shutdown().await;
    Ok(())
}

fn redis_slot(tag: &str) -> u16 {
    keybrake_e2e::redis_server::slot_of(tag)
}

/// One load run for the failover test: 300 callers ($3 each, on a $500 key) spread over about a
/// second through two proxies, with the primary of the key's slot SIGKILLed a third of the way
/// in. Returns (moved, recorded, refused while failing over), in micro-dollars and calls.
async fn load_with_a_primary_killed(
    stack: &mut Stack,
    upstream: &RecordingUpstream,
    ns: &str,
    acks: u32,
) -> Result<(u64, u64, usize, f64)> {
    let env = stack.apply_stripe_run_key_in(ns, &upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    let record = Keyspace::new(&stack.prefix)
        .policy(&token.key_id.tag())
        .key_record(&token.key_id);
    let set = |c: &mut keybrake_proxy::Config| {
        c.redis_replica_acks = acks;
        c.redis_replica_ack_timeout_ms = 200;
    };
    let proxies = [
        stack.start_proxy_with(set).await?,
        stack.start_proxy_with(set).await?,
    ];
    let moved_before: u64 = upstream.moved().iter().map(|m| m.units * 10_000).sum();
    let calls = spawn_charges(
        &[proxies[0].addr, proxies[1].addr],
        &bearer,
        300,
        Duration::from_millis(3),
        b"amount=300&currency=usd&confirm=true",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis = stack
        .redis_cluster
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
    let dead = redis.primary_of(&record).await?;
    redis.kill(dead)?;
    let killed = std::time::Instant::now();
    let (mut refused, mut other, mut charged_ms) = (0, 0, Vec::new());
    for c in calls {
        let (r, took) = c.await??;
        match r.status {
            200 => charged_ms.push(took.as_secs_f64() * 1000.0),
            429 => {}
            503 => refused += 1,
            _ => other += 1,
        }
    }
    charged_ms.sort_by(f64::total_cmp);
    let p50 = charged_ms.get(charged_ms.len() / 2).copied().unwrap_or(0.0);
    assert_eq!(
        other, 0,
        "every call was charged, capped or refused (fail closed)"
    );
    let redis = stack
        .redis_cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
    let promoted = redis.failed_over(&record, dead).await?;
    println!(
        "primary {dead} killed; {promoted} took over within {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let ledger = stack.ledger().await?;
    let recorded = eventually("the promoted primary to answer", 20, || async {
        ledger.key_spend(&token.key_id).await.ok()
    })
    .await?
    .total;
    let moved = upstream
        .moved()
        .iter()
        .map(|m| m.units * 10_000)
        .sum::<u64>()
        - moved_before;
    for p in proxies {
        p.shutdown().await;
    }
    // The killed node comes back as a replica of the promoted one, for the next run.
    stack
        .redis_cluster
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no cluster"))?
        .restart(dead)
        .await?;
    Ok((moved, recorded, refused, p50))
}

/// A primary SIGKILLed under load, its replica promoted: with `KEYBRAKE_REDIS_REPLICA_ACKS=1`
/// nothing counted is lost (what moved is at most what is recorded, and at most the cap);
/// without it, the loss is measured and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_loses_no_counted_money_with_replica_acks() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::builder().redis_cluster(1).start_with_proxy().await?;
    proxy.shutdown().await;
    let (moved, recorded, refused, p50) =
        load_with_a_primary_killed(&mut stack, &upstream, "noacks", 0).await?;
    println!(
        "failover without replica acks: moved ${:.2}, recorded ${:.2}, lost ${:.2}; {refused} calls refused while failing over; charged calls p50 {p50:.2} ms",
        moved as f64 / 1e6,
        recorded as f64 / 1e6,
        moved.saturating_sub(recorded) as f64 / 1e6
    );
    // The restarted node syncs as a replica: WAIT 1 can be met on every primary again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (moved, recorded, refused, p50) =
        load_with_a_primary_killed(&mut stack, &upstream, "acks", 1).await?;
    println!(
        "failover with KEYBRAKE_REDIS_REPLICA_ACKS=1: moved ${:.2}, recorded ${:.2}; {refused} calls refused while failing over; charged calls p50 {p50:.2} ms",
        moved as f64 / 1e6,
        recorded as f64 / 1e6
    );
    assert!(
        moved <= recorded,
        "counted money was lost: moved {moved}, recorded {recorded}"
    );
    assert!(moved <= 500_000_000, "moved past the cap: {moved}");
    Ok(())
}

/// A slot moved between primaries (`redis-cli --cluster reshard`) while calls flow: no call is
/// refused for a redirect it could have followed, and nothing is counted twice or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_load_loses_and_doubles_nothing() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::builder().redis_cluster(0).start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    let record = Keyspace::new(&stack.prefix)
        .policy(&token.key_id.tag())
        .key_record(&token.key_id);
    let redis = stack
        .redis_cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
    let from = redis.primary_of(&record).await?;
    let to = *redis
        .ports
        .iter()
        .find(|p| **p != from)
        .ok_or_else(|| anyhow::anyhow!("one node"))?;
    // A slot in migration answers TRYAGAIN to a script whose keys are split between the two
    // nodes, and the client retries until the slot has moved: give the proxies the time to
    // follow it, so a refusal here can only be a redirect not followed (on a loaded 2-core
    // machine the default 500 ms can run out, and then calls are refused, fail closed).
    proxy.shutdown().await;
    let patient = |c: &mut keybrake_proxy::Config| c.redis_timeout_ms = 3_000;
    let proxy = stack.start_proxy_with(patient).await?;
    let second = stack.start_proxy_with(patient).await?;
    let calls = spawn_charges(
        &[proxy.addr, second.addr],
        &bearer,
        300,
        Duration::from_millis(5),
        b"amount=100&currency=usd&confirm=true",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    redis.reshard(from, to).await?;
    println!(
        "moved every slot of {from} to {to} in {:.1} s under load",
        started.elapsed().as_secs_f64()
    );
    let (mut ok, mut capped, mut other) = (0, 0, Vec::new());
    for c in calls {
        let (r, _) = c.await??;
        match r.status {
            200 => ok += 1,
            429 => capped += 1,
            _ => other.push(r.body),
        }
    }
    assert_eq!(redis.primary_of(&record).await?, to, "the key's slot moved");
    assert!(other.is_empty(), "calls refused during the move: {other:?}");
    let recorded = stack.ledger().await?.key_spend(&token.key_id).await?.total;
    let moved: u64 = upstream.moved().iter().map(|m| m.units * 10_000).sum();
    println!("resharding: {ok} charged, {capped} capped; moved {moved}, recorded {recorded}");
    assert_eq!(moved, recorded, "counted once, none lost");
    assert_eq!(recorded, ok * 1_000_000);
    second.shutdown().await;
    proxy.shutdown().await;
    Ok(())
}
