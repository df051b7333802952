//! Redis killed (fail closed, counters intact after an AOF restart) and Redis stalled.

use anyhow::Result;
use keybrake_e2e::{
    http, payment_intent,
    stack::{Stack, eventually},
    upstream::{Mode, RecordingUpstream},
};
use keybrake_ledger::PolicyTag;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_fails_closed_and_a_restart_recovers_with_counters_intact() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::builder().durable_redis().start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let charge = || {
        let bearer = bearer.clone();
        async move {
            payment_intent(
                proxy.addr,
                &bearer,
                b"amount=10000&currency=usd&confirm=true",
            )
            .await
        }
    };
    for _ in 0..2 {
        assert_eq!(charge().await?.status, 200);
    }

    stack.redis.kill();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = charge().await?;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "accounting_unavailable");
    }
    println!(
        "Redis down: 20 calls refused in {:.0} ms, none forwarded",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "a call was forwarded while Redis was down"
    );
    // A key the operator cannot reconcile says so on the object, not only in the log.
    stack
        .cluster
        .apply_ok(
            &keybrake_e2e::example("stripe-run-key.yaml")
                .replace("billing-agent-run-7f3a", "while-redis-is-down"),
        )
        .await?;
    let keys = kube::Api::<keybrake_crds::VaultKey>::namespaced(stack.client.clone(), "billing");
    let ready = eventually("the key to show the Redis failure", 20, || async {
        let vk = keys.get("while-redis-is-down").await.ok()?;
        let c = vk
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.reason == "RedisUnavailable").then_some(c)
    })
    .await?;
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("cannot reach Redis"),
        "{}",
        ready.message
    );
    let described = stack
        .cluster
        .kubectl_ok(&["describe", "vk", "-n", "billing", "while-redis-is-down"])
        .await?;
    assert!(described.contains("RedisUnavailable"), "{described}");

    stack.redis.restart().await?;
    stack
        .key_in_phase(
            "billing",
            "while-redis-is-down",
            keybrake_crds::KeyPhase::Active,
        )
        .await?;
    let restarted = std::time::Instant::now();
    eventually("the proxy to recover on its own", 15, || async {
        (charge().await.ok()?.status == 200).then_some(())
    })
    .await?;
    println!(
        "recovered {:.0} ms after Redis came back, without a proxy restart",
        restarted.elapsed().as_secs_f64() * 1000.0
    );
    let spend = stack
        .ledger()
        .await?
        .policy_spend(&PolicyTag::of("billing", "stripe"))
        .await?;
    assert_eq!(
        spend.total, 300_000_000,
        "the counters survived the kill (AOF) and count the new call"
    );
    assert_eq!(upstream.requests().len(), 3);

    // A revoke through the API while Redis is down is a 503 that says so, never a 200 that did
    // not reach Redis; the revocation stays recorded and the retried DELETE finishes it.
    let admin = format!("Bearer {}", stack.cluster.tokens().await?.admin);
    let delete = || async {
        http(
            proxy.addr,
            "DELETE",
            "/vault/keys/billing-agent-run-7f3a?namespace=billing",
            &[("Authorization", admin.as_str())],
            b"",
        )
        .await
    };
    stack.redis.kill();
    let r = delete().await?;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("retry the DELETE"), "{}", r.body);
    stack.redis.restart().await?;
    eventually("the retried DELETE to revoke in Redis", 15, || async {
        (delete().await.ok()?.status == 200).then_some(())
    })
    .await?;
    let r = charge().await?;
    assert_eq!(r.json()["error"]["code"], "vault_key_revoked", "{}", r.body);
    assert_eq!(upstream.requests().len(), 3);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_turns_calls_into_refusals_not_unaccounted_forwards() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    // Redis stops answering for 2 s (single-threaded: every client waits).
    let mut conn = stack.redis.connect().await?;
    let stall = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("2")
            .query_async::<()>(&mut conn)
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let r = payment_intent(
        proxy.addr,
        &bearer,
        b"amount=10000&currency=usd&confirm=true",
    )
    .await?;
    println!(
        "stalled Redis: refused after {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "accounting_unavailable");
    assert!(
        upstream.requests().is_empty(),
        "a call went out while its reservation could not be made"
    );
    let _ = stall.await;
    // Once Redis answers again (and the breaker's cool-off is over), calls pass and are counted.
    eventually("calls to pass again", 10, || async {
        let r = payment_intent(
            proxy.addr,
            &bearer,
            b"amount=10000&currency=usd&confirm=true",
        )
        .await
        .ok()?;
        (r.status == 200).then_some(())
    })
    .await?;
    assert_eq!(
        stack
            .ledger()
            .await?
            .policy_spend(&PolicyTag::of("billing", "stripe"))
            .await?
            .total,
        100_000_000
    );
    assert_eq!(upstream.requests().len(), 1);
    proxy.shutdown().await;
    Ok(())
}

/// A settle that fails is retried, not left to the sweeper: the sweeper keeps only the estimate,
/// so money the vendor's answer showed above it would be lost from the counters (a review of the
/// ledger model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_during_a_redis_stall_is_retried_until_it_lands() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    upstream.set_mode(Mode::Slow(std::time::Duration::from_millis(1500)));
    let (stack, proxy) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let call = tokio::spawn({
        let addr = proxy.addr;
        async move { payment_intent(addr, &bearer, b"amount=10000&currency=usd&confirm=true").await }
    });
    // The call is at the vendor; Redis stalls past the vendor's answer, so the first settle
    // times out (500 ms) and only a retry can land.
    eventually("the call to reach the vendor", 10, || async {
        (!upstream.requests().is_empty()).then_some(())
    })
    .await?;
    let mut conn = stack.redis.connect().await?;
    let stall = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("2.5")
            .query_async::<()>(&mut conn)
            .await
    });
    let r = call.await??;
    let _ = stall.await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ledger = stack.ledger().await?;
    let tag = PolicyTag::of("billing", "stripe");
    let open: u64 = redis::cmd("ZCARD")
        .arg(ledger.keys().policy(&tag).reservations())
        .query_async(&mut stack.redis.connect().await?)
        .await?;
    assert_eq!(open, 0, "the reservation was left to the sweeper");
    assert_eq!(ledger.policy_spend(&tag).await?.total, 100_000_000);
    proxy.shutdown().await;
    Ok(())
}
