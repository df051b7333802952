//! The control plane's processes: started with their output in a log file, stopped on drop,
//! and waited for by a readiness check (never a sleep).
//!
//! Each runs under a small `sh` watchdog that reads our end of a pipe: when this process exits
//! in any way (a test binary killed by a timeout included), the pipe closes and the watchdog
//! stops the server, so no kube-apiserver outlives the tests that started it.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, io};

/// A child process (its watchdog), stopped on drop.
pub struct Child {
    child: std::process::Child,
    log: PathBuf,
}

/// Starts "$0" with the other arguments, waits for stdin to close, then stops it: TERM, and
/// KILL if it is still there two seconds later.
const WATCHDOG: &str = r#""$0" "$@" <&- & pid=$!
read -r _ || true
kill -TERM "$pid" 2>/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  kill -0 "$pid" 2>/dev/null || exit 0
  sleep 0.1
done
kill -KILL "$pid" 2>/dev/null
wait "$pid""#;

impl Child {
    /// Starts `bin` with `args`, its stdout and stderr appended to `dir/<name>.log`.
    pub fn spawn(bin: &Path, args: &[String], dir: &Path, name: &str) -> Result<Child, Error> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| io(format!("opening {}", log.display()), e))?;
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io(format!("starting {}", bin.display()), e))?;
        Ok(Child { child, log })
    }

    /// Polls `check` every 50 ms until it answers true, for at most `limit`; fails early when
    /// the process exits.
    pub async fn ready<F, Fut>(
        &mut self,
        what: &'static str,
        limit: Duration,
        check: F,
    ) -> Result<(), Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.not_ready(what, format!("it exited ({status})")));
            }
            if check().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(self.not_ready(what, format!("no answer in {limit:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn not_ready(&self, what: &'static str, detail: String) -> Error {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        Error::NotReady {
            what,
            detail,
            log: self.log.display().to_string(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        }
    }

    /// Stops the process and waits for it: closing the watchdog's stdin makes it stop the
    /// server and exit.
    pub fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> Result<u16, Error> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| io("finding a free port".into(), e))
}

/// Whether a plain-HTTP GET of `path` answers 200 (etcd's `/health`).
pub async fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf.starts_with(b"HTTP/1.1 200") && String::from_utf8_lossy(&buf).contains("true"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Whether kube-apiserver answers `/readyz` with 200 (every post-start hook done, the RBAC
/// bootstrap roles among them). A bare TLS request, not a kube-rs client: the client logs each
/// refused attempt as an error, and a server that is starting refuses many.
pub async fn apiserver_ready(addr: SocketAddr, ca_pem: &str, token: &str) -> bool {
    use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
    let attempt = async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.ok()?).ok()?;
        }
        let config = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .ok()?;
        let req = format!(
            "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        // The server may close without a TLS close_notify; what was read is enough.
        let _ = tls.read_to_end(&mut buf).await;
        Some(buf.starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
