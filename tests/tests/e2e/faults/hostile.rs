//! Hostile bytes, slow clients and bad amounts: refused with a clear 4xx, nothing forwarded.

use anyhow::Result;
use keybrake_e2e::{stack::Stack, upstream::RecordingUpstream};

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
    let proxy =
        keybrake_proxy::start(stack.proxy_client.clone(), config, "127.0.0.1:0".parse()?).await?;
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
