//! No real vendor secret and no full vault token in logs, metrics, statuses, Events or audit.

use anyhow::Result;
use keybrake_e2e::{
    example, http, payment_intent,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};

/// Every log line of this test process (all tests' in-process operators and proxies), at debug.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(
                "info,keybrake_proxy=debug,keybrake_operator=debug,keybrake_ledger=debug",
            )
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .finish();
        let _ = tracing_subscriber::util::SubscriberInitExt::try_init(subscriber);
        buf
    })
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_real_secret_or_vault_token_leaks_into_logs_metrics_status_events_or_audit() -> Result<()>
{
    let logs = captured_logs();
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    let real_key = "sk_test_leakcheck_0123456789abcdef";
    stack
        .cluster
        .apply_ok(
            &with_upstream(&example("stripe-policy.yaml"), &upstream.url())
                .replace("sk_test_replace_me_with_the_real_secret_key", real_key),
        )
        .await?;
    stack
        .cluster
        .apply_ok(&example("stripe-run-key.yaml"))
        .await?;
    let env = stack
        .active_key_env("billing", "billing-agent-run-7f3a")
        .await?;
    let token = env["STRIPE_API_KEY"].clone();
    let secret = keybrake_ledger::Token::parse_bearer(&token)?
        .secret()
        .to_owned();
    let bearer = format!("Bearer {token}");
    for _ in 0..3 {
        payment_intent(
            proxy.addr,
            &bearer,
            b"amount=20000&currency=usd&confirm=true",
        )
        .await?;
    }
    let forged = format!("Bearer {}", token.replace(&secret[..8], "00000000"));
    payment_intent(proxy.addr, &forged, b"amount=100&currency=usd").await?;
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    stack
        .key_in_phase(
            "billing",
            "billing-agent-run-7f3a",
            keybrake_crds::KeyPhase::Revoked,
        )
        .await?;
    payment_intent(proxy.addr, &bearer, b"amount=100&currency=usd").await?;
    eventually("the spend write-back", 15, || async {
        let spent = stack
            .cluster
            .kubectl_ok(&[
                "get",
                "vk",
                "-n",
                "billing",
                "billing-agent-run-7f3a",
                "-o",
                "jsonpath={.status.spend.refused}",
            ])
            .await
            .ok()?;
        (spent.trim() == "2").then_some(())
    })
    .await?;

    let mut places: Vec<(&str, String)> = Vec::new();
    places.push((
        "statuses and Events",
        stack
            .cluster
            .kubectl_ok(&["get", "vaultkeys,spendpolicies,events", "-A", "-o", "json"])
            .await?,
    ));
    places.push((
        "metrics",
        http(proxy.admin_addr, "GET", "/metrics", &[], b"")
            .await?
            .body,
    ));
    places.push((
        "audit",
        http(
            proxy.admin_addr,
            "GET",
            "/audit",
            &[(
                "Authorization",
                &format!("Bearer {}", stack.cluster.tokens().await?.admin),
            )],
            b"",
        )
        .await?
        .body,
    ));
    places.push((
        "logs",
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned(),
    ));
    assert!(
        places[0].1.contains("400.00"),
        "the scenario did not run: {}",
        places[0].1
    );
    // One span per call ties its lines together: key id, vendor, endpoint and reservation.
    let logs_text = &places.last().map(|p| p.1.clone()).unwrap_or_default();
    let key_id = token.split('_').nth(2).unwrap_or("none");
    assert!(
        logs_text.lines().any(|l| l.contains("call{")
            && l.contains(&format!("key_id={key_id}"))
            && l.contains("vendor=\"stripe\"")
            && l.contains("endpoint=")
            && l.contains("reservation=")
            && l.contains("settled")),
        "no settled line in a call span: {}",
        logs_text
            .lines()
            .filter(|l| l.contains("settled") || l.contains("call{"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (place, text) in &places {
        assert!(
            !text.contains(real_key),
            "the real Stripe key appears in {place}"
        );
        assert!(
            !text.contains(&secret),
            "a vault token's secret appears in {place}"
        );
        assert!(
            !text.contains(&token),
            "a full vault token appears in {place}"
        );
        println!("leak check: {place}: {} bytes, clean", text.len());
    }
    proxy.shutdown().await;
    Ok(())
}
