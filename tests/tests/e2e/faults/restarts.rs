//! The operator or the API server goes away: revocations still bite, nothing is reissued or rolled.

use anyhow::Result;
use keybrake_e2e::{
    example, payment_intent,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_or_a_delete_while_the_operator_is_down_is_refused_at_once() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    // A second key, to be deleted outright.
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml").replace("billing-agent-run-7f3a", "second-run"))
        .await?;
    let second = stack.active_key_env("billing", "second-run").await?;
    let charge = |key: String| async move {
        let bearer = format!("Bearer {key}");
        payment_intent(proxy.addr, &bearer, b"amount=100&currency=usd&confirm=true").await
    };
    assert_eq!(charge(env["STRIPE_API_KEY"].clone()).await?.status, 200);
    assert_eq!(charge(second["STRIPE_API_KEY"].clone()).await?.status, 200);
    let secret_before = stack
        .secret_data("billing", "billing-agent-run-7f3a")
        .await?;

    stack.stop_operator().await;
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    // The finalizer would wait for the operator: an admin removes it, and the key is gone.
    stack
        .patch_key_with_kubectl(
            "billing",
            "second-run",
            r#"{"metadata":{"finalizers":null}}"#,
        )
        .await?;
    stack
        .cluster
        .kubectl_ok(&[
            "delete",
            "vk",
            "second-run",
            "-n",
            "billing",
            "--wait=false",
        ])
        .await?;
    let started = std::time::Instant::now();
    let revoked = eventually("the revoked key to be refused", 5, || async {
        let r = charge(env["STRIPE_API_KEY"].clone()).await.ok()?;
        (r.status == 401).then_some(r)
    })
    .await?;
    let gone = eventually("the deleted key to be refused", 5, || async {
        let r = charge(second["STRIPE_API_KEY"].clone()).await.ok()?;
        (r.status == 401).then_some(r)
    })
    .await?;
    println!(
        "operator down: revoked and deleted keys refused within {:.0} ms ({} / {})",
        started.elapsed().as_secs_f64() * 1000.0,
        revoked.json()["error"]["code"],
        gone.json()["error"]["code"]
    );
    assert_eq!(revoked.json()["error"]["code"], "vault_key_revoked");
    assert_eq!(gone.json()["error"]["code"], "vault_key_invalid");
    assert!(gone.body.contains("no longer exists"), "{}", gone.body);
    let forwarded = upstream.requests().len();
    for key in [&env["STRIPE_API_KEY"], &second["STRIPE_API_KEY"]] {
        assert_eq!(charge(key.clone()).await?.status, 401);
    }
    assert_eq!(
        upstream.requests().len(),
        forwarded,
        "a refused key reached the vendor"
    );
    // The proxy revoked both in Redis itself, so the script refuses them from now on.
    let ledger = stack.ledger().await?;
    for key in [&env["STRIPE_API_KEY"], &second["STRIPE_API_KEY"]] {
        let id = keybrake_ledger::Token::parse_bearer(key)?.key_id;
        assert_eq!(ledger.key_record(&id).await?.map(|r| r.revoked), Some(true));
        assert_eq!(
            ledger.key_spend(&id).await?.total,
            1_000_000,
            "the refused calls released their reservations"
        );
    }

    // The operator returns: the revocation is finished (Secret deleted), nothing reissued.
    stack.start_operator().await?;
    stack
        .key_in_phase(
            "billing",
            "billing-agent-run-7f3a",
            keybrake_crds::KeyPhase::Revoked,
        )
        .await?;
    eventually("the revoked key's Secret to be deleted", 15, || async {
        stack
            .secret_data("billing", "billing-agent-run-7f3a")
            .await
            .err()
            .map(|_| ())
    })
    .await?;
    assert!(secret_before.contains_key("STRIPE_API_KEY"));
    assert_eq!(charge(env["STRIPE_API_KEY"].clone()).await?.status, 401);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_reissues_nothing_rolls_nothing_and_keys_keep_working() -> Result<()>
{
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::builder().start_with_proxy().await?;
    stack
        .cluster
        .apply_ok(&with_upstream(
            &example("stripe-policy.yaml"),
            &upstream.url(),
        ))
        .await?;
    stack
        .cluster
        .apply_ok(&keybrake_e2e::busybox_deployment("billing-worker", ""))
        .await?;
    stack
        .cluster
        .apply_ok(&example("stripe-worker-key.yaml"))
        .await?;
    stack
        .key_in_phase("billing", "billing-worker", keybrake_crds::KeyPhase::Active)
        .await?;
    let before = stack
        .secret_data("billing", "billing-worker-stripe")
        .await?;
    let bearer = format!("Bearer {}", before["STRIPE_API_KEY"]);
    let charge = || async {
        payment_intent(proxy.addr, &bearer, b"amount=100&currency=usd&confirm=true").await
    };
    assert_eq!(charge().await?.status, 200);

    // The API server goes away for a moment and comes back with its objects; the watches of the
    // operator and the proxy get 410 for their old resourceVersions and list again.
    stack.cluster.restart().await?;
    let restarted = std::time::Instant::now();
    let through = charge().await?;
    assert_eq!(
        through.status, 200,
        "keys work through the restart (a failed Secret read keeps the known credentials): {}",
        through.body
    );
    stack
        .cluster
        .kubectl_ok(&["label", "vk", "billing-worker", "-n", "billing", "poke=1"])
        .await?;
    // A reconcile after the restart has run once the operator answers the label change: give it
    // the same quiet second the no-op reconcile test uses.
    eventually("the operator to be watching again", 20, || async {
        let out = stack
            .cluster
            .kubectl(
                &[
                    "get",
                    "vk",
                    "billing-worker",
                    "-n",
                    "billing",
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                None,
            )
            .await
            .ok()?;
        (out.stdout == "Active").then_some(())
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = stack
        .secret_data("billing", "billing-worker-stripe")
        .await?;
    assert_eq!(after, before, "the restart reissued the token");
    let annotations = stack
        .template_annotations("billing", "billing-worker")
        .await?;
    assert!(
        !annotations.contains_key("keybrake.com/rotated-at"),
        "the restart rolled a workload: {annotations:?}"
    );
    // Revocation still works end to end after the restart.
    stack
        .revoke_with_kubectl("billing", "billing-worker")
        .await?;
    let refused = eventually("the revoked key to be refused", 10, || async {
        let r = charge().await.ok()?;
        (r.status == 401).then_some(r)
    })
    .await?;
    println!(
        "API server restarted: token unchanged, nothing rolled, revocation refused {:.1}s after the restart ({})",
        restarted.elapsed().as_secs_f64(),
        refused.json()["error"]["code"]
    );
    proxy.shutdown().await;
    Ok(())
}
