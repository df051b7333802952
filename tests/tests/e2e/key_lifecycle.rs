//! The operator against the real API server and a real Redis, one scenario per path of issue 5.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use keybrake_crds::{KeyPhase, SpendPolicy, Usd, VaultKey, Vendor};
use keybrake_e2e::{
    busybox_deployment, example, restart_on_rotation,
    stack::{PROXY_URL, Stack, eventually},
};
use keybrake_ledger::{Admission, Ledger, ReserveRequest, Rule, Token};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

async fn key_in_phase(stack: &Stack, name: &str, phase: KeyPhase) -> Result<VaultKey> {
    stack.key_in_phase("billing", name, phase).await
}

fn secret_data(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

async fn token_of(stack: &Stack, secret: &str) -> Result<Token> {
    let s = Api::<Secret>::namespaced(stack.client.clone(), "billing")
        .get(secret)
        .await?;
    Ok(Token::parse_bearer(&secret_data(&s)["STRIPE_API_KEY"])?)
}

/// What Redis says to a PaymentIntent of `dollars` with `token`.
async fn charge(
    ledger: &Ledger<keybrake_ledger::connection::Connection>,
    token: &Token,
    dollars: u64,
) -> Result<Admission> {
    let hash = token.secret_hash();
    let estimate = Usd::from_dollars(dollars).unwrap();
    let req = ReserveRequest {
        key_id: &token.key_id,
        secret_hash: &hash,
        method: "POST",
        path: "/v1/payment_intents",
        estimate,
        idempotency: None,
        read: false,
        mode: keybrake_ledger::Mode::Reserve,
        owned: &[],
        run_scope: false,
        commits_until_ms: None,
    };
    Ok(ledger.reserve(&req).await?)
}

/// A $1 charge.
async fn try_charge(
    ledger: &Ledger<keybrake_ledger::connection::Connection>,
    token: &Token,
) -> Result<Admission> {
    charge(ledger, token, 1).await
}

/// A free probe: what Redis says to the token, without spending anything.
async fn probe(
    ledger: &Ledger<keybrake_ledger::connection::Connection>,
    token: &Token,
) -> Result<Admission> {
    charge(ledger, token, 0).await
}

fn refusal(a: &Admission) -> Option<Rule> {
    match a {
        Admission::Refused(r) => Some(r.rule),
        _ => None,
    }
}

async fn stripe_stack() -> Result<Stack> {
    let stack = Stack::start().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-policy.yaml"))
        .await?;
    Ok(stack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_a_credential_into_redis_and_a_secret() -> Result<()> {
    let stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    let vk = key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    let status = vk.status.clone().unwrap();
    assert_eq!(status.vendor, Some(Vendor::Stripe));
    assert_eq!(
        status.cap.as_deref(),
        Some("500.00/day, 20000.00 total, 250.00/call")
    );
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(status.conditions[0].status, "True");
    assert_eq!(status.observed_generation, Some(1));
    assert!(status.expires_at.is_some());
    assert_eq!(vk.finalizers(), ["keybrake.com/revoke"]);

    let secret = Api::<Secret>::namespaced(stack.client.clone(), "billing")
        .get("billing-agent-run-7f3a")
        .await?;
    let data = secret_data(&secret);
    assert_eq!(data["STRIPE_API_BASE"], PROXY_URL);
    assert_eq!(data["KEYBRAKE_PROXY_URL"], PROXY_URL);
    assert_eq!(data["KEYBRAKE_KEY_ID"], status.key_id.clone().unwrap());
    assert_eq!(secret.owner_references()[0].uid, vk.uid().unwrap());
    let token = Token::parse_bearer(&data["STRIPE_API_KEY"])?;
    assert_eq!(token.key_id.to_string(), status.key_id.unwrap());

    let ledger = stack.ledger().await?;
    assert!(matches!(
        try_charge(&ledger, &token).await?,
        Admission::Granted { .. }
    ));
    let refused = {
        let hash = token.secret_hash();
        ledger
            .reserve(&ReserveRequest {
                key_id: &token.key_id,
                secret_hash: &hash,
                method: "POST",
                path: "/v1/refunds",
                estimate: Usd::ZERO,
                idempotency: None,
                read: false,
                mode: keybrake_ledger::Mode::Reserve,
                owned: &[],
                run_scope: false,
                commits_until_ms: None,
            })
            .await?
    };
    assert_eq!(
        refusal(&refused),
        Some(Rule::Endpoint),
        "the key's narrower allowlist is in Redis"
    );
    // The SpendPolicy reports its key and budget.
    let sp = eventually("the policy to count its key", 20, || async {
        Api::<SpendPolicy>::namespaced(stack.client.clone(), "billing")
            .get("stripe")
            .await
            .ok()
            .filter(|p| p.status.as_ref().and_then(|s| s.keys) == Some(1))
    })
    .await?;
    let sps = sp.status.unwrap();
    assert_eq!(sps.budget.as_deref(), Some("10000.00/day"));
    assert_eq!(sps.conditions[0].status, "True");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_with_no_change_writes_nothing_and_a_restart_reissues_nothing() -> Result<()> {
    let mut stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-worker-key.yaml").replace("period: 6h", "period: 24h"))
        .await?;
    stack
        .cluster
        .apply_ok(&busybox_deployment("billing-worker", ""))
        .await?;
    key_in_phase(&stack, "billing-worker", KeyPhase::Active).await?;
    let keys: Api<VaultKey> = Api::namespaced(stack.client.clone(), "billing");
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), "billing");
    let settle = async || {
        // Quiet for a second: whatever reconciles were queued have run.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    settle().await;
    let before = (
        keys.get("billing-worker").await?.resource_version(),
        secrets.get("billing-worker-stripe").await?,
    );
    // A label change triggers a reconcile that must change nothing.
    keys.patch(
        "billing-worker",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
    )
    .await?;
    let touched = keys.get("billing-worker").await?.resource_version();
    settle().await;
    assert_eq!(
        keys.get("billing-worker").await?.resource_version(),
        touched,
        "the operator wrote the VaultKey"
    );
    assert_eq!(
        secrets
            .get("billing-worker-stripe")
            .await?
            .resource_version(),
        before.1.resource_version(),
        "the operator rewrote the Secret"
    );

    stack.stop_operator().await;
    stack.start_operator().await?;
    settle().await;
    let after = secrets.get("billing-worker-stripe").await?;
    assert_eq!(after.data, before.1.data, "a restart reissued the token");
    assert_eq!(after.resource_version(), before.1.resource_version());
    let annotations = stack
        .template_annotations("billing", "billing-worker")
        .await?;
    assert!(
        !annotations.contains_key("keybrake.com/rotated-at"),
        "a restart rolled a workload"
    );
    assert_ne!(before.0, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_key_gets_a_condition_an_event_and_no_credential() -> Result<()> {
    let stack = stripe_stack().await?;
    // Forty endpoints the policy does not allow: a message far over an Event's 1 KiB note.
    let many: String = (0..40)
        .map(|i| format!("    - POST /v1/transfers/tr_{i:04}/reversals\n"))
        .collect();
    stack
        .cluster
        .apply_ok(
            &example("stripe-run-key.yaml")
                .replace("dailyUsdCap: 500", "dailyUsdCap: 6000")
                .replace(
                    "    - POST /v1/payment_intents\n",
                    &format!("    - POST /v1/transfers\n{many}"),
                ),
        )
        .await?;
    let vk = key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Invalid).await?;
    let ready = &vk.status.as_ref().unwrap().conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CapAboveLimit")
    );
    assert!(ready.message.contains("spec.dailyUsdCap: 6000.00 is above the SpendPolicy \"stripe\" limit maxDailyUsd 5000.00"), "{}", ready.message);
    assert!(
        ready
            .message
            .contains("\"POST /v1/transfers\" is not allowed"),
        "{}",
        ready.message
    );
    assert!(
        Api::<Secret>::namespaced(stack.client.clone(), "billing")
            .get_opt("billing-agent-run-7f3a")
            .await?
            .is_none()
    );
    let described = eventually("the Invalid event", 10, || async {
        let d = stack
            .cluster
            .kubectl_ok(&["describe", "vk", "-n", "billing", "billing-agent-run-7f3a"])
            .await
            .ok()?;
        d.contains("CapAboveLimit").then_some(d)
    })
    .await?;
    assert!(described.contains("Warning"), "{described}");
    // The condition keeps the whole message; the Event's note is cut to what a real API server
    // accepts (it refuses an Event whose note is over 1 KiB, which left no Event at all).
    assert!(ready.message.len() > 1024, "{}", ready.message.len());
    let events: serde_json::Value = serde_json::from_str(
        &stack
            .cluster
            .kubectl_ok(&["get", "events.events.k8s.io", "-n", "billing", "-o", "json"])
            .await?,
    )?;
    let note = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["reason"] == "CapAboveLimit")
        .and_then(|e| e["note"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        note.len() <= 1024 && note.ends_with('…') && note.contains("is above"),
        "{note}"
    );
    stack.assert_deployables_never_refused()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_named_longer_than_a_label_gets_its_secret() -> Result<()> {
    let stack = stripe_stack().await?;
    // VaultKey names may be 253 characters; a label value only 63.
    let name = format!("hatchet-billing-agent-run-{}", "7f3a9c2e".repeat(10));
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml").replace("billing-agent-run-7f3a", &name))
        .await?;
    key_in_phase(&stack, &name, KeyPhase::Active).await?;
    let secret = Api::<Secret>::namespaced(stack.client.clone(), "billing")
        .get(&name)
        .await?;
    assert_eq!(
        secret.annotations().get("keybrake.com/vault-key"),
        Some(&name)
    );
    assert!(!secret.labels().contains_key("keybrake.com/vault-key"));
    stack.assert_deployables_never_refused()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_that_invalidates_a_key_revokes_it() -> Result<()> {
    let stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    let token = token_of(&stack, "billing-agent-run-7f3a").await?;
    stack
        .cluster
        .apply_ok(&example("stripe-policy.yaml").replace("maxDailyUsd: 5000", "maxDailyUsd: 100"))
        .await?;
    let vk = key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Invalid).await?;
    assert!(
        vk.status.unwrap().conditions[0]
            .message
            .contains("maxDailyUsd 100.00")
    );
    let ledger = stack.ledger().await?;
    assert_eq!(
        refusal(&try_charge(&ledger, &token).await?),
        Some(Rule::Revoked)
    );
    assert!(
        Api::<Secret>::namespaced(stack.client.clone(), "billing")
            .get_opt("billing-agent-run-7f3a")
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_expires_in_redis_then_in_kubernetes() -> Result<()> {
    let stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml").replace("ttl: 2h", "ttl: 2s"))
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    let token = token_of(&stack, "billing-agent-run-7f3a").await?;
    let ledger = stack.ledger().await?;
    let refused = eventually("Redis to refuse the expired key", 10, || async {
        refusal(&probe(&ledger, &token).await.ok()?).filter(|r| *r == Rule::Expired)
    })
    .await?;
    assert_eq!(refused, Rule::Expired);
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Expired).await?;
    assert!(
        Api::<Secret>::namespaced(stack.client.clone(), "billing")
            .get_opt("billing-agent-run-7f3a")
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_both_tokens_for_the_overlap_and_rolls_targets_once() -> Result<()> {
    let mut stack = stripe_stack().await?;
    let metrics = restart_operator_with_metrics(&mut stack).await?;
    // The worker opts in to be rolled by its key; a bystander the key also names does not.
    stack.cluster.apply_ok(&opted_in_worker()).await?;
    stack
        .cluster
        .apply_ok(&busybox_deployment("bystander", ""))
        .await?;
    stack
        .cluster
        .apply_ok(
            &example("stripe-worker-key.yaml")
                .replace("period: 6h", "period: 6s")
                .replace("overlap: 10m", "overlap: 4s")
                .replace(
                    "      name: billing-worker\n",
                    "      name: billing-worker\n    - kind: Deployment\n      name: bystander\n",
                ),
        )
        .await?;
    key_in_phase(&stack, "billing-worker", KeyPhase::Active).await?;
    let first = token_of(&stack, "billing-worker-stripe").await?;
    let keys: Api<VaultKey> = Api::namespaced(stack.client.clone(), "billing");
    eventually("the first rotation", 20, || async {
        keys.get("billing-worker").await.ok().filter(|k| {
            k.status
                .as_ref()
                .and_then(|s| s.rotation.as_ref())
                .is_some_and(|r| r.rotations == 1)
        })
    })
    .await?;
    let second = token_of(&stack, "billing-worker-stripe").await?;
    assert_ne!(
        second.secret(),
        first.secret(),
        "the Secret was updated in place"
    );
    assert_eq!(
        second.key_id, first.key_id,
        "spend keeps counting against the same key"
    );
    let ledger = stack.ledger().await?;
    // During the overlap both tokens work; after it only the new one.
    assert!(matches!(
        try_charge(&ledger, &second).await?,
        Admission::Granted { .. }
    ));
    assert!(
        matches!(
            try_charge(&ledger, &first).await?,
            Admission::Granted { .. }
        ),
        "the old token stopped before the overlap ended"
    );
    eventually("the overlap to end", 10, || async {
        refusal(&probe(&ledger, &first).await.ok()?).filter(|r| *r == Rule::BadSecret)
    })
    .await?;
    let current = token_of(&stack, "billing-worker-stripe").await?;
    assert!(matches!(
        try_charge(&ledger, &current).await?,
        Admission::Granted { .. }
    ));
    assert_eq!(
        ledger.key_spend(&first.key_id).await?.total,
        3_000_000,
        "all three charges counted on one key"
    );
    let rolled = stack
        .template_annotations("billing", "billing-worker")
        .await?;
    assert!(
        rolled.contains_key("keybrake.com/rotated-at"),
        "the Deployment was not rolled"
    );
    // The restart metric counts both: the roll, and the target that did not opt in.
    let text = metrics_text(metrics).await?;
    for result in ["rolled", "not_opted_in"] {
        assert!(
            text.contains(&format!("keybrake_operator_workload_restarts_total{{namespace=\"billing\",workload_kind=\"Deployment\",result=\"{result}\"}}")),
            "{text}"
        );
    }
    let untouched = stack.template_annotations("billing", "bystander").await?;
    assert!(
        !untouched.contains_key("keybrake.com/rotated-at"),
        "a workload that did not opt in was rolled"
    );
    let described = stack
        .cluster
        .kubectl_ok(&["describe", "vk", "-n", "billing", "billing-worker"])
        .await?;
    assert!(described.contains("RestartNotAllowed"), "{described}");
    stack.assert_deployables_never_refused()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_flag_and_by_delete_is_enforced_in_redis() -> Result<()> {
    let stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    stack
        .cluster
        .apply_ok(&example("stripe-worker-key.yaml"))
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    key_in_phase(&stack, "billing-worker", KeyPhase::Active).await?;
    let by_flag = token_of(&stack, "billing-agent-run-7f3a").await?;
    let by_delete = token_of(&stack, "billing-worker-stripe").await?;
    let ledger = stack.ledger().await?;

    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    let revoked = key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Revoked).await?;
    let shown = revoked.status.unwrap_or_default();
    assert!(
        shown.cap.is_some() && shown.expires_at.is_some(),
        "kubectl get keeps showing CAP and EXPIRES: {shown:?}"
    );
    assert_eq!(
        refusal(&try_charge(&ledger, &by_flag).await?),
        Some(Rule::Revoked)
    );
    // One Revoked Event, not one per reconcile that followed the revoke.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let described = stack
        .cluster
        .kubectl_ok(&["get", "events", "-n", "billing", "-o", "json"])
        .await?;
    let events: serde_json::Value = serde_json::from_str(&described)?;
    let announced: Vec<_> = events["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e["reason"] == "Revoked"
                && (e["regarding"]["name"] == "billing-agent-run-7f3a"
                    || e["involvedObject"]["name"] == "billing-agent-run-7f3a")
        })
        .collect();
    let count: u64 = announced
        .iter()
        .map(|e| {
            e["series"]["count"]
                .as_u64()
                .or(e["count"].as_u64())
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(count, 1, "{announced:?}");
    assert!(
        Api::<Secret>::namespaced(stack.client.clone(), "billing")
            .get_opt("billing-agent-run-7f3a")
            .await?
            .is_none()
    );

    // kubectl delete returns once the finalizer has revoked the key in Redis.
    stack
        .cluster
        .kubectl_ok(&["delete", "vk", "-n", "billing", "billing-worker"])
        .await?;
    assert_eq!(
        refusal(&try_charge(&ledger, &by_delete).await?),
        Some(Rule::UnknownKey)
    );
    assert!(
        Api::<Secret>::namespaced(stack.client.clone(), "billing")
            .get_opt("billing-worker-stripe")
            .await?
            .is_none()
    );
    stack.assert_deployables_never_refused()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_credentials_secret_is_a_condition_not_a_crash() -> Result<()> {
    let stack = Stack::start().await?;
    let policy = example("stripe-policy.yaml");
    let sp_only = policy.split("---").nth(1).unwrap();
    stack.cluster.apply_ok(sp_only).await?;
    let api: Api<SpendPolicy> = Api::namespaced(stack.client.clone(), "billing");
    let sp = eventually("the policy's condition", 10, || async {
        api.get("stripe").await.ok().filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.observed_generation.is_some())
        })
    })
    .await?;
    let ready = &sp.status.unwrap().conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "CredentialsNotFound")
    );
    assert!(
        ready
            .message
            .contains("Secret billing/stripe-credentials not found"),
        "{}",
        ready.message
    );
    // Creating the Secret turns the policy Ready (the Secret watch re-checks it).
    stack
        .cluster
        .apply_ok(policy.split("---").next().unwrap())
        .await?;
    eventually("the policy to turn Ready", 10, || async {
        api.get("stripe").await.ok().filter(|p| {
            p.status
                .as_ref()
                .is_some_and(|s| s.conditions[0].status == "True")
        })
    })
    .await?;
    Ok(())
}

fn free_addr() -> std::net::SocketAddr {
    keybrake_e2e::redis_server::free_addr().unwrap()
}

/// Deployment `billing-worker`, opted in to be rolled when its key rotates.
fn opted_in_worker() -> String {
    busybox_deployment("billing-worker", &restart_on_rotation("billing-worker"))
}

/// Restarts the operator with its metrics on a free address, which it returns.
async fn restart_operator_with_metrics(stack: &mut Stack) -> Result<std::net::SocketAddr> {
    stack.stop_operator().await;
    let mut config = stack.operator_config();
    config.metrics_addr = free_addr();
    let metrics = config.metrics_addr;
    stack.start_operator_with(config).await?;
    Ok(metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_fail_over() -> Result<()> {
    let mut stack = stripe_stack().await?;
    stack.stop_operator().await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(stack.client.clone(), keybrake_e2e::stack::LEASE_NAMESPACE);
    let holder = || async {
        leases
            .get_opt("keybrake-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    let mut a = stack.operator_config();
    (a.leader_election, a.identity) = (true, "replica-a".into());
    a.metrics_addr = free_addr();
    let mut b = a.clone();
    b.identity = "replica-b".into();
    b.metrics_addr = free_addr();
    let (addr_a, addr_b) = (a.metrics_addr, b.metrics_addr);
    let (stop_a, task_a) = stack.spawn_replica(a);
    eventually("replica-a to lead", 10, || async {
        holder().await.filter(|h| h == "replica-a")
    })
    .await?;
    let (stop_b, task_b) = stack.spawn_replica(b);
    // `kubectl rollout status` waits for every replica to be ready: the standby must be too,
    // while only the leader runs the controllers.
    let scrape = |addr, path: &'static str| async move {
        keybrake_e2e::http(addr, "GET", path, &[], b"").await.ok()
    };
    eventually("both replicas to be ready", 10, || async {
        let (ra, rb) = (
            scrape(addr_a, "/readyz").await?,
            scrape(addr_b, "/readyz").await?,
        );
        (ra.status == 200 && rb.status == 200).then_some(())
    })
    .await?;
    let leading = |addr| async move {
        let body = scrape(addr, "/metrics").await?.body;
        Some(body.contains("keybrake_operator_leader 1"))
    };
    assert_eq!(leading(addr_a).await, Some(true), "replica-a leads");
    assert_eq!(leading(addr_b).await, Some(false), "replica-b stands by");
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    assert_eq!(
        holder().await.as_deref(),
        Some("replica-a"),
        "the standby took the Lease from a live leader"
    );
    drop(stop_a);
    let _ = task_a.await;
    eventually("replica-b to take over", 15, || async {
        holder().await.filter(|h| h == "replica-b")
    })
    .await?;
    // The new leader reconciles: a revoke is enforced.
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Revoked).await?;
    drop(stop_b);
    let _ = task_b.await;
    stack.assert_deployables_never_refused()?;
    Ok(())
}

/// Rollouts are debounced: three reissued credentials (the Secret deleted three times) within
/// `restartDebounce` roll the opted-in Deployment once, after the window, and the status and the
/// restart metric say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_credential_changes_rolls_the_targets_once() -> Result<()> {
    let mut stack = stripe_stack().await?;
    let metrics = restart_operator_with_metrics(&mut stack).await?;
    stack.cluster.apply_ok(&opted_in_worker()).await?;
    stack
        .cluster
        .apply_ok(&example("stripe-worker-key.yaml").replace(
            "  restartTargets:\n",
            "  restartDebounce: 8s\n  restartTargets:\n",
        ))
        .await?;
    key_in_phase(&stack, "billing-worker", KeyPhase::Active).await?;
    // A debounce past the overlap would roll pods after their previous token stopped working.
    let refused = stack
        .cluster
        .apply(&example("stripe-worker-key.yaml").replace(
            "  restartTargets:\n",
            "  restartDebounce: 20m\n  restartTargets:\n",
        ))
        .await?;
    assert!(
        refused
            .stderr
            .contains("restartDebounce must be shorter than rotation.overlap"),
        "{}",
        refused.stderr
    );
    let keys: Api<VaultKey> = Api::namespaced(stack.client.clone(), "billing");
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), "billing");
    let restart = |vk: &VaultKey| vk.status.as_ref().and_then(|s| s.restart.clone());
    let first = eventually("the first contents to be recorded", 20, || async {
        restart(&keys.get("billing-worker").await.ok()?).filter(|r| r.rolled_for.is_some())
    })
    .await?;
    assert_eq!(first.rolls, 0, "nothing ran with the key yet");
    let mut token = token_of(&stack, "billing-worker-stripe").await?;
    for _ in 0..3 {
        secrets
            .delete("billing-worker-stripe", &Default::default())
            .await?;
        token = eventually("the credential to be reissued", 20, || {
            let before = token.clone();
            let stack = &stack;
            async move {
                let now = token_of(stack, "billing-worker-stripe").await.ok()?;
                (now != before).then_some(now)
            }
        })
        .await?;
    }
    let pending = restart(&keys.get("billing-worker").await?).unwrap_or_default();
    let rolled = eventually("one rollout after the window", 30, || async {
        restart(&keys.get("billing-worker").await.ok()?).filter(|r| r.rolls > 0)
    })
    .await?;
    assert_eq!(rolled.rolls, 1, "three changes, one rollout: {rolled:?}");
    assert!(
        pending.pending_since.is_some() || pending.rolls == 1,
        "{pending:?}"
    );
    assert!(rolled.pending_since.is_none());
    assert!(
        stack
            .template_annotations("billing", "billing-worker")
            .await?
            .contains_key("keybrake.com/rotated-at"),
        "the Deployment was not rolled"
    );
    let text = metrics_text(metrics).await?;
    assert!(
        text.contains("keybrake_operator_workload_restarts_total{namespace=\"billing\",workload_kind=\"Deployment\",result=\"rolled\"} 1\n"),
        "{text}"
    );
    Ok(())
}

/// A restart target with a label selector rolls every workload of its kind with those labels
/// that opts in, and leaves the rest; name and selector together are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_targets_chosen_by_labels_roll_every_opted_in_match() -> Result<()> {
    let stack = stripe_stack().await?;
    let deployment = |name: &str, team: &str, opt_in: bool| {
        let annotation = if opt_in {
            restart_on_rotation("\"*\"")
        } else {
            String::new()
        };
        busybox_deployment(name, &format!("  labels:\n    team: {team}\n{annotation}"))
    };
    for (name, team, opt_in) in [
        ("worker-a", "billing", true),
        ("worker-b", "billing", false),
        ("ops-tool", "ops", true),
    ] {
        stack
            .cluster
            .apply_ok(&deployment(name, team, opt_in))
            .await?;
    }
    let by_labels = "  restartTargets:\n    - kind: Deployment\n      selector:\n        matchLabels:\n          team: billing\n";
    let key = example("stripe-worker-key.yaml");
    let key = &key[..key.find("  # The Deployment opts in").unwrap()];
    let both = format!(
        "{key}  restartTargets:\n    - kind: Deployment\n      name: worker-a\n      selector:\n        matchLabels:\n          team: billing\n"
    );
    let refused = stack.cluster.apply(&both).await?;
    assert!(
        refused
            .stderr
            .contains("sets name (one workload) or selector"),
        "{}",
        refused.stderr
    );
    stack.cluster.apply_ok(&format!("{key}{by_labels}")).await?;
    key_in_phase(&stack, "billing-worker", KeyPhase::Active).await?;
    // A reissued credential rolls the targets.
    let before = token_of(&stack, "billing-worker-stripe").await?;
    Api::<Secret>::namespaced(stack.client.clone(), "billing")
        .delete("billing-worker-stripe", &Default::default())
        .await?;
    let deployments = Api::<Deployment>::namespaced(stack.client.clone(), "billing");
    let rolled = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .is_some_and(|a| a.contains_key("keybrake.com/rotated-at"))
    };
    eventually("worker-a to be rolled", 20, || async {
        rolled(&deployments.get("worker-a").await.ok()?).then_some(())
    })
    .await?;
    assert_ne!(token_of(&stack, "billing-worker-stripe").await?, before);
    assert!(
        !rolled(&deployments.get("worker-b").await?),
        "worker-b did not opt in"
    );
    assert!(
        !rolled(&deployments.get("ops-tool").await?),
        "ops-tool is not selected"
    );
    stack.assert_deployables_never_refused()?;
    Ok(())
}

/// The operator's /metrics text (it has braces of its own, so it is read raw rather than
/// through raw_http).
async fn metrics_text(addr: std::net::SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_answer() -> Result<()> {
    let mut stack = stripe_stack().await?;
    let addr = restart_operator_with_metrics(&mut stack).await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    let (code, _) = keybrake_e2e::raw_http(addr, "GET", "/healthz", &[], b"").await?;
    assert_eq!(code, 200);
    let (code, _) = keybrake_e2e::raw_http(addr, "GET", "/readyz", &[], b"").await?;
    assert_eq!(code, 200);
    let body = metrics_text(addr).await?;
    assert!(
        body.contains("keybrake_operator_reconciles_total{kind=\"vaultkey\"}"),
        "{body}"
    );
    assert!(
        body.contains("keybrake_operator_vaultkeys{phase=\"Active\"} 1"),
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binaries_newer_than_their_crds_refuse_to_start_and_name_the_fields() -> Result<()> {
    let mut stack = stripe_stack().await?;
    stack.stop_operator().await;
    // `helm upgrade` of the deployables without the CRDs: the installed VaultKey CRD lacks a
    // status field this build writes.
    let crd = std::fs::read_to_string(
        keybrake_e2e::workspace_root().join("manifests/crds/vaultkeys.keybrake.com.yaml"),
    )?;
    let mut older: serde_json::Value = serde_yaml_ng::from_str(&crd)?;
    older
        .pointer_mut("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties")
        .and_then(serde_json::Value::as_object_mut)
        .and_then(|p| p.remove("keyId"))
        .ok_or_else(|| anyhow::anyhow!("no status.keyId in the CRD"))?;
    stack.cluster.apply_ok(&older.to_string()).await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    // What a real API server answers the operator's status apply (and why it must not try).
    let keys: Api<VaultKey> = Api::namespaced(stack.operator_client.clone(), "billing");
    let refused = keys
        .patch_status(
            "billing-agent-run-7f3a",
            &PatchParams::apply("keybrake-operator").force(),
            &Patch::Apply(json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "status": {"keyId": "x"}})),
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains(".status.keyId: field not declared in schema"),
        "{refused}"
    );
    let err = keybrake_operator::run(
        stack.operator_client.clone(),
        stack.operator_config(),
        async {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("vaultkeys.keybrake.com is older than this build")
            && err.contains(".status.keyId")
            && err.contains("helm upgrade"),
        "{err}"
    );
    let err = match stack.start_proxy().await {
        Ok(_) => anyhow::bail!("the proxy started on outdated CRDs"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(".status.keyId"), "{err}");
    stack.assert_deployables_never_refused()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_the_operator_exits_with_a_hint() -> Result<()> {
    let cluster = keybrake_e2e::Cluster::start().await?;
    let client = cluster.admin_client().await?;
    let err = keybrake_operator::check_crds(&client).await.unwrap_err();
    assert!(
        err.to_string().contains("kubectl apply -f manifests/crds/"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_written_by_the_proxy_survives_operator_status_writes_and_a_spent_cap_shows()
-> Result<()> {
    let stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    let keys: Api<VaultKey> = Api::namespaced(stack.client.clone(), "billing");
    // The proxy's write, under its own field manager.
    let spend = json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "status": {"spend": {"todayUsd": "500.00", "totalUsd": "500.00", "calls": 3, "refused": 1}}});
    keys.patch_status(
        "billing-agent-run-7f3a",
        &PatchParams::apply("keybrake-proxy").force(),
        &Patch::Apply(spend),
    )
    .await?;
    // Spend the daily cap in Redis, as the proxy would, and let the operator look again.
    let token = token_of(&stack, "billing-agent-run-7f3a").await?;
    let ledger = stack.ledger().await?;
    for _ in 0..2 {
        assert!(matches!(
            charge(&ledger, &token, 250).await?,
            Admission::Granted { .. }
        ));
    }
    keys.patch(
        "billing-agent-run-7f3a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"nudge": "1"}}})),
    )
    .await?;
    let vk = key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::CapReached).await?;
    let status = vk.status.unwrap();
    assert_eq!(status.conditions[0].reason, "DailyCapReached");
    let kept = status
        .spend
        .expect("the proxy's spend was dropped by an operator status write");
    assert_eq!(
        (kept.total_usd.to_string().as_str(), kept.calls),
        ("500.00", 3)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_reach_redis_at_once_without_a_new_token() -> Result<()> {
    let stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    key_in_phase(&stack, "billing-agent-run-7f3a", KeyPhase::Active).await?;
    let token = token_of(&stack, "billing-agent-run-7f3a").await?;
    let ledger = stack.ledger().await?;
    assert!(matches!(
        charge(&ledger, &token, 200).await?,
        Admission::Granted { .. }
    ));
    // Lower the daily cap below what is spent, and widen the allowlist within the policy.
    let changed = example("stripe-run-key.yaml")
        .replace("dailyUsdCap: 500", "dailyUsdCap: 150")
        .replace(
            "    - POST /v1/payment_intents\n",
            "    - POST /v1/payment_intents\n    - GET /v1/customers/*\n",
        );
    stack.cluster.apply_ok(&changed).await?;
    let refused = eventually("the lower cap to be enforced", 10, || async {
        refusal(&charge(&ledger, &token, 1).await.ok()?).filter(|r| *r == Rule::DailyCap)
    })
    .await?;
    assert_eq!(refused, Rule::DailyCap);
    let hash = token.secret_hash();
    let read = ReserveRequest {
        key_id: &token.key_id,
        secret_hash: &hash,
        method: "GET",
        path: "/v1/customers/cus_1",
        estimate: Usd::ZERO,
        idempotency: None,
        read: true,
        mode: keybrake_ledger::Mode::Reserve,
        owned: &[],
        run_scope: false,
        commits_until_ms: None,
    };
    assert!(
        matches!(ledger.reserve(&read).await?, Admission::Granted { .. }),
        "the widened allowlist"
    );
    assert_eq!(
        token_of(&stack, "billing-agent-run-7f3a").await?,
        token,
        "the token did not change"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_secret_or_unrevoking_cannot_reset_a_keys_spend() -> Result<()> {
    let stack = stripe_stack().await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    let name = "billing-agent-run-7f3a";
    let first = key_in_phase(&stack, name, KeyPhase::Active).await?;
    let id = first.status.and_then(|s| s.key_id).unwrap_or_default();
    let ledger = stack.ledger().await?;
    let old = token_of(&stack, name).await?;
    assert!(matches!(
        charge(&ledger, &old, 200).await?,
        Admission::Granted { .. }
    ));
    assert!(matches!(
        charge(&ledger, &old, 200).await?,
        Admission::Granted { .. }
    ));

    // Someone with `delete secrets` in the namespace deletes the key's Secret, then edits the
    // reissued one: each time a new token, under the same key id, with the $400 still counted.
    let secrets = Api::<Secret>::namespaced(stack.client.clone(), "billing");
    secrets.delete(name, &Default::default()).await?;
    let reissued = eventually("a new token in a new Secret", 20, || async {
        let t = token_of(&stack, name).await.ok()?;
        (t != old).then_some(t)
    })
    .await?;
    assert_eq!(reissued.key_id.as_str(), id, "the key id changed");
    assert_eq!(
        refusal(&try_charge(&ledger, &old).await?),
        Some(Rule::BadSecret),
        "the lost token still works"
    );
    assert_eq!(
        refusal(&charge(&ledger, &reissued, 200).await?),
        Some(Rule::DailyCap),
        "the reissued key's spend started again from $0"
    );
    secrets
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"STRIPE_API_KEY": "sk_live_not_ours"}})),
        )
        .await?;
    let again = eventually("the edited Secret to be rewritten", 20, || async {
        let t = token_of(&stack, name).await.ok()?;
        (t != reissued).then_some(t)
    })
    .await?;
    assert_eq!(again.key_id.as_str(), id);
    assert_eq!(
        refusal(&charge(&ledger, &again, 200).await?),
        Some(Rule::DailyCap)
    );

    // `revoked` is one-way: the API server refuses the flip back.
    stack.revoke_with_kubectl("billing", name).await?;
    key_in_phase(&stack, name, KeyPhase::Revoked).await?;
    let unrevoke = stack
        .cluster
        .kubectl(
            &[
                "patch",
                "vk",
                "-n",
                "billing",
                name,
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"revoked":false}}"#,
            ],
            None,
        )
        .await?;
    assert_ne!(unrevoke.code, 0);
    assert!(
        unrevoke.stderr.contains("revoked is one-way"),
        "{}",
        unrevoke.stderr
    );
    // And with CRDs installed without that rule (older ones), the key stays revoked anyway.
    let crd = std::fs::read_to_string(
        keybrake_e2e::workspace_root().join("manifests/crds/vaultkeys.keybrake.com.yaml"),
    )?;
    let mut older: serde_json::Value = serde_yaml_ng::from_str(&crd)?;
    let rules = older
        .pointer_mut(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/x-kubernetes-validations",
        )
        .and_then(serde_json::Value::as_array_mut)
        .ok_or_else(|| anyhow::anyhow!("no spec rules in the CRD"))?;
    let before = rules.len();
    rules.retain(|r| !r["message"].as_str().unwrap_or("").contains("one-way"));
    assert_eq!(rules.len(), before - 1);
    let without_rule = older.to_string();
    stack.cluster.apply_ok(&without_rule).await?;
    stack
        .patch_key_with_kubectl("billing", name, r#"{"spec":{"revoked":false}}"#)
        .await?;
    let stays = eventually("the operator to say the key stays revoked", 20, || async {
        let vk = Api::<VaultKey>::namespaced(stack.client.clone(), "billing")
            .get(name)
            .await
            .ok()?;
        let s = vk.status?;
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?;
        (s.phase == Some(KeyPhase::Revoked) && ready.message.contains("for good")).then_some(())
    })
    .await;
    stays?;
    assert!(
        secrets.get_opt(name).await?.is_none(),
        "a Secret was reissued"
    );
    assert_eq!(refusal(&probe(&ledger, &again).await?), Some(Rule::Revoked));
    stack.assert_deployables_never_refused()?;
    Ok(())
}
