//! `kube-lite`: runs the in-memory API server in the foreground.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;

/// An in-memory Kubernetes API server for local stacks and tests.
#[derive(Parser)]
#[command(name = "kube-lite", version)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "KUBE_LITE_BIND", default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Write a kubeconfig pointing at the server here.
    #[arg(long, env = "KUBE_LITE_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Keep objects in this file across restarts.
    #[arg(long, env = "KUBE_LITE_STATE")]
    state_file: Option<PathBuf>,
    /// Bearer tokens for TokenReview, in kube-apiserver's `--token-auth-file` format.
    #[arg(long, env = "KUBE_LITE_TOKEN_AUTH_FILE")]
    token_auth_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let tokens = match args
        .token_auth_file
        .as_deref()
        .map(kube_lite::review::load_token_file)
    {
        None => Vec::new(),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("kube-lite: {e}");
            return ExitCode::from(64);
        }
    };
    let opts = kube_lite::Options {
        bind: Some(args.bind),
        state_file: args.state_file,
        tokens,
        ..Default::default()
    };
    let server = match kube_lite::KubeLite::start(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kube-lite: {e}");
            return ExitCode::from(64);
        }
    };
    if let Some(path) = &args.kubeconfig
        && let Err(e) = std::fs::write(path, server.kubeconfig())
    {
        eprintln!("kube-lite: cannot write kubeconfig {}: {e}", path.display());
        return ExitCode::from(64);
    }
    println!("kube-lite: listening on {}", server.url());
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}
