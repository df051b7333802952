//! A key issuer cannot take over another key or any Secret: the operator writes and deletes only
//! Secrets it created for that very VaultKey (its uid), and the issuance API refuses a taken name
//! up front. Each test asserts that nothing was written, adopted or deleted.

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::api::core::v1::Secret;
use keybrake_crds::{KeyPhase, SpendPolicy, VaultKey};
use keybrake_e2e::{
    example, http, identities, payment_intent,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};
use kube::{Api, ResourceExt, api::DeleteParams};
use serde_json::json;

/// The example Stripe policy, its worker key (Secret `billing-worker-stripe`) Active, and RBAC.
async fn victim_stack() -> Result<(Stack, keybrake_proxy::Running, RecordingUpstream)> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    stack
        .cluster
        .apply_ok(&with_upstream(
            &example("stripe-policy.yaml"),
            &upstream.url(),
        ))
        .await?;
    stack.cluster.apply_ok(identities::RBAC).await?;
    stack
        .cluster
        .apply_ok(&example("stripe-worker-key.yaml"))
        .await?;
    stack.active_key_env("billing", "billing-worker").await?;
    Ok((stack, proxy, upstream))
}

/// A Secret as it is now: data, owners and resourceVersion.
async fn snapshot(
    stack: &Stack,
    name: &str,
) -> Result<(BTreeMap<String, String>, Vec<String>, String)> {
    let s = Api::<Secret>::namespaced(stack.client.clone(), "billing")
        .get(name)
        .await?;
    let data = s
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    let owners = s.owner_references().iter().map(|o| o.uid.clone()).collect();
    Ok((data, owners, s.resource_version().unwrap_or_default()))
}

async fn issue(
    stack: &Stack,
    proxy: &keybrake_proxy::Running,
    name: &str,
) -> Result<keybrake_e2e::Reply> {
    let auth = format!("Bearer {}", stack.cluster.tokens().await?.billing_worker);
    let body = json!({"vendor": "stripe", "name": name, "daily_usd_cap": 50, "expires_in": "1h"});
    http(
        proxy.addr,
        "POST",
        "/vault/keys",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_api_refuses_a_name_whose_secret_exists() -> Result<()> {
    let (stack, proxy, _upstream) = victim_stack().await?;
    for victim in ["billing-worker-stripe", "stripe-credentials"] {
        let before = snapshot(&stack, victim).await?;
        let r = issue(&stack, &proxy, victim).await?;
        assert_eq!(r.status, 409, "{victim}: {}", r.body);
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains(&format!("a Secret billing/{victim} already exists"))),
            "{}",
            r.body
        );
        assert_eq!(
            snapshot(&stack, victim).await?,
            before,
            "{victim} was touched"
        );
        let keys = Api::<VaultKey>::namespaced(stack.client.clone(), "billing");
        assert!(
            keys.get_opt(victim).await?.is_none(),
            "a VaultKey {victim} was created"
        );
    }
    // The team's keys work on: the policy is Ready and the worker key Active.
    let policy = Api::<SpendPolicy>::namespaced(stack.client.clone(), "billing")
        .get("stripe")
        .await?;
    assert_eq!(
        policy.status.unwrap_or_default().conditions[0].status,
        "True"
    );
    stack
        .key_in_phase("billing", "billing-worker", KeyPhase::Active)
        .await?;
    proxy.shutdown().await;
    Ok(())
}

/// A VaultKey applied with kubectl whose `secretName` names another's Secret becomes Invalid,
/// with a condition and an Event naming the Secret and its owner; deleting it deletes nothing.
/// Also across an operator restart: the decision is made from the Secret's owner, not memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vaultkey_naming_anothers_secret_is_invalid_and_touches_nothing() -> Result<()> {
    let (mut stack, proxy, _upstream) = victim_stack().await?;
    let worker_before = snapshot(&stack, "billing-worker-stripe").await?;
    let creds_before = snapshot(&stack, "stripe-credentials").await?;
    stack.stop_operator().await;
    let hijack = |name: &str, secret: &str| {
        format!(
            "apiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata: {{name: {name}, namespace: billing}}\nspec:\n  policyRef: {{name: stripe}}\n  dailyUsdCap: 50\n  ttl: 1h\n  secretName: {secret}\n"
        )
    };
    stack
        .cluster
        .apply_ok(&hijack("hijack-worker", "billing-worker-stripe"))
        .await?;
    stack
        .cluster
        .apply_ok(&hijack("hijack-credentials", "stripe-credentials"))
        .await?;
    stack.start_operator().await?;
    for (name, secret, owner) in [
        (
            "hijack-worker",
            "billing-worker-stripe",
            "owned by VaultKey billing-worker",
        ),
        (
            "hijack-credentials",
            "stripe-credentials",
            "not made by Keybrake",
        ),
    ] {
        let vk = stack
            .key_in_phase("billing", name, KeyPhase::Invalid)
            .await?;
        let status = vk.status.unwrap_or_default();
        let ready = &status.conditions[0];
        assert_eq!(ready.reason, "SecretNotOwned", "{ready:?}");
        // kstatus (Flux, kubectl wait): failed, not healthy.
        assert!(
            status.conditions.iter().any(|c| c.type_ == "Stalled"
                && c.status == "True"
                && c.reason == "SecretNotOwned"),
            "{:?}",
            status.conditions
        );
        assert!(
            ready
                .message
                .contains(&format!("Secret billing/{secret} already exists"))
                && ready.message.contains(owner),
            "{}",
            ready.message
        );
        assert_eq!(
            status.key_id, None,
            "no key id was taken from a Secret it does not own"
        );
        let described = stack
            .cluster
            .kubectl_ok(&["describe", "vk", "-n", "billing", name])
            .await?;
        assert!(
            described.contains("SecretNotOwned") && described.contains(secret),
            "{described}"
        );
    }
    let keys = Api::<VaultKey>::namespaced(stack.client.clone(), "billing");
    for name in ["hijack-worker", "hijack-credentials"] {
        keys.delete(name, &DeleteParams::default()).await?;
    }
    eventually("the hijacking keys to be gone", 20, || async {
        let a = keys.get_opt("hijack-worker").await.ok()?;
        let b = keys.get_opt("hijack-credentials").await.ok()?;
        (a.is_none() && b.is_none()).then_some(())
    })
    .await?;
    assert_eq!(
        snapshot(&stack, "billing-worker-stripe").await?,
        worker_before
    );
    assert_eq!(snapshot(&stack, "stripe-credentials").await?, creds_before);
    stack
        .key_in_phase("billing", "billing-worker", KeyPhase::Active)
        .await?;
    proxy.shutdown().await;
    Ok(())
}

/// A VaultKey deleted and created again under the same name is a new key: a new key id and
/// token, a Secret owned by the new uid, and the old token refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vaultkey_recreated_under_the_same_name_is_a_new_key() -> Result<()> {
    let (stack, proxy, _upstream) = victim_stack().await?;
    let keys = Api::<VaultKey>::namespaced(stack.client.clone(), "billing");
    let old = keys.get("billing-worker").await?;
    let old_token =
        stack.active_key_env("billing", "billing-worker").await?["STRIPE_API_KEY"].clone();
    keys.delete("billing-worker", &DeleteParams::default())
        .await?;
    eventually("the old key to be gone", 20, || async {
        keys.get_opt("billing-worker")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    let secrets = Api::<Secret>::namespaced(stack.client.clone(), "billing");
    assert!(
        secrets.get_opt("billing-worker-stripe").await?.is_none(),
        "its own Secret went"
    );
    stack
        .cluster
        .apply_ok(&example("stripe-worker-key.yaml"))
        .await?;
    let env = stack.active_key_env("billing", "billing-worker").await?;
    let new = keys.get("billing-worker").await?;
    assert_ne!(new.uid(), old.uid());
    assert_ne!(env["STRIPE_API_KEY"], old_token);
    let secret = secrets.get("billing-worker-stripe").await?;
    assert_eq!(
        secret
            .owner_references()
            .iter()
            .map(|o| o.uid.clone())
            .collect::<Vec<_>>(),
        vec![new.uid().unwrap_or_default()]
    );
    let auth = format!("Bearer {old_token}");
    let r = payment_intent(proxy.addr, &auth, b"amount=100&currency=usd&confirm=true").await?;
    assert_eq!(r.status, 401, "the old token: {}", r.body);
    proxy.shutdown().await;
    Ok(())
}

/// A status written by someone else (here, another key's id in `status.keyId`) cannot make the
/// operator revoke or delete that other key: a key id is acted on only when its record in Redis
/// names this VaultKey.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_status_key_id_revokes_nothing_of_anothers() -> Result<()> {
    let (mut stack, proxy, _upstream) = victim_stack().await?;
    let keys = Api::<VaultKey>::namespaced(stack.client.clone(), "billing");
    let victim = keys.get("billing-worker").await?;
    let victim_id = victim.status.unwrap_or_default().key_id.unwrap_or_default();
    let victim_env = stack.active_key_env("billing", "billing-worker").await?;
    stack
        .cluster
        .apply_ok(
            "apiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata: {name: forger, namespace: billing}\nspec:\n  policyRef: {name: stripe}\n  dailyUsdCap: 5\n  ttl: 1h\n",
        ).await?;
    stack.active_key_env("billing", "forger").await?;
    stack.stop_operator().await;
    let patch = json!({"status": {"keyId": victim_id}}).to_string();
    stack
        .cluster
        .kubectl_ok(&[
            "patch",
            "vk",
            "forger",
            "-n",
            "billing",
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .await?;
    keys.delete("forger", &DeleteParams::default()).await?;
    stack.start_operator().await?;
    eventually("the forger to be gone", 20, || async {
        keys.get_opt("forger").await.ok()?.is_none().then_some(())
    })
    .await?;
    let auth = format!("Bearer {}", victim_env["STRIPE_API_KEY"]);
    let r = payment_intent(proxy.addr, &auth, b"amount=100&currency=usd&confirm=true").await?;
    assert_eq!(r.status, 200, "the victim's key still works: {}", r.body);
    stack
        .key_in_phase("billing", "billing-worker", KeyPhase::Active)
        .await?;
    proxy.shutdown().await;
    Ok(())
}

/// A Secret planted before the operator's first reconcile, made to look like the operator's
/// own (its label, and a controller owner reference to the new key), holding a token under the
/// victim's key id: the operator does not trust it, writes nothing of the victim's, and revoking
/// the attacker's key leaves the victim working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_token_under_anothers_key_id_takes_nothing_over() -> Result<()> {
    let (mut stack, proxy, _upstream) = victim_stack().await?;
    let victim_env = stack.active_key_env("billing", "billing-worker").await?;
    let victim_id = victim_env["KEYBRAKE_KEY_ID"].clone();
    let victim_bearer = format!("Bearer {}", victim_env["STRIPE_API_KEY"]);
    let charge = |bearer: String| {
        let addr = proxy.addr;
        async move { payment_intent(addr, &bearer, b"amount=100&currency=usd&confirm=true").await }
    };
    assert_eq!(charge(victim_bearer.clone()).await?.status, 200);

    // While the operator is away (a leader handover, a Redis blip), the attacker creates its
    // key and, before any reconcile, the Secret the operator would write.
    stack.stop_operator().await;
    stack
        .cluster
        .apply_ok(
            "apiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata: {name: evil, namespace: billing}\nspec:\n  policyRef: {name: stripe}\n  dailyUsdCap: 50\n  ttl: 1h\n",
        ).await?;
    let evil = Api::<VaultKey>::namespaced(stack.client.clone(), "billing")
        .get("evil")
        .await?;
    let planted = format!("kb_stripe_{victim_id}_{}", "a".repeat(64));
    stack
        .cluster
        .apply_ok(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: evil\n  namespace: billing\n  labels: {{app.kubernetes.io/managed-by: keybrake-operator}}\n  annotations: {{keybrake.com/key-id: {victim_id}}}\n  ownerReferences:\n  - {{apiVersion: keybrake.com/v1alpha1, kind: VaultKey, name: evil, uid: {}, controller: true}}\nstringData:\n  STRIPE_API_KEY: {planted}\n",
            evil.uid().unwrap_or_default()
        )).await?;
    stack.start_operator().await?;
    let evil_env = stack.active_key_env("billing", "evil").await?;
    assert_ne!(
        evil_env["KEYBRAKE_KEY_ID"], victim_id,
        "the evil key took the victim's id"
    );
    assert_ne!(
        evil_env["STRIPE_API_KEY"], planted,
        "the planted token was adopted"
    );
    let r = charge(format!("Bearer {planted}")).await?;
    assert_ne!(r.status, 200, "the planted token works: {}", r.body);
    // Revoking the attacker's key (through the API, as its issuer may) leaves the victim alone.
    let admin = format!("Bearer {}", stack.cluster.tokens().await?.admin);
    let revoked = http(
        proxy.addr,
        "DELETE",
        "/vault/keys/evil?namespace=billing",
        &[("Authorization", admin.as_str())],
        b"",
    )
    .await?;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    stack
        .key_in_phase("billing", "evil", KeyPhase::Revoked)
        .await?;
    let r = charge(victim_bearer).await?;
    assert_eq!(r.status, 200, "the victim was revoked: {}", r.body);
    stack
        .key_in_phase("billing", "billing-worker", KeyPhase::Active)
        .await?;
    proxy.shutdown().await;
    Ok(())
}
