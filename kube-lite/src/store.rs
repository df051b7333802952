//! The object store: one global resourceVersion, the objects, the retained event history and
//! the broadcast that feeds watches. Every operation runs under one lock, so a list snapshots
//! the objects and the resourceVersion atomically and watchers see events in RV order.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

use crate::{
    error::{ApiError, Result},
    request::Query,
    resources::{Registry, Resource, ResourceKey},
    selector::{FieldSelector, LabelSelector},
};

/// Type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed.
    Deleted,
}

impl EventType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change to one object.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change created.
    pub rv: u64,
    /// Which resource.
    pub key: ResourceKey,
    /// The object's namespace (`""` for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub type_: EventType,
    /// The object after the change (the last state, for deletions).
    pub object: Arc<Value>,
    /// The object before the change, so selector watches can turn changes into ADDED/DELETED.
    pub previous: Option<Arc<Value>>,
}

/// Objects of one resource, by `(namespace, name)`.
pub type Objects = BTreeMap<(String, String), Arc<Value>>;

/// Everything under the lock.
pub struct State {
    /// The current (last written) resourceVersion.
    pub rv: u64,
    /// Served resources.
    pub registry: Registry,
    /// Stored objects per resource.
    pub objects: BTreeMap<ResourceKey, Objects>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// The RV below which history is incomplete (events were dropped or predate a restart).
    history_floor: u64,
    /// Server-side apply: each manager's last applied configuration, by object and subresource.
    pub applied: HashMap<(ResourceKey, String, String, String, bool), Value>,
    /// Bumped whenever the served resources change (discovery and openapi hashes).
    pub discovery_generation: u64,
    events: broadcast::Sender<Arc<Event>>,
}

/// The store shared by all connections.
pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
    dirty: AtomicBool,
    /// Woken after every committed write (persistence).
    pub changed: Notify,
}

/// A subscription for one watch: the events to send first, then a live receiver.
pub struct WatchStart {
    /// Events before the live stream (synthetic ADDED or replayed history), in RV order.
    pub initial: Vec<Arc<Event>>,
    /// The live stream.
    pub receiver: broadcast::Receiver<Arc<Event>>,
    /// The RV current when the watch started.
    pub rv: u64,
}

/// How many events the history keeps for watch resumption.
pub const DEFAULT_HISTORY: usize = 20_000;

impl Store {
    /// An empty store with the built-in kinds and the default namespaces.
    pub fn new(history_cap: usize) -> Store {
        // Lagging watchers get a 410 and relist, like a real watch cache; the buffer is sized
        // so a healthy client never lags.
        let (events, _) = broadcast::channel(history_cap.max(1024));
        let store = Store {
            state: Mutex::new(State {
                rv: 0,
                registry: Registry::with_builtins(),
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_cap,
                history_floor: 0,
                applied: HashMap::new(),
                discovery_generation: 1,
                events: events.clone(),
            }),
            events,
            dirty: AtomicBool::new(false),
            changed: Notify::new(),
        };
        {
            let mut st = store.lock();
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                if let Some(res) = st.registry.get("", "v1", "namespaces") {
                    let _ = st.create(&res, "", obj, &Query::default());
                }
            }
        }
        store
    }

    /// Locks the state. A poisoned lock (a panic mid-write) is still usable: every write
    /// completes its mutation before it can panic.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the store as changed (called by the write path).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Takes the changed flag (persistence).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// A new live receiver (used before the state is locked elsewhere).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

/// The metadata field of an object as a string.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

/// The selectors of a list or watch, parsed for a resource.
pub struct Filter {
    namespace: Option<String>,
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl Filter {
    /// Parses the selectors of `query` for `res`, scoped to `namespace` when given.
    pub fn new(res: &Resource, namespace: Option<&str>, query: &Query) -> Result<Filter> {
        Ok(Filter {
            namespace: namespace.map(str::to_owned),
            labels: query
                .label_selector
                .as_deref()
                .map(LabelSelector::parse)
                .transpose()?,
            fields: query
                .field_selector
                .as_deref()
                .map(|f| FieldSelector::parse(f, &res.selectable_fields, &res.kind))
                .transpose()?,
        })
    }

    /// Whether an object is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| meta_str(obj, "namespace").unwrap_or("") == ns)
            && self.labels.as_ref().is_none_or(|l| l.matches(obj))
            && self.fields.as_ref().is_none_or(|f| f.matches(obj))
    }
}

impl State {
    /// The objects of a resource.
    pub fn objects_of(&self, key: &ResourceKey) -> Option<&Objects> {
        self.objects.get(key)
    }

    /// One stored object.
    pub fn get_object(&self, res: &Resource, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&res.key())
            .and_then(|o| o.get(&(ns.to_owned(), name.to_owned())))
            .cloned()
    }

    /// `GET` of one object (404 when absent).
    pub fn get(&self, res: &Resource, ns: &str, name: &str) -> Result<Arc<Value>> {
        self.get_object(res, ns, name)
            .ok_or_else(|| ApiError::not_found(&res.qualified_plural(), name))
    }

    /// A list page: the selected objects after `continue`, at most `limit`, the current RV,
    /// and the continue token when more remain.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        query: &Query,
    ) -> Result<(Vec<Arc<Value>>, u64, Option<String>)> {
        let filter = Filter::new(res, ns, query)?;
        let after = match &query.continue_token {
            Some(t) => Some(decode_continue(t)?),
            None => None,
        };
        let mut items = Vec::new();
        let mut next = None;
        if let Some(objects) = self.objects.get(&res.key()) {
            for ((ns, name), obj) in objects {
                if after
                    .as_ref()
                    .is_some_and(|(a_ns, a_name)| (ns, name) <= (a_ns, a_name))
                {
                    continue;
                }
                if !filter.matches(obj) {
                    continue;
                }
                if query.limit > 0 && items.len() == query.limit {
                    next = Some(encode_continue(ns_name_of(&items)));
                    break;
                }
                items.push(obj.clone());
            }
        }
        Ok((items, self.rv, next))
    }

    /// Starts a watch: validates the RV, collects the initial events and subscribes, all under
    /// the lock so no event falls between the two.
    pub fn watch(&self, res: &Resource, ns: Option<&str>, query: &Query) -> Result<WatchStart> {
        let filter = Filter::new(res, ns, query)?;
        let requested = match query.resource_version.as_deref() {
            None | Some("") | Some("0") => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("invalid resourceVersion {v:?}: must be an integer"))
            })?),
        };
        let receiver = self.events.subscribe();
        let key = res.key();
        let initial = match requested {
            None => self
                .objects
                .get(&key)
                .into_iter()
                .flat_map(|o| o.values())
                .filter(|o| filter.matches(o))
                .map(|o| {
                    Arc::new(Event {
                        rv: meta_str(o, "resourceVersion")
                            .and_then(|r| r.parse().ok())
                            .unwrap_or(0),
                        key: key.clone(),
                        namespace: meta_str(o, "namespace").unwrap_or("").to_owned(),
                        type_: EventType::Added,
                        object: o.clone(),
                        previous: None,
                    })
                })
                .collect(),
            Some(n) if n < self.history_floor => {
                return Err(ApiError::expired(n, self.history_floor));
            }
            Some(n) => self
                .history
                .iter()
                .filter(|e| e.rv > n && e.key == key)
                .cloned()
                .collect(),
        };
        Ok(WatchStart {
            initial,
            receiver,
            rv: self.rv,
        })
    }

    /// Records a change: bumps the RV, stamps it on the object, stores or removes it, appends
    /// the event to the history and broadcasts it.
    pub fn commit(
        &mut self,
        res: &Resource,
        ns: &str,
        name: &str,
        mut obj: Value,
        type_: EventType,
        previous: Option<Arc<Value>>,
    ) -> Arc<Value> {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let obj = Arc::new(obj);
        let objects = self.objects.entry(res.key()).or_default();
        let id = (ns.to_owned(), name.to_owned());
        if type_ == EventType::Deleted {
            objects.remove(&id);
            // The object's server-side apply history goes with it.
            let key = res.key();
            self.applied
                .retain(|(k, o_ns, o_name, _, _), _| !(*k == key && o_ns == ns && o_name == name));
        } else {
            objects.insert(id, obj.clone());
        }
        let event = Arc::new(Event {
            rv: self.rv,
            key: res.key(),
            namespace: ns.to_owned(),
            type_,
            object: obj.clone(),
            previous,
        });
        self.history.push_back(event.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.history_floor = old.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
        obj
    }

    /// Retained history events per resource and event type since `after_rv` (for benchmarks
    /// that explain where writes go).
    pub fn writes_since(&self, after_rv: u64) -> BTreeMap<(String, &'static str), usize> {
        let mut counts = BTreeMap::new();
        for e in self.history.iter().filter(|e| e.rv > after_rv) {
            *counts
                .entry((e.key.qualified_plural(), e.type_.as_str()))
                .or_insert(0) += 1;
        }
        counts
    }

    /// Restores objects read from a state file (no events; watch history starts empty, so
    /// any older RV gets a 410 and the client relists, as after a real restart).
    pub fn restore(&mut self, rv: u64, objects: Vec<(ResourceKey, Value)>) {
        for (key, obj) in objects {
            let ns = meta_str(&obj, "namespace").unwrap_or("").to_owned();
            let name = meta_str(&obj, "name").unwrap_or("").to_owned();
            self.objects
                .entry(key)
                .or_default()
                .insert((ns, name), Arc::new(obj));
        }
        self.rv = self.rv.max(rv);
        self.history.clear();
        self.history_floor = self.rv;
    }
}

fn ns_name_of(items: &[Arc<Value>]) -> (String, String) {
    items
        .last()
        .map(|o| {
            (
                meta_str(o, "namespace").unwrap_or("").to_owned(),
                meta_str(o, "name").unwrap_or("").to_owned(),
            )
        })
        .unwrap_or_default()
}

fn encode_continue((ns, name): (String, String)) -> String {
    let raw = json!([ns, name]).to_string();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(String, String)> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad())?;
    let (ns, name): (String, String) = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(("ns".into(), "a b".into()));
        assert_eq!(decode_continue(&t).unwrap(), ("ns".into(), "a b".into()));
        assert_eq!(decode_continue("zz").unwrap_err().code, 400);
        assert_eq!(decode_continue("abc").unwrap_err().code, 400);
    }
}
