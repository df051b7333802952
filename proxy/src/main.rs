//! `keybrake-proxy`: parses flags and serves until SIGTERM or Ctrl-C.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use keybrake_proxy::Config;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "KEYBRAKE_ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    admin_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // redis-rs builds its TLS configs on the process-wide rustls provider: make it ring, the
    // one the rest of the binary uses, before anything connects. Err only if one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keybrake-proxy: no Kubernetes configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let running = match keybrake_proxy::start(client, args.config, args.admin_listen).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keybrake-proxy: {e}");
            return ExitCode::from(64);
        }
    };
    println!(
        "keybrake-proxy: listening on {} (admin {})",
        running.addr, running.admin_addr
    );
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("keybrake-proxy: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    running.shutdown().await;
    ExitCode::SUCCESS
}
