//! No object can blind the operator or the proxy. The shipped CRDs refuse what our parsers
//! cannot read (their patterns and CEL rules agree with the parsers, `crds/src/agreement.rs`),
//! so the bad objects here are what a cluster can still hold: objects stored under an older,
//! looser schema. They are written with kubectl under such a schema (one per kind of field),
//! the shipped CRDs applied again, and both binaries restarted. Revocation of another key is
//! still enforced at once, new keys still become Active, a working key made unreadable stops
//! working, and each bad object is `Invalid` with `Stalled=True`, the field and the parser's
//! words, an Event and a metric.

use std::time::Instant;

use anyhow::{Result, bail};
use keybrake_crds::{KeyPhase, SpendPolicy, VaultKey};
use keybrake_e2e::{
    example, http, payment_intent,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};
use kube::Api;
use serde_json::Value;

/// A $1 charge through the proxy at `addr` with `token`; the status and the refusal's code.
async fn charge(addr: std::net::SocketAddr, token: &str) -> Result<(u16, String)> {
    let auth = format!("Bearer {token}");
    let r = payment_intent(addr, &auth, b"amount=100&currency=usd").await?;
    let code = r.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((r.status, code))
}

/// Waits until `token` is refused as revoked through the proxy at `addr`.
async fn refused_as_revoked(addr: std::net::SocketAddr, token: &str, what: &str) -> Result<()> {
    eventually(what, 5, || async {
        let (status, code) = charge(addr, token).await.ok()?;
        (status != 200 && code == "vault_key_revoked").then_some(())
    })
    .await
}

/// A VaultKey on the example policy with `spec` lines added (YAML under `spec:`).
fn key(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: keybrake.com/v1alpha1\nkind: VaultKey\nmetadata:\n  name: {name}\n  namespace: billing\nspec:\n  policyRef: {{name: stripe}}\n{spec}"
    )
}

/// The bad VaultKeys: name, spec lines, and the field the refusal must name.
const BAD_KEYS: [(&str, &str, &str); 6] = [
    (
        "bad-money",
        "  dailyUsdCap: \"5.0000001\"\n",
        "spec.dailyUsdCap",
    ),
    (
        "bad-endpoint",
        "  dailyUsdCap: 5\n  allowedEndpoints: [\"POST /v1/../charges\"]\n",
        "spec.allowedEndpoints[0]",
    ),
    ("bad-ttl-zero", "  dailyUsdCap: 5\n  ttl: 0s\n", "spec.ttl"),
    (
        "bad-ttl-long",
        "  dailyUsdCap: 5\n  ttl: 999999h\n",
        "spec.ttl",
    ),
    (
        "bad-rotation",
        "  dailyUsdCap: 5\n  rotation: {period: 999999h, overlap: 1h}\n",
        "spec.rotation.period",
    ),
    (
        "bad-debounce",
        "  dailyUsdCap: 5\n  restartDebounce: 0s\n",
        "spec.restartDebounce",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_the_server_admits_and_we_cannot_read_blind_nothing() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    stack
        .cluster
        .apply_ok(&key(
            "to-revoke",
            "  dailyUsdCap: 5\n  allowedEndpoints: [\"POST /v1/payment_intents\"]\n",
        ))
        .await?;
    let doomed = stack.active_key_env("billing", "to-revoke").await?;

    assert_eq!(charge(proxy.addr, &env["STRIPE_API_KEY"]).await?.0, 200);

    // The shipped schema refuses each bad key, and the bad policy, with the API server's own
    // message.
    for (name, spec, _) in BAD_KEYS {
        let out = stack.cluster.apply(&key(name, spec)).await?;
        assert_ne!(out.code, 0, "{name} was admitted by the shipped CRD");
        assert!(out.stderr.contains("is invalid"), "{name}: {}", out.stderr);
    }
    let policy = with_upstream(&example("stripe-policy.yaml"), &upstream.url());
    let bad_policy = policy
        .split("\n---\n")
        .find(|d| d.contains("kind: SpendPolicy"))
        .unwrap_or_default()
        .replace("name: stripe\n", "name: bad-policy\n")
        .replace(
            "  scope:\n",
            "  scope:\n    existingObjects: [\"POST /v1/../refunds\"]\n",
        );
    let out = stack.cluster.apply(&bad_policy).await?;
    assert!(
        out.code != 0 && out.stderr.contains("spec.scope.existingObjects[0]"),
        "the bad policy was admitted by the shipped CRD: {}",
        out.stderr
    );

    // Under an older, looser schema the API server admits them, and keeps them after the
    // shipped CRDs are applied again (it does not re-validate stored objects).
    stack.cluster.apply_ok(&loose_crds()?).await?;
    for (name, spec, _) in BAD_KEYS {
        stack.cluster.apply_ok(&key(name, spec)).await?;
    }
    stack.cluster.apply_ok(&bad_policy).await?;
    stack
        .cluster
        .apply_ok(
            &key("on-bad-policy", "  dailyUsdCap: 5\n")
                .replace("{name: stripe}", "{name: bad-policy}"),
        )
        .await?;

    // A working key made unreadable stops working at once (fail closed), while the binaries
    // run.
    stack
        .patch_key_with_kubectl(
            "billing",
            "billing-agent-run-7f3a",
            r#"{"spec":{"ttl":"0s"}}"#,
        )
        .await?;
    refused_as_revoked(
        proxy.addr,
        &env["STRIPE_API_KEY"],
        "the key made unreadable to be refused",
    )
    .await?;
    let crds = keybrake_e2e::workspace_root().join("manifests/crds");
    stack
        .cluster
        .kubectl_ok(&["apply", "-f", crds.to_str().unwrap_or_default()])
        .await?;

    // Both binaries restart: their watches list every object, the bad ones included.
    stack.stop_operator().await;
    proxy.shutdown().await;
    let mut config = stack.operator_config();
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    config.metrics_addr = metrics_addr;
    stack.start_operator_with(config).await?;
    let proxy = stack.start_proxy().await?;

    // Revocation with kubectl is enforced within the usual latency.
    assert_eq!(charge(proxy.addr, &doomed["STRIPE_API_KEY"]).await?.0, 200);
    let revoked_at = Instant::now();
    stack.revoke_with_kubectl("billing", "to-revoke").await?;
    refused_as_revoked(
        proxy.addr,
        &doomed["STRIPE_API_KEY"],
        "the revoked key to be refused",
    )
    .await?;
    println!(
        "revocation enforced {:.2}s after kubectl patch, with {} unreadable objects in the cluster",
        revoked_at.elapsed().as_secs_f64(),
        // The bad keys, the key made unreadable and the bad policy.
        BAD_KEYS.len() + 2
    );

    // A new key becomes Active.
    stack
        .cluster
        .apply_ok(&key("fresh", "  dailyUsdCap: 5\n"))
        .await?;
    stack
        .key_in_phase("billing", "fresh", KeyPhase::Active)
        .await?;

    // Each bad key is Invalid and Stalled, naming its field, with an Event.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        stack.client.clone(),
        "billing",
        &kube::api::ApiResource::erase::<VaultKey>(&()),
    );
    for (name, _, field) in BAD_KEYS {
        let obj = eventually(&format!("{name} to be Invalid"), 20, || async {
            let o = raw.get(name).await.ok()?;
            (o.data["status"]["phase"] == "Invalid").then_some(o)
        })
        .await?;
        let stalled = stalled(&obj.data)?;
        assert!(
            stalled.starts_with(&format!("{field}: ")),
            "{name}: {stalled}"
        );
        let described = stack
            .cluster
            .kubectl_ok(&["describe", "vk", "-n", "billing", name])
            .await?;
        assert!(
            described.contains("Unreadable") && described.contains(field),
            "{name}: {described}"
        );
        println!("{name:<14} Invalid: {stalled}");
    }
    stack
        .cluster
        .kubectl_ok(&[
            "wait",
            "-n",
            "billing",
            "vk/bad-ttl-zero",
            "--for=condition=Stalled=True",
            "--timeout=20s",
        ])
        .await?;

    // The unreadable policy is Stalled too, and holds its key, naming the field.
    let policies: Api<kube::api::DynamicObject> = Api::namespaced_with(
        stack.client.clone(),
        "billing",
        &kube::api::ApiResource::erase::<SpendPolicy>(&()),
    );
    let p = eventually("the bad policy to be Stalled", 20, || async {
        let o = policies.get("bad-policy").await.ok()?;
        stalled(&o.data).ok()
    })
    .await?;
    assert!(p.starts_with("spec.scope.existingObjects[0]: "), "{p}");
    let held = eventually("the key on the bad policy to be held", 20, || async {
        let o = raw.get("on-bad-policy").await.ok()?;
        let s = stalled(&o.data).ok()?;
        s.contains("cannot be read: spec.scope.existingObjects[0]")
            .then_some(s)
    })
    .await?;
    println!("on-bad-policy  held: {held}");

    // The key made unreadable is still refused after the restart, and its Secret is gone.
    refused_as_revoked(
        proxy.addr,
        &env["STRIPE_API_KEY"],
        "the unreadable key to stay refused",
    )
    .await?;
    let secret = stack.secret_data("billing", "billing-agent-run-7f3a").await;
    let gone = eventually("its Secret to go", 20, || async {
        stack
            .secret_data("billing", "billing-agent-run-7f3a")
            .await
            .is_err()
            .then_some(())
    })
    .await;
    if gone.is_err() {
        bail!("the unreadable key's Secret stayed: {secret:?}");
    }

    // The metric counts them; deleting one lets it go.
    let count = |body: &str, kind: &str| {
        body.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "keybrake_operator_unreadable_objects{{kind=\"{kind}\"}}"
                ))
            })
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<i64>().ok())
    };
    eventually(
        "the metric to count every unreadable object",
        20,
        || async {
            let (_, body) = keybrake_e2e::raw_http(metrics_addr, "GET", "/metrics", &[], b"")
                .await
                .ok()?;
            (count(&body, "vaultkey") == Some(BAD_KEYS.len() as i64 + 1)
                && count(&body, "spendpolicy") == Some(1))
            .then_some(())
        },
    )
    .await?;
    stack
        .cluster
        .kubectl_ok(&[
            "delete",
            "vk",
            "-n",
            "billing",
            "bad-ttl-zero",
            "--timeout=20s",
        ])
        .await?;
    eventually("the deleted key to leave the metric", 20, || async {
        let (_, body) = keybrake_e2e::raw_http(metrics_addr, "GET", "/metrics", &[], b"")
            .await
            .ok()?;
        (count(&body, "vaultkey") == Some(BAD_KEYS.len() as i64)).then_some(())
    })
    .await?;

    // The issuance API names the unreadable policy when asked for it, and still issues on the
    // readable one.
    stack
        .cluster
        .apply_ok(keybrake_e2e::identities::RBAC)
        .await?;
    let worker = format!("Bearer {}", stack.cluster.tokens().await?.billing_worker);
    let issue = |policy: &'static str| {
        let (addr, worker) = (proxy.addr, worker.clone());
        async move {
            let body = serde_json::json!({"vendor": "stripe", "policy": policy, "daily_usd_cap": 5, "expires_in": "1h"});
            http(
                addr,
                "POST",
                "/vault/keys",
                &[
                    ("Authorization", worker.as_str()),
                    ("Content-Type", "application/json"),
                ],
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    let refused = issue("bad-policy").await?;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("cannot be read: spec.scope.existingObjects[0]"),
        "{}",
        refused.body
    );
    let issued = issue("stripe").await?;
    assert_eq!(issued.status, 201, "{}", issued.body);

    // Fixing the field brings a key back: Active, and out of the count.
    stack
        .patch_key_with_kubectl("billing", "bad-ttl-long", r#"{"spec":{"ttl":"1h"}}"#)
        .await?;
    stack
        .key_in_phase("billing", "bad-ttl-long", KeyPhase::Active)
        .await?;
    eventually("the fixed key to leave the metric", 20, || async {
        let (_, body) = keybrake_e2e::raw_http(metrics_addr, "GET", "/metrics", &[], b"")
            .await
            .ok()?;
        (count(&body, "vaultkey") == Some(BAD_KEYS.len() as i64 - 1)).then_some(())
    })
    .await?;

    // Nothing the binaries did was refused by the shipped RBAC.
    stack.assert_deployables_never_refused()?;
    proxy.shutdown().await;
    Ok(())
}

/// The `Stalled` condition's message, when it is True.
fn stalled(obj: &Value) -> Result<String> {
    let conditions = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conditions
        .iter()
        .find(|c| c["type"] == "Stalled" && c["status"] == "True")
    {
        Some(c) => Ok(c["message"].as_str().unwrap_or_default().to_owned()),
        None => bail!("not Stalled: {obj}"),
    }
}

/// The shipped CRDs with every string pattern and the duration bounds taken out: a schema as
/// loose as an older release's.
fn loose_crds() -> Result<String> {
    fn loosen(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("pattern");
                if let Some(Value::Array(rules)) = map.get_mut("x-kubernetes-validations") {
                    rules.retain(|r| r["rule"] != keybrake_crds::duration::BOUNDS_RULE);
                }
                map.values_mut().for_each(loosen);
            }
            Value::Array(items) => items.iter_mut().for_each(loosen),
            _ => {}
        }
    }
    let dir = keybrake_e2e::workspace_root().join("manifests/crds");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        let mut crd: Value = serde_yaml_ng::from_str(&text)?;
        loosen(&mut crd);
        docs.push(serde_yaml_ng::to_string(&crd)?);
    }
    Ok(docs.join("\n---\n"))
}
