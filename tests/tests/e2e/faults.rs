//! Faults (issue 10): what fails, and that nothing is lost, forwarded unaccounted or over a cap.

use anyhow::Result;
use keybrake_e2e::{
    example, http,
    stack::{Stack, eventually},
    upstream::RecordingUpstream,
    with_upstream,
};
use keybrake_ledger::PolicyTag;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_fails_closed_and_a_restart_recovers_with_counters_intact() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::start_with_proxy_on_durable_redis().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let charge = || {
        let bearer = bearer.clone();
        async move {
            http(
                proxy.addr,
                "POST",
                "/v1/payment_intents",
                &[("Authorization", bearer.as_str()), FORM],
                b"amount=10000&currency=usd&confirm=true",
            )
            .await
        }
    };
    for _ in 0..2 {
        assert_eq!(charge().await?.status, 200);
    }

    stack.redis.kill();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let r = charge().await?;
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "accounting_unavailable");
    }
    println!(
        "Redis down: 20 calls refused in {:.0} ms, none forwarded",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(
        upstream.requests().len(),
        2,
        "a call was forwarded while Redis was down"
    );

    stack.redis.restart().await?;
    let restarted = std::time::Instant::now();
    eventually("the proxy to recover on its own", 15, || async {
        (charge().await.ok()?.status == 200).then_some(())
    })
    .await?;
    println!(
        "recovered {:.0} ms after Redis came back, without a proxy restart",
        restarted.elapsed().as_secs_f64() * 1000.0
    );
    let spend = stack
        .ledger()
        .await?
        .policy_spend(&PolicyTag::of("billing", "stripe"))
        .await?;
    assert_eq!(
        spend.total, 300_000_000,
        "the counters survived the kill (AOF) and count the new call"
    );
    assert_eq!(upstream.requests().len(), 3);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_turns_calls_into_refusals_not_unaccounted_forwards() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    // Redis stops answering for 2 s (single-threaded: every client waits).
    let mut conn = stack.redis.connect().await?;
    let stall = tokio::spawn(async move {
        redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("2")
            .query_async::<()>(&mut conn)
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let r = http(
        proxy.addr,
        "POST",
        "/v1/payment_intents",
        &[("Authorization", bearer.as_str()), FORM],
        b"amount=10000&currency=usd&confirm=true",
    )
    .await?;
    println!(
        "stalled Redis: refused after {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "accounting_unavailable");
    assert!(
        upstream.requests().is_empty(),
        "a call went out while its reservation could not be made"
    );
    let _ = stall.await;
    // Once Redis answers again (and the breaker's cool-off is over), calls pass and are counted.
    eventually("calls to pass again", 10, || async {
        let r = http(
            proxy.addr,
            "POST",
            "/v1/payment_intents",
            &[("Authorization", bearer.as_str()), FORM],
            b"amount=10000&currency=usd&confirm=true",
        )
        .await
        .ok()?;
        (r.status == 200).then_some(())
    })
    .await?;
    assert_eq!(
        stack
            .ledger()
            .await?
            .policy_spend(&PolicyTag::of("billing", "stripe"))
            .await?
            .total,
        100_000_000
    );
    assert_eq!(upstream.requests().len(), 1);
    proxy.shutdown().await;
    Ok(())
}

/// Every log line of this test process (all tests' in-process operators and proxies), at debug.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info,keybrake_proxy=debug,keybrake_operator=debug,keybrake_ledger=debug,kube_lite=debug")
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
        .apply(
            &with_upstream(&example("stripe-policy.yaml"), &upstream.url())
                .replace("sk_test_replace_me_with_the_real_secret_key", real_key),
        )
        .await?
        .ok()?;
    stack
        .cluster
        .apply(&example("stripe-run-key.yaml"))
        .await?
        .ok()?;
    let env = stack
        .active_key_env("billing", "billing-agent-run-7f3a")
        .await?;
    let token = env["STRIPE_API_KEY"].clone();
    let secret = keybrake_ledger::Token::parse_bearer(&token)?
        .secret()
        .to_owned();
    let bearer = format!("Bearer {token}");
    for _ in 0..3 {
        http(
            proxy.addr,
            "POST",
            "/v1/payment_intents",
            &[("Authorization", bearer.as_str()), FORM],
            b"amount=20000&currency=usd&confirm=true",
        )
        .await?;
    }
    let forged = format!("Bearer {}", token.replace(&secret[..8], "00000000"));
    http(
        proxy.addr,
        "POST",
        "/v1/payment_intents",
        &[("Authorization", forged.as_str()), FORM],
        b"amount=100&currency=usd",
    )
    .await?;
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
    http(
        proxy.addr,
        "POST",
        "/v1/payment_intents",
        &[("Authorization", bearer.as_str()), FORM],
        b"amount=100&currency=usd",
    )
    .await?;
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
                &format!("Bearer {}", keybrake_e2e::identities::ADMIN),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_or_a_delete_while_the_operator_is_down_is_refused_at_once() -> Result<()> {
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    // A second key, to be deleted outright.
    stack
        .cluster
        .apply(&example("stripe-run-key.yaml").replace("billing-agent-run-7f3a", "second-run"))
        .await?
        .ok()?;
    let second = stack.active_key_env("billing", "second-run").await?;
    let charge = |key: String| async move {
        let bearer = format!("Bearer {key}");
        http(
            proxy.addr,
            "POST",
            "/v1/payment_intents",
            &[("Authorization", bearer.as_str()), FORM],
            b"amount=100&currency=usd&confirm=true",
        )
        .await
    };
    assert_eq!(charge(env["STRIPE_API_KEY"].clone()).await?.status, 200);
    assert_eq!(charge(second["STRIPE_API_KEY"].clone()).await?.status, 200);
    let secret_before = stack
        .secret_data("billing", "billing-agent-run-7f3a")
        .await?;

    stack.stop_operator().await;
    stack
        .revoke_with_kubectl("billing", "billing-agent-run-7f3a")
        .await?;
    // The finalizer would wait for the operator: an admin removes it, and the key is gone.
    stack
        .cluster
        .kubectl_ok(&[
            "patch",
            "vk",
            "second-run",
            "-n",
            "billing",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .await?;
    stack
        .cluster
        .kubectl_ok(&[
            "delete",
            "vk",
            "second-run",
            "-n",
            "billing",
            "--wait=false",
        ])
        .await?;
    let started = std::time::Instant::now();
    let revoked = eventually("the revoked key to be refused", 5, || async {
        let r = charge(env["STRIPE_API_KEY"].clone()).await.ok()?;
        (r.status == 401).then_some(r)
    })
    .await?;
    let gone = eventually("the deleted key to be refused", 5, || async {
        let r = charge(second["STRIPE_API_KEY"].clone()).await.ok()?;
        (r.status == 401).then_some(r)
    })
    .await?;
    println!(
        "operator down: revoked and deleted keys refused within {:.0} ms ({} / {})",
        started.elapsed().as_secs_f64() * 1000.0,
        revoked.json()["error"]["code"],
        gone.json()["error"]["code"]
    );
    assert_eq!(revoked.json()["error"]["code"], "vault_key_revoked");
    assert_eq!(gone.json()["error"]["code"], "vault_key_invalid");
    assert!(gone.body.contains("no longer exists"), "{}", gone.body);
    let forwarded = upstream.requests().len();
    for key in [&env["STRIPE_API_KEY"], &second["STRIPE_API_KEY"]] {
        assert_eq!(charge(key.clone()).await?.status, 401);
    }
    assert_eq!(
        upstream.requests().len(),
        forwarded,
        "a refused key reached the vendor"
    );
    // The proxy revoked both in Redis itself, so the script refuses them from now on.
    let ledger = stack.ledger().await?;
    for key in [&env["STRIPE_API_KEY"], &second["STRIPE_API_KEY"]] {
        let id = keybrake_ledger::Token::parse_bearer(key)?.key_id;
        assert_eq!(
            ledger
                .key_fields(&id)
                .await?
                .get("revoked")
                .map(String::as_str),
            Some("1")
        );
        assert_eq!(
            ledger.key_spend(&id).await?.total,
            1_000_000,
            "the refused calls released their reservations"
        );
    }

    // The operator returns: the revocation is finished (Secret deleted), nothing reissued.
    stack.start_operator().await?;
    stack
        .key_in_phase(
            "billing",
            "billing-agent-run-7f3a",
            keybrake_crds::KeyPhase::Revoked,
        )
        .await?;
    eventually("the revoked key's Secret to be deleted", 15, || async {
        stack
            .secret_data("billing", "billing-agent-run-7f3a")
            .await
            .err()
            .map(|_| ())
    })
    .await?;
    assert!(secret_before.contains_key("STRIPE_API_KEY"));
    assert_eq!(charge(env["STRIPE_API_KEY"].clone()).await?.status, 401);
    proxy.shutdown().await;
    Ok(())
}

/// The `keybrake-proxy` binary next to this test binary (`cargo test --workspace` builds it).
fn proxy_binary() -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("no target folder"))?;
    let bin = dir.join("keybrake-proxy");
    anyhow::ensure!(
        bin.exists(),
        "{} not built: run `cargo build -p keybrake-proxy`",
        bin.display()
    );
    Ok(bin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_with_calls_in_flight_loses_no_spend_and_another_replica_serves_on()
-> Result<()> {
    use keybrake_e2e::upstream::Mode;
    let upstream = RecordingUpstream::start().await?;
    let (stack, replica) = Stack::start_with_proxy().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    // Every vendor call takes 1.5 s, so the calls are still in flight when the proxy dies.
    upstream.set_mode(Mode::Slow(std::time::Duration::from_millis(1500)));

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut doomed = std::process::Command::new(proxy_binary()?)
        .env("KUBECONFIG", stack.cluster.kubeconfig())
        .env("REDIS_URL", stack.redis.url())
        .env("KEYBRAKE_REDIS_PREFIX", &stack.prefix)
        .env("KEYBRAKE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYBRAKE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("KEYBRAKE_UPSTREAM_TIMEOUT_SECS", "2")
        .env("KEYBRAKE_SWEEP_GRACE_SECS", "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let doomed_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    eventually("the second proxy to be ready", 20, || async {
        let r = http(
            format!("127.0.0.1:{admin}").parse().ok()?,
            "GET",
            "/readyz",
            &[],
            b"",
        )
        .await
        .ok()?;
        (r.status == 200).then_some(())
    })
    .await?;

    let calls: Vec<_> = (0..200)
        .map(|_| {
            let bearer = bearer.clone();
            tokio::spawn(async move {
                http(
                    doomed_addr,
                    "POST",
                    "/v1/payment_intents",
                    &[("Authorization", bearer.as_str()), FORM],
                    b"amount=100&currency=usd&confirm=true",
                )
                .await
            })
        })
        .collect();
    // Kill once the vendor has most of them, before any answers (1.5 s each).
    let seen_at_kill = eventually("the calls to reach the vendor", 10, || async {
        let n = upstream.requests().len();
        (n >= 150).then_some(n)
    })
    .await?;
    doomed.kill()?;
    doomed.wait()?;
    let killed_at = std::time::Instant::now();
    // Only the dead replica has called the vendor so far.
    let seen_from_dead = upstream.requests().len();
    let mut answered = 0;
    for c in calls {
        if matches!(c.await?, Ok(r) if r.status == 200) {
            answered += 1;
        }
    }

    // The other replica serves on, for the same key, at once.
    let headers = [("Authorization", bearer.as_str()), FORM];
    let served: Vec<u16> = futures::future::join_all((0..5).map(|_| {
        http(
            replica.addr,
            "POST",
            "/v1/payment_intents",
            &headers,
            b"amount=100&currency=usd&confirm=true",
        )
    }))
    .await
    .into_iter()
    .map(|r| r.map_or(0, |r| r.status))
    .collect();
    assert_eq!(served, vec![200; 5], "the surviving replica kept serving");

    // Its sweeper closes the dead replica's reservations as unknown, keeping them counted.
    let ledger = stack.ledger().await?;
    let tag = PolicyTag::of("billing", "stripe");
    // Done when no reservation is open: every call the dead replica reserved (some never reached
    // the vendor before the kill) is closed.
    let redis = redis::Client::open(stack.redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let open_reservations = ledger.keys().policy(&tag).reservations();
    let unknown = eventually(
        "the sweeper to close the dead replica's reservations",
        30,
        || async {
            let open: u64 = redis::cmd("ZCARD")
                .arg(&open_reservations)
                .query_async(&mut redis.clone())
                .await
                .ok()?;
            let audit = ledger.audit(&tag, None, None, 100_000).await.ok()?;
            let unknown = audit.iter().filter(|e| e.outcome == "unknown").count();
            (open == 0 && unknown + answered >= seen_from_dead).then_some(unknown)
        },
    )
    .await?;
    let seen = upstream.requests().len() as u64;
    let id = keybrake_ledger::Token::parse_bearer(&env["STRIPE_API_KEY"])?.key_id;
    let recorded = ledger.key_spend(&id).await?.total;
    println!(
        "proxy SIGKILLed with 200 calls in flight ({seen_at_kill} at the vendor, {answered} answered): \
         swept {unknown} as unknown {:.1}s later; the vendor saw {seen} calls (${seen}), recorded ${:.2}",
        killed_at.elapsed().as_secs_f64(),
        recorded as f64 / 1e6
    );
    assert!(
        recorded >= seen * 1_000_000,
        "recorded {recorded} < what the vendor saw {seen}"
    );
    assert!(unknown >= 1, "the audit trail marks the unknown outcomes");
    replica.shutdown().await;
    Ok(())
}

/// Sends raw bytes and returns what came back before the server closed (or 5 s passed).
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_of(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_slow_clients_and_bad_amounts_are_refused_and_nothing_is_forwarded()
-> Result<()> {
    use tokio::io::AsyncWriteExt;
    let upstream = RecordingUpstream::start().await?;
    let stack = Stack::start().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let mut config = keybrake_proxy::Config::local(&stack.redis.url(), &stack.prefix);
    config.header_timeout_secs = 1;
    config.body_timeout_secs = 1;
    let proxy = keybrake_proxy::start(stack.client.clone(), config, "127.0.0.1:0".parse()?).await?;
    let token = env["STRIPE_API_KEY"].clone();
    let head = |extra: &str, body: &[u8]| {
        let mut r = format!(
            "POST /v1/payment_intents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    // The happy path on this proxy, so refusals below are about the input alone.
    let ok = send_raw(
        proxy.addr,
        &head("", b"amount=100&currency=usd&confirm=true"),
    )
    .await?;
    assert_eq!(status_of(&ok), 200, "{ok}");
    let forwarded = upstream.requests().len();

    let mut cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a bare CR inside a header value",
            head("X-Note: a\rInjected: b\r\n", b"amount=100&currency=usd"),
            400,
        ),
        (
            "a NUL in a header value",
            head("X-Note: a\0b\r\n", b"amount=100&currency=usd"),
            400,
        ),
        (
            "non-UTF-8 bytes in the body",
            head("", b"amount=1\xff\xfe&currency=usd&confirm=true"),
            400,
        ),
        (
            "a negative amount",
            head("", b"amount=-500&currency=usd&confirm=true"),
            400,
        ),
        (
            "a fractional amount",
            head("", b"amount=12.5&currency=usd&confirm=true"),
            400,
        ),
        (
            "an amount past i64",
            head("", b"amount=99999999999999999999&currency=usd&confirm=true"),
            400,
        ),
        (
            "an empty amount",
            head("", b"amount=&currency=usd&confirm=true"),
            400,
        ),
        (
            "a request smuggling pair",
            head("Transfer-Encoding: chunked\r\n", b"amount=100&currency=usd"),
            400,
        ),
    ];
    let mut bad_auth = b"POST /v1/payment_intents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
    cases.push((
        "non-UTF-8 bytes in Authorization",
        std::mem::take(&mut bad_auth),
        401,
    ));
    for (what, bytes, want) in cases {
        let reply = send_raw(proxy.addr, &bytes).await?;
        let status = status_of(&reply);
        println!("{what}: {status}");
        assert_eq!(status, want, "{what}: {reply}");
        if want != 400 || reply.contains("\"error\"") {
            continue;
        }
        // hyper refuses malformed heads itself, before any handler: a bare 400, no body.
        assert!(reply.starts_with("HTTP/1.1 400"), "{what}: {reply}");
    }

    // Slowloris: headers dribbled a byte at a time past the header timeout; the connection is
    // closed without an answer being forwarded.
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
    s.write_all(b"POST /v1/payment_intents HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut closed_after = None;
    for byte in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if s.write_all(&[*byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = match closed_after {
        Some(t) => t,
        None => {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(3), s.read_to_end(&mut buf))
                    .await;
            assert!(
                buf.is_empty() || status_of(&String::from_utf8_lossy(&buf)) == 408,
                "{buf:?}"
            );
            started.elapsed()
        }
    };
    println!(
        "slowloris: connection closed after {:.1}s (header timeout 1s)",
        closed_after.as_secs_f64()
    );
    assert!(closed_after.as_secs_f64() < 5.0);

    // A body dribbled past the body timeout: refused, not forwarded.
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
    let partial = head("", b"amount=100&currency=usd&confirm=true");
    let cut = partial.len() - 10;
    s.write_all(&partial[..cut]).await?;
    let reply = {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(4), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    };
    println!("slow body: {}", reply.lines().next().unwrap_or(""));
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert!(reply.contains("body_timeout"), "{reply}");

    assert_eq!(
        upstream.requests().len(),
        forwarded,
        "a hostile request reached the vendor"
    );
    proxy.shutdown().await;
    Ok(())
}

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
    stack
        .cluster
        .apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: other\n")
        .await?
        .ok()?;
    stack.cluster.apply(&other).await?.ok()?;

    // A VaultKey in billing naming other's policy: references stay in their namespace.
    stack
        .cluster
        .apply(
            &example("stripe-run-key.yaml")
                .replace("billing-agent-run-7f3a", "borrowing-run")
                .replace("name: stripe\n", "name: other-stripe\n"),
        )
        .await?
        .ok()?;
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
        .apply("apiVersion: v1\nkind: Secret\nmetadata:\n  name: only-in-other\n  namespace: other\nstringData:\n  apiKey: sk_test_other_only\n")
        .await?
        .ok()?;
    stack.cluster.apply(&borrowed_secret).await?.ok()?;
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
    assert_eq!(r.json()["error"]["code"], "stripe_account_not_allowed");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_settle_by_what_the_vendor_may_have_done() -> Result<()> {
    use keybrake_e2e::upstream::Mode;
    let upstream = RecordingUpstream::start().await?;
    let stack = Stack::start().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let mut config = keybrake_proxy::Config::local(&stack.redis.url(), &stack.prefix);
    config.upstream_timeout_secs = 1;
    let proxy = keybrake_proxy::start(stack.client.clone(), config, "127.0.0.1:0".parse()?).await?;
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
    assert_eq!(keys, vec![Some("run-1-cus-1".to_owned()); 2]);

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
        stack.cluster.apply(&policy).await?.ok()?;
        let key = example("stripe-run-key.yaml")
            .replace("billing-agent-run-7f3a", &format!("{name}-run"))
            .replace("    name: stripe\n", &format!("    name: {name}\n"));
        stack.cluster.apply(&key).await?.ok()?;
        let token = stack
            .active_key_env("billing", &format!("{name}-run"))
            .await?["STRIPE_API_KEY"]
            .clone();
        let bearer = format!("Bearer {token}");
        let r = http(
            proxy.addr,
            "POST",
            "/v1/payment_intents",
            &[("Authorization", bearer.as_str()), FORM],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_restart_reissues_nothing_rolls_nothing_and_keys_keep_working() -> Result<()>
{
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::Api;
    let upstream = RecordingUpstream::start().await?;
    let (mut stack, proxy) = Stack::start_with_proxy_on_persistent_api().await?;
    stack
        .cluster
        .apply(&with_upstream(
            &example("stripe-policy.yaml"),
            &upstream.url(),
        ))
        .await?
        .ok()?;
    stack
        .cluster
        .apply("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: billing-worker\n  namespace: billing\nspec:\n  template:\n    metadata: {}\n")
        .await?
        .ok()?;
    stack
        .cluster
        .apply(&example("stripe-worker-key.yaml"))
        .await?
        .ok()?;
    stack
        .key_in_phase("billing", "billing-worker", keybrake_crds::KeyPhase::Active)
        .await?;
    let before = stack
        .secret_data("billing", "billing-worker-stripe")
        .await?;
    let bearer = format!("Bearer {}", before["STRIPE_API_KEY"]);
    let charge = || async {
        http(
            proxy.addr,
            "POST",
            "/v1/payment_intents",
            &[("Authorization", bearer.as_str()), FORM],
            b"amount=100&currency=usd&confirm=true",
        )
        .await
    };
    assert_eq!(charge().await?.status, 200);

    // The API server goes away for a moment and comes back with its objects; the watches of the
    // operator and the proxy get 410 for their old resourceVersions and list again.
    stack.cluster.restart().await?;
    let restarted = std::time::Instant::now();
    let through = charge().await?;
    assert_eq!(
        through.status, 200,
        "keys work through the restart (a failed Secret read keeps the known credentials): {}",
        through.body
    );
    stack
        .cluster
        .kubectl_ok(&["label", "vk", "billing-worker", "-n", "billing", "poke=1"])
        .await?;
    // A reconcile after the restart has run once the operator answers the label change: give it
    // the same quiet second the no-op reconcile test uses.
    eventually("the operator to be watching again", 20, || async {
        let out = stack
            .cluster
            .kubectl(
                &[
                    "get",
                    "vk",
                    "billing-worker",
                    "-n",
                    "billing",
                    "-o",
                    "jsonpath={.status.phase}",
                ],
                None,
            )
            .await
            .ok()?;
        (out.stdout == "Active").then_some(())
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = stack
        .secret_data("billing", "billing-worker-stripe")
        .await?;
    assert_eq!(after, before, "the restart reissued the token");
    let deploy = Api::<Deployment>::namespaced(stack.client.clone(), "billing")
        .get("billing-worker")
        .await?;
    let annotations = deploy
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default();
    assert!(
        !annotations.contains_key("keybrake.com/rotated-at"),
        "the restart rolled a workload: {annotations:?}"
    );
    // Revocation still works end to end after the restart.
    stack
        .revoke_with_kubectl("billing", "billing-worker")
        .await?;
    let refused = eventually("the revoked key to be refused", 10, || async {
        let r = charge().await.ok()?;
        (r.status == 401).then_some(r)
    })
    .await?;
    println!(
        "API server restarted: token unchanged, nothing rolled, revocation refused {:.1}s after the restart ({})",
        restarted.elapsed().as_secs_f64(),
        refused.json()["error"]["code"]
    );
    proxy.shutdown().await;
    Ok(())
}
