//! `keybrake spend` and `keybrake audit`: the views people would otherwise assemble by hand
//! from `kubectl get vk -o json` and the proxy's audit API.

use anyhow::{Context, Result, bail};
use keybrake_crds::{Listed, VaultKey};
use kube::{Api, Client, ResourceExt, api::ListParams};
use serde_json::Value;

/// Prints a table of keys, caps, spend and expiry.
pub async fn spend(namespace: Option<String>) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (set KUBECONFIG, e.g. from .keybrake/env)")?;
    // Listed as stored and parsed per row: a key our types cannot read is shown as such and
    // never hides the others.
    let api: Api<Listed<VaultKey>> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let keys = api.list(&ListParams::default()).await?;
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "VENDOR",
            "CAP",
            "TODAY",
            "SPENT",
            "CALLS",
            "REFUSED",
            "EXPIRES",
            "PHASE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for listed in keys.items {
        let k = match listed.parse() {
            Ok(k) => k,
            Err(why) => {
                let mut row = vec![listed.namespace().unwrap_or_default(), listed.name_any()];
                row.extend(std::iter::repeat_n(String::new(), 7));
                row.push(format!("Invalid (cannot be read: {why})"));
                rows.push(row);
                continue;
            }
        };
        let st = k.status.clone().unwrap_or_default();
        let spend = st.spend.clone().unwrap_or_default();
        rows.push(vec![
            k.namespace().unwrap_or_default(),
            k.name_any(),
            st.vendor.map(|v| v.to_string()).unwrap_or_default(),
            st.cap.unwrap_or_default(),
            spend.today_usd.to_string(),
            spend.total_usd.to_string(),
            spend.calls.to_string(),
            spend.refused.to_string(),
            st.expires_at.map(|t| t.0.to_string()).unwrap_or_default(),
            st.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
        ]);
    }
    print_rows(&rows);
    Ok(())
}

fn print_rows(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// A GET on a plain-HTTP URL, returning status and body.
pub(crate) async fn get(url: &str, token: Option<&str>) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .context("the admin URL must be http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// How `keybrake audit` prints the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table and the runs' totals.
    Table,
    /// The audit API's answer: `entries` and `totals`.
    Json,
    /// One row per call with a header row, for a spreadsheet or a finance import.
    Csv,
}

/// The CSV columns, in order: the audit API's entry fields.
pub const CSV_COLUMNS: [&str; 15] = [
    "time",
    "vault_key",
    "key",
    "run_label",
    "vendor",
    "method",
    "path",
    "estimate_usd",
    "actual_usd",
    "outcome",
    "rule",
    "status",
    "request_id",
    "call_id",
    "namespace",
];

/// The calls as CSV.
pub fn csv(v: &Value) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS)?;
    for e in v["entries"].as_array().into_iter().flatten() {
        let field = |k: &str| match k {
            "namespace" => e["vault_key"]
                .as_str()
                .and_then(|vk| vk.split_once('/'))
                .map(|(ns, _)| ns.to_owned())
                .unwrap_or_default(),
            k => e[k].as_str().unwrap_or("").to_owned(),
        };
        w.write_record(CSV_COLUMNS.map(field))?;
    }
    Ok(String::from_utf8(
        w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?,
    )?)
}

/// Prints the calls of a run (or a key) with their costs and vendor request ids, and the runs'
/// totals, from the proxy's audit API.
pub async fn audit(
    admin_url: &str,
    token: Option<&str>,
    namespace: Option<String>,
    run_label: Option<String>,
    key: Option<String>,
    output: Output,
) -> Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(ns) = &namespace {
        query.append_pair("namespace", ns);
    }
    if let Some(r) = &run_label {
        query.append_pair("run_label", r);
    }
    if let Some(k) = &key {
        query.append_pair("key", k);
    }
    let (status, body) = get(
        &format!(
            "{}/audit?{}",
            admin_url.trim_end_matches('/'),
            query.finish()
        ),
        token,
    )
    .await?;
    let v: Value = serde_json::from_str(&body)
        .with_context(|| format!("the proxy answered {status}: {body}"))?;
    if status != 200 {
        bail!("the proxy answered {status}: {}", v["error"]);
    }
    match output {
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        Output::Csv => {
            print!("{}", csv(&v)?);
            return Ok(());
        }
        Output::Table => {}
    }
    let mut rows = vec![
        [
            "TIME",
            "VAULTKEY",
            "CALL",
            "ESTIMATE",
            "ACTUAL",
            "OUTCOME",
            "REQUEST ID",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for e in v["entries"].as_array().into_iter().flatten() {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
        let outcome = if s("rule").is_empty() {
            s("outcome")
        } else {
            format!("refused: {}", s("rule"))
        };
        rows.push(vec![
            s("time"),
            s("vault_key"),
            format!("{} {}", s("method"), s("path")),
            s("estimate_usd"),
            s("actual_usd"),
            outcome,
            s("request_id"),
        ]);
    }
    print_rows(&rows);
    for (run, t) in v["totals"].as_object().into_iter().flatten() {
        println!(
            "\nrun {run}: {} calls, {} refused, {} spent",
            t["calls"],
            t["refused"],
            t["actual_usd"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
