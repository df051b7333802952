//! The issuance API's answer other than success, [`ApiError`]: what each of its modules returns.

use hyper::StatusCode;
use serde_json::{Value, json};

/// An answer other than success: a status and a message that names the problem (and the
/// request field, when one is at fault). The admin API's error shape: `{"error": ..., "field": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, in the API's own names.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// A 422 naming a field.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_owned()),
        }
    }

    /// A 503 for a dependency (API server, Redis) that failed.
    pub fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{what}: {e}"))
    }

    /// The body of its response.
    pub(super) fn body(&self) -> Value {
        let mut v = json!({"error": self.message});
        if let Some(f) = &self.field {
            v["field"] = json!(f);
        }
        v
    }
}
