//! The Keybrake-compatible issuance API (`/vault/keys`) end to end: the seeds' Hatchet flow from
//! Python `requests` and from Node against the local stack, authentication by TokenReview and
//! authorization by SubjectAccessReview (the real kube-apiserver, TokenRequest tokens and RBAC), bad input,
//! and the bounded wait when the operator is not there.

use std::{collections::BTreeMap, net::SocketAddr};

use anyhow::Result;
use keybrake_crds::VaultKey;
use keybrake_e2e::{
    Reply, example, http, identities,
    sdk::{LocalStripe, run, run_node_script},
    stack::Stack,
    with_upstream,
};
use kube::{Api, api::ListParams};
use serde_json::{Value, json};

/// A stack with a proxy, the example Stripe policy on localstripe, and the test RBAC.
async fn stack_with_policy(upstream: &str) -> Result<(Stack, keybrake_proxy::Running)> {
    let (stack, proxy) = Stack::start_with_proxy().await?;
    stack
        .cluster
        .apply_ok(
            &with_upstream(&example("stripe-policy.yaml"), upstream).replace(
                "sk_test_replace_me_with_the_real_secret_key",
                "sk_test_localstripe",
            ),
        )
        .await?;
    stack.cluster.apply_ok(identities::RBAC).await?;
    Ok((stack, proxy))
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Reply> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    http(addr, method, path, &headers, body.as_bytes()).await
}

/// A call without a body, with `token`.
async fn ask(addr: SocketAddr, method: &str, path: &str, token: &str) -> Result<Reply> {
    call(addr, method, path, Some(token), &Value::Null).await
}

/// The seeds' issuance request, `POST /vault/keys` with `token`.
async fn issue(addr: SocketAddr, token: &str) -> Result<Reply> {
    call(addr, "POST", "/vault/keys", Some(token), &seed_request()).await
}

async fn vault_keys(stack: &Stack, ns: &str) -> Result<Vec<String>> {
    let api: Api<VaultKey> = Api::namespaced(stack.client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|k| k.metadata.name)
        .collect())
}

fn seed_request() -> Value {
    json!({
        "vendor": "stripe",
        "daily_usd_cap": 500,
        "allowed_endpoints": ["POST /v1/payment_intents"],
        "expires_in": "2h",
        "agent_run_label": "hatchet/billing-agent/authz",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_hatchet_flow_issues_fans_out_hits_the_cap_and_revokes_from_python_and_node()
-> Result<()> {
    let localstripe = LocalStripe::start().await?;
    let (stack, proxy) = stack_with_policy(&localstripe.url()).await?;
    let t = stack.cluster.tokens().await?.clone();
    let env = BTreeMap::from([
        ("KEYBRAKE_URL".to_owned(), format!("http://{}", proxy.addr)),
        ("KEYBRAKE_API_KEY".to_owned(), t.billing_worker.clone()),
    ]);

    // 20 children x 3 customers x $20 = $1200 wanted of a $500 daily cap.
    let py = run(
        "hatchet_issue_flow.py",
        &["20", "3", "2000", "500", "run-py"],
        &env,
    )
    .await?;
    println!("python requests flow: {py}");
    assert_eq!(py["issued_state"], "active");
    assert_eq!(py["token_prefix"], "kb_stripe_");
    assert_eq!(py["charged"], 25, "{py}");
    assert_eq!(py["capped"], 35);
    assert_eq!(py["spend_total_usd"], "500.00");
    assert_eq!(py["listed"], json!([py["key_id"]]));
    assert_eq!(py["revoke_status"], 200);
    assert_eq!(py["revoked_state"], "revoked");
    assert_eq!(
        py["after_revoke"], "vault_key_revoked",
        "revocation is instant"
    );

    // The key is a real VaultKey: kubectl sees it, issued by the API, revoked.
    let key_id = py["key_id"].as_str().unwrap_or_default().to_owned();
    assert!(
        key_id.starts_with("hatchet-billing-agent-run-py-"),
        "{key_id}"
    );
    let vk = stack
        .key_in_phase("billing", &key_id, keybrake_crds::KeyPhase::Revoked)
        .await?;
    assert_eq!(
        vk.spec.run_label.as_deref(),
        Some("hatchet/billing-agent/run-py")
    );
    assert_eq!(
        vk.metadata.annotations.unwrap_or_default()["keybrake.com/requested-by"],
        "system:serviceaccount:billing:hatchet-worker"
    );
    let table = stack
        .cluster
        .kubectl_ok(&[
            "get",
            "vk",
            "-n",
            "billing",
            "-l",
            "keybrake.com/issued-by=issuance-api",
        ])
        .await?;
    assert!(table.contains(&key_id), "{table}");

    let node = run_node_script(
        "hatchet_issue_flow.mjs",
        &["20", "3", "2000", "500", "run-node"],
        &env,
    )
    .await?;
    println!("node fetch flow: {node}");
    assert_eq!(node["charged"], 25, "{node}");
    assert_eq!(node["capped"], 35);
    assert_eq!(node["spend_total_usd"], "500.00");
    assert_eq!(node["revoke_status"], 200);
    assert_eq!(node["revoked_state"], "revoked");
    assert_eq!(node["after_revoke"], "vault_key_revoked");

    // The admin listener serves the same API.
    let shown = ask(
        proxy.admin_addr,
        "GET",
        &format!("/vault/keys/{key_id}"),
        &t.billing_worker,
    )
    .await?;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["state"], "revoked");
    assert!(
        shown.json().get("vault_key").is_none(),
        "the token is returned once only"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_the_right_are_refused_and_nothing_is_created() -> Result<()> {
    let (stack, proxy) = stack_with_policy("http://127.0.0.1:9").await?;
    let t = stack.cluster.tokens().await?.clone();
    let addr = proxy.addr;
    let cases: [(&str, Option<&str>, &str, u16, &str); 5] = [
        (
            "no token",
            None,
            "/vault/keys",
            401,
            "missing Authorization",
        ),
        (
            "a bad token",
            Some("not-a-token"),
            "/vault/keys",
            401,
            "not valid",
        ),
        (
            "another namespace's token",
            Some(t.other_worker.as_str()),
            "/vault/keys?namespace=billing",
            403,
            "cannot create vaultkeys.keybrake.com in the namespace \"billing\"",
        ),
        (
            "a token without the create verb",
            Some(t.billing_reader.as_str()),
            "/vault/keys",
            403,
            "cannot create",
        ),
        (
            "the namespace in the body",
            Some(t.other_worker.as_str()),
            "/vault/keys",
            403,
            "in the namespace \"billing\"",
        ),
    ];
    for (what, token, path, status, says) in cases {
        let mut body = seed_request();
        if what == "the namespace in the body" {
            body["namespace"] = json!("billing");
        }
        let reply = call(addr, "POST", path, token, &body).await?;
        println!("{what}: {} {}", reply.status, reply.body);
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(
            reply.json()["error"].as_str().unwrap_or("").contains(says),
            "{what}: {}",
            reply.body
        );
    }
    assert!(
        vault_keys(&stack, "billing").await?.is_empty(),
        "nothing was created"
    );
    assert!(vault_keys(&stack, "other").await?.is_empty());

    // Reading and revoking across namespaces is refused too, before anything is looked up.
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    let env = stack
        .active_key_env("billing", "billing-agent-run-7f3a")
        .await?;
    for (method, token) in [
        ("GET", t.other_worker.as_str()),
        ("DELETE", t.other_worker.as_str()),
        ("DELETE", t.billing_reader.as_str()),
    ] {
        let reply = ask(
            addr,
            method,
            "/vault/keys/billing-agent-run-7f3a?namespace=billing",
            token,
        )
        .await?;
        assert_eq!(reply.status, 403, "{method}: {}", reply.body);
    }
    let listed = ask(
        addr,
        "GET",
        "/vault/keys?namespace=billing",
        &t.other_worker,
    )
    .await?;
    assert_eq!(listed.status, 403, "{}", listed.body);
    let vk = stack
        .key_in_phase(
            "billing",
            "billing-agent-run-7f3a",
            keybrake_crds::KeyPhase::Active,
        )
        .await?;
    assert!(!vk.spec.revoked, "nobody without the verb revoked it");
    assert!(env.contains_key("STRIPE_API_KEY"));

    // The reader may read it, and an admin (system:masters) naming the namespace may revoke it.
    let shown = ask(
        addr,
        "GET",
        "/vault/keys/billing-agent-run-7f3a",
        &t.billing_reader,
    )
    .await?;
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["state"], "active");
    let revoked = ask(
        addr,
        "DELETE",
        "/vault/keys/billing-agent-run-7f3a?namespace=billing",
        &t.admin,
    )
    .await?;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(revoked.json()["state"], "revoked");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_create_nothing() -> Result<()> {
    let (stack, proxy) = stack_with_policy("http://127.0.0.1:9").await?;
    let t = stack.cluster.tokens().await?.clone();
    let addr = proxy.addr;
    let with = |k: &str, v: Value| {
        let mut b = seed_request();
        b[k] = v;
        b
    };
    let cases = [
        (with("vendor", json!("paypal")), 422, "vendor"),
        (with("vendor", json!("twilio")), 422, "vendor"),
        (with("daily_usd_cap", json!(6000)), 422, "daily_usd_cap"),
        (with("daily_usd_cap", json!(-1)), 422, "daily_usd_cap"),
        (
            with("daily_usd_cap", json!("12.3456789")),
            422,
            "daily_usd_cap",
        ),
        (
            with("allowed_endpoints", json!(["DELETE /v1/customers/*"])),
            422,
            "allowed_endpoints",
        ),
        (with("expires_in", json!("48h")), 422, "expires_in"),
        (with("expires_in", json!("soon")), 422, "expires_in"),
        (with("policy", json!("nope")), 422, "policy"),
        (with("name", json!("Not_A_Name")), 422, "name"),
        (with("budget_usd", json!(5)), 422, "budget_usd"),
    ];
    for (body, status, field) in cases {
        let reply = call(
            addr,
            "POST",
            "/vault/keys",
            Some(t.billing_worker.as_str()),
            &body,
        )
        .await?;
        println!("{field}: {} {}", reply.status, reply.body);
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.json()["field"], field, "{body}: {}", reply.body);
    }
    for (raw, status) in [
        ("{", 400),
        ("[]", 400),
        (r#"{"vendor":"stripe","vendor":"resend"}"#, 400),
    ] {
        let reply = http(
            addr,
            "POST",
            "/vault/keys",
            &[("Authorization", &format!("Bearer {}", t.billing_worker))],
            raw.as_bytes(),
        )
        .await?;
        assert_eq!(reply.status, status, "{raw}: {}", reply.body);
        assert!(reply.json()["error"].is_string());
    }
    let huge = vec![b' '; 100 * 1024];
    let reply = http(
        addr,
        "POST",
        "/vault/keys",
        &[("Authorization", &format!("Bearer {}", t.billing_worker))],
        &huge,
    )
    .await?;
    assert_eq!(reply.status, 413);
    let reply = ask(addr, "GET", "/vault/keys/nope", &t.billing_worker).await?;
    assert_eq!(reply.status, 404, "{}", reply.body);
    for bad in [
        "/vault/keys/a/status",
        "/vault/keys/UPPER",
        "/vault/keys/..%2Fx",
    ] {
        let reply = ask(addr, "DELETE", bad, &t.billing_worker).await?;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert_eq!(reply.json()["field"], "key_id");
    }
    let reply = ask(addr, "PUT", "/vault/keys/nope", &t.billing_worker).await?;
    assert_eq!(reply.status, 405, "{}", reply.body);
    let reply = ask(addr, "GET", "/vault/keys?run=x", &t.billing_worker).await?;
    assert_eq!(reply.status, 400, "{}", reply.body);

    // Two policies for the vendor: the request must name one.
    stack
        .cluster
        .apply_ok(&example("stripe-policy.yaml").replace("name: stripe\n", "name: stripe-eu\n"))
        .await?;
    let reply = issue(addr, &t.billing_worker).await?;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(reply.json()["field"], "policy");
    assert!(reply.body.contains("stripe, stripe-eu"), "{}", reply.body);
    assert!(
        vault_keys(&stack, "billing").await?.is_empty(),
        "nothing was created"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_operator_issuance_times_out_cleanly_and_leaves_nothing() -> Result<()> {
    let (mut stack, proxy) = stack_with_policy("http://127.0.0.1:9").await?;
    let t = stack.cluster.tokens().await?.clone();
    // The proxy loaded the policy; now the operator goes away.
    let ready = issue(proxy.addr, &t.billing_worker).await?;
    assert_eq!(ready.status, 201, "{}", ready.body);
    stack.stop_operator().await;
    let mut config = keybrake_proxy::Config::local(&stack.redis.url(), &stack.prefix);
    config.issue_timeout_secs = 1;
    let quick =
        keybrake_proxy::start(stack.proxy_client.clone(), config, "127.0.0.1:0".parse()?).await?;
    let started = std::time::Instant::now();
    let reply = issue(quick.addr, &t.billing_worker).await?;
    println!(
        "no operator: {} after {:?}: {}",
        reply.status,
        started.elapsed(),
        reply.body
    );
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        reply.body.contains("did not make it work within 1s"),
        "{}",
        reply.body
    );
    assert_eq!(
        vault_keys(&stack, "billing").await?,
        vec![
            ready.json()["key_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        ],
        "the timed-out key was deleted"
    );
    quick.shutdown().await;
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_keys_are_deleted_after_their_retention_and_kubectl_keys_are_kept() -> Result<()> {
    let (mut stack, proxy) = stack_with_policy("http://127.0.0.1:9").await?;
    let t = stack.cluster.tokens().await?.clone();
    stack.stop_operator().await;
    let mut config = stack.operator_config();
    config.issued_key_retention_secs = 1;
    stack.start_operator_with(config).await?;
    let issued = issue(proxy.addr, &t.billing_worker).await?;
    assert_eq!(issued.status, 201, "{}", issued.body);
    let key_id = issued.json()["key_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    stack
        .active_key_env("billing", "billing-agent-run-7f3a")
        .await?;

    let started = std::time::Instant::now();
    let revoked = ask(
        proxy.addr,
        "DELETE",
        &format!("/vault/keys/{key_id}"),
        &t.billing_worker,
    )
    .await?;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    keybrake_e2e::stack::eventually(
        "the issued key to be deleted after its retention",
        20,
        || async {
            let left = vault_keys(&stack, "billing").await.ok()?;
            (!left.contains(&key_id)).then_some(())
        },
    )
    .await?;
    println!(
        "issued key deleted {:.1}s after its revocation (retention 1s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "deleted before its retention"
    );
    // The kubectl-made key, revoked at the same time, is its owner's to delete.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(
        vault_keys(&stack, "billing").await?,
        vec!["billing-agent-run-7f3a".to_owned()]
    );
    let gone = ask(
        proxy.addr,
        "GET",
        &format!("/vault/keys/{key_id}"),
        &t.billing_worker,
    )
    .await?;
    assert_eq!(gone.status, 404);
    proxy.shutdown().await;
    stack.assert_deployables_never_refused()?;
    Ok(())
}

/// The issuance API takes only tokens minted for its audience (a projected ServiceAccount
/// token): a pod's default token, whose audience is the API server, is refused with a message
/// naming the audience expected, so such a token seen on the way cannot be used here, and a
/// token made for the proxy cannot be replayed against the Kubernetes API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tokens_minted_for_the_keybrake_audience_are_accepted() -> Result<()> {
    let (stack, proxy) = stack_with_policy("http://127.0.0.1:9").await?;
    let t = stack.cluster.tokens().await?.clone();
    let default_token = issue(proxy.addr, &t.billing_worker_default).await?;
    assert_eq!(default_token.status, 401, "{}", default_token.body);
    assert!(
        default_token
            .body
            .contains("not valid for audience \\\"keybrake\\\""),
        "{}",
        default_token.body
    );
    assert!(vault_keys(&stack, "billing").await?.is_empty());
    let projected = issue(proxy.addr, &t.billing_worker).await?;
    assert_eq!(projected.status, 201, "{}", projected.body);
    // The same token is no credential for the API server.
    let replayed =
        Api::<VaultKey>::namespaced(stack.cluster.client_as(&t.billing_worker).await?, "billing")
            .list(&ListParams::default())
            .await;
    assert!(
        replayed.is_err(),
        "a keybrake-audience token opened the Kubernetes API"
    );
    proxy.shutdown().await;
    Ok(())
}
