//! The proxy's data path end to end: the real API server, the operator, a real Redis, the proxy, and a
//! recording upstream standing in for the vendor.

use std::net::SocketAddr;

use anyhow::Result;
use keybrake_crds::KeyPhase;
use keybrake_e2e::{
    FORM, Reply,
    api_faults::{ApiFaults, Fault},
    example, http, payment_intent,
    refusals::{check_all, refusal},
    spawn_charges,
    stack::{Stack, eventually},
    upstream::{Mode, RecordingUpstream},
    with_upstream,
};

fn pointed_at(file: &str, upstream: &RecordingUpstream) -> String {
    with_upstream(&example(file), &upstream.url())
}

/// A Resend email: `POST /emails` with the JSON `body`, sent with `authorization`.
async fn send_email(addr: SocketAddr, authorization: &str, body: &[u8]) -> Result<Reply> {
    let headers = [
        ("Authorization", authorization),
        ("Content-Type", "application/json"),
    ];
    http(addr, "POST", "/emails", &headers, body).await
}

async fn active(stack: &Stack, ns: &str, name: &str) -> Result<()> {
    stack
        .key_in_phase(ns, name, KeyPhase::Active)
        .await
        .map(drop)
}

async fn secret_value(stack: &Stack, ns: &str, secret: &str, key: &str) -> Result<String> {
    stack
        .secret_data(ns, secret)
        .await?
        .remove(key)
        .ok_or_else(|| anyhow::anyhow!("{ns}/{secret} has no {key}"))
}

struct Stripe {
    stack: Stack,
    upstream: RecordingUpstream,
    proxy: keybrake_proxy::Running,
    bearer: String,
}

async fn stripe() -> Result<Stripe> {
    let stack = Stack::start().await?;
    let upstream = RecordingUpstream::start().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let proxy = stack.start_proxy().await?;
    Ok(Stripe {
        stack,
        upstream,
        proxy,
        bearer,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_stripe_key_charges_until_the_cap_then_refuses_in_stripes_shape() -> Result<()> {
    let s = stripe().await?;
    let auth = ("Authorization", s.bearer.as_str());
    // $200 + $200 fit the $500 daily cap; a third $200 does not.
    for prefix in ["/stripe", ""] {
        let r = http(
            s.proxy.addr,
            "POST",
            &format!("{prefix}/v1/payment_intents"),
            &[auth, FORM, ("Accept-Encoding", "gzip, deflate")],
            b"amount=20000&currency=usd&confirm=true&customer=cus_1",
        )
        .await?;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["status"], "succeeded");
    }
    let r = payment_intent(
        s.proxy.addr,
        &s.bearer,
        b"amount=20000&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("stripe-should-retry"), Some("false"));
    assert_eq!(r.header("x-keybrake-cap-hit"), Some("true"));
    let err = &r.json()["error"];
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("rate_limit_error"), Some("cap_exhausted"))
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("daily cap of $500.00 on VaultKey billing/billing-agent-run-7f3a"),
        "{err}"
    );

    let forwarded = s.upstream.requests();
    assert_eq!(forwarded.len(), 2, "the refused call reached the vendor");
    assert_eq!(
        forwarded[0].accept_encoding, None,
        "the vendor must answer uncompressed: the proxy reads the cost"
    );
    assert_eq!(forwarded[0].uri, "/v1/payment_intents");
    assert_eq!(
        forwarded[0].authorization, "Bearer sk_test_replace_me_with_the_real_secret_key",
        "the real secret is injected"
    );
    let spend = s
        .stack
        .ledger()
        .await?
        .policy_spend(&keybrake_ledger::PolicyTag::of("billing", "stripe"))
        .await?;
    assert_eq!(spend.total, 400_000_000);
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_reach_the_vendor() -> Result<()> {
    let s = stripe().await?;
    let auth = ("Authorization", s.bearer.as_str());
    // The right key id with a forged secret: refused, and the proxy reads nothing from the vendor
    // with the real key (not even the PaymentIntent a confirm would cost).
    let real = keybrake_ledger::Token::parse_bearer(s.bearer.trim_start_matches("Bearer "))?;
    let forged = format!(
        "Bearer {}",
        keybrake_ledger::Token::generate(real.vendor, real.key_id.clone()).bearer()
    );
    let pay = b"amount=100&currency=usd&confirm=true";
    let huge = vec![b'a'; 2 * 1024 * 1024];
    check_all(
        s.proxy.addr,
        &[],
        &[
            refusal(
                "the right key id with a forged secret",
                "POST",
                "/v1/payment_intents/pi_1/confirm",
                vec![("Authorization", forged.as_str()), FORM],
                "",
                401,
            ),
            refusal(
                "an endpoint off the allowlist",
                "POST",
                "/v1/refunds",
                vec![auth, FORM],
                "payment_intent=pi_1",
                403,
            )
            .saying("POST /v1/refunds is not in the allowedEndpoints"),
            refusal(
                "over the per-call cap of $250",
                "POST",
                "/v1/payment_intents",
                vec![auth, FORM],
                "amount=30000&currency=usd&confirm=true",
                429,
            ),
            refusal(
                "a parameter sent twice",
                "POST",
                "/v1/payment_intents",
                vec![auth, FORM],
                "amount=1&amount=99999&currency=usd&confirm=true",
                400,
            )
            .saying("amount is sent more than once"),
            refusal(
                "a currency without a rate",
                "POST",
                "/v1/payment_intents",
                vec![auth, FORM],
                "amount=100&currency=chf",
                400,
            )
            .saying("no exchange rate for currency \\\"chf\\\""),
            refusal(
                "a dot segment in the path",
                "POST",
                "/v1/../v1/payment_intents",
                vec![auth, FORM],
                pay,
                400,
            ),
            refusal(
                "the real vendor key instead of a vault token",
                "POST",
                "/v1/payment_intents",
                vec![("Authorization", "Bearer sk_live_the_real_key"), FORM],
                pay,
                401,
            ),
            refusal(
                "a duplicated Authorization",
                "POST",
                "/v1/payment_intents",
                vec![auth, auth, FORM],
                pay,
                401,
            ),
            refusal(
                "a body over the limit",
                "POST",
                "/v1/payment_intents",
                vec![auth, FORM],
                huge,
                413,
            ),
        ],
    )
    .await?;
    assert_eq!(
        s.upstream.requests().len(),
        0,
        "a refused call reached the vendor"
    );

    // Revocation: measured from `kubectl patch` returning to the first refusal. Calls in
    // between are still the key's own (it was valid until the operator revoked it in Redis).
    let patch = r#"{"spec":{"revoked":true}}"#;
    s.stack
        .patch_key_with_kubectl("billing", "billing-agent-run-7f3a", patch)
        .await?;
    let patched = std::time::Instant::now();
    let revoked = eventually("the revoke to take effect", 10, || async {
        let r = http(
            s.proxy.addr,
            "GET",
            "/v1/payment_intents/pi_1",
            &[auth],
            b"",
        )
        .await
        .ok()?;
        (r.status == 401).then_some(r)
    })
    .await?;
    println!(
        "revocation: first refusal {:.0} ms after kubectl patch returned",
        patched.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(revoked.json()["error"]["code"], "vault_key_revoked");
    let after = s.upstream.requests().len();
    let r = payment_intent(
        s.proxy.addr,
        &s.bearer,
        b"amount=100&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(r.status, 401);
    assert_eq!(
        s.upstream.requests().len(),
        after,
        "a call after the revoke reached the vendor"
    );
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_forwarded_once_and_counted_once() -> Result<()> {
    let s = stripe().await?;
    let auth = ("Authorization", s.bearer.as_str());
    let idem = ("Idempotency-Key", "run-7f3a-cus_1");
    let mut calls = Vec::new();
    for _ in 0..20 {
        let addr = s.proxy.addr;
        let bearer = s.bearer.clone();
        calls.push(tokio::spawn(async move {
            http(
                addr,
                "POST",
                "/v1/payment_intents",
                &[("Authorization", bearer.as_str()), FORM, idem],
                b"amount=10000&currency=usd&confirm=true",
            )
            .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for c in calls {
        let r = c.await??;
        assert_eq!(r.status, 200, "{}", r.body);
        ids.insert(r.json()["id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(ids.len(), 1, "every duplicate got the first response");
    assert_eq!(s.upstream.requests().len(), 1, "forwarded once");
    let other = http(
        s.proxy.addr,
        "POST",
        "/v1/payment_intents",
        &[auth, FORM, idem],
        b"amount=20000&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(other.status, 400);
    assert_eq!(other.json()["error"]["type"], "idempotency_error");
    let spend = s
        .stack
        .ledger()
        .await?
        .policy_spend(&keybrake_ledger::PolicyTag::of("billing", "stripe"))
        .await?;
    assert_eq!(spend.total, 100_000_000, "counted once");
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_closed_and_upstream_failures_settle_correctly() -> Result<()> {
    let s = stripe().await?;
    s.upstream.set_mode(Mode::Fail);
    let r = payment_intent(
        s.proxy.addr,
        &s.bearer,
        b"amount=10000&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(r.status, 500, "the vendor's own error passes through");
    let ledger = s.stack.ledger().await?;
    let tag = keybrake_ledger::PolicyTag::of("billing", "stripe");
    assert_eq!(
        ledger.policy_spend(&tag).await?.total,
        100_000_000,
        "a 5xx is an unknown outcome: the estimate stays counted"
    );
    s.upstream.set_mode(Mode::Normal);
    drop(s.stack.redis);
    let r = payment_intent(
        s.proxy.addr,
        &s.bearer,
        b"amount=10000&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "accounting_unavailable");
    assert_eq!(
        s.upstream.requests().len(),
        1,
        "nothing is forwarded while Redis is down"
    );
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_and_resend_keys_are_costed_and_shaped_their_way() -> Result<()> {
    let stack = Stack::start().await?;
    let upstream = RecordingUpstream::start().await?;
    stack.apply_agents_policies(&upstream.url()).await?;
    stack
        .cluster
        .apply_ok(&example("twilio-sms-key.yaml"))
        .await?;
    stack
        .cluster
        .apply_ok(&example("resend-email-key.yaml"))
        .await?;
    active(&stack, "agents", "haystack-notifier-run-41").await?;
    active(&stack, "agents", "haystack-mailer-run-41").await?;
    let proxy = stack.start_proxy().await?;

    let sid = secret_value(
        &stack,
        "agents",
        "haystack-notifier-run-41",
        "TWILIO_ACCOUNT_SID",
    )
    .await?;
    let token = secret_value(
        &stack,
        "agents",
        "haystack-notifier-run-41",
        "TWILIO_AUTH_TOKEN",
    )
    .await?;
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"))
    );
    let path = format!("/2010-04-01/Accounts/{sid}/Messages.json");
    let body = format!(
        "To=%2B14155550100&From=%2B14155550199&Body={}",
        "a".repeat(200)
    );
    let r = http(
        proxy.addr,
        "POST",
        &path,
        &[("Authorization", basic.as_str()), FORM],
        body.as_bytes(),
    )
    .await?;
    assert_eq!(r.status, 201, "{}", r.body);
    let sent = &upstream.requests()[0];
    assert_eq!(
        sent.uri, "/2010-04-01/Accounts/ACreplace_me_with_the_real_account_sid/Messages.json",
        "the real SID replaces the key's"
    );
    let other_sid = format!("/2010-04-01/Accounts/AC{}/Messages.json", "0".repeat(32));
    let r = http(
        proxy.addr,
        "POST",
        &other_sid,
        &[("Authorization", basic.as_str()), FORM],
        body.as_bytes(),
    )
    .await?;
    assert_eq!((r.status, r.json()["code"].as_u64()), (403, Some(20403)));

    let key = secret_value(&stack, "agents", "haystack-mailer-run-41", "RESEND_API_KEY").await?;
    let bearer = format!("Bearer {key}");
    let email = br#"{"from":"a@x.io","to":["b@y.io","c@y.io"],"cc":"d@y.io","subject":"receipt","html":"<p>ok</p>"}"#;
    let r = send_email(proxy.addr, &bearer, email).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let dup = br#"{"to":"a@x.io","to":["b","c"]}"#;
    let r = send_email(proxy.addr, &bearer, dup).await?;
    assert_eq!(
        (r.status, r.json()["name"].as_str()),
        (400, Some("validation_error"))
    );

    let ledger = stack.ledger().await?;
    let sms = ledger
        .policy_spend(&keybrake_ledger::PolicyTag::of("agents", "twilio"))
        .await?;
    assert_eq!(sms.total, 2 * 11_300, "two segments at $0.0113");
    let mail = ledger
        .policy_spend(&keybrake_ledger::PolicyTag::of("agents", "resend"))
        .await?;
    assert_eq!(mail.total, 3 * 900, "three recipients at $0.0009");
    proxy.shutdown().await;
    Ok(())
}

/// Texts whose GSM-7 escape or surrogate pair straddles a part boundary: the estimate the proxy
/// reserves before the call is what the vendor then counts (the sandbox's own reading, not the
/// proxy's), each call on its own. And `+1` numbers outside the US and Canada, which the example
/// policy's `"+1"` price does not cover, never leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_estimates_are_what_the_vendor_counts_at_every_boundary() -> Result<()> {
    let stack = Stack::start().await?;
    stack.cluster.apply_namespace("agents").await?;
    let upstream = RecordingUpstream::start().await?;
    stack
        .cluster
        .apply_ok(&pointed_at("twilio-policy.yaml", &upstream))
        .await?;
    stack
        .cluster
        .apply_ok(&example("twilio-sms-key.yaml"))
        .await?;
    active(&stack, "agents", "haystack-notifier-run-41").await?;
    let proxy = stack.start_proxy().await?;
    let secret = |key| secret_value(&stack, "agents", "haystack-notifier-run-41", key);
    let (sid, token) = (
        secret("TWILIO_ACCOUNT_SID").await?,
        secret("TWILIO_AUTH_TOKEN").await?,
    );
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"))
    );
    let path = format!("/2010-04-01/Accounts/{sid}/Messages.json");
    let send = |to: &str, body: &str| {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("To", to)
            .append_pair("From", "+14155550199")
            .append_pair("Body", body)
            .finish();
        let (path, basic) = (path.clone(), basic.clone());
        async move {
            http(
                proxy.addr,
                "POST",
                &path,
                &[("Authorization", basic.as_str()), FORM],
                form.as_bytes(),
            )
            .await
        }
    };

    let (a, l) = (|n| "a".repeat(n), |n| "ł".repeat(n));
    let bodies = [
        format!("{}€{}", a(152), a(152)),
        format!("{}€{}", a(151), a(152)),
        "€".repeat(153),
        format!("{}😀{}", l(66), l(66)),
        "😀".repeat(67),
        format!("{}{{", a(159)),
        a(160),
        format!("{}`", a(70)),
    ];
    for body in &bodies {
        let r = send("+14155550100", body).await?;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let moved = upstream.moved();
    let counted: Vec<u64> = moved.iter().map(|m| m.units).collect();
    assert_eq!(
        counted,
        [3, 2, 3, 3, 3, 2, 1, 2],
        "the vendor's count: {moved:?}"
    );
    let tag = keybrake_ledger::PolicyTag::of("agents", "twilio");
    let ledger = stack.ledger().await?;
    let entries = eventually("every text in the audit trail", 10, || async {
        let e = ledger.audit(&tag, None, None, 100).await.ok()?;
        (e.iter().filter(|e| e.outcome == "ok").count() == bodies.len()).then_some(e)
    })
    .await?;
    let estimates: Vec<(u64, u64)> = entries
        .iter()
        .filter(|e| e.outcome == "ok")
        .map(|e| (e.estimate, e.actual))
        .collect();
    let expected: Vec<(u64, u64)> = counted.iter().map(|n| (n * 11_300, n * 11_300)).collect();
    assert_eq!(
        estimates, expected,
        "(estimate, actual) of each text at $0.0113 a segment"
    );

    for (to, names) in [
        ("+18765550100", "Jamaica"),
        ("+17875550100", "Puerto Rico"),
        ("+15551234567", "\"555\""),
    ] {
        let r = send(to, "hi").await?;
        assert_eq!(r.status, 403, "{to}: {}", r.body);
        let message = r.json()["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(names), "{to}: {message}");
        assert!(
            message.contains("pricing.smsSegmentUsdByPrefix"),
            "{message}"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        bodies.len(),
        "no unpriced text reached the vendor"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_callers_through_two_proxies_never_overshoot() -> Result<()> {
    let s = stripe().await?;
    let second = s.stack.start_proxy().await?;
    let calls = spawn_charges(
        &[s.proxy.addr, second.addr],
        &s.bearer,
        500,
        std::time::Duration::ZERO,
        b"amount=300&currency=usd&confirm=true",
    );
    let (mut ok, mut capped) = (0, 0);
    for c in calls {
        match c.await??.0.status {
            200 => ok += 1,
            429 => capped += 1,
            other => anyhow::bail!("unexpected status {other}"),
        }
    }
    let charged_upstream: u64 = s
        .upstream
        .requests()
        .iter()
        .filter_map(|r| {
            form_urlencoded::parse(r.body.as_bytes())
                .find(|(k, _)| k == "amount")
                .and_then(|(_, v)| v.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 10_000;
    let recorded = s
        .stack
        .ledger()
        .await?
        .policy_spend(&keybrake_ledger::PolicyTag::of("billing", "stripe"))
        .await?
        .total;
    println!(
        "500 callers, 2 proxies: {ok} forwarded, {capped} refused; upstream charged {charged_upstream} micros, recorded {recorded}"
    );
    assert!(recorded <= 500_000_000, "overshoot");
    assert_eq!(
        charged_upstream, recorded,
        "what the vendor saw is what was counted"
    );
    assert_eq!(ok + capped, 500);
    second.shutdown().await;
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_shows_in_kubectl_get_and_the_cap_hit_in_describe() -> Result<()> {
    let mut s = stripe().await?;
    // An API server under load: the first spend writes get 429 and 500, and are written again.
    // The proxy reaches the server through a front that fails them on purpose.
    let server = ApiFaults::start(s.stack.cluster.plane()).await?;
    let proxy_token = s.stack.cluster.tokens().await?.proxy.clone();
    let through = server.client(s.stack.cluster.plane(), &proxy_token).await?;
    s.proxy.shutdown().await;
    s.proxy = s.stack.start_proxy_on(through, |_| {}).await?;
    server.inject(Fault {
        code: 429,
        path_contains: "/vaultkeys/billing-agent-run-7f3a/status".into(),
        remaining: 2,
    });
    server.inject(Fault {
        code: 500,
        path_contains: "/spendpolicies/stripe/status".into(),
        remaining: 2,
    });
    for _ in 0..3 {
        payment_intent(
            s.proxy.addr,
            &s.bearer,
            b"amount=20000&currency=usd&confirm=true",
        )
        .await?;
    }
    let started = std::time::Instant::now();
    let row = eventually("kubectl get vk to show the spend", 15, || async {
        let out = s
            .stack
            .cluster
            .kubectl_ok(&["get", "vk", "-n", "billing", "billing-agent-run-7f3a"])
            .await
            .ok()?;
        out.contains("400.00").then_some(out)
    })
    .await?;
    println!(
        "spend visible in kubectl get vk {:.1}s after the calls:\n{row}",
        started.elapsed().as_secs_f64()
    );
    let described = eventually("the CapReached event", 15, || async {
        let out = s
            .stack
            .cluster
            .kubectl_ok(&["describe", "vk", "-n", "billing", "billing-agent-run-7f3a"])
            .await
            .ok()?;
        out.contains("CapReached").then_some(out)
    })
    .await?;
    assert!(
        described.contains("cap_exhausted: the daily cap of $500.00"),
        "{described}"
    );
    assert!(
        described
            .lines()
            .any(|l| l.trim_start().starts_with("Refused:") && l.trim_end().ends_with(" 1")),
        "{described}"
    );
    eventually(
        "the policy's spend, after two failed writes",
        15,
        || async {
            let spent = s
                .stack
                .cluster
                .kubectl_ok(&[
                    "get",
                    "sp",
                    "-n",
                    "billing",
                    "stripe",
                    "-o",
                    "jsonpath={.status.spend.totalUsd}",
                ])
                .await
                .ok()?;
            (spent == "400.00").then_some(())
        },
    )
    .await?;
    assert_eq!(
        server.faults_pending(),
        0,
        "the failed writes were not retried"
    );
    // Freshness: the number says when it was read from Redis and by which replica, no earlier
    // than the last call it includes.
    let vk = kube::Api::<keybrake_crds::VaultKey>::namespaced(s.stack.client.clone(), "billing")
        .get("billing-agent-run-7f3a")
        .await?;
    let spend = vk.status.and_then(|st| st.spend).expect("status.spend");
    let (observed, last) = (
        spend.observed_at.expect("observedAt"),
        spend.last_call_at.expect("lastCallAt"),
    );
    assert!(
        observed.0 >= last.0,
        "observed {observed:?} before the last call {last:?}"
    );
    assert_eq!(spend.observed_by.as_deref(), Some("keybrake-proxy"));
    s.proxy.shutdown().await;
    s.stack.assert_deployables_never_refused()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_lists_calls_with_costs_request_ids_and_run_totals() -> Result<()> {
    let s = stripe().await?;
    for amount in ["12500", "20000", "30000"] {
        payment_intent(
            s.proxy.addr,
            &s.bearer,
            format!("amount={amount}&currency=usd&confirm=true").as_bytes(),
        )
        .await?;
    }
    // The audit trail spans tenants: callers need `list vaultkeys` where they look.
    let tokens = s.stack.cluster.tokens().await?.clone();
    let admin = format!("Bearer {}", tokens.admin);
    let reader = format!("Bearer {}", tokens.billing_reader);
    let query = "/audit?run_label=hatchet%2Fbilling-agent%2F7f3a9c2e";
    let anonymous = http(s.proxy.admin_addr, "GET", query, &[], b"").await?;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let unbound = http(
        s.proxy.admin_addr,
        "GET",
        &format!("{query}&namespace=billing"),
        &[("Authorization", reader.as_str())],
        b"",
    )
    .await?;
    assert_eq!(unbound.status, 403, "no RoleBinding yet: {}", unbound.body);
    s.stack
        .cluster
        .apply_ok(keybrake_e2e::identities::RBAC)
        .await?;
    let everywhere = http(
        s.proxy.admin_addr,
        "GET",
        query,
        &[("Authorization", reader.as_str())],
        b"",
    )
    .await?;
    assert_eq!(
        everywhere.status, 403,
        "a namespaced reader asking for all namespaces: {}",
        everywhere.body
    );
    let mine = http(
        s.proxy.admin_addr,
        "GET",
        &format!("{query}&namespace=billing"),
        &[("Authorization", reader.as_str())],
        b"",
    )
    .await?;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.json()["entries"].as_array().map(Vec::len), Some(3));
    let elsewhere = http(
        s.proxy.admin_addr,
        "GET",
        &format!("{query}&namespace=other"),
        &[("Authorization", admin.as_str())],
        b"",
    )
    .await?;
    assert_eq!(
        elsewhere.json()["entries"].as_array().map(Vec::len),
        Some(0),
        "filtered to the namespace"
    );
    let r = http(
        s.proxy.admin_addr,
        "GET",
        query,
        &[("Authorization", admin.as_str())],
        b"",
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(
        (
            entries[0]["outcome"].as_str(),
            entries[0]["actual_usd"].as_str()
        ),
        (Some("ok"), Some("125.00"))
    );
    assert_eq!(entries[0]["request_id"], "req_1", "the vendor's Request-Id");
    assert_eq!(
        (entries[2]["outcome"].as_str(), entries[2]["rule"].as_str()),
        (Some("refused"), Some("per_call_cap"))
    );
    let total = &v["totals"]["hatchet/billing-agent/7f3a9c2e"];
    assert_eq!(
        (
            total["calls"].as_u64(),
            total["refused"].as_u64(),
            total["actual_usd"].as_str()
        ),
        (Some(2), Some(1), Some("325.00"))
    );
    let bad = http(
        s.proxy.admin_addr,
        "GET",
        "/audit?from=yesterday",
        &[("Authorization", admin.as_str())],
        b"",
    )
    .await?;
    assert_eq!(bad.status, 400);
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_credential_refresh_and_metrics() -> Result<()> {
    use http_body_util::{BodyExt, Full};
    let s = stripe().await?;
    // HTTP/2 with prior knowledge (h2c), as a gRPC-style or h2-only client would speak.
    let stream = tokio::net::TcpStream::connect(s.proxy.addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("http://{}/v1/payment_intents", s.proxy.addr))
        .header("authorization", s.bearer.as_str())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(bytes::Bytes::from_static(
            b"amount=100&currency=usd&confirm=true",
        )))?;
    let resp = sender.send_request(req).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let _ = resp.into_body().collect().await?;

    // The real credential changes in its Secret: the next call uses the new one.
    let rotated = pointed_at("stripe-policy.yaml", &s.upstream).replace(
        "sk_test_replace_me_with_the_real_secret_key",
        "sk_test_rotated_by_the_platform_team",
    );
    s.stack.cluster.apply_ok(&rotated).await?;
    eventually("the proxy to use the new credential", 15, || async {
        payment_intent(
            s.proxy.addr,
            &s.bearer,
            b"amount=100&currency=usd&confirm=true",
        )
        .await
        .ok()?;
        s.upstream
            .requests()
            .last()
            .filter(|r| r.authorization == "Bearer sk_test_rotated_by_the_platform_team")
            .cloned()
    })
    .await?;

    // Per-key gauges come with the spend write-back (every 2 s).
    let metrics = eventually("per-key spend gauges", 15, || async {
        let m = http(s.proxy.admin_addr, "GET", "/metrics", &[], b"")
            .await
            .ok()?
            .body;
        m.contains("keybrake_proxy_key_cap_used_ratio{")
            .then_some(m)
    })
    .await?;
    assert!(
        metrics.contains(r#"keybrake_proxy_key_spend_today_micros{namespace="billing""#)
            && metrics.contains(r#"window="daily""#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"endpoint="POST /v1/payment_intents""#),
        "{metrics}"
    );
    assert!(
        metrics.contains("keybrake_proxy_upstream_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keybrake_proxy_redis_seconds_bucket"),
        "{metrics}"
    );
    assert!(!metrics.contains("sk_test_"), "a secret in the metrics");
    s.proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused_and_shutdown_drains_in_flight_calls() -> Result<()> {
    let s = stripe().await?;
    let auth = ("Authorization", s.bearer.as_str());
    let huge = "x".repeat(100 * 1024);
    let r = http(
        s.proxy.addr,
        "POST",
        "/v1/payment_intents",
        &[auth, FORM, ("X-Padding", huge.as_str())],
        b"amount=100&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(r.status, 431, "request header fields too large");
    assert_eq!(s.upstream.requests().len(), 0);

    // A call in flight when the proxy is told to stop still completes and is settled.
    s.upstream
        .set_mode(Mode::Slow(std::time::Duration::from_millis(700)));
    let addr = s.proxy.addr;
    let bearer = s.bearer.clone();
    let in_flight = tokio::spawn(async move {
        payment_intent(addr, &bearer, b"amount=1000&currency=usd&confirm=true").await
    });
    eventually("the call to reach the upstream", 10, || async {
        (!s.upstream.requests().is_empty()).then_some(())
    })
    .await?;
    s.proxy.shutdown().await;
    let r = in_flight.await??;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    let spend = s
        .stack
        .ledger()
        .await?
        .policy_spend(&keybrake_ledger::PolicyTag::of("billing", "stripe"))
        .await?;
    assert_eq!(spend.total, 10_000_000, "the drained call was settled");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_watch_has_not_delivered_is_loaded_from_the_key_record() -> Result<()> {
    use std::sync::Arc;

    use keybrake_proxy::{
        app::App,
        policies::{self, Policies, PolicyState},
    };
    let upstream = RecordingUpstream::start().await?;
    let stack = Stack::start().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let key = keybrake_ledger::Token::parse_bearer(&env["STRIPE_API_KEY"])?.key_id;
    // An App whose policy table is empty, as a replica's is in the moment between a policy's
    // creation and its watch event.
    let config = keybrake_proxy::Config::local(&stack.redis.url(), &stack.prefix);
    let conn = keybrake_ledger::connection::Connection::Single(
        redis::Client::open(stack.redis.url())?
            .get_connection_manager()
            .await?,
    );
    let (keys, _watch) = keybrake_proxy::vault_keys::KeyIndex::start(stack.client.clone());
    let app = App {
        client: stack.client.clone(),
        keys,
        policies: Arc::new(Policies::default()),
        ledger: keybrake_ledger::Ledger::new(
            conn,
            keybrake_ledger::Keyspace::new(&stack.prefix),
            keybrake_ledger::LedgerConfig::default(),
        ),
        upstream: keybrake_proxy::upstream::client(),
        config,
        metrics: Arc::default(),
        spend: Arc::default(),
        redis_breaker: keybrake_proxy::breaker::Breaker::new(std::time::Duration::from_millis(250)),
        audit_db: None,
    };
    assert!(app.policies.get(&key.tag()).is_none());
    let loaded =
        policies::load_missing(&app.policies, &app.client, &app.ledger, &app.config, &key).await;
    let Some(PolicyState::Ready(policy)) = loaded else {
        panic!("the policy was not loaded: {loaded:?}");
    };
    assert_eq!(
        (policy.namespace.as_str(), policy.name.as_str()),
        ("billing", "stripe")
    );
    assert!(
        matches!(app.policies.get(&key.tag()), Some(PolicyState::Ready(_))),
        "kept in the table"
    );
    // A key id with no record costs one Redis read and loads nothing.
    let stranger =
        keybrake_ledger::KeyId::generate(&keybrake_ledger::PolicyTag::of("billing", "nope"));
    assert!(
        policies::load_missing(
            &app.policies,
            &app.client,
            &app.ledger,
            &app.config,
            &stranger
        )
        .await
        .is_none()
    );
    Ok(())
}
