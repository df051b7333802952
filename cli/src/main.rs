//! `keybrake`: the local stack, CRD generation, and spend and audit views. Also usable as a
//! kubectl plugin: link it as `kubectl-keybrake` on the PATH and run `kubectl keybrake spend`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use keybrake_cli::{dev, views};

/// Scoped, spend-capped vendor credentials for Kubernetes workloads.
#[derive(Parser)]
#[command(name = "keybrake", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack locally (API server, Redis, operator, proxy, vendor sandboxes).
    Dev(dev::DevArgs),
    /// Print the VaultKey and SpendPolicy CRDs, or write them into a folder.
    Crds {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A table of keys, caps, spend and expiry.
    Spend {
        /// Only this namespace (default: all).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// The calls of a run (or a key) with their costs, vendor request ids and the run's total.
    Audit {
        /// The run label (`spec.runLabel`).
        #[arg(long)]
        run_label: Option<String>,
        /// A key id (`KEYBRAKE_KEY_ID`).
        #[arg(long)]
        key: Option<String>,
        /// The proxy's admin URL.
        #[arg(
            long,
            env = "KEYBRAKE_ADMIN_URL",
            default_value = "http://127.0.0.1:8081"
        )]
        admin_url: String,
        /// A Kubernetes bearer token allowed to list vaultkeys (`keybrake dev` writes one to
        /// `.keybrake/env`).
        #[arg(long, env = "KEYBRAKE_API_KEY", hide_env_values = true)]
        token: Option<String>,
        /// Only this namespace's keys (otherwise the token needs `list` in all namespaces).
        #[arg(short, long)]
        namespace: Option<String>,
        /// `table`, `json` (the audit API's answer) or `csv` (one row per call, for finance).
        #[arg(short, long, value_enum, default_value = "table")]
        output: views::Output,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    keybrake_runtime::init("warn", keybrake_runtime::Logs::Stderr);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Crds { out } => crds(out),
        Command::Spend { namespace } => views::spend(namespace).await,
        Command::Audit {
            run_label,
            key,
            admin_url,
            token,
            namespace,
            output,
        } => {
            views::audit(
                &admin_url,
                token.as_deref(),
                namespace,
                run_label,
                key,
                output,
            )
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybrake: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn crds(out: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context;
    let files = keybrake_crds::manifests::crd_files()?;
    match out {
        None => {
            let docs: Vec<&str> = files.iter().map(|(_, y)| y.as_str()).collect();
            print!("{}", docs.join("---\n"));
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in files {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}
