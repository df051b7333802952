//! The official Python and Node SDKs through the proxy (localstripe for Stripe, the recording
//! upstream for Twilio and Resend), configured only from the Secret the operator wrote (what a
//! pod with `envFrom` would have).

use std::collections::BTreeMap;

use anyhow::Result;
use keybrake_e2e::{
    example,
    sdk::{LocalStripe, run},
    stack::{Stack, eventually},
    with_upstream,
};
use keybrake_ledger::Token;
use serde_json::Value;

async fn secret_env(stack: &Stack, name: &str) -> Result<BTreeMap<String, String>> {
    stack.active_key_env("billing", name).await
}

async fn stripe_stack() -> Result<(Stack, keybrake_proxy::Running, LocalStripe)> {
    let localstripe = LocalStripe::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    let policy = with_upstream(&example("stripe-policy.yaml"), &localstripe.url()).replace(
        "sk_test_replace_me_with_the_real_secret_key",
        "sk_test_localstripe_key",
    );
    stack.cluster.apply_ok(&policy).await?;
    Ok((stack, proxy, localstripe))
}

fn key(name: &str, daily: u32) -> String {
    example("stripe-run-key.yaml")
        .replace("billing-agent-run-7f3a", name)
        .replace("dailyUsdCap: 500", &format!("dailyUsdCap: {daily}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_sdk_charges_then_raises_rate_limit_error_with_cap_exhausted_and_does_not_retry()
-> Result<()> {
    let (stack, proxy, _localstripe) = stripe_stack().await?;
    stack.cluster.apply_ok(&key("run-a", 500)).await?;
    let env = secret_env(&stack, "run-a").await?;
    assert_eq!(env["STRIPE_API_BASE"], format!("http://{}", proxy.addr));
    let out = run("stripe_run.py", &["global", "3", "20000"], &env).await?;
    let results = out.as_array().unwrap();
    assert!(
        results[0]["ok"].as_str().unwrap().starts_with("pi_"),
        "{out}"
    );
    assert_eq!(results[0]["status"], "succeeded");
    assert!(results[1]["ok"].is_string(), "{out}");
    assert_eq!(results[2]["rate_limited"], "cap_exhausted", "{out}");
    assert_eq!(
        results[2]["cap_exhausted"],
        Value::Bool(true),
        "the seeds' `\"cap_exhausted\" in str(e)` check"
    );
    assert_eq!(results[2]["http_status"], 429);
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    let spend = stack.ledger().await?.key_spend(&token.key_id).await?;
    assert_eq!(spend.total, 400_000_000);
    assert_eq!(
        spend.refused, 1,
        "the SDK (with max_network_retries=2) retried the cap hit"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_step_with_the_same_idempotency_keys_is_not_charged_twice() -> Result<()> {
    let (stack, proxy, _localstripe) = stripe_stack().await?;
    stack.cluster.apply_ok(&key("run-b", 500)).await?;
    let env = secret_env(&stack, "run-b").await?;
    let first = run(
        "stripe_run.py",
        &["client", "3", "10000", "hatchet-run-b"],
        &env,
    )
    .await?;
    let retry = run(
        "stripe_run.py",
        &["client", "3", "10000", "hatchet-run-b"],
        &env,
    )
    .await?;
    assert_eq!(
        first, retry,
        "the retried step got the same PaymentIntents back"
    );
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    assert_eq!(
        stack.ledger().await?.key_spend(&token.key_id).await?.total,
        300_000_000,
        "charged once"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_raise_authentication_error_and_other_endpoints_permission_error() -> Result<()>
{
    let (stack, proxy, _localstripe) = stripe_stack().await?;
    stack.cluster.apply_ok(&key("run-c", 500)).await?;
    let env = secret_env(&stack, "run-c").await?;
    let denied = run("stripe_run.py", &["customer", "0", "0"], &env).await?;
    assert_eq!(denied[0]["http_status"], 403, "{denied}");
    assert!(
        denied[0]["permission_error"]
            .as_str()
            .unwrap()
            .contains("endpoint_not_allowed"),
        "{denied}"
    );
    stack.revoke_with_kubectl("billing", "run-c").await?;
    let revoked = eventually("the SDK to see the revoke", 10, || async {
        let out = run("stripe_run.py", &["global", "1", "100"], &env)
            .await
            .ok()?;
        out[0].get("auth_error").is_some().then_some(out)
    })
    .await?;
    assert!(
        revoked[0]["auth_error"]
            .as_str()
            .unwrap()
            .contains("vault_key_revoked"),
        "{revoked}"
    );
    proxy.shutdown().await;
    Ok(())
}

async fn agents_stack() -> Result<(
    Stack,
    keybrake_proxy::Running,
    keybrake_e2e::upstream::RecordingUpstream,
)> {
    let upstream = keybrake_e2e::upstream::RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    stack.apply_agents_policies(&upstream.url()).await?;
    Ok((stack, proxy, upstream))
}

async fn agents_env(stack: &Stack, name: &str) -> Result<BTreeMap<String, String>> {
    stack.active_key_env("agents", name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_sdk_sends_then_raises_twilio_rest_exception_429_at_the_cap() -> Result<()> {
    let (stack, proxy, upstream) = agents_stack().await?;
    // $0.05 a day: two 2-segment texts at $0.0113 a segment fit, a third does not.
    stack
        .cluster
        .apply_ok(
            &example("twilio-sms-key.yaml").replace("dailyUsdCap: 50", "dailyUsdCap: \"0.05\""),
        )
        .await?;
    let env = agents_env(&stack, "haystack-notifier-run-41").await?;
    let out = run("twilio_run.py", &["3", "200"], &env).await?;
    let r = out.as_array().unwrap();
    assert!(r[0]["ok"].as_str().unwrap().starts_with("SM"), "{out}");
    assert_eq!(r[0]["segments"], "2");
    assert!(r[1]["ok"].is_string(), "{out}");
    assert_eq!(
        (r[2]["http_status"].as_u64(), r[2]["error"].as_u64()),
        (Some(429), Some(20429)),
        "{out}"
    );
    assert!(
        r[2]["message"].as_str().unwrap().contains("cap_exhausted"),
        "{out}"
    );
    assert_eq!(upstream.requests().len(), 2);
    assert!(
        upstream.requests()[0].authorization.starts_with("Basic "),
        "the real credentials are injected"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resend_sdk_sends_then_raises_rate_limit_error_at_the_cap() -> Result<()> {
    let (stack, proxy, upstream) = agents_stack().await?;
    // Three recipients at $0.0009: $0.005 allows one email, not two.
    stack
        .cluster
        .apply_ok(
            &example("resend-email-key.yaml").replace("dailyUsdCap: 10", "dailyUsdCap: \"0.005\""),
        )
        .await?;
    let env = agents_env(&stack, "haystack-mailer-run-41").await?;
    assert_eq!(env["RESEND_API_URL"], format!("http://{}", proxy.addr));
    let out = run("resend_run.py", &["2", "3"], &env).await?;
    let r = out.as_array().unwrap();
    assert_eq!(r[0]["ok"].as_str().unwrap().len(), 36, "a Resend id: {out}");
    assert_eq!(r[1]["class"], "RateLimitError", "{out}");
    assert!(
        r[1]["rate_limited"]
            .as_str()
            .unwrap()
            .contains("cap_exhausted"),
        "{out}"
    );
    assert_eq!(upstream.requests().len(), 1);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_sdks_raise_their_own_errors_at_the_cap() -> Result<()> {
    use keybrake_e2e::sdk::run_node;
    let (stack, proxy, _localstripe) = stripe_stack().await?;
    stack.cluster.apply_ok(&key("run-node", 500)).await?;
    let env = secret_env(&stack, "run-node").await?;
    let out = run_node(&["stripe", "3", "20000"], &env).await?;
    let r = out.as_array().unwrap();
    assert!(
        r[0]["ok"].as_str().is_some_and(|id| id.starts_with("pi_")),
        "{out}"
    );
    assert_eq!(
        (
            r[2]["error"].as_str(),
            r[2]["code"].as_str(),
            r[2]["status"].as_u64()
        ),
        (
            Some("StripeRateLimitError"),
            Some("cap_exhausted"),
            Some(429)
        ),
        "{out}"
    );
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    assert_eq!(
        stack
            .ledger()
            .await?
            .key_spend(&token.key_id)
            .await?
            .refused,
        1,
        "Node stripe retried the cap hit"
    );
    proxy.shutdown().await;

    let (stack, proxy, _upstream) = agents_stack().await?;
    stack
        .cluster
        .apply_ok(
            &example("twilio-sms-key.yaml").replace("dailyUsdCap: 50", "dailyUsdCap: \"0.05\""),
        )
        .await?;
    stack
        .cluster
        .apply_ok(
            &example("resend-email-key.yaml").replace("dailyUsdCap: 10", "dailyUsdCap: \"0.005\""),
        )
        .await?;
    let env = agents_env(&stack, "haystack-notifier-run-41").await?;
    let out = run_node(&["twilio", "3", "200"], &env).await?;
    let r = out.as_array().unwrap();
    assert!(r[1]["ok"].is_string(), "{out}");
    assert_eq!(
        (
            r[2]["error"].as_str(),
            r[2]["code"].as_u64(),
            r[2]["status"].as_u64()
        ),
        (Some("RestException"), Some(20429), Some(429)),
        "{out}"
    );
    let mut env = agents_env(&stack, "haystack-mailer-run-41").await?;
    env.retain(|k, _| k.starts_with("RESEND_") || k.starts_with("KEYBRAKE_"));
    let out = run_node(&["resend", "2", "3"], &env).await?;
    let r = out.as_array().unwrap();
    assert!(r[0]["ok"].is_string(), "{out}");
    assert_eq!(
        (r[1]["error"].as_str(), r[1]["status"].as_u64()),
        (Some("daily_quota_exceeded"), Some(429)),
        "{out}"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_raises_authentication_error() -> Result<()> {
    let (stack, proxy, _localstripe) = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&key("run-d", 500).replace("ttl: 2h", "ttl: 3s"))
        .await?;
    let env = secret_env(&stack, "run-d").await?;
    let expired = eventually("the key to expire", 15, || async {
        let out = run("stripe_run.py", &["client", "1", "100"], &env)
            .await
            .ok()?;
        out[0].get("auth_error").is_some().then_some(out)
    })
    .await?;
    assert!(
        expired[0]["auth_error"]
            .as_str()
            .unwrap()
            .contains("vault_key_expired"),
        "{expired}"
    );
    assert_eq!(expired[0]["http_status"], 401);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_intents_cost_their_amount_once_created_or_confirmed() -> Result<()> {
    let (stack, proxy, _localstripe) = stripe_stack().await?;
    let key = example("stripe-run-key.yaml")
        .replace("billing-agent-run-7f3a", "run-confirm")
        .replace("  perCallUsdCap: \"250.00\"\n", "")
        .replace(
            "    - POST /v1/payment_intents\n",
            "    - POST /v1/payment_intents\n    - POST /v1/payment_intents/*/confirm\n",
        );
    stack.cluster.apply_ok(&key).await?;
    let env = secret_env(&stack, "run-confirm").await?;
    // A PaymentIntent costs its amount when it is created, confirmed or not (it could be
    // confirmed client-side, without the proxy); confirming it through the same key then costs
    // nothing more. The second $400 PaymentIntent would pass the $500 cap: refused at creation.
    let out = run("stripe_confirm.py", &["2", "40000"], &env).await?;
    assert_eq!(out["created"][0], "requires_confirmation", "{out}");
    assert_eq!(out["created"][1]["rate_limited"], "cap_exhausted", "{out}");
    let confirms = out["confirms"].as_array().unwrap();
    assert_eq!(confirms.len(), 1, "{out}");
    assert_eq!(confirms[0]["status"], "succeeded", "{out}");
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    assert_eq!(
        stack.ledger().await?.key_spend(&token.key_id).await?.total,
        400_000_000
    );
    proxy.shutdown().await;
    Ok(())
}
