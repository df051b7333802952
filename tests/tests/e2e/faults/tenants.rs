//! Tenants stay apart: references, credentials and connected accounts.

use anyhow::Result;
use keybrake_e2e::{
    FORM, example, http,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_stay_apart_policies_secrets_and_connected_accounts() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    // Namespace `other` has its own policy, and credentials that only it holds.
    let other = with_upstream(&example("stripe-policy.yaml"), &upstream.url())
        .replace("namespace: billing", "namespace: other")
        .replace("name: stripe\n", "name: other-stripe\n")
        .replace(
            "sk_test_replace_me_with_the_real_secret_key",
            "sk_test_other_tenant",
        );
    stack.cluster.apply_namespace("other").await?;
    stack.cluster.apply_ok(&other).await?;

    // A VaultKey in billing naming other's policy: references stay in their namespace.
    stack
        .cluster
        .apply_ok(
            &example("stripe-run-key.yaml")
                .replace("billing-agent-run-7f3a", "borrowing-run")
                .replace("name: stripe\n", "name: other-stripe\n"),
        )
        .await?;
    let vk = eventually("the borrowing key to be refused its policy", 15, || async {
        let out = stack
            .cluster
            .kubectl(
                &["get", "vk", "borrowing-run", "-n", "billing", "-o", "json"],
                None,
            )
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let found = v["status"]["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found"));
        found.then_some(v)
    })
    .await?;
    println!(
        "cross-namespace policyRef: {}",
        vk["status"]["conditions"][0]["message"]
    );
    assert_ne!(vk["status"]["phase"], "Active");
    assert!(
        stack.secret_data("billing", "borrowing-run").await.is_err(),
        "no credential issued"
    );

    // A policy naming a Secret that exists only in another namespace cannot use it.
    let borrowed_secret = with_upstream(&example("stripe-policy.yaml"), &upstream.url())
        .split("---")
        .nth(1)
        .unwrap_or_default()
        .replace("name: stripe\n", "name: borrowed\n")
        .replace("name: stripe-credentials", "name: only-in-other");
    stack
        .cluster
        .apply_ok("apiVersion: v1\nkind: Secret\nmetadata:\n  name: only-in-other\n  namespace: other\nstringData:\n  apiKey: sk_test_other_only\n").await?;
    stack.cluster.apply_ok(&borrowed_secret).await?;
    let policy = eventually(
        "the borrowing policy to report its Secret missing",
        15,
        || async {
            let out = stack
                .cluster
                .kubectl(
                    &[
                        "get",
                        "spendpolicy",
                        "borrowed",
                        "-n",
                        "billing",
                        "-o",
                        "json",
                    ],
                    None,
                )
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
            let reasons: Vec<String> = v["status"]["conditions"]
                .as_array()?
                .iter()
                .filter_map(|c| c["reason"].as_str().map(str::to_owned))
                .collect();
            reasons
                .contains(&"CredentialsNotFound".to_owned())
                .then_some(v)
        },
    )
    .await?;
    println!(
        "cross-namespace credentials: {}",
        policy["status"]["conditions"]
    );

    // The billing key acting on a connected account, or on another tenant's Twilio account,
    // is refused before anything is sent.
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let before = upstream.requests().len();
    let r = http(
        proxy.addr,
        "POST",
        "/v1/payment_intents",
        &[
            ("Authorization", bearer.as_str()),
            ("Stripe-Account", "acct_1OtherTenant"),
            FORM,
        ],
        b"amount=100&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "header_not_allowed");
    assert!(
        r.body
            .contains("the stripe-account header acts on another Stripe account"),
        "{}",
        r.body
    );
    assert_eq!(upstream.requests().len(), before);
    // The billing key with the other tenant's vendor prefix or key id is not the other's key.
    let r = http(
        proxy.addr,
        "POST",
        "/twilio/2010-04-01/Accounts/ACffffffffffffffffffffffffffffffff/Messages.json",
        &[("Authorization", bearer.as_str()), FORM],
        b"To=%2B15551234567&From=%2B15557654321&Body=hi",
    )
    .await?;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("does not match the vault key's vendor"),
        "{}",
        r.body
    );
    assert_eq!(
        upstream.requests().len(),
        before,
        "nothing reached a vendor"
    );
    proxy.shutdown().await;
    Ok(())
}
