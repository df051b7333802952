//! Enforces a CRD's `openAPIV3Schema` on writes, in the API server's order: unknown fields
//! are refused (`fieldValidation=Strict`) or pruned, defaults applied, then the structural
//! checks (types, required, enums, patterns, bounds, int-or-string) and the CEL rules
//! (`x-kubernetes-validations`). Messages follow the real server's wording.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use kube::core::cel::{Validator, apply_defaults};
use regex::Regex;
use serde_json::{Map, Value};

use crate::{
    error::{ApiError, Cause, Result},
    resources::Resource,
};

/// Applies the resource's schema to an object about to be stored. `old` is the stored object
/// on updates (for CEL transition rules).
pub fn admit(res: &Resource, obj: Value, old: Option<&Value>, strict: bool) -> Result<Value> {
    let Some(schema) = &res.schema else {
        return Ok(obj);
    };
    let mut unknown = Vec::new();
    let pruned = prune_root(schema, obj, &mut unknown);
    if strict && !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            fields.join(", ")
        )));
    }
    let defaulted = apply_defaults(schema, &pruned);
    let name = defaulted
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut causes = Vec::new();
    if let Value::Object(map) = &defaulted
        && let Some(props) = schema.get("properties").and_then(Value::as_object)
    {
        check_object_fields(schema, props, map, "", &mut causes, true);
    }
    if causes.is_empty()
        && let Err(errors) = Validator::new().validate(schema, &defaulted, old)
    {
        for e in errors.into_vec() {
            let field = if e.field_path.is_empty() {
                "<root>".to_owned()
            } else {
                e.field_path.clone()
            };
            causes.push(Cause::invalid(&field, "\"object\"", e.message.clone()));
        }
    }
    if causes.is_empty() {
        Ok(defaulted)
    } else {
        Err(ApiError::invalid(&res.qualified_kind(), &name, causes))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// The root keeps `apiVersion`, `kind` and `metadata` whatever the schema says.
/// The fields of `obj` the resource's schema does not declare (`status.foo`), in the order
/// found: a server-side apply of any of them fails the typed conversion on a real server.
pub fn undeclared(res: &Resource, obj: &Value) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(schema) = &res.schema {
        prune_root(schema, obj.clone(), &mut unknown);
    }
    unknown
}

fn prune_root(schema: &Value, obj: Value, unknown: &mut Vec<String>) -> Value {
    let Value::Object(map) = obj else { return obj };
    let mut out = Map::new();
    for (k, v) in map {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            out.insert(k, v);
        } else if let Some(sub) = schema.pointer(&format!("/properties/{k}")) {
            if let Some(v) = prune(sub, v, &k, unknown) {
                out.insert(k, v);
            }
        } else if flag(schema, "x-kubernetes-preserve-unknown-fields") {
            out.insert(k, v);
        } else {
            unknown.push(k);
        }
    }
    Value::Object(out)
}

/// Drops fields the schema does not declare (recording their paths) and nulls in fields that
/// are not nullable. Returns `None` when the value itself is such a null.
fn prune(schema: &Value, value: Value, path: &str, unknown: &mut Vec<String>) -> Option<Value> {
    if value.is_null() {
        return (flag(schema, "nullable") || schema.get("default").is_some())
            .then_some(Value::Null);
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let embedded = flag(schema, "x-kubernetes-embedded-resource");
            let mut out = Map::new();
            for (k, v) in map {
                let p = join(path, &k);
                if let Some(sub) = props.and_then(|p| p.get(&k)) {
                    if let Some(v) = prune(sub, v, &p, unknown) {
                        out.insert(k, v);
                    }
                } else if let Some(sub) = additional {
                    if let Some(v) = prune(sub, v, &p, unknown) {
                        out.insert(k, v);
                    }
                } else if preserve
                    || (embedded && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                {
                    out.insert(k, v);
                } else if props.is_none() && schema.get("type").is_none() {
                    // A schema that says nothing about the value's shape keeps it whole.
                    out.insert(k, v);
                } else {
                    unknown.push(p);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").cloned().unwrap_or(Value::Null);
            let out = items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| prune(&item_schema, v, &format!("{path}[{i}]"), unknown))
                .collect();
            Some(Value::Array(out))
        }
        other => Some(other),
    }
}

static PATTERNS: LazyLock<Mutex<HashMap<String, Option<Regex>>>> = LazyLock::new(Default::default);

fn pattern_matches(pattern: &str, text: &str) -> bool {
    let Ok(mut cache) = PATTERNS.lock() else {
        return false;
    };
    let re = cache
        .entry(pattern.to_owned())
        .or_insert_with(|| Regex::new(pattern).ok());
    // A pattern the server cannot compile refuses every value rather than admitting all.
    re.as_ref().is_some_and(|re| re.is_match(text))
}

/// JSON type name as the server quotes it in `must be of type` messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How the server quotes a value in `Invalid value:`.
fn quote(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) | Value::Array(_) => format!("\"{}\"", type_name(v)),
        other => other.to_string(),
    }
}

/// `x-kubernetes-list-type`: a `set` holds no value twice, a `map` no two items with the same
/// `x-kubernetes-list-map-keys`, and every item of a map has its keys.
fn list_type(schema: &Value, items: &[Value], path: &str, causes: &mut Vec<Cause>) {
    let kind = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    let keys: Vec<&str> = schema
        .get("x-kubernetes-list-map-keys")
        .and_then(Value::as_array)
        .map(|k| k.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut seen: Vec<Value> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let id = match kind {
            Some("set") => item.clone(),
            Some("map") => {
                let mut id = Map::new();
                for k in &keys {
                    match item.get(*k) {
                        Some(v) => {
                            id.insert((*k).to_owned(), v.clone());
                        }
                        None => causes.push(Cause::required(&format!("{path}[{i}].{k}"))),
                    }
                }
                Value::Object(id)
            }
            _ => return,
        };
        if seen.contains(&id) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("{path}[{i}]"),
                value: Some(id.to_string()),
                message: String::new(),
            });
        } else {
            seen.push(id);
        }
    }
}

fn check_object_fields(
    schema: &Value,
    props: &Map<String, Value>,
    map: &Map<String, Value>,
    path: &str,
    causes: &mut Vec<Cause>,
    root: bool,
) {
    for req in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(req) = req.as_str()
            && map.get(req).is_none_or(Value::is_null)
        {
            causes.push(Cause::required(&join(path, req)));
        }
    }
    for (k, v) in map {
        if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(sub) = props.get(k) {
            check(sub, v, &join(path, k), causes);
        }
    }
}

/// The structural checks of one value against its schema: one block per OpenAPI keyword the
/// API server checks, in its order, so the function is as long as that list.
fn check(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if v.is_null() {
        return; // pruning kept only nulls the schema allows
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    let int = |k: &str| schema.get(k).and_then(Value::as_u64);
    let actual = type_name(v);
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(actual, "integer" | "string") {
            causes.push(Cause::invalid(
                path,
                format!("\"{actual}\""),
                format!("{path} in body must be of type integer,string: \"{actual}\""),
            ));
            return;
        }
    } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let ok = want == actual || (want == "number" && actual == "integer");
        if !ok {
            causes.push(Cause::invalid(
                path,
                format!("\"{actual}\""),
                format!("{path} in body must be of type {want}: \"{actual}\""),
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let supported: Vec<String> = options.iter().map(quote).collect();
        causes.push(Cause::not_supported(path, quote(v), &supported));
    }
    match v {
        Value::String(s) => {
            if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                && !pattern_matches(p, s)
            {
                causes.push(Cause::invalid(
                    path,
                    quote(v),
                    format!("{path} in body should match '{p}'"),
                ));
            }
            let len = s.chars().count() as u64;
            if let Some(max) = int("maxLength")
                && len > max
            {
                causes.push(Cause::invalid(
                    path,
                    quote(v),
                    format!("{path} in body should be at most {max} chars long"),
                ));
            }
            if let Some(min) = int("minLength")
                && len < min
            {
                causes.push(Cause::invalid(
                    path,
                    quote(v),
                    format!("{path} in body should be at least {min} chars long"),
                ));
            }
            if schema.get("format").and_then(Value::as_str) == Some("date-time")
                && s.parse::<jiff::Timestamp>().is_err()
            {
                causes.push(Cause::invalid(
                    path,
                    quote(v),
                    format!("{path} in body must be of type date-time: {s:?}"),
                ));
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = num("minimum") {
                let excl = flag(schema, "exclusiveMinimum");
                if x < min || (excl && x == min) {
                    let op = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    causes.push(Cause::invalid(
                        path,
                        quote(v),
                        format!("{path} in body should be {op} {min}"),
                    ));
                }
            }
            if let Some(max) = num("maximum") {
                let excl = flag(schema, "exclusiveMaximum");
                if x > max || (excl && x == max) {
                    let op = if excl {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    causes.push(Cause::invalid(
                        path,
                        quote(v),
                        format!("{path} in body should be {op} {max}"),
                    ));
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = int("maxItems")
                && n > max
            {
                causes.push(Cause::invalid(
                    path,
                    n.to_string(),
                    format!("must have at most {max} items"),
                ));
            }
            if let Some(min) = int("minItems")
                && n < min
            {
                causes.push(Cause::invalid(
                    path,
                    n.to_string(),
                    format!("should have at least {min} items"),
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), causes);
                }
            }
            list_type(schema, items, path, causes);
        }
        Value::Object(map) => {
            let n = map.len() as u64;
            if let Some(max) = int("maxProperties")
                && n > max
            {
                causes.push(Cause::invalid(
                    path,
                    n.to_string(),
                    format!("must have at most {max} properties"),
                ));
            }
            let empty = Map::new();
            let props = schema
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            check_object_fields(schema, props, map, path, causes, false);
            if let Some(additional) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, item) in map {
                    check(additional, item, &join(path, k), causes);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::resources::from_crd;

    fn widget() -> Resource {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "x-kubernetes-validations": [{"rule": "self.size <= self.max", "message": "size must not exceed max"}],
                    "properties": {
                        "size": {"type": "integer", "minimum": 0},
                        "max": {"type": "integer", "default": 10},
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "ttl": {"type": "string", "pattern": "^[0-9]+m$", "nullable": true},
                        "cap": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "at": {"type": "string", "format": "date-time"}
                    }
                },
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        });
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"kind": "Widget", "plural": "widgets"},
                "versions": [{"name": "v1", "storage": true, "schema": {"openAPIV3Schema": schema}}]}
        });
        let mut r = from_crd(&crd).unwrap();
        r.schema = r.schema.map(|s| Arc::new((*s).clone()));
        r
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec})
    }

    fn err(spec: Value) -> String {
        admit(&widget(), obj(spec), None, false)
            .unwrap_err()
            .message
    }

    #[test]
    fn admits_prunes_and_defaults() {
        let out = admit(
            &widget(),
            obj(json!({"size": 3, "bogus": 1, "ttl": null})),
            None,
            false,
        )
        .unwrap();
        assert_eq!(out["spec"], json!({"size": 3, "max": 10, "ttl": null}));
        let e = admit(&widget(), obj(json!({"size": 3, "bogus": 1})), None, true).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "strict decoding error: unknown field \"spec.bogus\"")
        );
    }

    #[test]
    fn structural_errors_name_the_field() {
        assert_eq!(
            err(json!({})),
            "Widget.example.com \"w\" is invalid: spec.size: Required value"
        );
        assert!(err(json!({"size": "3"})).contains("spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\""));
        assert!(err(json!({"size": 1.5})).contains("must be of type integer: \"number\""));
        assert!(
            err(json!({"size": -1}))
                .contains("spec.size in body should be greater than or equal to 0")
        );
        assert!(err(json!({"size": 1, "color": "green"})).contains(
            "spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\""
        ));
        assert!(
            err(json!({"size": 1, "ttl": "2h"}))
                .contains("spec.ttl in body should match '^[0-9]+m$'")
        );
        assert!(err(json!({"size": 1, "cap": 1.5})).contains("must be of type integer,string"));
        assert!(
            err(json!({"size": 1, "tags": ["a", "b", "c"]})).contains("must have at most 2 items")
        );
        assert!(
            err(json!({"size": 1, "tags": ["abcd"]}))
                .contains("spec.tags[0] in body should be at most 3 chars long")
        );
        assert!(err(json!({"size": 1, "labels": {"a": 1}})).contains("spec.labels.a"));
        assert!(err(json!({"size": 1, "at": "yesterday"})).contains("date-time"));
        admit(
            &widget(),
            obj(json!({"size": 1, "cap": "5", "at": "2026-01-01T00:00:00Z", "labels": {"a": "b"}})),
            None,
            false,
        )
        .unwrap();
    }

    #[test]
    fn cel_rules_apply_after_defaults() {
        let e = err(json!({"size": 11}));
        assert!(
            e.contains("Invalid value: \"object\": size must not exceed max"),
            "{e}"
        );
        assert!(admit(&widget(), obj(json!({"size": 11, "max": 20})), None, false).is_ok());
    }
}

#[cfg(test)]
mod list_type_tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn map_lists_refuse_two_items_with_one_key_and_sets_refuse_repeats() {
        let schema = json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"], "items": {"type": "object"}});
        let mut causes = Vec::new();
        let twice = json!([{"type": "Ready"}, {"type": "Ready"}]);
        check(&schema, &twice, "status.conditions", &mut causes);
        assert_eq!(
            causes[0].to_string(),
            "status.conditions[1]: Duplicate value: {\"type\":\"Ready\"}"
        );
        let mut causes = Vec::new();
        check(&schema, &json!([{"status": "True"}]), "c", &mut causes);
        assert_eq!(causes[0].to_string(), "c[0].type: Required value");
        let set = json!({"type": "array", "x-kubernetes-list-type": "set"});
        let mut causes = Vec::new();
        check(&set, &json!(["a", "b", "a"]), "s", &mut causes);
        assert_eq!(causes.len(), 1);
    }
}
