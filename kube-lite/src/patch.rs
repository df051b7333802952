//! The four patch types: JSON merge (RFC 7386), JSON patch (RFC 6902), strategic merge (for
//! built-in kinds, applied as a merge with the directives dropped) and server-side apply.

use serde_json::{Map, Value};

use crate::error::{ApiError, Result};

/// A patch type, chosen by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml`.
    Apply,
}

impl PatchKind {
    /// The patch type of a Content-Type header, or 415.
    pub fn from_content_type(ct: &str) -> Result<PatchKind> {
        let media = ct.split(';').next().unwrap_or("").trim();
        Ok(match media {
            "application/merge-patch+json" => PatchKind::Merge,
            "application/json-patch+json" => PatchKind::Json,
            "application/strategic-merge-patch+json" => PatchKind::Strategic,
            "application/apply-patch+yaml" | "application/apply-patch+json" => PatchKind::Apply,
            other => {
                return Err(ApiError::unsupported_media_type(format!(
                    "the body of the request was in an unknown format ({other:?}) - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, \
                     application/strategic-merge-patch+json"
                )));
            }
        })
    }
}

fn parse_json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Applies a merge, JSON or strategic patch to `old`.
pub fn apply_patch(kind: PatchKind, old: &Value, body: &[u8]) -> Result<Value> {
    let mut doc = old.clone();
    match kind {
        PatchKind::Merge => json_patch::merge(&mut doc, &parse_json(body)?),
        PatchKind::Strategic => {
            let mut p = parse_json(body)?;
            strip_directives(&mut p);
            json_patch::merge(&mut doc, &p);
        }
        PatchKind::Json => {
            let ops: Vec<json_patch::PatchOperation> = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            for op in ops {
                // A `test` of a missing path against null passes, as on the real server
                // (kube-runtime's finalizer() relies on it).
                if let json_patch::PatchOperation::Test(t) = &op
                    && t.value.is_null()
                    && doc.pointer(t.path.as_str()).is_none()
                {
                    continue;
                }
                json_patch::patch(&mut doc, std::slice::from_ref(&op)).map_err(|e| ApiError {
                    code: 422,
                    reason: "Invalid",
                    message: format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ),
                    details: None,
                })?;
            }
        }
        PatchKind::Apply => return Err(ApiError::internal("apply is not a plain patch")),
    }
    Ok(doc)
}

/// The `metadata.resourceVersion` a merge or strategic patch sets, a precondition.
pub fn patch_resource_version(kind: PatchKind, body: &[u8]) -> Option<String> {
    if !matches!(kind, PatchKind::Merge | PatchKind::Strategic) {
        return None;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// Removes strategic-merge directives (`$patch`, `$retainKeys`, `$setElementOrder/...`,
/// `$deleteFromPrimitiveList/...`), which a plain merge would store as fields.
fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// An apply body: YAML or JSON.
pub fn parse_apply_body(body: &[u8]) -> Result<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("apply configuration is not UTF-8"))?;
    serde_yaml_ng::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// The key identifying items of a list that server-side apply merges by key.
fn list_key(items: &[Value]) -> Option<&'static str> {
    let first = items.first()?.as_object()?;
    ["type", "uid", "name", "containerPort"]
        .into_iter()
        .find(|k| first.contains_key(*k))
}

/// Server-side apply merge of one manager's configuration: maps merge, lists are replaced
/// except keyed lists (conditions by `type`, ownerReferences by `uid`, containers by `name`),
/// and fields the manager applied last time (`last`) but no longer does are removed.
pub fn ssa_merge(live: &Value, last: &Value, config: &Value) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            let empty = Map::new();
            let last_map = last.as_object().unwrap_or(&empty);
            let mut out = l.clone();
            for k in last_map.keys() {
                if !c.contains_key(k) {
                    out.remove(k);
                }
            }
            for (k, v) in c {
                let merged = ssa_merge(
                    l.get(k).unwrap_or(&Value::Null),
                    last_map.get(k).unwrap_or(&Value::Null),
                    v,
                );
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => match list_key(c).or_else(|| list_key(l)) {
            Some(key) => {
                let id = |v: &Value| v.get(key).cloned();
                let last_items = last.as_array().cloned().unwrap_or_default();
                let mut out: Vec<Value> = c
                    .iter()
                    .map(|item| {
                        let live_item =
                            l.iter().find(|x| id(x) == id(item)).unwrap_or(&Value::Null);
                        let last_item = last_items
                            .iter()
                            .find(|x| id(x) == id(item))
                            .unwrap_or(&Value::Null);
                        ssa_merge(live_item, last_item, item)
                    })
                    .collect();
                // Items other managers own stay.
                for item in l {
                    let in_config = c.iter().any(|x| id(x) == id(item));
                    let was_mine = last_items.iter().any(|x| id(x) == id(item));
                    if !in_config && !was_mine {
                        out.push(item.clone());
                    }
                }
                Value::Array(out)
            }
            None => config.clone(),
        },
        _ => config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml; charset=utf-8").unwrap(),
            PatchKind::Apply
        );
        assert_eq!(
            PatchKind::from_content_type("text/plain").unwrap_err().code,
            415
        );
    }

    #[test]
    fn json_patch_test_of_missing_path_equals_null() {
        let old = json!({"metadata": {"name": "a"}});
        let body = br#"[{"op":"test","path":"/metadata/finalizers","value":null},{"op":"add","path":"/metadata/finalizers","value":["f"]}]"#;
        let out = apply_patch(PatchKind::Json, &old, body).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["f"]));
        let again = apply_patch(PatchKind::Json, &out, body).unwrap_err();
        assert_eq!(again.code, 422);
        let remove = br#"[{"op":"test","path":"/metadata/finalizers/0","value":"f"},{"op":"remove","path":"/metadata/finalizers/0"}]"#;
        assert_eq!(
            apply_patch(PatchKind::Json, &out, remove).unwrap()["metadata"]["finalizers"],
            json!([])
        );
    }

    #[test]
    fn merge_and_strategic() {
        let old = json!({"data": {"a": "1", "b": "2"}});
        let out = apply_patch(PatchKind::Merge, &old, br#"{"data":{"a":null,"c":"3"}}"#).unwrap();
        assert_eq!(out, json!({"data": {"b": "2", "c": "3"}}));
        let smp = br#"{"$retainKeys":["data"],"data":{"$patch":"replace","d":"4"},"metadata":{"$setElementOrder/finalizers":[]}}"#;
        let out = apply_patch(PatchKind::Strategic, &old, smp).unwrap();
        assert_eq!(out["data"], json!({"a": "1", "b": "2", "d": "4"}));
        assert_eq!(out["metadata"], json!({}));
        assert_eq!(
            patch_resource_version(PatchKind::Merge, br#"{"metadata":{"resourceVersion":"5"}}"#)
                .as_deref(),
            Some("5")
        );
    }

    #[test]
    fn ssa_removes_what_the_manager_dropped_and_keeps_others() {
        let live = json!({"data": {"a": "1", "b": "2", "other": "x"}, "metadata": {"ownerReferences": [{"uid": "u1", "name": "o"}]}});
        let last = json!({"data": {"a": "1", "b": "2"}});
        let config = json!({"data": {"a": "9"}});
        let out = ssa_merge(&live, &last, &config);
        assert_eq!(out["data"], json!({"a": "9", "other": "x"}));
        assert_eq!(out["metadata"]["ownerReferences"][0]["uid"], "u1");
    }

    #[test]
    fn ssa_merges_conditions_by_type() {
        let live =
            json!([{"type": "Ready", "status": "False"}, {"type": "Other", "status": "True"}]);
        let config = json!([{"type": "Ready", "status": "True"}]);
        let out = ssa_merge(&live, &Value::Null, &config);
        assert_eq!(
            out,
            json!([{"type": "Ready", "status": "True"}, {"type": "Other", "status": "True"}])
        );
        let dropped = ssa_merge(&out, &config, &json!([]));
        assert_eq!(dropped, json!([{"type": "Other", "status": "True"}]));
    }

    #[test]
    fn apply_bodies_are_yaml_or_json() {
        assert_eq!(parse_apply_body(b"a: 1\n").unwrap(), json!({"a": 1}));
        assert_eq!(parse_apply_body(br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert_eq!(parse_apply_body(b"a: [").unwrap_err().code, 400);
    }
}
