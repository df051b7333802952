//! The official Python and Node SDKs, driven as a workload would drive them, and localstripe.

use std::{collections::BTreeMap, process::Stdio};

use anyhow::{Context, Result, bail};
use tokio::io::AsyncBufReadExt;

use crate::workspace_root;

/// A localstripe server (the real Stripe stand-in), killed on drop.
pub struct LocalStripe {
    child: tokio::process::Child,
    /// Its port.
    pub port: u16,
}

impl LocalStripe {
    /// Starts localstripe on a free loopback port and waits until it listens.
    pub async fn start() -> Result<LocalStripe> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = tokio::process::Command::new("python3")
            .arg(workspace_root().join("tests/sdk/localstripe_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting localstripe (pip install localstripe; scripts/install-deps does)")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("ready") {
                    return anyhow::Ok(());
                }
            }
            bail!("localstripe exited before it was ready")
        })
        .await;
        ready.context("localstripe did not start in 30s")??;
        Ok(LocalStripe { child, port })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs `tests/sdk/node_run.mjs` (the official Node SDKs) with exactly `env` as its environment.
pub async fn run_node(args: &[&str], env: &BTreeMap<String, String>) -> Result<serde_json::Value> {
    run_node_script("node_run.mjs", args, env).await
}

/// Runs `tests/sdk/<script>` with Node and exactly `env`, and parses its JSON output.
pub async fn run_node_script(
    script: &str,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    let out = tokio::process::Command::new("node")
        .arg(workspace_root().join("tests/sdk").join(script))
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(workspace_root().join("tests/sdk"))
        .output()
        .await
        .context("running node")?;
    if !out.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("{script} printed {text}"))
}

/// Runs `tests/sdk/<script>` with exactly `env` as its environment (as a pod started with only
/// the Secret's keys would be) and parses its JSON output.
pub async fn run(
    script: &str,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    run_python(&workspace_root().join("tests/sdk").join(script), args, env).await
}

/// Runs a Python program from the repository (`examples/...`) like [`run`].
pub async fn run_python(
    path: &std::path::Path,
    args: &[&str],
    env: &BTreeMap<String, String>,
) -> Result<serde_json::Value> {
    let script = path.display().to_string();
    let out = tokio::process::Command::new("python3")
        .arg(path)
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .output()
        .await
        .context("running python3")?;
    if !out.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("{script} printed {text}"))
}
