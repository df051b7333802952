//! The seeds' workflows end to end, with the official SDKs and real kubectl: the Hatchet fan-out
//! (one key shared by 50 parallel child runs, run-scoped Idempotency-Keys, a retried run) and the
//! Haystack agent loop (Twilio and Resend tools with separate keys and caps).

use std::collections::BTreeMap;

use anyhow::Result;
use keybrake_e2e::{
    example, payment_intent,
    sdk::{LocalStripe, run},
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};
use keybrake_ledger::{PolicyTag, Token};

async fn env_of(stack: &Stack, ns: &str, name: &str) -> Result<BTreeMap<String, String>> {
    stack.active_key_env(ns, name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hatchet_fan_out_of_fifty_children_stops_at_the_cap_and_a_retried_run_charges_nothing_new()
-> Result<()> {
    let (stack, proxy) = Stack::start_with_proxy().await?;
    hatchet_fan_out(stack, proxy).await
}

/// The seed's Hatchet fan-out, unchanged, with the deployables on a three-primary Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hatchet_fan_out_on_a_redis_cluster() -> Result<()> {
    let (stack, proxy) = Stack::builder().redis_cluster(0).start_with_proxy().await?;
    hatchet_fan_out(stack, proxy).await
}

async fn hatchet_fan_out(stack: Stack, proxy: keybrake_proxy::Running) -> Result<()> {
    let localstripe = LocalStripe::start().await?;
    stack
        .cluster
        .apply_ok(
            &with_upstream(&example("stripe-policy.yaml"), &localstripe.url()).replace(
                "sk_test_replace_me_with_the_real_secret_key",
                "sk_test_localstripe",
            ),
        )
        .await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    let env = env_of(&stack, "billing", "billing-agent-run-7f3a").await?;

    // 50 children x 3 customers x $20 = $3000 wanted; the run's key allows $500 a day.
    let first = run("hatchet_fanout.py", &["50", "3", "2000", "run-7f3a"], &env).await?;
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    let ledger = stack.ledger().await?;
    let spend = ledger.key_spend(&token.key_id).await?;
    println!(
        "fan-out: {} charged, {} refused at the cap, {} counted of a $500 cap",
        first["charged"],
        first["capped"],
        keybrake_crds::Usd::from_micros(spend.total).unwrap()
    );
    assert_eq!(first["charged"], 25, "{first}");
    assert_eq!(first["capped"], 125);
    assert_eq!(spend.total, 500_000_000, "no overshoot, nothing lost");

    // Hatchet retries the run: same run id, same Idempotency-Keys.
    let retry = run("hatchet_fanout.py", &["50", "3", "2000", "run-7f3a"], &env).await?;
    assert_eq!(
        retry["ids"], first["ids"],
        "the retried run got the same PaymentIntents back"
    );
    assert_eq!(
        ledger.key_spend(&token.key_id).await?.total,
        500_000_000,
        "the retried run charged nothing new"
    );
    let policy = ledger
        .policy_spend(&PolicyTag::of("billing", "stripe"))
        .await?;
    assert_eq!(policy.total, 500_000_000);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haystack_agent_loop_is_capped_per_tool() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    stack.apply_agents_policies(&upstream.url()).await?;
    // $0.05 of texts (4 one-segment texts at $0.0113) and $0.003 of email (3 at $0.0009).
    stack
        .cluster
        .apply_ok(
            &example("twilio-sms-key.yaml").replace("dailyUsdCap: 50", "dailyUsdCap: \"0.05\""),
        )
        .await?;
    stack
        .cluster
        .apply_ok(
            &example("resend-email-key.yaml").replace("dailyUsdCap: 10", "dailyUsdCap: \"0.003\""),
        )
        .await?;
    let mut env = env_of(&stack, "agents", "haystack-notifier-run-41").await?;
    env.extend(env_of(&stack, "agents", "haystack-mailer-run-41").await?);
    let log = run("haystack_agent.py", &["8"], &env).await?;
    println!("agent loop: {log}");
    assert_eq!(
        (log["sms_sent"].as_u64(), log["sms_capped"].as_u64()),
        (Some(4), Some(4)),
        "{log}"
    );
    assert_eq!(
        (log["emails_sent"].as_u64(), log["emails_capped"].as_u64()),
        (Some(3), Some(5)),
        "{log}"
    );
    assert_eq!(
        upstream.requests().len(),
        7,
        "only the calls within the caps reached the vendors"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_kubectl_patch_and_delete_refuses_the_next_call() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    let run_key = stack.apply_stripe_run_key(&upstream.url()).await?["STRIPE_API_KEY"].clone();
    stack
        .cluster
        .apply_ok(&example("stripe-worker-key.yaml"))
        .await?;
    let worker_key = env_of(&stack, "billing", "billing-worker").await?["STRIPE_API_KEY"].clone();
    let refused_after = |key: String, started: std::time::Instant| {
        let addr = proxy.addr;
        async move {
            let bearer = format!("Bearer {key}");
            eventually("the first refusal", 10, || async {
                let r = payment_intent(addr, &bearer, b"amount=0&currency=usd")
                    .await
                    .ok()?;
                (r.status == 401).then_some(started.elapsed())
            })
            .await
        }
    };
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    let by_patch = refused_after(run_key, std::time::Instant::now()).await?;
    stack
        .cluster
        .kubectl_ok(&["delete", "vk", "-n", "billing", "billing-worker"])
        .await?;
    let by_delete = refused_after(worker_key, std::time::Instant::now()).await?;
    println!(
        "revocation, command returned to first refusal: kubectl patch {:.0} ms, kubectl delete {:.0} ms",
        by_patch.as_secs_f64() * 1000.0,
        by_delete.as_secs_f64() * 1000.0
    );
    proxy.shutdown().await;
    Ok(())
}
