//! The upgrade path of docs/install.md, as `kubectl rollout status` would drive it: both
//! operator replicas and the proxy replaced one pod at a time (`maxSurge: 1`,
//! `maxUnavailable: 0`: a new pod must be ready before an old one stops), with calls flowing
//! all along. Nothing is reissued, no call fails, and every call is counted once.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use keybrake_crds::KeyPhase;
use keybrake_e2e::{
    http, payment_intent,
    stack::{LEASE_NAMESPACE, Stack, eventually},
    upstream::RecordingUpstream,
};
use keybrake_ledger::KeyId;
use kube::{Api, ResourceExt};

fn free_addr() -> std::net::SocketAddr {
    keybrake_e2e::redis_server::free_addr().unwrap()
}

/// Waits until an operator replica's /readyz answers 200: what a rollout waits for.
async fn ready(addr: SocketAddr) -> Result<()> {
    eventually(
        &format!("the replica on {addr} to be ready"),
        10,
        || async {
            let r = http(addr, "GET", "/readyz", &[], b"").await.ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_of_operator_and_proxy_loses_no_call_and_reissues_nothing() -> Result<()>
{
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, first_proxy) = Stack::start_with_proxy().await?;
    stack.stop_operator().await;
    // The installed release: two operator replicas electing a leader, two proxies.
    let replica = |stack: &Stack, name: &str| {
        let mut c = stack.operator_config();
        (c.leader_election, c.identity, c.metrics_addr) = (true, name.into(), free_addr());
        c
    };
    let (old_a, old_b) = (replica(&stack, "old-a"), replica(&stack, "old-b"));
    let (addr_a, addr_b) = (old_a.metrics_addr, old_b.metrics_addr);
    let op_a = stack.spawn_replica(old_a);
    let op_b = stack.spawn_replica(old_b);
    let second_proxy = stack.start_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let secrets = Api::<Secret>::namespaced(stack.client.clone(), "billing");
    let before = secrets.get("billing-agent-run-7f3a").await?;

    // Calls flow through whichever proxies the Service has endpoints for.
    let endpoints = Arc::new(Mutex::new(vec![first_proxy.addr, second_proxy.addr]));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let caller = {
        let (endpoints, bearer) = (endpoints.clone(), bearer.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0usize.. {
                if *stopped.borrow() {
                    break;
                }
                let addr = {
                    let e = endpoints.lock().unwrap();
                    e[i % e.len()]
                };
                let headers = [
                    ("Authorization", bearer.as_str()),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ];
                let body = b"amount=100&currency=usd&confirm=true";
                let status = http(addr, "POST", "/v1/payment_intents", &headers, body)
                    .await
                    .map_or(0, |r| r.status);
                statuses.push(status);
                let _ = tokio::time::timeout(Duration::from_millis(20), stopped.changed()).await;
            }
            statuses
        })
    };

    // The proxy, one pod at a time: a new one ready, then an old one out of the endpoints and
    // drained.
    let mut new_proxies = Vec::new();
    for old in [first_proxy, second_proxy] {
        let new = stack.start_proxy().await?;
        endpoints.lock().unwrap().push(new.addr);
        endpoints.lock().unwrap().retain(|a| *a != old.addr);
        old.shutdown().await;
        new_proxies.push(new);
    }
    // The operator, one pod at a time: the new replica must be ready (as a standby too) before
    // the old one stops, or the rollout would never finish.
    let mut new_operators = Vec::new();
    for (old, name) in [(op_a, "new-c"), (op_b, "new-d")] {
        let new = replica(&stack, name);
        let addr = new.metrics_addr;
        let handle = stack.spawn_replica(new);
        ready(addr).await?;
        drop(old.0);
        let _ = old.1.await;
        new_operators.push(handle);
    }
    // The old replicas were serving (ready) until they stopped.
    for addr in [addr_a, addr_b] {
        assert!(http(addr, "GET", "/readyz", &[], b"").await.is_err());
    }
    let leases: Api<Lease> = Api::namespaced(stack.client.clone(), LEASE_NAMESPACE);
    let holder = eventually("a new replica to lead", 20, || async {
        let l = leases.get_opt("keybrake-operator").await.ok()??;
        l.spec?.holder_identity.filter(|h| h.starts_with("new-"))
    })
    .await?;
    println!("the Lease moved to {holder}");
    let _ = stop.send(true);
    let statuses = caller.await?;

    let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed during the upgrade: {failed:?}",
        failed.len(),
        statuses.len()
    );
    println!(
        "{} calls during the rolling upgrade, none failed",
        statuses.len()
    );
    assert_eq!(upstream.requests().len(), statuses.len());
    let after = secrets.get("billing-agent-run-7f3a").await?;
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the key's Secret was rewritten"
    );
    let key_id = KeyId::parse(&env["KEYBRAKE_KEY_ID"])?;
    let spend = stack.ledger().await?.key_spend(&key_id).await?;
    assert_eq!(
        spend.total,
        statuses.len() as u64 * 1_000_000,
        "each call counted once"
    );
    // The new leader reconciles.
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    stack
        .key_in_phase("billing", "billing-agent-run-7f3a", KeyPhase::Revoked)
        .await?;
    let r = payment_intent(
        new_proxies[0].addr,
        &bearer,
        b"amount=100&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(r.json()["error"]["code"], "vault_key_revoked", "{}", r.body);
    stack.assert_deployables_never_refused()?;
    for p in new_proxies {
        p.shutdown().await;
    }
    for (stop, task) in new_operators {
        drop(stop);
        let _ = task.await;
    }
    Ok(())
}
