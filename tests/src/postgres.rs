//! A real PostgreSQL for the audit tests: `keybrake dev`'s own child ([`LocalPostgres`]), in a
//! temporary folder removed afterwards, and a plain client for the tests' own SQL.

use std::os::unix::fs::PermissionsExt;

use anyhow::Result;
use keybrake_cli::postgres::LocalPostgres;

/// A running server and the folder that holds its data (removed on drop, after the server).
pub struct TestPostgres {
    /// The server.
    pub server: LocalPostgres,
    _dir: tempfile::TempDir,
}

impl TestPostgres {
    /// Starts a fresh server.
    pub async fn start() -> Result<TestPostgres> {
        let dir = tempfile::tempdir()?;
        // Run as root, the server runs as `postgres`, which must reach its data folder.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let server = LocalPostgres::start(dir.path()).await?;
        Ok(TestPostgres { server, _dir: dir })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A client for the tests' own queries.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}
