//! What can go wrong starting or using the control plane.

use std::path::PathBuf;

/// What can go wrong starting or using the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary is not where the build puts it.
    #[error("{0} not found: run scripts/control-plane/build (or scripts/install-deps)")]
    MissingBinary(PathBuf),
    /// A file of the control plane could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificates could not be made.
    #[error("making the control plane's certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// A process exited or did not become ready in time.
    #[error("{what} did not become ready: {detail}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        /// The process.
        what: &'static str,
        /// Why (timed out, exited with a status).
        detail: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// The Kubernetes client could not be configured or a call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The cause.
        source: kube::Error,
    },
    /// The kubeconfig could not be read back.
    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(String),
}

/// An I/O failure, saying what was being done.
pub(crate) fn io(what: String, source: std::io::Error) -> Error {
    Error::Io { what, source }
}
