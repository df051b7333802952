//! API errors, answered as `Status` objects the way the real API server words them.

use serde_json::{Value, json};

/// An error answered to the client as a `Status` with the HTTP code in `code`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code, also `Status.code`.
    pub code: u16,
    /// `Status.reason` (`NotFound`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, when the reason has them.
    pub details: Option<Value>,
}

/// Results of API operations.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// 400: a request that cannot be understood.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 404 for an object: `widgets.example.com "foo" not found`.
    pub fn not_found(resource: &str, name: &str) -> ApiError {
        let mut e = ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }

    /// 404 for a path the server does not serve.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 405.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// 409 `AlreadyExists`.
    pub fn already_exists(resource: &str, name: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        );
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }

    /// 409 `Conflict` for a stale resourceVersion or a failed precondition.
    pub fn conflict(resource: &str, name: &str, why: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        );
        e.details = Some(json!({"name": name, "kind": resource}));
        e
    }

    /// 409 for a stale resourceVersion, worded as the real server does.
    pub fn stale(resource: &str, name: &str) -> ApiError {
        ApiError::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 410 `Expired` for a resourceVersion older than the retained history.
    pub fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 415 for a body type the server does not decode.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", message)
    }

    /// 422 `Invalid` with one cause per field, worded like the real server:
    /// `VaultKey.keybrake.com "k" is invalid: spec.ttl: Invalid value: ...`.
    pub fn invalid(kind_group: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let joined = causes.iter().map(Cause::to_string).collect::<Vec<_>>();
        let message = match joined.len() {
            1 => format!("{kind_group} \"{name}\" is invalid: {}", joined[0]),
            _ => format!(
                "{kind_group} \"{name}\" is invalid: [{}]",
                joined.join(", ")
            ),
        };
        let (kind, group) = kind_group.split_once('.').unwrap_or((kind_group, ""));
        let mut e = ApiError::new(422, "Invalid", message);
        e.details = Some(json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({
                "reason": c.reason,
                "message": c.detail(),
                "field": c.field,
            })).collect::<Vec<_>>(),
        }));
        e
    }

    /// 500, for a store that cannot be written.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// The `Status` object sent to the client.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

/// One field-level cause of a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueForbidden`.
    pub reason: &'static str,
    /// The field path, like `spec.dailyUsdCap`.
    pub field: String,
    /// The value as the server quotes it (`"abc"`, `"number"`), for `Invalid value:` causes.
    pub value: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Cause {
    /// A `FieldValueInvalid` cause.
    pub fn invalid(field: &str, value: impl Into<String>, message: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.to_owned(),
            value: Some(value.into()),
            message: message.into(),
        }
    }

    /// A `FieldValueRequired` cause.
    pub fn required(field: &str) -> Cause {
        Cause {
            reason: "FieldValueRequired",
            field: field.to_owned(),
            value: None,
            message: String::new(),
        }
    }

    /// A `FieldValueForbidden` cause.
    pub fn forbidden(field: &str, message: impl Into<String>) -> Cause {
        Cause {
            reason: "FieldValueForbidden",
            field: field.to_owned(),
            value: None,
            message: message.into(),
        }
    }

    /// A `FieldValueTooLong` cause: `Too long: must have at most N bytes`.
    pub fn too_long(field: &str, max: usize) -> Cause {
        Cause {
            reason: "FieldValueTooLong",
            field: field.to_owned(),
            value: None,
            message: format!("must have at most {max} bytes"),
        }
    }

    /// A `FieldValueNotSupported` cause for an enum.
    pub fn not_supported(field: &str, value: impl Into<String>, supported: &[String]) -> Cause {
        Cause {
            reason: "FieldValueNotSupported",
            field: field.to_owned(),
            value: Some(value.into()),
            message: format!("supported values: {}", supported.join(", ")),
        }
    }

    /// The message without the field, as in `details.causes[].message`.
    fn detail(&self) -> String {
        let head = match self.reason {
            "FieldValueRequired" => "Required value".to_owned(),
            "FieldValueForbidden" => "Forbidden".to_owned(),
            "FieldValueTooLong" => "Too long".to_owned(),
            "FieldValueDuplicate" => format!(
                "Duplicate value: {}",
                self.value.clone().unwrap_or_default()
            ),
            "FieldValueNotSupported" => format!(
                "Unsupported value: {}",
                self.value.clone().unwrap_or_default()
            ),
            _ => format!("Invalid value: {}", self.value.clone().unwrap_or_default()),
        };
        if self.message.is_empty() {
            head
        } else {
            format!("{head}: {}", self.message)
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_code_reason_and_message() {
        let s = ApiError::not_found("vaultkeys.keybrake.com", "k").to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["message"], "vaultkeys.keybrake.com \"k\" not found");
        assert_eq!(s["status"], "Failure");
        let stale = ApiError::stale("vaultkeys.keybrake.com", "k");
        assert!(
            stale
                .message
                .contains("the object has been modified; please apply your changes")
        );
    }

    #[test]
    fn invalid_names_every_field() {
        let e = ApiError::invalid(
            "VaultKey.keybrake.com",
            "k",
            vec![
                Cause::required("spec.policyRef"),
                Cause::invalid("spec.ttl", "\"2d\"", "bad"),
            ],
        );
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "VaultKey.keybrake.com \"k\" is invalid: [spec.policyRef: Required value, spec.ttl: Invalid value: \"2d\": bad]"
        );
        let d = e.details.unwrap();
        assert_eq!(d["causes"][1]["field"], "spec.ttl");
        assert_eq!(d["kind"], "VaultKey");
        assert_eq!(d["group"], "keybrake.com");
    }
}
