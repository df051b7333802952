//! Write semantics (SPEC P0): create, update, patch, server-side apply and delete, with
//! generation rules, the status subresource, finalizers, no-op writes that bump nothing,
//! resourceVersion preconditions, dryRun, and owner-reference garbage collection.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::{
    builtin,
    error::{ApiError, Cause, Result},
    patch::{self, PatchKind},
    request::Query,
    resources::Resource,
    schema,
    store::{EventType, State, meta_str},
};

/// What a delete did.
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Arc<Value>),
    /// Finalizers hold it; this is the object, now marked for deletion.
    Pending(Arc<Value>),
}

pub use crate::clock::now;

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:01x}{:02x}-{:01x}{:01x}{:02x}-{}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6] & 0x0f,
        b[7],
        8 | (b[8] & 0x3),
        b[8] >> 4,
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

/// Everything but metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ensure_object(v: Value, what: &str) -> Result<Value> {
    if v.is_object() {
        Ok(v)
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be a JSON object"
        )))
    }
}

impl State {
    /// POST: creates an object in `ns` (`""` for cluster-scoped).
    pub fn create(
        &mut self,
        res: &Resource,
        ns: &str,
        body: Value,
        query: &Query,
    ) -> Result<Arc<Value>> {
        let mut obj = ensure_object(body, "the request body")?;
        if obj.get("metadata").is_none_or(|m| !m.is_object()) {
            obj["metadata"] = json!({});
        }
        // The namespace comes from the URL; a different one in the body is a 400.
        if let Some(body_ns) = meta_str(&obj, "namespace").filter(|n| !n.is_empty())
            && res.namespaced
            && body_ns != ns
        {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object does not match the namespace sent on the request ({body_ns} vs {ns})"
            )));
        }
        let name = match meta_str(&obj, "name").filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => match meta_str(&obj, "generateName").filter(|n| !n.is_empty()) {
                Some(prefix) => format!("{prefix}{}", random_suffix()),
                None => {
                    return Err(ApiError::invalid(
                        &res.qualified_kind(),
                        "",
                        vec![Cause::required("metadata.name")],
                    ));
                }
            },
        };
        builtin::check_name(res, &name)?;
        if self.get_object(res, ns, &name).is_some() {
            return Err(ApiError::already_exists(&res.qualified_plural(), &name));
        }
        if res.namespaced {
            self.check_namespace_open(ns)?;
        }
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if res.namespaced {
            meta["namespace"] = json!(ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        meta["uid"] = json!(new_uid());
        meta["creationTimestamp"] = json!(now());
        if let Some(m) = meta.as_object_mut() {
            for server_owned in [
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
            ] {
                m.remove(server_owned);
            }
        }
        if res.generation {
            obj["metadata"]["generation"] = json!(1);
        }
        obj["apiVersion"] = json!(res.api_version());
        obj["kind"] = json!(res.kind);
        if res.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        let obj = builtin::prepare(res, obj, None)?;
        crate::meta::check(res, &name, &obj)?;
        let obj = schema::admit(res, obj, None, query.strict())?;
        if query.dry_run {
            return Ok(Arc::new(obj));
        }
        let stored = self.commit(res, ns, &name, obj, EventType::Added, None);
        self.after_write(res, &stored);
        Ok(stored)
    }

    /// PUT of the object or its status.
    pub fn update(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        status: bool,
        body: Value,
        query: &Query,
    ) -> Result<Arc<Value>> {
        let body = ensure_object(body, "the request body")?;
        let old = self.get(res, ns, name)?;
        match meta_str(&body, "resourceVersion").filter(|v| !v.is_empty()) {
            Some(rv) if Some(rv) != meta_str(&old, "resourceVersion") => {
                return Err(ApiError::stale(&res.qualified_plural(), name));
            }
            None if res.custom => {
                return Err(ApiError::invalid(
                    &res.qualified_kind(),
                    name,
                    vec![Cause::invalid(
                        "metadata.resourceVersion",
                        "0x0",
                        "must be specified for an update",
                    )],
                ));
            }
            _ => {}
        }
        self.replace(res, ns, name, old, body, status, query)
    }

    /// PATCH of the object or its status, by content type.
    #[allow(clippy::too_many_arguments)] // the parts of the request, as the router has them
    pub fn patch(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        status: bool,
        kind: PatchKind,
        body: &[u8],
        query: &Query,
    ) -> Result<(Arc<Value>, bool)> {
        if kind == PatchKind::Apply {
            return self.apply(res, ns, name, status, body, query);
        }
        if kind == PatchKind::Strategic && res.custom {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml \
                 (strategic merge patch is not supported for custom resource {})",
                res.qualified_plural()
            )));
        }
        let old = self.get(res, ns, name)?;
        let patched = patch::apply_patch(kind, &old, body)?;
        // A resourceVersion in the patch body is a precondition.
        if let Some(rv) = patch::patch_resource_version(kind, body)
            && Some(rv.as_str()) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::stale(&res.qualified_plural(), name));
        }
        Ok((
            self.replace(res, ns, name, old, patched, status, query)?,
            false,
        ))
    }

    /// Server-side apply: creates when absent; otherwise merges the manager's configuration,
    /// removing fields it applied before and no longer does.
    fn apply(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        status: bool,
        body: &[u8],
        query: &Query,
    ) -> Result<(Arc<Value>, bool)> {
        let manager = query.field_manager.clone().ok_or_else(|| {
            ApiError::invalid(
                &res.qualified_kind(),
                name,
                vec![Cause::required("fieldManager")],
            )
        })?;
        let mut config = ensure_object(patch::parse_apply_body(body)?, "an apply configuration")?;
        if let Some(body_name) = meta_str(&config, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
            m.remove("resourceVersion");
        }
        // A real server converts the apply configuration to its schema's type first: a field
        // the CRD does not declare fails that conversion, answered as a 500 (kubernetes#139253),
        // not pruned as other writes are. Binaries newer than their CRDs meet exactly this.
        if let Some(field) = schema::undeclared(res, &config).first() {
            return Err(ApiError::internal(format!(
                "failed to create typed patch object ({ns}/{name}; {}, Kind={}): .{field}: field not declared in schema",
                res.api_version(),
                res.kind
            )));
        }
        let key = (res.key(), ns.to_owned(), name.to_owned(), manager, status);
        let Some(old) = self.get_object(res, ns, name) else {
            if status {
                return Err(ApiError::not_found(&res.qualified_plural(), name));
            }
            config["metadata"]["name"] = json!(name);
            let created = self.create(res, ns, config.clone(), query)?;
            if !query.dry_run {
                self.applied.insert(key, config);
            }
            return Ok((created, true));
        };
        let last = self.applied.get(&key).cloned().unwrap_or(Value::Null);
        let merged = if status {
            let mut whole = (*old).clone();
            whole["status"] = patch::ssa_merge(
                old.get("status").unwrap_or(&Value::Null),
                last.get("status").unwrap_or(&Value::Null),
                config.get("status").unwrap_or(&json!({})),
            );
            whole
        } else {
            patch::ssa_merge(&old, &last, &config)
        };
        let out = self.replace(res, ns, name, old, merged, status, query)?;
        if !query.dry_run {
            self.applied.insert(key, config);
        }
        Ok((out, false))
    }

    /// The common tail of update, patch and apply: keeps what the request may not change,
    /// applies the generation and finalizer rules, skips no-op writes. One function: those rules
    /// read and write the same old and new object, in the API server's order.
    #[allow(clippy::too_many_arguments)]
    fn replace(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        old: Arc<Value>,
        new: Value,
        status: bool,
        query: &Query,
    ) -> Result<Arc<Value>> {
        let mut new = ensure_object(new, "the object")?;
        if let Some(body_name) = meta_str(&new, "name").filter(|n| !n.is_empty())
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if status {
            // A status write changes only status.
            let mut whole = (*old).clone();
            whole["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if whole["status"].is_null()
                && let Some(m) = whole.as_object_mut()
            {
                m.remove("status");
            }
            new = whole;
        } else if res.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if new.get("metadata").is_none_or(|m| !m.is_object()) {
            new["metadata"] = json!({});
        }
        for server_owned in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "managedFields",
        ] {
            match old["metadata"].get(server_owned) {
                Some(v) => new["metadata"][server_owned] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(server_owned);
                    }
                }
            }
        }
        new["metadata"]["name"] = json!(name);
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        new["apiVersion"] = json!(res.api_version());
        new["kind"] = json!(res.kind);
        let deleting = old.pointer("/metadata/deletionTimestamp").is_some();
        if deleting {
            let before = finalizers(&old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &res.qualified_kind(),
                    name,
                    vec![Cause::forbidden(
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being deleted",
                    )],
                ));
            }
        }
        if res.generation && spec_part(&new) != spec_part(&old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        let new = builtin::prepare(res, new, Some(&old))?;
        crate::meta::check(res, name, &new)?;
        let new = schema::admit(res, new, Some(&old), query.strict())?;
        if new == *old {
            return Ok(old); // no-op: no RV bump, no event
        }
        if query.dry_run {
            return Ok(Arc::new(new));
        }
        if deleting && finalizers(&new).is_empty() {
            let gone = self.commit(res, ns, name, new, EventType::Deleted, Some(old));
            self.after_removal(res, &gone);
            return Ok(gone);
        }
        let stored = self.commit(res, ns, name, new, EventType::Modified, Some(old));
        self.after_write(res, &stored);
        Ok(stored)
    }

    /// DELETE with optional preconditions (`{"preconditions": {"uid", "resourceVersion"}}`).
    pub fn delete(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        options: &Value,
        query: &Query,
    ) -> Result<Deleted> {
        let old = self.get(res, ns, name)?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &res.qualified_plural(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::stale(&res.qualified_plural(), name));
        }
        if query.dry_run {
            return Ok(Deleted::Pending(old));
        }
        Ok(self.delete_object(res, ns, name, old))
    }

    /// Deletes (or marks for deletion, when finalizers or namespace contents hold it).
    fn delete_object(&mut self, res: &Resource, ns: &str, name: &str, old: Arc<Value>) -> Deleted {
        let is_namespace = !res.namespaced && res.group.is_empty() && res.plural == "namespaces";
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Deleted::Pending(old);
        }
        if finalizers(&old).is_empty() && !is_namespace {
            let gone = self.commit(res, ns, name, (*old).clone(), EventType::Deleted, Some(old));
            self.after_removal(res, &gone);
            return Deleted::Gone(gone);
        }
        let mut marked = (*old).clone();
        marked["metadata"]["deletionTimestamp"] = json!(now());
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        if res.generation {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            marked["metadata"]["generation"] = json!(generation + 1);
        }
        if is_namespace {
            marked["status"] = json!({"phase": "Terminating"});
        }
        let stored = self.commit(res, ns, name, marked, EventType::Modified, Some(old));
        if is_namespace {
            self.empty_namespace(name);
            return match self.get_object(res, "", name) {
                Some(still) => Deleted::Pending(still),
                None => Deleted::Gone(stored),
            };
        }
        Deleted::Pending(stored)
    }

    /// Refuses writes into a missing or terminating namespace.
    fn check_namespace_open(&self, ns: &str) -> Result<()> {
        let Some(res) = self.registry.get("", "v1", "namespaces") else {
            return Ok(());
        };
        match self.get_object(&res, "", ns) {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
                details: None,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Hooks after an object is created or changed: CRDs start serving their kind, and
    /// `events.k8s.io` Events get their core/v1 view.
    fn after_write(&mut self, res: &Resource, obj: &Value) {
        if res.group == "events.k8s.io" && res.plural == "events" {
            self.mirror_event(obj);
        }
        if res.group == "apiextensions.k8s.io"
            && res.plural == "customresourcedefinitions"
            && let Ok(served) = crate::resources::from_crd(obj)
        {
            self.registry.insert(served);
            self.discovery_generation += 1;
        }
    }

    /// Hooks after an object is removed: dependents are collected, a CRD's objects go with it,
    /// and a terminating namespace that became empty is removed.
    fn after_removal(&mut self, res: &Resource, gone: &Value) {
        let uid = meta_str(gone, "uid").unwrap_or("").to_owned();
        let ns = meta_str(gone, "namespace").unwrap_or("").to_owned();
        // A cluster-scoped owner may own objects anywhere; a namespaced one only in its namespace.
        let dependents = self.objects_where(|r, o_ns, o| {
            (ns.is_empty() || (r.namespaced && o_ns == ns)) && owned_by(o, &uid)
        });
        for (r, o_ns, o_name, o) in dependents {
            self.delete_object(&r, &o_ns, &o_name, o);
        }
        if res.group == "apiextensions.k8s.io"
            && res.plural == "customresourcedefinitions"
            && let Ok(served) = crate::resources::from_crd(gone)
        {
            {
                let key = served.key();
                let objs: Vec<_> = self
                    .objects
                    .get(&key)
                    .map(|o| o.clone().into_iter().collect())
                    .unwrap_or_default();
                for ((o_ns, o_name), o) in objs {
                    self.commit(
                        &served,
                        &o_ns,
                        &o_name,
                        (*o).clone(),
                        EventType::Deleted,
                        Some(o),
                    );
                }
                self.registry.remove(&key);
                self.objects.remove(&key);
                self.discovery_generation += 1;
            }
        }
        if res.group == "events.k8s.io"
            && res.plural == "events"
            && let Some(core_res) = self.registry.get("", "v1", "events")
            && let Some(core) =
                self.get_object(&core_res, &ns, meta_str(gone, "name").unwrap_or(""))
        {
            let name = meta_str(&core, "name").unwrap_or("").to_owned();
            self.delete_object(&core_res, &ns, &name, core);
        }
        if res.namespaced && !ns.is_empty() {
            self.finish_namespace(&ns);
        }
    }

    /// Writes the core/v1 view of an `events.k8s.io` Event (created or replaced).
    fn mirror_event(&mut self, ev: &Value) {
        let Some(core_res) = self.registry.get("", "v1", "events") else {
            return;
        };
        let core = builtin::core_event_from(ev);
        let ns = meta_str(ev, "namespace").unwrap_or("").to_owned();
        let name = meta_str(ev, "name").unwrap_or("").to_owned();
        let written = match self.get_object(&core_res, &ns, &name) {
            Some(old) => self
                .replace(&core_res, &ns, &name, old, core, false, &Query::default())
                .map(drop),
            None => self
                .create(&core_res, &ns, core, &Query::default())
                .map(drop),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not mirror an events.k8s.io Event to core/v1");
        }
    }

    /// Deletes everything in a terminating namespace, then the namespace when it is empty.
    fn empty_namespace(&mut self, ns: &str) {
        let contents = self.objects_where(|r, o_ns, _| r.namespaced && o_ns == ns);
        for (r, _, name, o) in contents {
            self.delete_object(&r, ns, &name, o);
        }
        self.finish_namespace(ns);
    }

    fn finish_namespace(&mut self, ns: &str) {
        let Some(nres) = self.registry.get("", "v1", "namespaces") else {
            return;
        };
        let Some(nobj) = self.get_object(&nres, "", ns) else {
            return;
        };
        if nobj.pointer("/metadata/deletionTimestamp").is_none() || !finalizers(&nobj).is_empty() {
            return;
        }
        if self
            .objects_where(|r, o_ns, _| r.namespaced && o_ns == ns)
            .is_empty()
        {
            self.commit(
                &nres,
                "",
                ns,
                (*nobj).clone(),
                EventType::Deleted,
                Some(nobj),
            );
        }
    }
}

/// A stored object with its resource, namespace and name.
type Located = (Arc<Resource>, String, String, Arc<Value>);

impl State {
    /// Every stored object for which `pred(resource, namespace, object)` holds.
    fn objects_where(&self, pred: impl Fn(&Resource, &str, &Value) -> bool) -> Vec<Located> {
        let mut out = Vec::new();
        for r in self.registry.all() {
            for ((o_ns, o_name), o) in self.objects.get(&r.key()).into_iter().flatten() {
                if pred(r, o_ns, o) {
                    out.push((r.clone(), o_ns.clone(), o_name.clone(), o.clone()));
                }
            }
        }
        out
    }
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    !uid.is_empty()
        && obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|refs| {
                refs.iter()
                    .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
            })
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}
