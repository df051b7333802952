//! Operator errors, labelled for the failure metric.

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or could not be reached.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Redis refused, timed out or answered oddly.
    #[error("redis: {0}")]
    Ledger(#[from] keybrake_ledger::LedgerError),
    /// The finalizer helper failed around our apply or cleanup.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object without a field the API server always sets.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// A Secret written by us that no longer holds a usable token.
    #[error("secret {0} holds no usable token")]
    BadSecret(String),
    /// A call that took too long.
    #[error("timed out after {0:?}: {1}")]
    Timeout(std::time::Duration, &'static str),
}

impl Error {
    /// The Redis failure behind this error, if that is what it is (also inside the finalizer's
    /// wrapping), for the object's status.
    pub fn redis_cause(&self) -> Option<&keybrake_ledger::LedgerError> {
        use kube::runtime::finalizer::Error as F;
        match self {
            Error::Ledger(e) => Some(e),
            Error::Finalizer(f) => match f.as_ref() {
                F::ApplyFailed(inner) | F::CleanupFailed(inner) => inner.redis_cause(),
                _ => None,
            },
            _ => None,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Ledger(_) => "redis",
            Error::Finalizer(_) => "finalizer",
            Error::MissingField(_) => "missing_field",
            Error::BadSecret(_) => "bad_secret",
            Error::Timeout(..) => "timeout",
        }
    }
}

/// Results of operator steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
