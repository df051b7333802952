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
        long = "audit-db-url",
        env = "KEYBRAKE_AUDIT_DB_URL",
        hide_env_values = true
    )]
    pub url: Option<String>,
    /// PEM certificates of the CA that signs the database's certificate, trusted instead of
    /// the webpki roots.
    #[arg(long = "audit-db-ca-file", env = "KEYBRAKE_AUDIT_DB_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// How long rows are kept, in days; older ones are deleted by an hourly job.
    #[arg(
        long = "audit-retention-days",
        env = "KEYBRAKE_AUDIT_RETENTION_DAYS",
        default_value_t = 365
    )]
    pub retention_days: u32,
    /// Entries exported per batch (one transaction).
    #[arg(
        long = "audit-export-batch",
        env = "KEYBRAKE_AUDIT_EXPORT_BATCH",
        default_value_t = 1000
    )]
    pub batch: usize,
    /// How long another consumer's unacknowledged entries wait before this one claims them
    /// (their sink died mid-batch), in seconds.
    #[arg(
        long = "audit-claim-idle-secs",
        env = "KEYBRAKE_AUDIT_CLAIM_IDLE_SECS",
        default_value_t = 60
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
    }
}
