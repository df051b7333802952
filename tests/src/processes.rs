//! The real `keybrake-proxy` and `keybrake-operator` binaries as processes on a stack's API
//! server and Redis (any mode), configured only by their environment as in a Deployment.

use std::{net::SocketAddr, path::PathBuf, process::Stdio};

use anyhow::{Context, Result};

use crate::{
    http,
    stack::{SENTINEL_MASTER, Stack, eventually},
};

/// A child process, killed on drop.
pub struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A workspace binary beside the test binary (`scripts/test` builds them first).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("no target folder")?;
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} not built: run `cargo build --workspace --bins`",
        bin.display()
    );
    Ok(bin)
}

use crate::redis_server::free_port;

/// The environment of a deployable: its ServiceAccount's credentials, Redis, and quiet logs.
fn deployable_env(stack: &Stack, token: &str, cmd: &mut std::process::Command) -> Result<()> {
    cmd.env("KUBECONFIG", stack.cluster.kubeconfig_as(token)?)
        .env("REDIS_URL", stack.redis_url())
        .env("KEYBRAKE_REDIS_MODE", stack.redis_mode().to_string())
        .env("KEYBRAKE_REDIS_SENTINEL_MASTER", SENTINEL_MASTER)
        .env("KEYBRAKE_REDIS_PREFIX", &stack.prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let tls = &stack.redis_tls;
    for (var, file) in [
        ("KEYBRAKE_REDIS_CA_FILE", &tls.ca_file),
        ("KEYBRAKE_REDIS_CLIENT_CERT_FILE", &tls.client_cert_file),
        ("KEYBRAKE_REDIS_CLIENT_KEY_FILE", &tls.client_key_file),
    ] {
        if let Some(path) = file {
            cmd.env(var, path);
        }
    }
    Ok(())
}

/// Starts a `keybrake-proxy` process and waits until it is ready; returns it and its data address.
pub async fn proxy(stack: &Stack) -> Result<(Process, SocketAddr)> {
    let (port, admin) = (free_port()?, free_port()?);
    let mut cmd = std::process::Command::new(binary("keybrake-proxy")?);
    deployable_env(stack, &stack.cluster.tokens().await?.proxy, &mut cmd)?;
    // Loopback only: plain HTTP, asked for by name (tests/tests/e2e/proxy_tls.rs covers TLS).
    cmd.env("KEYBRAKE_PLAINTEXT", "true")
        .env("KEYBRAKE_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEYBRAKE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"));
    let process = Process(cmd.spawn()?);
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
    eventually("the proxy process to be ready", 20, || async {
        let r = http(admin, "GET", "/readyz", &[], b"").await.ok()?;
        (r.status == 200).then_some(())
    })
    .await?;
    Ok((process, format!("127.0.0.1:{port}").parse()?))
}

/// Starts a `keybrake-operator` process (stop the stack's in-process operator first).
pub async fn operator(stack: &Stack) -> Result<Process> {
    let mut cmd = std::process::Command::new(binary("keybrake-operator")?);
    deployable_env(stack, &stack.cluster.tokens().await?.operator, &mut cmd)?;
    cmd.env("KEYBRAKE_LEASE_NAMESPACE", crate::stack::LEASE_NAMESPACE)
        .env("KEYBRAKE_PROXY_URL", &stack.proxy_url)
        .env(
            "KEYBRAKE_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()?),
        );
    Ok(Process(cmd.spawn()?))
}
