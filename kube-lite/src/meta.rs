//! The metadata rules a real API server checks on every object, whatever its kind: label and
//! annotation keys and values (syntax and sizes), owner references (complete, one controller at
//! most), and the size limits of `events.k8s.io` Events. Messages follow apimachinery's.

use serde_json::Value;

use crate::{
    error::{ApiError, Cause, Result},
    resources::Resource,
};

/// The most bytes all annotations of an object may hold together.
pub const ANNOTATIONS_MAX: usize = 256 * 1024;
/// The most bytes of an Event's `note` (events.k8s.io/v1).
pub const NOTE_MAX: usize = 1024;
/// The most bytes of an Event's `reason` and `action`.
pub const EVENT_WORD_MAX: usize = 128;

const NAME_RULE: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const VALUE_RULE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain, checked as a whole (up to 253 characters; no per-part limit), as
/// apimachinery's `IsDNS1123Subdomain` does.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Checks a label or annotation key (`[prefix/]name`).
fn key_causes(field: &str, key: &str, out: &mut Vec<Cause>) {
    let at = field.to_owned();
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        out.push(Cause::invalid(
            &at,
            format!("{key:?}"),
            "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    if name.len() > 63 {
        out.push(Cause::invalid(
            &at,
            format!("{key:?}"),
            "name part must be no more than 63 characters",
        ));
    } else if !is_name_part(name) {
        out.push(Cause::invalid(&at, format!("{key:?}"), NAME_RULE));
    }
}

fn strings<'v>(obj: &'v Value, field: &str) -> Vec<(&'v String, &'v Value)> {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default()
}

/// Every metadata rule the object breaks, as 422 causes.
pub fn causes(res: &Resource, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    for (key, value) in strings(obj, "labels") {
        key_causes("metadata.labels", key, &mut out);
        let v = value.as_str().unwrap_or("");
        if v.len() > 63 {
            out.push(Cause::invalid(
                "metadata.labels",
                format!("{v:?}"),
                "must be no more than 63 characters",
            ));
        } else if !v.is_empty() && !is_name_part(v) {
            out.push(Cause::invalid(
                "metadata.labels",
                format!("{v:?}"),
                VALUE_RULE,
            ));
        }
    }
    let mut total = 0;
    for (key, value) in strings(obj, "annotations") {
        key_causes("metadata.annotations", &key.to_lowercase(), &mut out);
        total += key.len() + value.as_str().map_or(0, str::len);
    }
    if total > ANNOTATIONS_MAX {
        out.push(Cause::too_long("metadata.annotations", ANNOTATIONS_MAX));
    }
    owner_causes(obj, &mut out);
    if res.group == "events.k8s.io" && res.plural == "events" {
        for (field, max) in [
            ("note", NOTE_MAX),
            ("reason", EVENT_WORD_MAX),
            ("action", EVENT_WORD_MAX),
        ] {
            if obj.get(field).and_then(Value::as_str).map_or(0, str::len) > max {
                out.push(Cause::too_long(field, max));
            }
        }
    }
    out
}

fn owner_causes(obj: &Value, out: &mut Vec<Cause>) {
    let refs = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text = |r: &Value, f: &str| r.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
    for (i, r) in refs.iter().enumerate() {
        for f in ["apiVersion", "kind", "name", "uid"] {
            if text(r, f).is_empty() {
                out.push(Cause::invalid(
                    &format!("metadata.ownerReferences[{i}].{f}"),
                    "\"\"",
                    format!("{f} must not be empty"),
                ));
            }
        }
    }
    let controllers: Vec<String> = refs
        .iter()
        .filter(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|r| format!("{}/{}", text(r, "kind"), text(r, "name")))
        .collect();
    if controllers.len() > 1 {
        out.push(Cause::invalid(
            "metadata.ownerReferences",
            "[...]",
            format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
}

/// Refuses an object that breaks a metadata rule, with every cause.
pub fn check(res: &Resource, name: &str, obj: &Value) -> Result<()> {
    let found = causes(res, obj);
    if found.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(&res.qualified_kind(), name, found))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resources::Registry;

    fn secrets() -> std::sync::Arc<Resource> {
        Registry::with_builtins().get("", "v1", "secrets").unwrap()
    }

    fn with_meta(meta: Value) -> Value {
        json!({"metadata": meta})
    }

    #[test]
    fn labels_follow_the_qualified_name_and_value_rules() {
        let ok = with_meta(json!({"labels": {"keybrake.com/vault-key": "a".repeat(63), "x": ""}}));
        assert!(causes(&secrets(), &ok).is_empty());
        let long = with_meta(json!({"labels": {"keybrake.com/vault-key": "a".repeat(64)}}));
        let c = causes(&secrets(), &long);
        assert_eq!(c.len(), 1);
        assert!(
            c[0].to_string()
                .contains("must be no more than 63 characters"),
            "{}",
            c[0]
        );
        let bad = with_meta(json!({"labels": {"Bad_Prefix/x": "v", "ok": "-v"}}));
        assert_eq!(causes(&secrets(), &bad).len(), 2);
    }

    #[test]
    fn annotations_are_limited_in_total_size() {
        let big = with_meta(json!({"annotations": {"a": "x".repeat(ANNOTATIONS_MAX)}}));
        let c = causes(&secrets(), &big);
        assert_eq!(
            c[0].to_string(),
            "metadata.annotations: Too long: must have at most 262144 bytes"
        );
    }

    #[test]
    fn one_controller_owner_at_most() {
        let owner = |name: &str| json!({"apiVersion": "keybrake.com/v1alpha1", "kind": "VaultKey", "name": name, "uid": name, "controller": true});
        let two = with_meta(json!({"ownerReferences": [owner("a"), owner("b")]}));
        let c = causes(&secrets(), &two);
        assert!(
            c[0].to_string()
                .contains("Only one reference can have Controller set to true"),
            "{}",
            c[0]
        );
        let one = with_meta(json!({"ownerReferences": [owner("a")]}));
        assert!(causes(&secrets(), &one).is_empty());
    }

    #[test]
    fn subdomains_are_checked_as_a_whole() {
        assert!(is_dns_subdomain(&"a".repeat(253)));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("A"));
    }
}
