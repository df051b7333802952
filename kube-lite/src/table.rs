//! `Table` output for `kubectl get`: Name, the resource's printer columns, Age.

use serde_json::{Value, json};

use crate::resources::{Column, Resource};

/// How objects are rendered, by the Accept header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Whole objects.
    Full,
    /// PartialObjectMetadata (what `metadata_watcher` asks for).
    Metadata,
    /// Tables (what `kubectl get` asks for).
    Table,
}

impl Shape {
    /// The shape an Accept header asks for.
    pub fn from_accept(accept: &str) -> Shape {
        if accept.contains("as=Table") {
            Shape::Table
        } else if accept.contains("as=PartialObjectMetadata") {
            Shape::Metadata
        } else {
            Shape::Full
        }
    }
}

/// One object in the asked shape (a Table has one row).
pub fn render(res: &Resource, shape: Shape, obj: &Value) -> Value {
    match shape {
        Shape::Full => obj.clone(),
        Shape::Metadata => partial_metadata(obj),
        Shape::Table => {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            table(res, &[obj], rv, None)
        }
    }
}

/// The object reduced to its metadata, as `metadata_watcher` asks.
pub fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0]`,
/// `.a[?(@.type=="Ready")].status`. The first match wins; no match is `None`.
pub fn json_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = root;
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let field = &after[..end];
            cur = cur.get(field)?;
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = find_bracket_end(after)?;
            let inner = &after[..end];
            rest = &after[end + 1..];
            if let Ok(i) = inner.parse::<usize>() {
                cur = cur.get(i)?;
            } else if let Some(filter) =
                inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')'))
            {
                let (field, want) = filter.split_once("==")?;
                let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                cur = cur.as_array()?.iter().find(|item| {
                    item.get(field.trim()).is_some_and(|v| match v {
                        Value::String(s) => s == want,
                        // Numbers and booleans compare by value: `5` matches `== 5`.
                        other => want.parse::<Value>().ok().as_ref() == Some(other),
                    })
                })?;
            } else {
                return None;
            }
        } else {
            return None;
        }
    }
    Some(cur)
}

fn find_bracket_end(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ')' => depth -= 1,
            ']' if depth == 0 => return Some(i),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// An age as kubectl prints it: `45s`, `5m10s`, `3h`, `2d`.
pub fn human_age(seconds: i64) -> String {
    if seconds < 0 {
        return "<invalid>".into();
    }
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    match () {
        _ if seconds < 120 => format!("{seconds}s"),
        _ if m < 10 => match seconds % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        },
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            mm => format!("{h}h{mm}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => match h % 24 {
            0 => format!("{d}d"),
            hh => format!("{d}d{hh}h"),
        },
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

fn cell(obj: &Value, col: &Column) -> Value {
    let v = json_path(obj, &col.json_path);
    match (col.type_.as_str(), v) {
        (_, None | Some(Value::Null)) => Value::Null,
        ("date", Some(Value::String(s))) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => json!(human_age(
                jiff::Timestamp::now().duration_since(t).as_secs()
            )),
            Err(_) => json!(s),
        },
        (_, Some(v)) => v.clone(),
    }
}

fn columns(res: &Resource) -> Vec<Column> {
    let mut cols = res.columns.clone();
    let is_secret = res.group.is_empty() && res.plural == "secrets";
    if is_secret {
        cols.push(Column {
            name: "Data".into(),
            type_: "integer".into(),
            json_path: String::new(),
            priority: 0,
            description: "Number of keys".into(),
        });
    }
    // CRDs list their own Age; built-ins get one last.
    if !cols
        .iter()
        .any(|c| c.type_ == "date" && c.json_path == ".metadata.creationTimestamp")
    {
        cols.push(Column {
            name: "Age".into(),
            type_: "date".into(),
            json_path: ".metadata.creationTimestamp".into(),
            priority: 0,
            description: String::new(),
        });
    }
    cols
}

/// A Table of `objects`, with the list's resourceVersion and continue token.
pub fn table(res: &Resource, objects: &[&Value], rv: u64, cont: Option<&str>) -> Value {
    let cols = columns(res);
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    defs.extend(cols.iter().map(|c| {
        json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() }, "format": if c.type_ == "date" { "date" } else { "" }, "description": c.description, "priority": c.priority})
    }));
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![
                obj.pointer("/metadata/name")
                    .cloned()
                    .unwrap_or(Value::Null),
            ];
            for c in &cols {
                if c.name == "Data" && c.json_path.is_empty() {
                    cells.push(json!(
                        obj.get("data")
                            .and_then(Value::as_object)
                            .map_or(0, |d| d.len())
                    ));
                } else {
                    cells.push(cell(obj, c));
                }
            }
            json!({"cells": cells, "object": partial_metadata(obj)})
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn json_paths() {
        let o = json!({"status": {"phase": "Active", "conditions": [{"type": "Other", "status": "x"}, {"type": "Ready", "status": "True"}]}, "a": [1, 2]});
        assert_eq!(json_path(&o, ".status.phase"), Some(&json!("Active")));
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(json_path(&o, ".a[1]"), Some(&json!(2)));
        assert_eq!(json_path(&o, ".status.missing"), None);
        assert_eq!(json_path(&o, "{.status.phase}"), Some(&json!("Active")));
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_age(45), "45s");
        assert_eq!(human_age(310), "5m10s");
        assert_eq!(human_age(3600 * 5), "5h");
        assert_eq!(human_age(86400 * 3), "3d");
        assert_eq!(human_age(-5), "<invalid>");
    }

    #[test]
    fn secret_table_has_type_data_age() {
        let reg = Registry::with_builtins();
        let res = reg.get("", "v1", "secrets").unwrap();
        let obj = json!({"metadata": {"name": "s", "creationTimestamp": "2020-01-01T00:00:00Z"}, "type": "Opaque", "data": {"a": "", "b": ""}});
        let t = table(&res, &[&obj], 7, None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Type", "Data", "Age"]);
        assert_eq!(t["rows"][0]["cells"][0], "s");
        assert_eq!(t["rows"][0]["cells"][2], 2);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
    }
}
