//! A proxy replica SIGKILLed with calls in flight: another serves on, nothing goes unaccounted.

use anyhow::Result;
use keybrake_e2e::{
    FORM, http, payment_intent,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
};
use keybrake_ledger::PolicyTag;

/// The `keybrake-proxy` binary next to this test binary (`cargo test --workspace` builds it).
fn proxy_binary() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("no target folder"))?;
    let bin = dir.join("keybrake-proxy");
    anyhow::ensure!(
        bin.exists(),
        "{} not built: run `cargo build -p keybrake-proxy`",
        bin.display()
    );
    Ok(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_with_calls_in_flight_loses_no_spend_and_another_replica_serves_on()
-> Result<()> {
    use keybrake_e2e::upstream::Mode;
    let upstream = RecordingUpstream::start().await?;
    let (stack, replica) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    // Every vendor call takes 1.5 s, so the calls are still in flight when the proxy dies.
    upstream.set_mode(Mode::Slow(std::time::Duration::from_millis(1500)));

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut doomed = std::process::Command::new(proxy_binary()?)
        .env(
            "KUBECONFIG",
            stack
                .cluster
                .kubeconfig_as(&stack.cluster.tokens().await?.proxy)?,
        )
        .env("KEYBRAKE_PLAINTEXT", "true")
        .env("REDIS_URL", stack.redis.url())
        .env("KEYBRAKE_REDIS_PREFIX", &stack.prefix)
        .env("KEYBRAKE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYBRAKE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("KEYBRAKE_UPSTREAM_TIMEOUT_SECS", "2")
        .env("KEYBRAKE_SWEEP_GRACE_SECS", "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let doomed_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    eventually("the second proxy to be ready", 20, || async {
        let r = http(
            format!("127.0.0.1:{admin}").parse().ok()?,
            "GET",
            "/readyz",
            &[],
            b"",
        )
        .await
        .ok()?;
        (r.status == 200).then_some(())
    })
    .await?;

    let calls: Vec<_> = (0..200)
        .map(|_| {
            let bearer = bearer.clone();
            tokio::spawn(async move {
                payment_intent(
                    doomed_addr,
                    &bearer,
                    b"amount=100&currency=usd&confirm=true",
                )
                .await
            })
        })
        .collect();
    // Kill once the vendor has most of them, before any answers (1.5 s each).
    let seen_at_kill = eventually("the calls to reach the vendor", 10, || async {
        let n = upstream.requests().len();
        (n >= 150).then_some(n)
    })
    .await?;
    doomed.kill()?;
    doomed.wait()?;
    let killed_at = std::time::Instant::now();
    // Only the dead replica has called the vendor so far.
    let seen_from_dead = upstream.requests().len();
    let mut answered = 0;
    for c in calls {
        if matches!(c.await?, Ok(r) if r.status == 200) {
            answered += 1;
        }
    }

    // The other replica serves on, for the same key, at once.
    let headers = [("Authorization", bearer.as_str()), FORM];
    let served: Vec<u16> = futures::future::join_all((0..5).map(|_| {
        http(
            replica.addr,
            "POST",
            "/v1/payment_intents",
            &headers,
            b"amount=100&currency=usd&confirm=true",
        )
    }))
    .await
    .into_iter()
    .map(|r| r.map_or(0, |r| r.status))
    .collect();
    assert_eq!(served, vec![200; 5], "the surviving replica kept serving");

    // Its sweeper closes the dead replica's reservations as unknown, keeping them counted.
    let ledger = stack.ledger().await?;
    let tag = PolicyTag::of("billing", "stripe");
    // Done when no reservation is open: every call the dead replica reserved (some never reached
    // the vendor before the kill) is closed.
    let redis = redis::Client::open(stack.redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let open_reservations = ledger.keys().policy(&tag).reservations();
    let unknown = eventually(
        "the sweeper to close the dead replica's reservations",
        30,
        || async {
            let open: u64 = redis::cmd("ZCARD")
                .arg(&open_reservations)
                .query_async(&mut redis.clone())
                .await
                .ok()?;
            let audit = ledger.audit(&tag, None, None, 100_000).await.ok()?;
            let unknown = audit.iter().filter(|e| e.outcome == "unknown").count();
            (open == 0 && unknown + answered >= seen_from_dead).then_some(unknown)
        },
    )
    .await?;
    let seen = upstream.requests().len() as u64;
    let id = keybrake_ledger::Token::parse_bearer(&env["STRIPE_API_KEY"])?.key_id;
    let recorded = ledger.key_spend(&id).await?.total;
    println!(
        "proxy SIGKILLed with 200 calls in flight ({seen_at_kill} at the vendor, {answered} answered): \
         swept {unknown} as unknown {:.1}s later; the vendor saw {seen} calls (${seen}), recorded ${:.2}",
        killed_at.elapsed().as_secs_f64(),
        recorded as f64 / 1e6
    );
    assert!(
        recorded >= seen * 1_000_000,
        "recorded {recorded} < what the vendor saw {seen}"
    );
    assert!(unknown >= 1, "the audit trail marks the unknown outcomes");
    replica.shutdown().await;
    Ok(())
}
