//! Redis over TLS (`rediss://`) with a private CA made at test time, on real `redis-server`s
//! that speak only TLS: a charge through the proxy (in-process and the real binary, configured
//! by `KEYBRAKE_REDIS_CA_FILE`); without the CA neither the proxy nor the operator starts (fail
//! closed, no fallback to plain text), `#insecure` URLs are refused, and TLS files with a plain
//! `redis://` URL stop the start; mutual TLS with and without the client certificate; and the
//! cluster and Sentinel modes over mutual TLS.

use std::time::Duration;

use anyhow::Result;
use keybrake_e2e::{
    payment_intent,
    pki::TestPki,
    redis_server::{RedisCluster, RedisSentinelSet, RedisServer},
    stack::Stack,
    upstream::RecordingUpstream,
};
use keybrake_ledger::{
    Token,
    connection::{ConnectConfig, Connection, Mode, TlsFiles, connect},
};

const MASTER: &str = "keybrake-tls";

fn config(mode: Mode, urls: &str, tls: TlsFiles) -> ConnectConfig {
    ConnectConfig {
        tls,
        ..ConnectConfig::new(mode, urls, MASTER, Duration::from_secs(2))
    }
}

/// A write, a read and a Lua script (what the ledger runs) over `conn`.
async fn round_trip(conn: &mut Connection) -> Result<()> {
    redis::cmd("SET")
        .arg("{tls}:probe")
        .arg("over-tls")
        .exec_async(conn)
        .await?;
    let read: String = redis::Script::new("return redis.call('GET', KEYS[1])")
        .key("{tls}:probe")
        .invoke_async(conn)
        .await?;
    anyhow::ensure!(read == "over-tls", "read {read:?}");
    Ok(())
}

/// What a connection attempt that must fail says (it must fail).
async fn refused(config: &ConnectConfig) -> String {
    match connect(config).await {
        Ok(_) => panic!("connected to {} with {:?}", config.urls, config.tls),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_goes_through_the_proxy_on_a_tls_only_redis_and_nothing_falls_back() -> Result<()>
{
    let pki = TestPki::generate()?;
    let redis = RedisServer::start_tls(&pki, false).await?;
    let port = redis.port;
    let upstream = RecordingUpstream::start().await?;
    let (stack, proxy) = Stack::builder()
        .tls_redis(redis, pki.files(false))
        .start_with_proxy()
        .await?;
    assert!(stack.redis_url().starts_with("rediss://"));
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    // One charge through the in-process proxy, one through the real binary configured only by
    // its environment (REDIS_URL=rediss://..., KEYBRAKE_REDIS_CA_FILE).
    let (_binary, binary) = keybrake_e2e::processes::proxy(&stack).await?;
    for addr in [proxy.addr, binary] {
        let r = payment_intent(addr, &bearer, b"amount=100&currency=usd&confirm=true").await?;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let token = Token::parse_bearer(&env["STRIPE_API_KEY"])?;
    let spend = stack.ledger().await?.key_spend(&token.key_id).await?;
    assert_eq!((spend.total, spend.calls), (2_000_000, 2));

    // Fail closed: without the CA the server's certificate is not trusted (the webpki roots do
    // not hold the test CA) and the proxy does not start. Certificate checks cannot be turned
    // off either: the redis crate's `#insecure` URL fragment is not compiled in, so the URL is
    // refused instead of any certificate trusted. (Both at once: each waits out the retries.)
    let insecure_url = format!("rediss://127.0.0.1:{port}/#insecure");
    let insecure = config(Mode::Single, &insecure_url, TlsFiles::default());
    let mut operator = stack.operator_config();
    operator.redis.ca_file = None;
    let (untrusted, operator, insecure) = tokio::join!(
        stack.start_proxy_with(|c| c.redis.ca_file = None),
        keybrake_operator::run(
            stack.operator_client.clone(),
            operator,
            std::future::pending()
        ),
        refused(&insecure)
    );
    for (what, result) in [
        ("proxy", untrusted.err().map(|e| e.to_string())),
        ("operator", operator.err().map(|e| e.to_string())),
    ] {
        let err = result.unwrap_or_default();
        println!("{what} without the CA file: {err}");
        assert!(
            err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
            "{what}: {err}"
        );
    }
    println!("#insecure: {insecure}");
    assert!(insecure.contains("insecure"), "{insecure}");
    // TLS files with a plain URL stop the start, naming the problem.
    let mismatch = stack
        .start_proxy_with(|c| c.redis.url = format!("redis://127.0.0.1:{port}/"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        mismatch.contains("redis://127.0.0.1:") && mismatch.contains("is not a rediss:// URL"),
        "{mismatch}"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn mutual_tls_connects_with_the_client_certificate_and_not_without() -> Result<()> {
    let pki = TestPki::generate()?;
    let redis = RedisServer::start_tls(&pki, true).await?;
    let mut conn = connect(&config(Mode::Single, &redis.url(), pki.files(true))).await?;
    round_trip(&mut conn).await?;
    let without = refused(&config(Mode::Single, &redis.url(), pki.files(false))).await;
    println!("mutual TLS without the client certificate: {without}");
    // A key that is not the certificate's is refused before anything is dialled.
    let mut wrong = pki.files(true);
    wrong.client_key_file = Some(pki.path("server-key.pem"));
    let wrong = refused(&config(Mode::Single, &redis.url(), wrong)).await;
    assert!(wrong.contains("do not make a pair"), "{wrong}");
    Ok(())
}

#[tokio::test]
async fn cluster_mode_connects_over_mutual_tls_with_a_private_ca() -> Result<()> {
    let pki = TestPki::generate()?;
    let cluster = RedisCluster::start_tls_one_node(&pki, true).await?;
    assert!(cluster.urls().starts_with("rediss://"));
    let mut conn = connect(&config(Mode::Cluster, &cluster.urls(), pki.files(true))).await?;
    round_trip(&mut conn).await?;
    let untrusted = refused(&config(Mode::Cluster, &cluster.urls(), TlsFiles::default())).await;
    println!("cluster without the CA file: {untrusted}");
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
    Ok(())
}

#[tokio::test]
async fn sentinel_mode_reaches_the_sentinels_and_the_primary_over_mutual_tls() -> Result<()> {
    let pki = TestPki::generate()?;
    let set = RedisSentinelSet::start_tls(MASTER, &pki, true).await?;
    assert!(set.urls().starts_with("rediss://"));
    let mut conn = connect(&config(Mode::Sentinel, &set.urls(), pki.files(true))).await?;
    round_trip(&mut conn).await?;
    // The write is on the primary the sentinel names (the only data node, TLS only).
    let mut primary = set.nodes[0].connect().await?;
    let stored: String = redis::cmd("GET")
        .arg("{tls}:probe")
        .query_async(&mut primary)
        .await?;
    assert_eq!(stored, "over-tls");
    let untrusted = refused(&config(Mode::Sentinel, &set.urls(), TlsFiles::default())).await;
    println!("sentinel without the CA file: {untrusted}");
    assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");
    Ok(())
}
