//! `keybrake-operator`: parses flags and runs the controllers until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use keybrake_operator::Config;

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
    let config = Config::parse();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keybrake-operator: no Kubernetes configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    match keybrake_operator::run(client, config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybrake-operator: {e}");
            ExitCode::from(64)
        }
    }
}
