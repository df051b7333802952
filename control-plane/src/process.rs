//! The control plane's processes: started with their output in a log file, stopped on drop,
//! and waited for by a readiness check (never a sleep).

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Error, io};

/// A child process, killed on drop.
pub struct Child {
    child: std::process::Child,
    log: PathBuf,
}

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
        let child = std::process::Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
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

    /// Kills the process and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
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
/// bootstrap roles among them).
pub async fn apiserver_ready(addr: SocketAddr, ca_pem: &str, token: &str) -> bool {
    let attempt = async {
        let yaml = crate::kubeconfig_yaml(&format!("https://{addr}"), ca_pem, token);
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).ok()?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .ok()?;
        let client = kube::Client::try_from(config).ok()?;
        let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
        client
            .request_text(req)
            .await
            .ok()
            .map(|t| t.trim() == "ok")
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
