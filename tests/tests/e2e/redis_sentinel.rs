//! The operator and the proxy on a Sentinel-managed primary and replica
//! (`KEYBRAKE_REDIS_MODE=sentinel`, `REDIS_URL` listing three sentinels): keys work; when the
//! primary is SIGKILLed under load the sentinels promote the replica, calls in the failover
//! window are refused (fail closed) and the next ones go to the new primary; with replica acks
//! nothing counted is lost.

use std::time::Duration;

use anyhow::Result;
use keybrake_e2e::{
    payment_intent, spawn_charges,
    stack::{SENTINEL_MASTER, Stack, eventually},
    upstream::RecordingUpstream,
};
use keybrake_ledger::Token;

/// 300 callers ($1 each) over about a second through two proxies; the primary SIGKILLed a
/// third of the way in. Returns (moved, recorded, refused) for this run.
async fn load_with_the_primary_killed(
    stack: &mut Stack,
    upstream: &RecordingUpstream,
    bearer: &str,
    token: &Token,
    acks: u32,
) -> Result<(u64, u64, usize)> {
    let set = |c: &mut keybrake_proxy::Config| {
        c.redis_replica_acks = acks;
        c.redis_replica_ack_timeout_ms = 200;
    };
    let proxies = [
        stack.start_proxy_with(set).await?,
        stack.start_proxy_with(set).await?,
    ];
    let addrs = [proxies[0].addr, proxies[1].addr];
    let ledger = stack.ledger().await?;
    let recorded_before = ledger.key_spend(&token.key_id).await?.total;
    let moved_before: u64 = upstream.moved().iter().map(|m| m.units * 10_000).sum();
    let calls = spawn_charges(
        &addrs,
        bearer,
        300,
        Duration::from_millis(3),
        b"amount=100&currency=usd&confirm=true",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sentinel = stack
        .redis_sentinel
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no sentinel set"))?;
    let dead = sentinel.primary(SENTINEL_MASTER).await?;
    sentinel.kill(dead)?;
    let killed = std::time::Instant::now();
    // Every call is charged, capped, or refused (503 while no primary can be reached; any other
    // refusal is printed). Whether a refused call moved money is what the figures below decide.
    let (mut refused, mut other) = (0, std::collections::BTreeMap::<String, usize>::new());
    for c in calls {
        let (r, _) = c.await??;
        match r.status {
            200 | 429 => {}
            503 => refused += 1,
            s if s >= 400 => *other.entry(format!("{s} {}", r.body)).or_default() += 1,
            s => anyhow::bail!("a call answered {s} during the failover: {}", r.body),
        }
    }
    if !other.is_empty() {
        println!("other refusals during the failover: {other:?}");
    }
    let sentinel = stack
        .redis_sentinel
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no sentinel set"))?;
    let promoted = eventually("the sentinels to promote the replica", 30, || async {
        sentinel
            .primary(SENTINEL_MASTER)
            .await
            .ok()
            .filter(|p| *p != dead)
    })
    .await?;
    println!(
        "primary {dead} killed; the sentinels promoted {promoted} within {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let recorded = eventually("the new primary to answer", 30, || async {
        ledger.key_spend(&token.key_id).await.ok()
    })
    .await?
    .total
        - recorded_before;
    let moved = upstream
        .moved()
        .iter()
        .map(|m| m.units * 10_000)
        .sum::<u64>()
        - moved_before;
    if acks == 0 {
        // The proxies find the new primary on their own: calls go through again.
        let ok = eventually("calls to go through the new primary", 30, || async {
            let r = payment_intent(addrs[0], bearer, b"amount=100&currency=usd&confirm=true")
                .await
                .ok()?;
            (r.status == 200).then_some(())
        })
        .await;
        ok?;
    }
    for p in proxies {
        p.shutdown().await;
    }
    let sentinel = stack
        .redis_sentinel
        .as_mut()
        .ok_or_else(|| anyhow::anyhow!("no sentinel set"))?;
    sentinel.restart(dead).await?;
    Ok((moved, recorded, refused))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_is_fail_closed_and_loses_nothing_with_acks() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::builder().redis_sentinel().start_with_proxy().await?;
    proxy.shutdown().await;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;

    let (moved, recorded, refused) =
        load_with_the_primary_killed(&mut stack, &upstream, &bearer, &token, 0).await?;
    println!(
        "sentinel failover without replica acks: moved ${:.2}, recorded ${:.2}; {refused} calls refused while failing over",
        moved as f64 / 1e6,
        recorded as f64 / 1e6
    );
    // The old primary is back as a replica of the new one: WAIT 1 can be met again.
    let sentinel = stack
        .redis_sentinel
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no sentinel set"))?;
    eventually("the old primary to rejoin as a replica", 30, || async {
        let primary = sentinel.primary(SENTINEL_MASTER).await.ok()?;
        let replica = sentinel.nodes.iter().find(|n| n.port != primary)?;
        let mut c = replica.connect().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .ok()?;
        (info.contains("role:slave") && info.contains("master_link_status:up")).then_some(())
    })
    .await?;
    let (moved, recorded, refused) =
        load_with_the_primary_killed(&mut stack, &upstream, &bearer, &token, 1).await?;
    println!(
        "sentinel failover with KEYBRAKE_REDIS_REPLICA_ACKS=1: moved ${:.2}, recorded ${:.2}; {refused} calls refused while failing over",
        moved as f64 / 1e6,
        recorded as f64 / 1e6
    );
    assert!(
        moved <= recorded,
        "counted money was lost: moved {moved}, recorded {recorded}"
    );
    Ok(())
}
