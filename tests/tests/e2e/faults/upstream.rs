//! Vendor failures settle by what the vendor may have done.

use anyhow::Result;
use keybrake_e2e::{
    FORM, example, http, payment_intent, stack::Stack, upstream::RecordingUpstream, with_upstream,
};
use keybrake_ledger::PolicyTag;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_settle_by_what_the_vendor_may_have_done() -> Result<()> {
    use keybrake_e2e::upstream::Mode;
    let upstream = RecordingUpstream::start().await?;
    let stack = Stack::start().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let mut config = keybrake_proxy::Config::local(&stack.redis.url(), &stack.prefix);
    config.upstream_timeout_secs = 1;
    let proxy =
        keybrake_proxy::start(stack.proxy_client.clone(), config, "127.0.0.1:0".parse()?).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let id = keybrake_ledger::Token::parse_bearer(&env["STRIPE_API_KEY"])?.key_id;
    let ledger = stack.ledger().await?;
    let charge = |idem: Option<&'static str>| {
        let bearer = bearer.clone();
        async move {
            let mut headers = vec![("Authorization", bearer.as_str()), FORM];
            if let Some(k) = idem {
                headers.push(("Idempotency-Key", k));
            }
            http(
                proxy.addr,
                "POST",
                "/v1/payment_intents",
                &headers,
                b"amount=10000&currency=usd&confirm=true",
            )
            .await
        }
    };
    let total = || async { ledger.key_spend(&id).await.map(|s| s.total) };

    // A vendor that answers after our timeout: it may have charged, so the $100 stays counted.
    upstream.set_mode(Mode::Slow(std::time::Duration::from_secs(2)));
    let r = charge(Some("run-1-cus-1")).await?;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upstream_outcome_unknown");
    assert_eq!(
        total().await?,
        100_000_000,
        "an unknown outcome keeps the estimate"
    );
    // The SDK retries with the same Idempotency-Key: forwarded again with that key (the vendor
    // dedups), counted nothing new.
    upstream.set_mode(Mode::Normal);
    let r = charge(Some("run-1-cus-1")).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        total().await?,
        100_000_000,
        "the retry after a timeout counted once"
    );
    let keys: Vec<_> = upstream
        .requests()
        .iter()
        .map(|r| r.idempotency_key.clone())
        .collect();
    // The same key both times, made this vault key's own (never the caller's bare text).
    assert_eq!(keys[0], keys[1]);
    assert!(
        keys[0]
            .as_deref()
            .is_some_and(|k| k.starts_with("kb-") && k != "run-1-cus-1")
    );

    // A vendor error (4xx/5xx with a body) passes through; a 500 keeps the estimate, and a
    // vendor that cannot be reached at all releases it.
    upstream.set_mode(Mode::Fail);
    let r = charge(None).await?;
    assert_eq!(r.status, 500, "the vendor's own error: {}", r.body);
    assert_eq!(total().await?, 200_000_000, "a 5xx may have charged: kept");
    upstream.set_mode(Mode::Normal);

    // A vendor that resets the connection after reading the request: unknown, kept.
    let reset = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let reset_url = format!("http://{}", reset.local_addr()?);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = reset.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // Each failing vendor gets its own policy and key, so no call can land on another upstream.
    for (name, url, code, counted) in [
        (
            "resetting",
            reset_url.clone(),
            "upstream_outcome_unknown",
            100_000_000,
        ),
        (
            "unreachable",
            format!("http://{closed}"),
            "upstream_unreachable",
            0,
        ),
    ] {
        let policy = with_upstream(&example("stripe-policy.yaml"), &url)
            .replace("  name: stripe\n", &format!("  name: {name}\n"));
        stack.cluster.apply_ok(&policy).await?;
        let key = example("stripe-run-key.yaml")
            .replace("billing-agent-run-7f3a", &format!("{name}-run"))
            .replace("    name: stripe\n", &format!("    name: {name}\n"));
        stack.cluster.apply_ok(&key).await?;
        let token = stack
            .active_key_env("billing", &format!("{name}-run"))
            .await?["STRIPE_API_KEY"]
            .clone();
        let bearer = format!("Bearer {token}");
        let r = payment_intent(
            proxy.addr,
            &bearer,
            b"amount=10000&currency=usd&confirm=true",
        )
        .await?;
        println!("{name}: {} {}", r.status, r.json()["error"]["message"]);
        assert_eq!(r.json()["error"]["code"], code, "{}", r.body);
        let key_id = keybrake_ledger::Token::parse_bearer(&token)?.key_id;
        assert_eq!(ledger.key_spend(&key_id).await?.total, counted, "{code}");
    }
    let mut outcomes = Vec::new();
    for policy in ["stripe", "resetting", "unreachable"] {
        for e in ledger
            .audit(&PolicyTag::of("billing", policy), None, None, 1000)
            .await?
        {
            outcomes.push(e.outcome);
        }
    }
    println!("audit outcomes: {outcomes:?}");
    assert!(
        outcomes.iter().any(|o| o == "unknown") && outcomes.iter().any(|o| o == "not_sent"),
        "{outcomes:?}"
    );
    proxy.shutdown().await;
    Ok(())
}
