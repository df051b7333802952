//! A local PostgreSQL child for `keybrake dev` and the tests: Debian's server binaries, a
//! cluster made with `initdb` on first use, listening on loopback TCP only, its superuser
//! `keybrake` with a random password (SCRAM; kept beside the data, mode 0600), so no other local
//! user can connect. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user
//! the Debian package creates, in a folder that user can reach.

use std::{
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// A running `postgres`, killed when dropped ([`LocalPostgres::stop`] shuts it down cleanly).
pub struct LocalPostgres {
    child: Option<tokio::process::Child>,
    data: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    bin: PathBuf,
    password: String,
    // A private folder made for this run when the state folder is out of the `postgres` user's
    // reach: removed with the server.
    _scratch: Option<tempfile::TempDir>,
}

/// The folder holding `initdb` and `postgres`: on the PATH, else Debian's newest
/// `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
    }) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "PostgreSQL not found: install it (`apt-get install postgresql`, or `bash scripts/install-deps`) or pass --audit-db-url",
    )
}

/// The uid and gid of the `postgres` user, when this process runs as root.
fn run_as() -> Result<Option<(u32, u32)>> {
    if std::fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let ids = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .context("running as root, and PostgreSQL refuses root: no `postgres` user to run it as (the Debian package creates one)")?;
    Ok(Some(ids))
}

/// Whether every folder above `path` lets other users through (PostgreSQL, run as `postgres`,
/// must reach its data folder).
fn reachable(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 != 0))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The superuser's password for the cluster in `data`: read from `data.password` when the
/// cluster exists, else made (random) and written there, readable by this user only.
fn password(data: &Path) -> Result<String> {
    let file = data.with_extension("password");
    if data.join("PG_VERSION").is_file() {
        return std::fs::read_to_string(&file)
            .map(|p| p.trim().to_owned())
            .with_context(|| {
                format!(
                    "the cluster in {} has no password file {}",
                    data.display(),
                    file.display()
                )
            });
    }
    let password = format!("{:032x}", rand::random::<u128>());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)?;
    std::io::Write::write_all(&mut f, password.as_bytes())?;
    Ok(password)
}

impl LocalPostgres {
    /// Starts a server whose data lives in `dir/postgres` (made with `initdb` the first time), or,
    /// as root when the `postgres` user cannot reach that folder, in a private temporary folder
    /// for this run. Returns once it accepts connections.
    pub async fn start(dir: &Path) -> Result<LocalPostgres> {
        let bin = bin_dir()?;
        let user = run_as()?;
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let mut data = dir.join("postgres");
        let mut scratch = None;
        if let Some((uid, gid)) = user
            && !reachable(&data)
        {
            // A fresh folder of our own (mkdtemp), never a path someone could have prepared.
            let made = tempfile::Builder::new()
                .prefix("keybrake-postgres-")
                .tempdir()?;
            std::os::unix::fs::lchown(made.path(), Some(uid), Some(gid))?;
            data = made.path().join("data");
            scratch = Some(made);
        }
        let password = password(&data)?;
        let mut pg = LocalPostgres {
            child: None,
            data,
            port: free_port()?,
            user,
            bin,
            password,
            _scratch: scratch,
        };
        pg.init().await?;
        pg.run().await?;
        Ok(pg)
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.stdin(Stdio::null()).current_dir("/");
        cmd
    }

    async fn init(&self) -> Result<()> {
        if self.data.join("PG_VERSION").is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.data)?;
        // initdb reads the password from a file the server's user can read, removed after.
        let pwfile = tempfile::NamedTempFile::new()?;
        std::fs::write(pwfile.path(), &self.password)?;
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::lchown(&self.data, Some(uid), Some(gid))?;
            std::os::unix::fs::lchown(pwfile.path(), Some(uid), Some(gid))?;
        }
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "keybrake", "--auth=scram-sha-256"])
            .args(["--encoding=UTF8", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.path().display()))
            .output()
            .await
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<()> {
        // Its log beside the data, for when it does not start.
        let log = std::fs::File::create(self.log())?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            // TCP only: no socket file to place somewhere the user may write.
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=on", "-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        for _ in 0..400 {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await
            {
                let task = tokio::spawn(conn);
                let ready = client.simple_query("SELECT 1").await.is_ok();
                drop(client);
                task.abort();
                if ready {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "postgres exited at start ({status}); see {}",
                    self.log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "postgres did not accept connections on port {}; see {}",
            self.port,
            self.log().display()
        )
    }

    /// The URL to reach it, with its password.
    pub fn url(&self) -> String {
        format!(
            "postgres://keybrake:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    fn log(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    /// Stops it (fast shutdown: clients are disconnected, the data stays).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.run().await
    }
}
