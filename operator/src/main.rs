//! `keybrake-operator`: parses flags and runs the controllers until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use clap::Parser;
use keybrake_operator::Config;

#[tokio::main]
async fn main() -> ExitCode {
    keybrake_runtime::init("info", keybrake_runtime::Logs::Stdout);
    let config = Config::parse();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keybrake-operator: no Kubernetes configuration: {e}");
            return ExitCode::from(64);
        }
    };
    let shutdown = keybrake_runtime::stop_signal();
    match keybrake_operator::run(client, config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybrake-operator: {e}");
            ExitCode::from(64)
        }
    }
}
