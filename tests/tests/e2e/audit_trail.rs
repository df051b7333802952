//! The audit trail in PostgreSQL: the sink against a real Redis (and Redis Cluster) and a real
//! PostgreSQL. Every entry the scripts write arrives exactly once, a replay is a no-op, a sink
//! killed mid-batch loses and duplicates nothing, two sinks split the work, and a database that
//! is down keeps the entries in Redis (untrimmed) while the lag rises.

use std::time::Duration;

use anyhow::{Context, Result};
use keybrake_audit::{AuditDbFlags, Db, ExportMetrics, Sink, metrics::StreamLabel};
use keybrake_e2e::{
    postgres::TestPostgres,
    redis_server::{RedisCluster, RedisServer},
};
use keybrake_ledger::{Admission, LedgerConfig, Outcome, export::GROUP};
use redis::AsyncCommands;

use super::ledger_fixture::{Conn, Fixture, Issued, usd};

/// Scripts that leave trimming to the sink, as the proxy runs them with an audit database.
fn exported() -> LedgerConfig {
    LedgerConfig {
        audit_max_len: 0,
        ..Default::default()
    }
}

fn flags(pg: &TestPostgres, batch: usize, claim_idle_secs: u64) -> AuditDbFlags {
    AuditDbFlags {
        batch,
        claim_idle_secs,
        ..AuditDbFlags::at(&pg.url())
    }
}

/// `n` calls of a cent each on a key capped at $5 a day: 500 go through (every seventh with an
/// unknown outcome, every eleventh never sent), the rest are refused by the cap.
async fn calls<C: Conn>(fx: &Fixture<C>, key: &Issued, n: usize) -> Result<()> {
    for i in 0..n {
        if let Admission::Granted { reservation, .. } =
            fx.reserve(key, "/v1/payment_intents", usd("0.01")).await?
        {
            let outcome = match i {
                i if i % 7 == 0 => Outcome::Unknown,
                i if i % 11 == 0 => Outcome::NotSent,
                _ => Outcome::Ok,
            };
            fx.settle(key, &reservation, outcome, usd("0.01"), None, None)
                .await?;
        }
    }
    Ok(())
}

async fn key<C: Conn>(fx: &Fixture<C>) -> Result<Issued> {
    fx.issue(|r| {
        r.daily_cap = Some(usd("5"));
        r.total_cap = None;
        r.per_call_cap = None;
    })
    .await
}

async fn stream_len<C: Conn>(fx: &Fixture<C>) -> Result<u64> {
    let mut conn = fx.conn.clone();
    let stream = fx.ledger.audit_stream(&fx.tag);
    Ok(conn.xlen(stream).await?)
}

/// (rows, distinct stream entries) of the fixture's policy in the table.
async fn rows(pg: &TestPostgres, tag: &str) -> Result<(i64, i64)> {
    let row = pg
        .client()
        .await?
        .query_one(
            "SELECT count(*), count(DISTINCT stream_id) FROM calls WHERE policy_tag = $1",
            &[&tag],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Exports until a batch comes back empty; returns the entries read.
async fn drain<C: Conn>(sink: &mut Sink<C>, fx: &Fixture<C>) -> Result<usize> {
    let mut read = 0;
    loop {
        let moved = sink.export(&fx.tag).await?;
        if moved.read == 0 {
            return Ok(read);
        }
        read += moved.read;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_arrives_once_and_a_replay_is_a_no_op() -> Result<()> {
    let pg = TestPostgres::start().await?;
    let db = Db::connect(&AuditDbFlags::at(&pg.url())).await?;
    let server = RedisServer::start().await?;
    exports_once(
        &pg,
        &db,
        Fixture::new(server.connect().await?, exported()).await?,
    )
    .await
    .context("on a single Redis")?;
    let cluster = RedisCluster::start().await?;
    exports_once(
        &pg,
        &db,
        Fixture::new(cluster.connect().await?, exported()).await?,
    )
    .await
    .context("on a three-node Redis Cluster")?;
    Ok(())
}

async fn exports_once<C: Conn>(pg: &TestPostgres, db: &Db, fx: Fixture<C>) -> Result<()> {
    let key = key(&fx).await?;
    calls(&fx, &key, 600).await?;
    let written = stream_len(&fx).await?;
    assert_eq!(written, 600, "the scripts trim nothing when the sink does");
    let metrics = ExportMetrics::default();
    let mut sink = Sink::new(
        fx.ledger.clone(),
        db.clone(),
        "a",
        &flags(pg, 100, 60),
        metrics.clone(),
    );
    assert_eq!(drain(&mut sink, &fx).await?, 600);
    assert_eq!(rows(pg, fx.tag.as_str()).await?, (600, 600));
    // Delivered again from the start (a sink that died after its commit, before its ack):
    // nothing new is written.
    let mut conn = fx.conn.clone();
    let stream = fx.ledger.audit_stream(&fx.tag);
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg(GROUP)
        .arg("0")
        .query_async(&mut conn)
        .await?;
    assert_eq!(drain(&mut sink, &fx).await?, 600);
    assert_eq!(rows(pg, fx.tag.as_str()).await?, (600, 600));
    assert_eq!(metrics.exported.get(), 600, "the replay wrote no row");
    // What the table holds: the refusals, the unknown outcomes, and money in micro-dollars.
    let client = pg.client().await?;
    let by_outcome: Vec<(String, i64, i64)> = client
        .query(
            "SELECT outcome, count(*), sum(actual_micros)::bigint FROM calls
             WHERE policy_tag = $1 GROUP BY outcome ORDER BY outcome",
            &[&fx.tag.as_str()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let count = |o: &str| by_outcome.iter().find(|r| r.0 == o).map_or(0, |r| r.1);
    let money = |o: &str| by_outcome.iter().find(|r| r.0 == o).map_or(0, |r| r.2);
    let outcomes = ["ok", "unknown", "not_sent", "refused"];
    assert_eq!(
        outcomes.iter().map(|o| count(o)).sum::<i64>(),
        600,
        "{by_outcome:?}"
    );
    assert!(outcomes.iter().all(|o| count(o) > 0), "{by_outcome:?}");
    // The cap held to the micro-dollar, and the table says so.
    assert_eq!(money("ok") + money("unknown"), 5_000_000, "{by_outcome:?}");
    assert_eq!((money("refused"), money("not_sent")), (0, 0));
    // Trimmed below what was acknowledged, and nothing is left to export.
    sink.round().await;
    assert!(stream_len(&fx).await? <= 1, "trimmed once exported");
    let lag = metrics
        .lag_entries
        .get_or_create(&StreamLabel {
            stream: fx.tag.as_str().to_owned(),
        })
        .get();
    assert_eq!(lag, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_killed_mid_batch_loses_and_duplicates_nothing() -> Result<()> {
    let pg = TestPostgres::start().await?;
    let db = Db::connect(&AuditDbFlags::at(&pg.url())).await?;
    let server = RedisServer::start().await?;
    let fx = Fixture::new(server.connect().await?, exported()).await?;
    for _ in 0..4 {
        let key = key(&fx).await?;
        calls(&fx, &key, 700).await?;
    }
    let total = stream_len(&fx).await? as i64;
    // Killed at random moments: before, during or after a commit, before or after an ack.
    for i in 0..12u64 {
        let sink = Sink::new(
            fx.ledger.clone(),
            db.clone(),
            "a",
            &flags(&pg, 5, 60),
            ExportMetrics::default(),
        );
        let task = tokio::spawn(sink.run());
        tokio::time::sleep(Duration::from_millis(1 + (i * 7) % 15)).await;
        task.abort();
        let _ = task.await;
    }
    let (partial, _) = rows(&pg, fx.tag.as_str()).await?;
    assert!(
        partial < total,
        "the kills came before the end ({partial} of {total})"
    );
    // Another sink takes over: it claims what "a" held once that has been idle for a second.
    let metrics = ExportMetrics::default();
    let mut b = Sink::new(
        fx.ledger.clone(),
        db.clone(),
        "b",
        &flags(&pg, 150, 1),
        metrics,
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drain(&mut b, &fx).await?;
    b.round().await;
    assert_eq!(rows(&pg, fx.tag.as_str()).await?, (total, total));
    let mut conn = fx.conn.clone();
    let stream = fx.ledger.audit_stream(&fx.tag);
    let pending: redis::streams::StreamPendingReply = conn.xpending(&stream, GROUP).await?;
    assert_eq!(pending.count(), 0, "everything acknowledged");
    // The consumers holding nothing (the killed "a", if it ever read, and the idle "b") are
    // forgotten.
    let before: redis::streams::StreamInfoConsumersReply =
        conn.xinfo_consumers(&stream, GROUP).await?;
    assert!(before.consumers.iter().any(|c| c.name == "b"));
    let forgotten = fx
        .ledger
        .export_forget_idle_consumers(&fx.tag, Duration::ZERO)
        .await?;
    assert_eq!(forgotten as usize, before.consumers.len());
    let consumers: redis::streams::StreamInfoConsumersReply =
        conn.xinfo_consumers(&stream, GROUP).await?;
    assert!(consumers.consumers.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_split_the_work_without_duplicates() -> Result<()> {
    let pg = TestPostgres::start().await?;
    let db = Db::connect(&AuditDbFlags::at(&pg.url())).await?;
    let server = RedisServer::start().await?;
    let fx = std::sync::Arc::new(Fixture::new(server.connect().await?, exported()).await?);
    for _ in 0..4 {
        let key = key(&fx).await?;
        calls(&fx, &key, 600).await?;
    }
    let total = stream_len(&fx).await? as usize;
    let mut tasks = Vec::new();
    for name in ["a", "b"] {
        let mut sink = Sink::new(
            fx.ledger.clone(),
            db.clone(),
            name,
            &flags(&pg, 50, 60),
            ExportMetrics::default(),
        );
        let fx = fx.clone();
        tasks.push(tokio::spawn(async move { drain(&mut sink, &fx).await }));
    }
    let mut read = Vec::new();
    for t in tasks {
        read.push(t.await??);
    }
    println!("two sinks read {read:?} of {total} entries");
    assert_eq!(read.iter().sum::<usize>(), total, "no entry read twice");
    assert!(read.iter().all(|n| *n > 0), "both worked: {read:?}");
    assert_eq!(
        rows(&pg, fx.tag.as_str()).await?,
        (total as i64, total as i64)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_keeps_the_entries_in_redis_and_raises_the_lag() -> Result<()> {
    let mut pg = TestPostgres::start().await?;
    let db = Db::connect(&AuditDbFlags::at(&pg.url())).await?;
    let server = RedisServer::start().await?;
    let fx = Fixture::new(server.connect().await?, exported()).await?;
    let key = key(&fx).await?;
    calls(&fx, &key, 100).await?;
    let metrics = ExportMetrics::default();
    let mut sink = Sink::new(
        fx.ledger.clone(),
        db.clone(),
        "a",
        &flags(&pg, 1000, 60),
        metrics.clone(),
    );
    sink.round().await;
    assert_eq!(rows(&pg, fx.tag.as_str()).await?, (100, 100));

    pg.server.stop().await?;
    calls(&fx, &key, 250).await?;
    sink.round().await;
    sink.round().await;
    let label = StreamLabel {
        stream: fx.tag.as_str().to_owned(),
    };
    assert_eq!(metrics.lag_entries.get_or_create(&label).get(), 250);
    assert!(metrics.lag_seconds.get_or_create(&label).get() >= 0.0);
    assert!(
        stream_len(&fx).await? >= 250,
        "nothing unexported was trimmed"
    );
    let failures = metrics
        .failures
        .get_or_create(&keybrake_audit::metrics::StepLabel {
            step: "write".into(),
        })
        .get();
    assert!(failures >= 2, "each failed write is counted");

    pg.server.restart().await?;
    for _ in 0..20 {
        if !sink.round().await && metrics.lag_entries.get_or_create(&label).get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rows(&pg, fx.tag.as_str()).await?, (350, 350));
    assert_eq!(metrics.lag_entries.get_or_create(&label).get(), 0);
    assert!(stream_len(&fx).await? <= 1);
    Ok(())
}

/// The ```sql blocks of docs/audit.md, in order.
fn documented_queries() -> Result<Vec<String>> {
    let doc = std::fs::read_to_string(keybrake_e2e::workspace_root().join("docs/audit.md"))?;
    let re = regex::Regex::new(r"(?s)```sql\n(.*?)```")?;
    Ok(re.captures_iter(&doc).map(|c| c[1].to_owned()).collect())
}

/// A query's rows as text, numbers with their trailing zeros cut (`450.000000` reads `450`).
async fn text_rows(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    for m in client.simple_query(sql).await? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            rows.push(
                (0..r.len())
                    .map(|i| {
                        let v = r.get(i).unwrap_or("NULL").to_owned();
                        match v.parse::<f64>() {
                            Ok(n) if v.contains('.') => n.to_string(),
                            _ => v,
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_run_lands_once_in_postgres_and_the_five_queries_answer() -> Result<()> {
    use keybrake_e2e::{http, identities, payment_intent, stack::Stack, upstream::Mode};
    let pg = TestPostgres::start().await?;
    let upstream = keybrake_e2e::upstream::RecordingUpstream::start().await?;
    let stack = Stack::start().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let proxy = stack
        .start_proxy_with(|c| {
            c.upstream_timeout_secs = 1;
            c.audit_db = AuditDbFlags::at(&pg.url());
        })
        .await?;
    let bearer = format!("Bearer {}", env["STRIPE_API_KEY"]);
    let charge = |dollars: u32| {
        let bearer = bearer.clone();
        async move {
            payment_intent(
                proxy.addr,
                &bearer,
                format!("amount={}&currency=usd&confirm=true", dollars * 100).as_bytes(),
            )
            .await
        }
    };
    // The run: a charge, one whose answer comes too late (unknown: its $100 stays counted),
    // another charge, one over the $500 daily cap, and one after the key is revoked.
    assert_eq!(charge(100).await?.status, 200);
    upstream.set_mode(Mode::Slow(Duration::from_secs(2)));
    assert_eq!(charge(100).await?.status, 503);
    upstream.set_mode(Mode::Normal);
    assert_eq!(charge(250).await?.status, 200);
    let over = charge(100).await?;
    assert!(over.body.contains("daily cap"), "{}", over.body);
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
    let revoked = charge(100).await?;
    assert!(revoked.body.contains("revoked"), "{}", revoked.body);

    // Every call once, exported by the proxy's own sink.
    let client = pg.client().await?;
    let outcomes =
        keybrake_e2e::stack::eventually("the run's five calls in PostgreSQL", 30, || async {
            let rows = text_rows(
                &client,
                "SELECT outcome, coalesce(rule, ''), count(DISTINCT id), count(*) FROM calls
             WHERE namespace = 'billing' GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .await
            .ok()?;
            let total: usize = rows
                .iter()
                .map(|r| r[3].parse::<usize>().unwrap_or(0))
                .sum();
            (total >= 5).then_some(rows)
        })
        .await?;
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        outcomes,
        vec![
            s(&["ok", "", "2", "2"]),
            s(&["refused", "daily_cap", "1", "1"]),
            s(&["refused", "revoked", "1", "1"]),
            s(&["unknown", "", "1", "1"]),
        ]
    );

    // The five queries of docs/audit.md, as written there.
    let queries = documented_queries()?;
    assert_eq!(queries.len(), 5, "docs/audit.md has five queries");
    let spent = text_rows(&client, &queries[0]).await?;
    assert_eq!(
        spent,
        vec![s(&["stripe", "POST", "/v1/payment_intents", "3", "450"])]
    );
    let refused: Vec<String> = text_rows(&client, &queries[1])
        .await?
        .into_iter()
        .map(|r| r[4].clone())
        .collect();
    assert_eq!(refused, ["daily_cap", "revoked"]);
    let request_ids = text_rows(&client, &queries[2]).await?;
    assert_eq!(request_ids.len(), 2, "{request_ids:?}");
    assert!(
        request_ids.iter().all(|r| r[2].starts_with("req_")),
        "{request_ids:?}"
    );
    let daily = text_rows(&client, &queries[3]).await?;
    assert_eq!(daily.len(), 1, "{daily:?}");
    assert_eq!(
        daily[0][1..],
        s(&["billing-agent-run-7f3a", "3", "2", "450"])
    );
    let unknown = text_rows(&client, &queries[4]).await?;
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0][2..], s(&["/v1/payment_intents", "100", "0"]));

    // The audit API reads PostgreSQL, scoped by namespace as before, and the CLI exports CSV.
    stack.cluster.apply_ok(identities::RBAC).await?;
    let query = "/audit?run_label=hatchet%2Fbilling-agent%2F7f3a9c2e";
    let reader_token = stack.cluster.tokens().await?.billing_reader.clone();
    let reader = format!("Bearer {reader_token}");
    let everywhere = http(
        proxy.admin_addr,
        "GET",
        query,
        &[("Authorization", reader.as_str())],
        b"",
    )
    .await?;
    assert_eq!(everywhere.status, 403, "{}", everywhere.body);
    let mine = http(
        proxy.admin_addr,
        "GET",
        &format!("{query}&namespace=billing"),
        &[("Authorization", reader.as_str())],
        b"",
    )
    .await?;
    assert_eq!(mine.status, 200, "{}", mine.body);
    let v = mine.json();
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(5));
    let total = &v["totals"]["hatchet/billing-agent/7f3a9c2e"];
    assert_eq!(
        (
            total["calls"].as_u64(),
            total["refused"].as_u64(),
            total["actual_usd"].as_str()
        ),
        (Some(3), Some(2), Some("450.00"))
    );
    let out = tokio::process::Command::new(keybrake_e2e::processes::binary("keybrake")?)
        .args([
            "audit",
            "-n",
            "billing",
            "--run-label",
            "hatchet/billing-agent/7f3a9c2e",
            "-o",
            "csv",
        ])
        .arg("--admin-url")
        .arg(format!("http://{}", proxy.admin_addr))
        .env("KEYBRAKE_API_KEY", &reader_token)
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 6, "a header and five calls:\n{csv}");
    assert!(
        lines[0].starts_with("time,vault_key,key,run_label"),
        "{csv}"
    );
    assert!(
        lines[1].contains(",billing/billing-agent-run-7f3a,") && lines[1].contains(",100.00,"),
        "{csv}"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_kept_aside_and_a_lost_group_is_joined_again() -> Result<()> {
    let pg = TestPostgres::start().await?;
    let db = Db::connect(&AuditDbFlags::at(&pg.url())).await?;
    let server = RedisServer::start().await?;
    // A replica told to trim by length (no database): once a sink reads the stream, the
    // scripts leave the trimming to it.
    let fx = Fixture::new(
        server.connect().await?,
        LedgerConfig {
            audit_max_len: 5,
            ..Default::default()
        },
    )
    .await?;
    let key = key(&fx).await?;
    let metrics = ExportMetrics::default();
    let mut sink = Sink::new(
        fx.ledger.clone(),
        db.clone(),
        "a",
        &flags(&pg, 100, 60),
        metrics.clone(),
    );
    sink.round().await;
    calls(&fx, &key, 300).await?;
    assert_eq!(
        stream_len(&fx).await?,
        300,
        "nothing trimmed before it is exported"
    );
    // Entries that cannot be rows: one that does not read back, one whose VaultKey is not
    // namespace/name, and one whose id another entry already holds.
    let mut conn = fx.conn.clone();
    let stream = fx.ledger.audit_stream(&fx.tag);
    let entry = |id: &str, vk: &str| {
        vec![
            ("id", id.to_owned()),
            ("ts", "1700000000000".to_owned()),
            ("key", "kb_x".to_owned()),
            ("vk", vk.to_owned()),
            ("outcome", "ok".to_owned()),
            ("actual", "10000".to_owned()),
        ]
    };
    let mut unreadable = entry("bad-1", "billing/x");
    unreadable[1].1 = "yesterday".into();
    let mut nul = entry("bad-3", "billing/x");
    nul.push(("request_id", "req_\0x".into()));
    // One PostgreSQL itself refuses (a rule of this test's database): isolated from its batch.
    pg.client()
        .await?
        .execute(
            "ALTER TABLE calls ADD CONSTRAINT test_refused CHECK (id <> 'refuse-me')",
            &[],
        )
        .await?;
    for fields in [
        unreadable,
        entry("bad-2", "no-namespace"),
        entry("twice", "billing/x"),
        entry("twice", "billing/y"),
        nul,
        entry("refuse-me", "billing/x"),
    ] {
        let _: String = conn.xadd(&stream, "*", &fields).await?;
    }
    drain(&mut sink, &fx).await?;
    sink.round().await;
    assert_eq!(rows(&pg, fx.tag.as_str()).await?, (301, 301));
    let client = pg.client().await?;
    let problems: Vec<String> = client
        .query(
            "SELECT problem FROM calls_rejected WHERE policy_tag = $1 ORDER BY stream_id",
            &[&fx.tag.as_str()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(problems.len(), 5, "{problems:?}");
    assert!(problems[0].contains("no time"), "{problems:?}");
    assert!(problems[1].contains("not namespace/name"), "{problems:?}");
    assert!(problems[2].contains("is held by entry"), "{problems:?}");
    assert!(problems[3].contains("NUL"), "{problems:?}");
    assert!(
        problems[4].contains("PostgreSQL refused it"),
        "{problems:?}"
    );
    assert_eq!(metrics.rejected.get(), 5);
    assert!(stream_len(&fx).await? <= 1, "acknowledged, so trimmed");

    // The group is gone (a failover to a replica that never had it): the sink joins again. On a
    // policy whose scripts run as the proxy runs them with a database (never trimming by length:
    // with a length, a stream without its group is trimmed as any other until the sink is back).
    let fx2 = Fixture::new(fx.conn.clone(), exported()).await?;
    let key2 = self::key(&fx2).await?;
    let mut rejoining = Sink::new(
        fx2.ledger.clone(),
        db.clone(),
        "a",
        &flags(&pg, 100, 60),
        ExportMetrics::default(),
    );
    calls(&fx2, &key2, 10).await?;
    rejoining.round().await;
    assert_eq!(rows(&pg, fx2.tag.as_str()).await?, (10, 10));
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(fx2.ledger.audit_stream(&fx2.tag))
        .arg(GROUP)
        .query_async(&mut conn)
        .await?;
    calls(&fx2, &key2, 10).await?;
    rejoining.round().await; // meets NOGROUP
    rejoining.round().await; // joins again, from the stream's start
    assert_eq!(rows(&pg, fx2.tag.as_str()).await?, (20, 20));

    // Entries removed from Redis while a dead consumer held them: counted as lost when claimed.
    calls(&fx, &key, 3).await?;
    let taken: redis::streams::StreamReadReply = conn
        .xread_options(
            &[&stream],
            &[">"],
            &redis::streams::StreamReadOptions::default().group(GROUP, "ghost"),
        )
        .await?;
    let ids: Vec<String> = taken
        .keys
        .iter()
        .flat_map(|k| k.ids.iter().map(|e| e.id.clone()))
        .collect();
    assert_eq!(ids.len(), 3);
    let _: u64 = conn.xdel(&stream, &ids).await?;
    let mut claimer = Sink::new(
        fx.ledger.clone(),
        db.clone(),
        "c",
        &flags(&pg, 100, 1),
        metrics.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drain(&mut claimer, &fx).await?;
    assert_eq!(metrics.lost.get(), 3);

    // Every sink gone (the database URL removed): the scripts still leave the joined stream
    // untrimmed, and a replica without a database publishes its lag, so the alert fires.
    drop((sink, claimer));
    calls(&fx, &key, 5).await?;
    let without_db = ExportMetrics::default();
    let watcher = tokio::spawn(keybrake_audit::sink::watch_unexported(
        fx.ledger.clone(),
        without_db.clone(),
    ));
    let label = StreamLabel {
        stream: fx.tag.as_str().to_owned(),
    };
    keybrake_e2e::stack::eventually("the lag of the unexported entries", 10, || async {
        (without_db.lag_entries.get_or_create(&label).get() == 5).then_some(())
    })
    .await?;
    watcher.abort();
    Ok(())
}

/// Replicas starting together migrate once. Retention is a job on the table, not a trim of
/// Redis: rows past it go, the rest stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrate_once_and_rows_past_retention_are_deleted() -> Result<()> {
    let pg = TestPostgres::start().await?;
    let flags = AuditDbFlags::at(&pg.url());
    let (a, b, c) = tokio::join!(
        Db::connect(&flags),
        Db::connect(&flags),
        Db::connect(&flags)
    );
    let db = a?;
    b?;
    c?;
    let client = pg.client().await?;
    for (id, age_days) in [("old", 400), ("kept", 300), ("new", 0)] {
        client
            .execute(
                "INSERT INTO calls (id, at, namespace, vault_key, key_id, run_label, vendor,
                     method, endpoint, estimate_micros, actual_micros, overshoot_micros, outcome,
                     policy_tag, stream_id)
                 VALUES ($1, now() - make_interval(days => $2), 'billing', 'k', 'kb_1', '',
                     'stripe', 'POST', '/v1/charges', 0, 0, 0, 'ok', 't', $1)",
                &[&id, &age_days],
            )
            .await?;
    }
    client
        .execute(
            "INSERT INTO calls_rejected (policy_tag, stream_id, problem, fields, rejected_at)
             VALUES ('t', '1-0', 'old', '{}', now() - make_interval(days => 400))",
            &[],
        )
        .await?;
    assert_eq!(
        db.prune(flags.retention()).await?,
        2,
        "the old row and the old rejected entry"
    );
    let left: Vec<String> = client
        .query("SELECT id FROM calls ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["kept", "new"]);
    Ok(())
}

/// A database that is down when the proxy starts delays the export, not the calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_start_delays_the_export_not_the_calls() -> Result<()> {
    use keybrake_e2e::{http, stack::Stack};
    let mut pg = TestPostgres::start().await?;
    pg.server.stop().await?;
    let upstream = keybrake_e2e::upstream::RecordingUpstream::start().await?;
    let stack = Stack::start().await?;
    let env = stack.apply_stripe_run_key(&upstream.url()).await?;
    let proxy = stack
        .start_proxy_with(|c| c.audit_db = AuditDbFlags::at(&pg.url()))
        .await?;
    let charged = http(
        proxy.addr,
        "POST",
        "/v1/payment_intents",
        &[
            (
                "Authorization",
                format!("Bearer {}", env["STRIPE_API_KEY"]).as_str(),
            ),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"amount=1000&currency=usd&confirm=true",
    )
    .await?;
    assert_eq!(charged.status, 200, "{}", charged.body);
    pg.server.restart().await?;
    let client = pg.client().await?;
    keybrake_e2e::stack::eventually("the call in PostgreSQL once it is up", 30, || async {
        let n: i64 = client
            .query_one("SELECT count(*) FROM calls WHERE outcome = 'ok'", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await?;
    proxy.shutdown().await;
    Ok(())
}
