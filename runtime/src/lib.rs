//! What every Keybrake binary does at start and stop, written once: logs filtered by
//! `RUST_LOG`, the process-wide rustls provider, and the signal that stops it.

#![forbid(unsafe_code)]

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// Standard output (the deployables: the container's log).
    Stdout,
    /// Standard error (the CLI, whose standard output is its answer).
    Stderr,
}

/// Sets up logging (`RUST_LOG`, else `default_filter`) and the rustls provider. Call first in
/// `main`, before anything connects.
pub fn init(default_filter: &str, logs: Logs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    // Err only when a subscriber is already set (a test harness's): keep that one.
    let _ = match logs {
        Logs::Stdout => fmt.try_init(),
        Logs::Stderr => fmt.with_writer(std::io::stderr).try_init(),
    };
    // redis-rs builds its TLS configs on the process-wide rustls provider: make it ring, the
    // one the rest of the binaries use, before anything connects. Err only if one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The tokio runtime of a deployable. With one worker thread (`TOKIO_WORKER_THREADS=1`, or one
/// CPU) a current-thread runtime, as linkerd2-proxy runs on one core: no work-stealing, and a
/// task woken by a burst of requests runs after them, so the Redis connection writes the burst's
/// commands in one `writev` instead of one each (measured: 4 writes per proxied call became
/// fewer; bench/results/README.md). Otherwise the multi-thread runtime, sized by tokio itself.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C. Where SIGTERM cannot be
/// watched, Ctrl-C alone.
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
