//! `keybrake`: the local stack, CRD generation, and spend and audit views.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// Scoped, spend-capped vendor credentials for Kubernetes workloads.
#[derive(Parser)]
#[command(name = "keybrake", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the VaultKey and SpendPolicy CRDs, or write them into a folder.
    Crds {
        /// Write one file per CRD into this folder instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { out } => crds(out),
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
