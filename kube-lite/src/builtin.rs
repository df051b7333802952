//! Rules of the built-in kinds: names, Secret `stringData`, Namespace phase, CRD status.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::{
    error::{ApiError, Cause, Result},
    resources::{Resource, from_crd},
};

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks an object name: DNS-1123 label for namespaces, subdomain for everything else.
pub fn check_name(res: &Resource, name: &str) -> Result<()> {
    let namespace = res.group.is_empty() && res.plural == "namespaces";
    let ok = if namespace {
        is_dns_label(name)
    } else {
        crate::meta::is_dns_subdomain(name)
    };
    if ok {
        return Ok(());
    }
    let rule = if namespace {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(ApiError::invalid(
        &res.qualified_kind(),
        name,
        vec![Cause::invalid("metadata.name", format!("{name:?}"), rule)],
    ))
}

/// Applies the kind's own rules to an object about to be stored (`old` on updates).
pub fn prepare(res: &Resource, obj: Value, old: Option<&Value>) -> Result<Value> {
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "secrets") => secret(res, obj, old),
        ("", "namespaces") => Ok(namespace(obj)),
        ("apiextensions.k8s.io", "customresourcedefinitions") => crd(res, obj),
        _ => Ok(obj),
    }
}

/// Folds `stringData` into base64 `data`, defaults `type`, checks `data` is base64, and keeps
/// `type` immutable.
fn secret(res: &Resource, mut obj: Value, old: Option<&Value>) -> Result<Value> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let engine = base64::engine::general_purpose::STANDARD;
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("a Secret must be an object"))?;
    let mut data = match map.remove("data") {
        Some(Value::Object(d)) => d,
        Some(Value::Null) | None => Map::new(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Secret.data must be a map of base64 strings",
            ));
        }
    };
    for (k, v) in &data {
        let ok = v.as_str().is_some_and(|s| engine.decode(s).is_ok());
        if !ok {
            return Err(ApiError::bad_request(format!(
                "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data.{k}"
            )));
        }
    }
    if let Some(Value::Object(string_data)) = map.remove("stringData") {
        for (k, v) in string_data {
            let text = v
                .as_str()
                .ok_or_else(|| {
                    ApiError::bad_request(format!("Secret.stringData.{k} must be a string"))
                })?
                .to_owned();
            data.insert(k, json!(engine.encode(text)));
        }
    }
    if !data.is_empty() {
        map.insert("data".into(), Value::Object(data));
    }
    if map
        .get("type")
        .is_none_or(|t| t.as_str().is_none_or(str::is_empty))
    {
        map.insert("type".into(), json!("Opaque"));
    }
    if let Some(old_type) = old.and_then(|o| o.get("type"))
        && map.get("type") != Some(old_type)
    {
        return Err(ApiError::invalid(
            &res.qualified_kind(),
            &name,
            vec![Cause::invalid(
                "type",
                format!("{}", map["type"]),
                "field is immutable",
            )],
        ));
    }
    Ok(obj)
}

fn namespace(mut obj: Value) -> Value {
    if obj.pointer("/metadata/deletionTimestamp").is_none() {
        obj["status"] = json!({"phase": "Active"});
    }
    if obj.pointer("/spec/finalizers").is_none() {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
    }
    obj
}

/// Checks a CRD and reports it Established at once (no controller round trip here).
fn crd(res: &Resource, mut obj: Value) -> Result<Value> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let served = from_crd(&obj).map_err(|why| {
        let (field, msg) = why.split_once(": ").unwrap_or(("spec", why.as_str()));
        ApiError::invalid(
            &res.qualified_kind(),
            &name,
            vec![Cause::invalid(field, "\"object\"", msg)],
        )
    })?;
    let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
    let mut accepted = names.clone();
    accepted["singular"] = json!(served.singular);
    accepted["listKind"] = names
        .get("listKind")
        .cloned()
        .unwrap_or(json!(format!("{}List", served.kind)));
    let ts = obj
        .pointer("/metadata/creationTimestamp")
        .cloned()
        .unwrap_or(json!(crate::clock::now()));
    obj["status"] = json!({
        "acceptedNames": accepted,
        "storedVersions": [served.version],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": ts},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": ts},
        ],
    });
    Ok(obj)
}

/// The core/v1 view of an `events.k8s.io/v1` Event, which `kubectl describe` lists. The real
/// server stores one object and converts; kube-lite keeps the core view beside it.
pub fn core_event_from(ev: &Value) -> Value {
    let g = |k: &str| ev.get(k).cloned().unwrap_or(Value::Null);
    let event_time = g("eventTime");
    let count = ev
        .pointer("/series/count")
        .or_else(|| ev.get("deprecatedCount"))
        .cloned()
        .unwrap_or(json!(1));
    let last = ev
        .pointer("/series/lastObservedTime")
        .or_else(|| ev.get("deprecatedLastTimestamp"))
        .cloned()
        .unwrap_or_else(|| event_time.clone());
    let first = ev
        .get("deprecatedFirstTimestamp")
        .cloned()
        .unwrap_or_else(|| event_time.clone());
    let component = ev
        .get("reportingController")
        .cloned()
        .unwrap_or(Value::Null);
    let mut meta = json!({
        "name": ev.pointer("/metadata/name"),
        "namespace": ev.pointer("/metadata/namespace"),
    });
    for k in ["labels", "annotations"] {
        if let Some(v) = ev.pointer(&format!("/metadata/{k}")) {
            meta[k] = v.clone();
        }
    }
    let mut core = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": meta,
        "involvedObject": g("regarding"),
        "reason": g("reason"),
        "message": g("note"),
        "type": g("type"),
        "action": g("action"),
        "reportingComponent": component,
        "reportingInstance": g("reportingInstance"),
        "source": ev.get("deprecatedSource").cloned().unwrap_or_else(|| json!({"component": component})),
        "eventTime": event_time,
        "count": count,
        "firstTimestamp": first,
        "lastTimestamp": last,
    });
    if let Some(related) = ev.get("related") {
        core["related"] = related.clone();
    }
    if let Some(m) = core.as_object_mut() {
        m.retain(|_, v| !v.is_null());
    }
    core
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;

    #[test]
    fn secrets_fold_string_data_and_default_type() {
        let reg = Registry::with_builtins();
        let res = reg.get("", "v1", "secrets").unwrap();
        let out = prepare(
            &res,
            json!({"metadata": {"name": "s"}, "stringData": {"apiKey": "sk_test"}}),
            None,
        )
        .unwrap();
        assert_eq!(out["data"]["apiKey"], "c2tfdGVzdA==");
        assert_eq!(out["type"], "Opaque");
        assert!(out.get("stringData").is_none());
        let bad = prepare(
            &res,
            json!({"metadata": {"name": "s"}, "data": {"k": "%%%"}}),
            None,
        )
        .unwrap_err();
        assert!(bad.message.contains("illegal base64 data in data.k"));
        let changed = prepare(
            &res,
            json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls"}),
            Some(&out),
        )
        .unwrap_err();
        assert!(changed.message.contains("type: Invalid value"));
    }

    #[test]
    fn events_convert_to_the_core_view() {
        let ev = json!({
            "metadata": {"name": "k.1", "namespace": "billing"},
            "regarding": {"kind": "VaultKey", "name": "k", "uid": "u"},
            "reason": "CapReached", "note": "daily cap reached", "type": "Warning",
            "reportingController": "keybrake.com/proxy", "reportingInstance": "proxy-0",
            "eventTime": "2026-11-22T10:00:00.000000Z",
            "series": {"count": 3, "lastObservedTime": "2026-11-22T10:05:00.000000Z"},
        });
        let core = core_event_from(&ev);
        assert_eq!(core["involvedObject"]["uid"], "u");
        assert_eq!(core["message"], "daily cap reached");
        assert_eq!(core["count"], 3);
        assert_eq!(core["lastTimestamp"], "2026-11-22T10:05:00.000000Z");
        assert_eq!(core["source"]["component"], "keybrake.com/proxy");
    }

    #[test]
    fn names_follow_rfc1123() {
        let reg = Registry::with_builtins();
        let secrets = reg.get("", "v1", "secrets").unwrap();
        let namespaces = reg.get("", "v1", "namespaces").unwrap();
        assert!(check_name(&secrets, "a.b-c").is_ok());
        // A subdomain is checked as a whole: a 100-character name without dots is fine.
        assert!(check_name(&secrets, &"a".repeat(100)).is_ok());
        assert!(check_name(&secrets, &"a".repeat(254)).is_err());
        assert!(check_name(&namespaces, "a.b").is_err());
        let e = check_name(&secrets, "Bad_Name").unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .contains("metadata.name: Invalid value: \"Bad_Name\"")
        );
    }
}
