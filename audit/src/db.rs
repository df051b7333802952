//! The PostgreSQL side: a pool, the migrations (run at start, one instance at a time), the
//! sink's insert, the audit API's query and the retention job's delete. Every call has a
//! deadline; a row that does not read back as its type is an error.

use std::{str::FromStr, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::{ClientConfig, RootCertStore, crypto::ring};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::{flags::AuditDbFlags, query::AuditQuery, row::CallRow};

/// The schema's versions, `migrations/V<n>__<name>.sql`, compiled in.
mod embedded {
    #![allow(missing_docs)]
    refinery::embed_migrations!("migrations");
}

/// Longest wait for one database call.
const DEADLINE: Duration = Duration::from_secs(10);
/// Connections per process: the sink's writer, the retention job and a few API reads.
const POOL_SIZE: usize = 8;
/// Longest a start waits for another replica's migrations, and a migration may run.
const MIGRATE_WAIT: Duration = Duration::from_secs(600);
/// Session advisory lock ids: one instance migrates, one prunes, at a time.
const MIGRATE_LOCK: i64 = 0x6b62_6175_6469_7401;
const PRUNE_LOCK: i64 = 0x6b62_6175_6469_7402;
/// Rows deleted per statement by the retention job.
const PRUNE_BATCH: i64 = 10_000;

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL or the CA file cannot be used.
    #[error("the audit database settings are not usable: {0}")]
    Config(String),
    /// No connection from the pool.
    #[error("no connection to the audit database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// PostgreSQL refused a statement, or the connection failed.
    #[error("the audit database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The migrations failed.
    #[error("migrating the audit database: {0}")]
    Migrate(#[from] refinery::Error),
    /// No answer in time.
    #[error("the audit database did not answer within {0:?}")]
    Timeout(Duration),
}

/// The audit database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

async fn timed<T, E: Into<DbError>>(
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(DbError::Timeout(DEADLINE)),
    }
}

/// rustls with the webpki roots, or only the CA of `ca_file`.
fn tls(flags: &AuditDbFlags) -> Result<MakeRustlsConnect, DbError> {
    let mut roots = RootCertStore::empty();
    match &flags.ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| DbError::Config(format!("cannot read {}: {e}", path.display())))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DbError::Config(format!("{}: bad PEM ({e})", path.display())))?;
            if certs.is_empty() {
                return Err(DbError::Config(format!(
                    "{}: no PEM certificate in it",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| DbError::Config(format!("{}: {e}", path.display())))?;
            }
        }
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The connection settings of `url`, with TLS required off loopback unless the URL sets
/// `sslmode`.
fn pg_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| DbError::Config(format!("{}: {e}", redacted(url))))?;
    // libpq's default, `prefer`, falls back to plain text when TLS fails: the audit trail
    // and the password would cross the network in clear. Off loopback, TLS is required
    // unless the URL itself says otherwise.
    let loopback = config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(host) => {
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    });
    if !url.contains("sslmode=") && !loopback {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    Ok(config)
}

impl Db {
    /// Connects (TLS as `sslmode` in the URL asks) and brings the schema up to date.
    pub async fn connect(flags: &AuditDbFlags) -> Result<Db, DbError> {
        let db = Db::open(flags)?;
        db.migrate().await?;
        Ok(db)
    }

    /// The pool, without connecting: fails only on settings that can never work (the URL, the
    /// CA file), so a database that is down at start delays the export instead of the proxy.
    pub fn open(flags: &AuditDbFlags) -> Result<Db, DbError> {
        let url = flags
            .url
            .as_deref()
            .ok_or_else(|| DbError::Config("no URL (KEYBRAKE_AUDIT_DB_URL)".into()))?;
        let config = pg_config(url)?;
        let manager = Manager::from_config(
            config,
            tls(flags)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(DEADLINE))
            .create_timeout(Some(DEADLINE))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Config(e.to_string()))?;
        Ok(Db { pool })
    }

    /// Runs the embedded migrations, holding a session lock so replicas starting together do
    /// not run them twice. The lock is only ever tried (a wait could outlive the call's deadline
    /// and leave a pooled connection holding it), and the connection is never pooled again.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let client = timed(self.pool.get()).await?;
        let mut client = deadpool_postgres::Object::take(client);
        let deadline = tokio::time::Instant::now() + MIGRATE_WAIT;
        loop {
            let row = timed(client.query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATE_LOCK]))
                .await?;
            if row.try_get::<_, bool>(0)? {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DbError::Timeout(MIGRATE_WAIT));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A migration may take long (an index on a big table): its own, longer deadline.
        let report = tokio::time::timeout(
            MIGRATE_WAIT,
            embedded::migrations::runner().run_async(&mut *client),
        )
        .await
        .map_err(|_| DbError::Timeout(MIGRATE_WAIT))??;
        for m in report.applied_migrations() {
            tracing::info!(migration = %m, "audit database migrated");
        }
        // The session ends with the connection here, and its lock with it.
        Ok(())
    }

    /// Writes a batch in one transaction: the rows, and the entries that cannot be rows into
    /// `calls_rejected`. A row already there from the same entry (a replayed export) is left as
    /// is; a row PostgreSQL refuses, or whose id another entry holds, is rejected, not lost.
    pub async fn write(
        &self,
        rows: &[CallRow],
        rejected: Vec<Rejected>,
    ) -> Result<Written, DbError> {
        if rows.is_empty() && rejected.is_empty() {
            return Ok(Written::default());
        }
        let mut client = timed(self.pool.get()).await?;
        let result = timed(write_batch(&mut client, rows, rejected)).await;
        if result.is_err() {
            // Whatever state the connection is in (a timeout mid-transaction), it is not reused:
            // dropping it rolls the transaction back.
            drop(deadpool_postgres::Object::take(client));
        }
        result
    }

    /// The calls a query asks for, oldest first.
    pub async fn calls(&self, q: &AuditQuery) -> Result<Vec<CallRow>, DbError> {
        let (vk_ns, vk_name) = match q.vault_key.as_deref().and_then(|v| v.split_once('/')) {
            Some((ns, name)) => (Some(ns.to_owned()), Some(name.to_owned())),
            None => (None, None),
        };
        // The namespace the caller was authorized for (`scope`), and the VaultKey's own.
        let namespace = q.scope().map(str::to_owned);
        let from = q
            .from_ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
        let to = q
            .to_ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
        let limit = q.limit as i64;
        let client = timed(self.pool.get()).await?;
        let rows = timed(client.query(
            "SELECT id, at, namespace, vault_key, key_id, run_label, vendor, method, endpoint,
                    estimate_micros, actual_micros, overshoot_micros, outcome, rule,
                    vendor_status, vendor_request_id, reservation_id, policy_tag, stream_id
             FROM calls
             WHERE ($1::text IS NULL OR key_id = $1)
               AND ($2::text IS NULL OR run_label = $2)
               AND ($3::text IS NULL OR namespace = $3)
               AND ($4::text IS NULL OR (namespace = $8 AND vault_key = $4))
               AND ($5::timestamptz IS NULL OR at >= $5)
               AND ($6::timestamptz IS NULL OR at <= $6)
             ORDER BY at, stream_id
             LIMIT $7",
            &[
                &q.key,
                &q.run_label,
                &namespace,
                &vk_name,
                &from,
                &to,
                &limit,
                &vk_ns,
            ],
        ))
        .await?;
        rows.iter().map(read_row).collect()
    }

    /// Deletes rows older than `keep`, in batches, unless another instance is already at it.
    /// Returns how many went.
    pub async fn prune(&self, keep: Duration) -> Result<u64, DbError> {
        let client = timed(self.pool.get()).await?;
        let locked: bool =
            timed(client.query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNE_LOCK]))
                .await?
                .try_get(0)?;
        if !locked {
            return Ok(0);
        }
        let keep_secs = keep.as_secs() as f64;
        let mut deleted = 0;
        let result = loop {
            let n = timed(client.execute(
                "DELETE FROM calls WHERE id IN (
                     SELECT id FROM calls WHERE at < now() - make_interval(secs => $1)
                     LIMIT $2)",
                &[&keep_secs, &PRUNE_BATCH],
            ))
            .await;
            match n {
                Ok(0) => {
                    // Entries kept aside follow the same retention (there are few).
                    let aside = timed(client.execute(
                        "DELETE FROM calls_rejected
                         WHERE rejected_at < now() - make_interval(secs => $1)",
                        &[&keep_secs],
                    ))
                    .await;
                    break aside.map(|n| deleted + n);
                }
                Ok(n) => deleted += n,
                Err(e) => break Err(e),
            }
        };
        let unlocked = timed(client.execute("SELECT pg_advisory_unlock($1)", &[&PRUNE_LOCK]));
        if unlocked.await.is_err() {
            let _ = deadpool_postgres::Object::take(client);
        }
        result
    }
}

/// An entry that cannot be a row of `calls`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Its stream.
    pub policy_tag: String,
    /// Its id there.
    pub stream_id: String,
    /// Why it is not in `calls`.
    pub problem: String,
    /// What it held.
    pub fields: serde_json::Value,
}

impl Rejected {
    fn of_row(row: &CallRow, problem: String) -> Rejected {
        Rejected {
            policy_tag: row.policy_tag.clone(),
            stream_id: row.stream_id.clone(),
            problem,
            fields: serde_json::to_value(row.to_entry()).unwrap_or_default(),
        }
    }
}

/// What a batch wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// New rows in `calls`.
    pub new: u64,
    /// Entries written to `calls_rejected` (rows PostgreSQL refused or ids taken included).
    pub rejected: u64,
}

/// A refusal of the data itself (a value, a constraint, a size limit such as an index row too
/// large), not of the connection or the server: the rows are then isolated so one bad row does
/// not hold back the others.
fn data_error(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let class = &c.code()[..2];
        matches!(class, "22" | "23" | "54")
    })
}

/// `fields` without NUL characters, which `jsonb` and `text` refuse: written as `\u0000`.
fn without_nul(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let clean = |s: String| s.replace('\0', "\\u0000");
    match v {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nul).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (clean(k), without_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Inserts `rows`; when PostgreSQL refuses the data, halves the batch until each refused row
/// stands alone (a few statements for a bad row among a thousand, not one per row), and rejects
/// those. Returns the (id, stream id) of the new rows.
async fn insert_isolating(
    tx: &mut tokio_postgres::Transaction<'_>,
    rows: &[CallRow],
    rejected: &mut Vec<Rejected>,
    refused: &mut std::collections::HashSet<String>,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let mut inserted = Vec::new();
    let mut todo: Vec<&[CallRow]> = vec![rows];
    while let Some(part) = todo.pop() {
        if part.is_empty() {
            continue;
        }
        let attempt = tx.savepoint("part").await?;
        match insert_rows(&attempt, part).await {
            Ok(mut ids) => {
                attempt.commit().await?;
                inserted.append(&mut ids);
            }
            Err(e) if data_error(&e) => {
                attempt.rollback().await?;
                if let [row] = part {
                    refused.insert(row.stream_id.clone());
                    let why = e
                        .as_db_error()
                        .map_or(e.to_string(), |d| d.message().to_owned());
                    rejected.push(Rejected::of_row(
                        row,
                        format!("PostgreSQL refused it: {why}"),
                    ));
                } else {
                    let (first, second) = part.split_at(part.len() / 2);
                    todo.push(second);
                    todo.push(first);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(inserted)
}

/// Inserts rows; returns the (id, stream id) of those that were new.
async fn insert_rows(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &[CallRow],
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let col = |f: fn(&CallRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let opt = |f: fn(&CallRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let money = |f: fn(&CallRow) -> i64| rows.iter().map(f).collect::<Vec<_>>();
    let at: Vec<jiff::Timestamp> = rows.iter().map(|r| r.at).collect();
    let status: Vec<Option<i32>> = rows.iter().map(|r| r.vendor_status).collect();
    let inserted = tx
        .query(
            "INSERT INTO calls (id, at, namespace, vault_key, key_id, run_label, vendor, method,
                 endpoint, estimate_micros, actual_micros, overshoot_micros, outcome, rule,
                 vendor_status, vendor_request_id, reservation_id, policy_tag, stream_id)
             SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[],
                 $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[],
                 $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::int[], $16::text[],
                 $17::text[], $18::text[], $19::text[])
             ON CONFLICT (id) DO NOTHING
             RETURNING id, stream_id",
            &[
                &col(|r| r.id.clone()),
                &at,
                &col(|r| r.namespace.clone()),
                &col(|r| r.vault_key.clone()),
                &col(|r| r.key_id.clone()),
                &col(|r| r.run_label.clone()),
                &col(|r| r.vendor.clone()),
                &col(|r| r.method.clone()),
                &col(|r| r.endpoint.clone()),
                &money(|r| r.estimate_micros),
                &money(|r| r.actual_micros),
                &money(|r| r.overshoot_micros),
                &col(|r| r.outcome.clone()),
                &opt(|r| r.rule.clone()),
                &status,
                &opt(|r| r.vendor_request_id.clone()),
                &opt(|r| r.reservation_id.clone()),
                &col(|r| r.policy_tag.clone()),
                &col(|r| r.stream_id.clone()),
            ],
        )
        .await?;
    inserted
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// One batch's transaction (see [`Db::write`]).
async fn write_batch(
    client: &mut deadpool_postgres::Object,
    rows: &[CallRow],
    mut rejected: Vec<Rejected>,
) -> Result<Written, DbError> {
    let mut tx = client.transaction().await?;
    let mut refused = std::collections::HashSet::new();
    let inserted = insert_isolating(&mut tx, rows, &mut rejected, &mut refused).await?;
    let new = inserted.len() as u64;
    // A row not inserted is a replay of the same entry, or another entry holding its id (in
    // the table, or earlier in this batch).
    let inserted: std::collections::HashSet<(String, String)> = inserted.into_iter().collect();
    let held: Vec<&CallRow> = rows
        .iter()
        .filter(|r| {
            !inserted.contains(&(r.id.clone(), r.stream_id.clone()))
                && !refused.contains(&r.stream_id)
        })
        .collect();
    if !held.is_empty() {
        let ids: Vec<String> = held.iter().map(|r| r.id.clone()).collect();
        let stored = tx
            .query(
                "SELECT id, policy_tag, stream_id FROM calls WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
        let mut by_id = std::collections::HashMap::new();
        for r in &stored {
            let id: String = r.try_get(0)?;
            by_id.insert(id, (r.try_get::<_, String>(1)?, r.try_get::<_, String>(2)?));
        }
        for row in held {
            match by_id.get(&row.id) {
                Some((tag, stream_id)) if *tag == row.policy_tag && *stream_id == row.stream_id => {
                }
                Some((tag, stream_id)) => rejected.push(Rejected::of_row(
                    row,
                    format!(
                        "its id {} is held by entry {stream_id} of stream {tag}",
                        row.id
                    ),
                )),
                // Deleted by the retention job between the insert and this read: an entry old
                // enough to be past retention, replayed; nothing is kept for it.
                None => {}
            }
        }
    }
    let count = rejected.len() as u64;
    if !rejected.is_empty() {
        let tags: Vec<&str> = rejected.iter().map(|r| r.policy_tag.as_str()).collect();
        let ids: Vec<&str> = rejected.iter().map(|r| r.stream_id.as_str()).collect();
        let problems: Vec<String> = rejected
            .iter()
            .map(|r| r.problem.replace('\0', "\\u0000"))
            .collect();
        let fields: Vec<serde_json::Value> = rejected
            .iter()
            .map(|r| without_nul(r.fields.clone()))
            .collect();
        tx.execute(
            "INSERT INTO calls_rejected (policy_tag, stream_id, problem, fields)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
             ON CONFLICT (policy_tag, stream_id) DO NOTHING",
            &[&tags, &ids, &problems, &fields],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Written {
        new,
        rejected: count,
    })
}

fn read_row(r: &tokio_postgres::Row) -> Result<CallRow, DbError> {
    Ok(CallRow {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        namespace: r.try_get("namespace")?,
        vault_key: r.try_get("vault_key")?,
        key_id: r.try_get("key_id")?,
        run_label: r.try_get("run_label")?,
        vendor: r.try_get("vendor")?,
        method: r.try_get("method")?,
        endpoint: r.try_get("endpoint")?,
        estimate_micros: r.try_get("estimate_micros")?,
        actual_micros: r.try_get("actual_micros")?,
        overshoot_micros: r.try_get("overshoot_micros")?,
        outcome: r.try_get("outcome")?,
        rule: r.try_get("rule")?,
        vendor_status: r.try_get("vendor_status")?,
        vendor_request_id: r.try_get("vendor_request_id")?,
        reservation_id: r.try_get("reservation_id")?,
        policy_tag: r.try_get("policy_tag")?,
        stream_id: r.try_get("stream_id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redacted("postgres://keybrake:s3cret@db:5432/audit"),
            "postgres://keybrake:***@db:5432/audit"
        );
        assert_eq!(redacted("postgres://db/audit"), "postgres://db/audit");
    }

    #[test]
    fn tls_is_required_off_loopback_unless_the_url_says() {
        use tokio_postgres::config::SslMode;
        let mode = |url: &str| pg_config(url).map(|c| c.get_ssl_mode()).ok();
        assert_eq!(
            mode("postgres://u:p@db.example.com/a"),
            Some(SslMode::Require)
        );
        assert_eq!(
            mode("postgres://u:p@127.0.0.1:5432/a"),
            Some(SslMode::Prefer)
        );
        assert_eq!(mode("postgres://u@localhost/a"), Some(SslMode::Prefer));
        assert_eq!(
            mode("postgres://u@db.example.com/a?sslmode=disable"),
            Some(SslMode::Disable)
        );
        let err = pg_config("postgres://u:s3cret@db/a?sslmode=bogus")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let flags = AuditDbFlags {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..AuditDbFlags::at("postgres://db/audit")
        };
        let err = tls(&flags).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
