//! The examples users copy (`examples/`), run with the real framework packages against the stack:
//! the figures they print are checked against what the upstream moved and the audit trail.

use std::collections::BTreeMap;

use anyhow::Result;
use keybrake_e2e::{
    example, identities,
    sdk::{LocalStripe, run_python},
    stack::Stack,
    upstream::RecordingUpstream,
    with_upstream, workspace_root,
};

/// The example policies in `billing`, Stripe on localstripe and Twilio on the sandbox, and the
/// issuer RBAC; the environment an example gets.
async fn billing_stack() -> Result<(
    Stack,
    keybrake_proxy::Running,
    LocalStripe,
    RecordingUpstream,
    BTreeMap<String, String>,
)> {
    let localstripe = LocalStripe::start().await?;
    let sandbox = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
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
        .apply_ok(
            &with_upstream(&example("twilio-policy.yaml"), &sandbox.url())
                .replace("namespace: agents", "namespace: billing"),
        )
        .await?;
    stack.cluster.apply_ok(identities::RBAC).await?;
    let env = BTreeMap::from([
        ("KEYBRAKE_URL".to_owned(), format!("http://{}", proxy.addr)),
        (
            "KEYBRAKE_API_KEY".to_owned(),
            stack.cluster.tokens().await?.billing_worker.clone(),
        ),
    ]);
    Ok((stack, proxy, localstripe, sandbox, env))
}

/// The seed's Haystack agent: with `raise_on_tool_invocation_failure=True` the first cap refusal
/// stops the tool loop; by default the model reads each refusal as a message and the loop runs
/// to its step limit, every call past the cap refused at the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_haystack_agent_stops_at_the_cap_or_reads_the_refusals() -> Result<()> {
    let (stack, proxy, _localstripe, sandbox, env) = billing_stack().await?;
    let script = workspace_root().join("examples/haystack/billing_agent.py");
    // 8 overdue accounts x $100 against a $250 budget.
    let stop = run_python(&script, &["stop", "250", "8", "10000"], &env).await?;
    println!("haystack, raise_on_tool_invocation_failure=True: {stop}");
    assert_eq!(stop["stopped"], true, "{stop}");
    assert_eq!(stop["cap_exhausted"], true, "{stop}");
    let go_on = run_python(&script, &["continue", "250", "8", "10000"], &env).await?;
    println!("haystack, default: {go_on}");
    assert_eq!(go_on["stopped"], false, "{go_on}");
    assert_eq!(go_on["charges"], 2, "$250 holds two $100 charges: {go_on}");
    assert_eq!(go_on["cap_refusals_seen_by_model"], 6, "{go_on}");
    // Per run: at most the budget counted, and the run label in the audit trail.
    let ledger = stack.ledger().await?;
    let keys = kube::Api::<keybrake_crds::VaultKey>::namespaced(stack.client.clone(), "billing");
    for run in [&stop, &go_on] {
        let vk = keys
            .get(run["stripe_key"].as_str().unwrap_or_default())
            .await?;
        let key =
            keybrake_ledger::KeyId::parse(&vk.status.and_then(|s| s.key_id).unwrap_or_default())?;
        let spend = ledger.key_spend(&key).await?;
        assert_eq!(spend.total, 200_000_000, "{run}");
        let entries = ledger.audit(&key.tag(), None, None, 1000).await?;
        let label = format!(
            "haystack-billing/{}",
            run["run_id"].as_str().unwrap_or_default()
        );
        assert!(
            entries.iter().any(|e| e.run_label == label),
            "no audit entry for {label}"
        );
    }
    // The SMS tool had its own key: one text in the run that went on.
    assert_eq!(
        sandbox.requests().len(),
        1,
        "one SMS, from the run that reached it"
    );
    proxy.shutdown().await;
    Ok(())
}

/// PaymentIntents localstripe holds: (count, sum of amounts).
async fn localstripe_intents(localstripe: &LocalStripe) -> Result<(usize, u64)> {
    let r = keybrake_e2e::http(
        format!("127.0.0.1:{}", localstripe.port).parse()?,
        "GET",
        "/v1/payment_intents?limit=100",
        &[("Authorization", "Bearer sk_test_localstripe")],
        b"",
    )
    .await?;
    let data = r.json()["data"].as_array().cloned().unwrap_or_default();
    let sum = data.iter().filter_map(|pi| pi["amount"].as_u64()).sum();
    Ok((data.len(), sum))
}

/// The Hatchet pattern on Celery with a Redis broker and a real worker: the children of a run
/// share one key, a step retried after its worker died is not billed twice, the cap is final,
/// and revoking the key mid-run stops every child still to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_celery_run_shares_one_key_retries_once_and_stops_on_revoke() -> Result<()> {
    let (stack, proxy, localstripe, _sandbox, mut env) = billing_stack().await?;
    env.insert(
        "CELERY_BROKER".to_owned(),
        format!("redis://127.0.0.1:{}/5", stack.redis.port),
    );
    let dir = workspace_root().join("examples/celery");
    let _worker = tokio::process::Command::new("python3")
        .args([
            "-m",
            "celery",
            "-A",
            "billing_flow",
            "worker",
            "--pool=threads",
        ])
        .args(["--concurrency=8", "--without-gossip", "--without-mingle"])
        .args(["--without-heartbeat", "--loglevel=warning"])
        .current_dir(&dir)
        .env_clear()
        .envs(&env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let script = dir.join("billing_flow.py");
    // 20 children x 3 customers x $20 = $1200 wanted of a $500 budget.
    let first = run_python(&script, &["20", "3", "2000", "500", "run-1"], &env).await?;
    println!("celery run: {first}");
    assert_eq!(first["charged"], 25, "{first}");
    assert_eq!(first["capped"], 35, "{first}");
    assert!(first["retried_and_replayed"].as_u64() > Some(0), "{first}");
    let (intents, moved) = localstripe_intents(&localstripe).await?;
    assert_eq!(
        (intents, moved),
        (25, 50_000),
        "each charge once at the vendor, $500 in all"
    );

    // Revoked mid-run: the children still to run are all refused. A child whose charge went out
    // just before the revoke and whose retry came after it reports "revoked", but its charge was
    // counted: what the vendor holds is exactly what the key recorded.
    let second = run_python(&script, &["10", "3", "1000", "500", "run-2", "5"], &env).await?;
    println!("celery run revoked mid-way: {second}");
    let (charged, revoked) = (
        second["charged"].as_u64().unwrap_or(0),
        second["revoked"].as_u64().unwrap_or(0),
    );
    assert!(charged >= 5 && revoked > 0, "{second}");
    assert_eq!(charged + revoked, 30, "{second}");
    let keys = kube::Api::<keybrake_crds::VaultKey>::namespaced(stack.client.clone(), "billing");
    let vk = keys
        .get(second["key_id"].as_str().unwrap_or_default())
        .await?;
    let key = keybrake_ledger::KeyId::parse(&vk.status.and_then(|s| s.key_id).unwrap_or_default())?;
    let spend = stack.ledger().await?.key_spend(&key).await?;
    let (intents, moved) = localstripe_intents(&localstripe).await?;
    assert_eq!(
        (intents as u64 - 25, moved - 50_000),
        (spend.calls, spend.total / 10_000),
        "every charge the vendor holds was counted, and nothing after the revoke reached it"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A LangGraph agent: by default its ToolNode lets the cap refusal end the run; with
/// `handle_tool_errors=True` the model reads each refusal and the proxy holds the run to its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_langgraph_agent_stops_at_the_cap_by_default() -> Result<()> {
    let (stack, proxy, _localstripe, _sandbox, env) = billing_stack().await?;
    let script = workspace_root().join("examples/langgraph/billing_agent.py");
    let stop = run_python(&script, &["default", "250", "8", "10000"], &env).await?;
    println!("langgraph, default ToolNode: {stop}");
    assert_eq!(
        (&stop["stopped"], &stop["cap_exhausted"]),
        (&true.into(), &true.into()),
        "{stop}"
    );
    let go_on = run_python(&script, &["handle", "250", "8", "10000"], &env).await?;
    println!("langgraph, handle_tool_errors=True: {go_on}");
    assert_eq!(go_on["stopped"], false, "{go_on}");
    assert_eq!(go_on["charges"], 2, "{go_on}");
    assert_eq!(go_on["cap_refusals_seen_by_model"], 6, "{go_on}");
    let ledger = stack.ledger().await?;
    let keys = kube::Api::<keybrake_crds::VaultKey>::namespaced(stack.client.clone(), "billing");
    for run in [&stop, &go_on] {
        let vk = keys.get(run["key_id"].as_str().unwrap_or_default()).await?;
        let key =
            keybrake_ledger::KeyId::parse(&vk.status.and_then(|s| s.key_id).unwrap_or_default())?;
        assert_eq!(ledger.key_spend(&key).await?.total, 200_000_000, "{run}");
    }
    proxy.shutdown().await;
    Ok(())
}

/// The seeds' fan-out in Node with the official Stripe SDK and plain promises: 20 children share
/// one key, each child's first step is retried after its charge went out and is not billed twice,
/// and the cap is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_fan_out_shares_one_key_and_never_bills_a_retry_twice() -> Result<()> {
    let (_stack, proxy, localstripe, _sandbox, env) = billing_stack().await?;
    let dir = workspace_root().join("examples/node");
    let out = tokio::process::Command::new("node")
        .args(["fanout.mjs", "20", "3", "2000", "500", "node-run-1"])
        .current_dir(&dir)
        .env_clear()
        .envs(&env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "fanout.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!("node fan-out: {summary}");
    assert_eq!(summary["charged"], 25, "{summary}");
    assert!(
        summary["retried_and_replayed"].as_u64() > Some(0),
        "{summary}"
    );
    assert!(summary["capped"].as_u64() > Some(0), "{summary}");
    assert_eq!(
        localstripe_intents(&localstripe).await?,
        (25, 50_000),
        "each charge once at the vendor, $500 in all"
    );
    proxy.shutdown().await;
    Ok(())
}
