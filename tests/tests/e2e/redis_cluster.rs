//! The operator and the proxy on a real three-primary Redis Cluster (`KEYBRAKE_REDIS_MODE=
//! cluster`, `REDIS_URL` listing the seed nodes): policies whose slots live on different
//! primaries all work, and 500 callers through two proxies never overshoot a cap.

use anyhow::Result;
use keybrake_e2e::{example, http, stack::Stack, upstream::RecordingUpstream, with_upstream};
use keybrake_ledger::{PolicyTag, Token};

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// The seeds' policy and run key in namespace `ns`.
fn in_namespace(yaml: &str, ns: &str) -> String {
    yaml.replace("namespace: billing", &format!("namespace: {ns}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_on_every_primary_work_and_500_callers_never_overshoot() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy_on_redis_cluster(0).await?;
    // Five teams: their policies' slots spread over the three primaries.
    let teams: Vec<String> = (1..=5).map(|i| format!("team{i}")).collect();
    let mut slots = std::collections::BTreeSet::new();
    for ns in &teams {
        stack
            .cluster
            .apply(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
            ))
            .await?
            .ok()?;
        let policy = with_upstream(&example("stripe-policy.yaml"), &upstream.url());
        stack
            .cluster
            .apply(&in_namespace(&policy, ns))
            .await?
            .ok()?;
        stack
            .cluster
            .apply(&in_namespace(&example("stripe-run-key.yaml"), ns))
            .await?
            .ok()?;
        slots.insert(
            redis_slot(&format!("{}:{}", stack.prefix, PolicyTag::of(ns, "stripe"))) * 3 / 16384,
        );
    }
    println!("five policies over {} of 3 primaries", slots.len());
    assert!(
        slots.len() >= 2,
        "the test needs policies on more than one primary"
    );
    let mut bearers = Vec::new();
    for ns in &teams {
        let env = stack.active_key_env(ns, "billing-agent-run-7f3a").await?;
        bearers.push(format!("Bearer {}", env["STRIPE_API_KEY"]));
    }
    for b in &bearers {
        let r = http(
            proxy.addr,
            "POST",
            "/v1/payment_intents",
            &[("Authorization", b.as_str()), FORM],
            b"amount=100&currency=usd&confirm=true",
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // 500 callers on one key ($500 a day, $3 each) through two proxy replicas.
    let second = stack.start_proxy().await?;
    let addrs = [proxy.addr, second.addr];
    let mut calls = Vec::new();
    for i in 0..500 {
        let (addr, bearer) = (addrs[i % 2], bearers[0].clone());
        calls.push(tokio::spawn(async move {
            http(
                addr,
                "POST",
                "/v1/payment_intents",
                &[("Authorization", bearer.as_str()), FORM],
                b"amount=300&currency=usd&confirm=true",
            )
            .await
        }));
    }
    let (mut ok, mut capped) = (0, 0);
    for c in calls {
        match c.await??.status {
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
    second.shutdown().await;
    proxy.shutdown().await;
    Ok(())
}

/// CRC16 (XMODEM) of the hash tag, mod 16384: the Redis Cluster slot of `{tag}` keys.
fn redis_slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for b in tag.bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}
