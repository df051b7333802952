//! `keybrake-proxy`: parses flags and serves until SIGTERM or Ctrl-C.

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use keybrake_proxy::Config;
use mimalloc::MiMalloc;

#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "KEYBRAKE_ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    admin_listen: SocketAddr,
}

fn main() -> ExitCode {
    keybrake_runtime::init("info", keybrake_runtime::Logs::Stdout);
    match keybrake_runtime::runtime() {
        Ok(rt) => rt.block_on(serve()),
        Err(e) => {
            eprintln!("keybrake-proxy: cannot start the runtime: {e}");
            ExitCode::from(70)
        }
    }
}

async fn serve() -> ExitCode {
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
    keybrake_runtime::stop_signal().await;
    running.shutdown().await;
    ExitCode::SUCCESS
}
