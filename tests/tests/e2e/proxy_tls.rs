//! The proxy serving TLS from a Secret (cert-manager's shape) signed by a private CA: the
//! official SDKs trust it from the key's Secret alone, a renewed certificate is picked up
//! mid-traffic with no failed call, plain HTTP is refused, and without a certificate the proxy
//! does not start unless plain HTTP is asked for.

use std::collections::BTreeMap;

use anyhow::Result;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use keybrake_e2e::{
    example, http, https,
    pki::TestPki,
    sdk::{LocalStripe, run, run_node},
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

const TLS_SECRET: &str = "keybrake-proxy-tls";

fn tls_secret(crt: &str, key: &str, ca: &str) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(TLS_SECRET.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), bytes(crt)),
            ("tls.key".to_owned(), bytes(key)),
            ("ca.crt".to_owned(), bytes(ca)),
        ])),
        ..Default::default()
    }
}

/// The key's Secret as a pod sees it: its keys as environment variables (`envFrom`) and as
/// files under the mount path (a volume of the same Secret).
fn mount(env: &BTreeMap<String, String>, dir: &std::path::Path) -> Result<()> {
    std::fs::write(dir.join("ca.crt"), &env["ca.crt"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_trust_a_tls_proxy_from_the_key_secret_and_a_renewal_drops_no_call() -> Result<()>
{
    let pki = TestPki::generate()?;
    let read = |f: &str| std::fs::read_to_string(pki.path(f));
    let (crt, key, ca) = (
        read("server.pem")?,
        read("server-key.pem")?,
        read("ca.pem")?,
    );
    let mut stack = Stack::start().await?;
    stack.stop_operator().await;
    let secrets = Api::<Secret>::namespaced(stack.client.clone(), "keybrake-system");
    secrets
        .create(&PostParams::default(), &tls_secret(&crt, &key, &ca))
        .await?;

    // No certificate and no explicit plain HTTP: the proxy does not start.
    let refused = match stack.start_proxy_with(|c| c.plaintext = false).await {
        Ok(_) => anyhow::bail!("the proxy started with neither TLS nor plain HTTP asked for"),
        Err(e) => e.to_string(),
    };
    assert!(
        refused.contains("KEYBRAKE_TLS_SECRET") && refused.contains("KEYBRAKE_PLAINTEXT"),
        "{refused}"
    );
    let proxy = stack
        .start_proxy_with(|c| {
            c.plaintext = false;
            c.tls_secret = Some(format!("keybrake-system/{TLS_SECRET}"));
        })
        .await?;
    stack.proxy_url = format!("https://{}", proxy.addr);
    let mounted = tempfile::tempdir()?;
    let mut operator = stack.operator_config();
    operator.proxy_ca_secret = Some(format!("keybrake-system/{TLS_SECRET}"));
    operator.ca_mount_path = mounted.path().display().to_string();
    stack.start_operator_with(operator).await?;

    // Plain HTTP to a TLS listener gets no answer.
    let plain = http(proxy.addr, "GET", "/v1/payment_intents", &[], b"").await;
    assert!(
        plain.as_ref().map_or(true, |r| r.status == 0),
        "plain HTTP was answered: {plain:?}"
    );

    // A Stripe key (localstripe behind), and Twilio and Resend keys (a recording upstream).
    let localstripe = LocalStripe::start().await?;
    let upstream = RecordingUpstream::start().await?;
    let policy = with_upstream(&example("stripe-policy.yaml"), &localstripe.url()).replace(
        "sk_test_replace_me_with_the_real_secret_key",
        "sk_test_localstripe_key",
    );
    stack.cluster.apply_ok(&policy).await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    stack.apply_agents_policies(&upstream.url()).await?;
    for key in ["twilio-sms-key.yaml", "resend-email-key.yaml"] {
        stack.cluster.apply_ok(&example(key)).await?;
    }
    let stripe = stack
        .active_key_env("billing", "billing-agent-run-7f3a")
        .await?;
    let twilio = stack
        .active_key_env("agents", "haystack-notifier-run-41")
        .await?;
    let resend = stack
        .active_key_env("agents", "haystack-mailer-run-41")
        .await?;
    assert!(stripe["STRIPE_API_BASE"].starts_with("https://"));
    assert_eq!(
        stripe["ca.crt"], ca,
        "the key's Secret carries the proxy's CA"
    );
    mount(&stripe, mounted.path())?;

    // The official SDKs, configured from the Secret alone (stripe-python: one line, see
    // tests/sdk/stripe_run.py).
    let first = |out: serde_json::Value| out[0]["ok"].as_str().map(str::to_owned);
    let node_stripe = first(run_node(&["stripe", "1", "100"], &stripe).await?);
    let py_stripe = first(run("stripe_run.py", &["global", "1", "100"], &stripe).await?);
    let node_twilio = first(run_node(&["twilio", "1", "20"], &twilio).await?);
    let py_twilio = first(run("twilio_run.py", &["1", "20"], &twilio).await?);
    let resend_env = resend.clone();
    let node_resend = first(run_node(&["resend", "1", "1"], &resend_env).await?);
    let py_resend = first(run("resend_run.py", &["1", "1"], &resend_env).await?);
    for (who, id) in [
        ("node stripe", &node_stripe),
        ("python stripe", &py_stripe),
        ("node twilio", &node_twilio),
        ("python twilio", &py_twilio),
        ("node resend", &node_resend),
        ("python resend", &py_resend),
    ] {
        assert!(id.is_some(), "{who} did not get through the TLS proxy");
    }

    // The issuance API over TLS, with a token minted for the keybrake audience: the caller needs
    // the CA before it has a key (docs/security.md: publish it, e.g. with trust-manager).
    stack
        .cluster
        .apply_ok(keybrake_e2e::identities::RBAC)
        .await?;
    let worker = format!("Bearer {}", stack.cluster.tokens().await?.billing_worker);
    let request = json!({"vendor": "stripe", "daily_usd_cap": 50, "allowed_endpoints": ["POST /v1/payment_intents"], "expires_in": "10m", "agent_run_label": "tls/run-1"}).to_string();
    let (issued, _) = https(
        proxy.addr,
        &ca,
        "POST",
        "/vault/keys",
        &[
            ("Authorization", worker.as_str()),
            ("Content-Type", "application/json"),
        ],
        request.as_bytes(),
    )
    .await?;
    assert_eq!(issued.status, 201, "{}", issued.body);
    assert!(issued.body.contains("kb_stripe_"), "{}", issued.body);

    // A renewal mid-traffic: calls every 20 ms, the Secret replaced after the tenth; every call
    // answered, and the later ones by the new certificate.
    let bearer = format!("Bearer {}", stripe["STRIPE_API_KEY"]);
    let charge = || async {
        https(
            proxy.addr,
            &ca,
            "POST",
            "/v1/payment_intents",
            &[
                ("Authorization", bearer.as_str()),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            b"amount=100&currency=usd&payment_method=pm_card_visa&confirm=true",
        )
        .await
    };
    let (renewed_crt, renewed_key) = pki.renew_server()?;
    let renewed_der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(renewed_crt.as_bytes())?.to_vec()
    };
    let mut served_by_new = 0;
    for i in 0..40 {
        if i == 10 {
            secrets
                .patch(
                    TLS_SECRET,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"stringData": {"tls.crt": renewed_crt, "tls.key": renewed_key}}),
                    ),
                )
                .await?;
        }
        let (reply, leaf) = charge().await?;
        assert_eq!(
            reply.status, 200,
            "call {i} during the renewal: {}",
            reply.body
        );
        served_by_new += usize::from(leaf == renewed_der);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        served_by_new > 0,
        "the renewed certificate was never served"
    );
    println!(
        "renewal mid-traffic: 40 calls, none failed, {served_by_new} served by the new certificate"
    );
    // A Secret that stops parsing keeps the last good certificate, and says so in a metric.
    secrets
        .patch(
            TLS_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"tls.key": "not a key"}})),
        )
        .await?;
    let bad = eventually("the unusable Secret to be counted", 10, || async {
        let (r, _) = https(proxy.admin_addr, &ca, "GET", "/metrics", &[], b"")
            .await
            .ok()?;
        r.body
            .contains("keybrake_proxy_tls_reloads_total{result=\"error\"} 1")
            .then_some(())
    })
    .await;
    bad?;
    let (still, leaf) = charge().await?;
    assert_eq!((still.status, leaf == renewed_der), (200, true));
    // A new CA reaches every key's Secret, and rolls the key's restart targets (their pods read
    // the variables at start).
    stack
        .cluster
        .apply_ok(&keybrake_e2e::busybox_deployment(
            "tls-worker",
            &keybrake_e2e::restart_on_rotation("billing-agent-run-7f3a"),
        ))
        .await?;
    Api::<keybrake_crds::VaultKey>::namespaced(stack.client.clone(), "billing")
        .patch(
            "billing-agent-run-7f3a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"restartTargets": [{"kind": "Deployment", "name": "tls-worker"}]}}),
            ),
        )
        .await?;
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(stack.client.clone(), "billing");
    let rolled = || async {
        deployments
            .get("tls-worker")
            .await
            .ok()
            .and_then(|d| d.spec?.template.metadata?.annotations)
            .is_some_and(|a| a.keys().any(|k| k.starts_with("keybrake.com/")))
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        !rolled().await,
        "a spec change that left the Secret alone rolled the target"
    );
    let new_ca = renewed_crt.clone();
    secrets
        .patch(
            TLS_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"ca.crt": new_ca}})),
        )
        .await?;
    for (ns, name) in [
        ("billing", "billing-agent-run-7f3a"),
        ("agents", "haystack-mailer-run-41"),
    ] {
        let keys = Api::<Secret>::namespaced(stack.client.clone(), ns);
        eventually(&format!("{ns}/{name} to carry the new CA"), 15, || async {
            let s = keys.get(name).await.ok()?;
            let pem = s.data?.get("ca.crt")?.0.clone();
            (pem == new_ca.as_bytes()).then_some(())
        })
        .await?;
    }
    eventually(
        "the restart target to be rolled for the new CA",
        15,
        || async { rolled().await.then_some(()) },
    )
    .await?;
    // A client that prefers h2 (the kubelet's HTTPS probes do) gets HTTP/1.1 on the admin port,
    // which speaks nothing else, and h2 on the data port.
    let offered: [&[u8]; 2] = [b"h2", b"http/1.1"];
    assert_eq!(
        keybrake_e2e::tls_alpn(proxy.admin_addr, &ca, &offered)
            .await?
            .as_deref(),
        Some(&b"http/1.1"[..])
    );
    assert_eq!(
        keybrake_e2e::tls_alpn(proxy.addr, &ca, &offered)
            .await?
            .as_deref(),
        Some(&b"h2"[..])
    );
    // And the admin port serves TLS too.
    let admin_addr = proxy.admin_addr;
    eventually("the admin port over TLS", 5, || async {
        let (r, _) = https(admin_addr, &ca, "GET", "/readyz", &[], b"")
            .await
            .ok()?;
        (r.status == 200).then_some(())
    })
    .await?;
    stack.assert_deployables_never_refused()?;
    proxy.shutdown().await;
    Ok(())
}
