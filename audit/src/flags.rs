//! The audit database flags, declared once for the proxy (which runs the sink and serves the
//! audit API) and `keybrake dev`.

use std::{path::PathBuf, time::Duration};

/// Where the audit trail is kept beyond Redis.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct AuditDbFlags {
    /// PostgreSQL URL (`postgres://user:pass@host/db?sslmode=require`). When set, every audit
    /// entry is exported to its `calls` table, the audit API reads from it, and the Redis
    /// streams are trimmed only below what it holds. From a Secret, as it carries a password.
    #[arg(
        id = "audit_db_url",
        long = "audit-db-url",
        env = "KEYBRAKE_AUDIT_DB_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// PEM certificates of the CA that signs the database's certificate, trusted instead of
    /// the webpki roots.
    #[arg(
        id = "audit_db_ca_file",
        long = "audit-db-ca-file",
        env = "KEYBRAKE_AUDIT_DB_CA_FILE"
    )]
    pub ca_file: Option<PathBuf>,
    /// How long rows are kept, in days; older ones are deleted by an hourly job.
    #[arg(
        id = "audit_retention_days",
        long = "audit-retention-days",
        env = "KEYBRAKE_AUDIT_RETENTION_DAYS",
        default_value_t = 365,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub retention_days: u32,
    /// Entries exported per batch (one transaction).
    #[arg(
        id = "audit_export_batch",
        long = "audit-export-batch",
        env = "KEYBRAKE_AUDIT_EXPORT_BATCH",
        default_value_t = 1000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000)
    )]
    pub batch: usize,
    /// How long another consumer's unacknowledged entries wait before this one claims them
    /// (their sink died mid-batch), in seconds.
    /// At least 1: with 0, live consumers would take each other's entries mid-batch.
    #[arg(
        id = "audit_claim_idle_secs",
        long = "audit-claim-idle-secs",
        env = "KEYBRAKE_AUDIT_CLAIM_IDLE_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub claim_idle_secs: u64,
}

impl Default for AuditDbFlags {
    /// No database; the other settings as the flags default them.
    fn default() -> AuditDbFlags {
        AuditDbFlags {
            url: None,
            ca_file: None,
            retention_days: 365,
            batch: 1000,
            claim_idle_secs: 60,
        }
    }
}

impl AuditDbFlags {
    /// The flags for a database at `url`, otherwise the defaults.
    pub fn at(url: &str) -> AuditDbFlags {
        AuditDbFlags {
            url: Some(url.to_owned()),
            ..AuditDbFlags::default()
        }
    }

    /// How long rows are kept.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.retention_days) * 86_400)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        audit: AuditDbFlags,
    }

    #[test]
    fn the_defaults_are_the_flags_defaults() {
        let parsed = Cli::try_parse_from(["x"]).unwrap().audit;
        assert_eq!(parsed, AuditDbFlags::default());
        assert_eq!(parsed.retention(), Duration::from_secs(365 * 86_400));
        for bad in [
            "--audit-retention-days=0",
            "--audit-claim-idle-secs=0",
            "--audit-export-batch=0",
        ] {
            let err = Cli::try_parse_from(["x", bad]).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("audit")), "{bad}");
        }
    }
}
