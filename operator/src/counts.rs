//! How many VaultKeys draw on each SpendPolicy, kept up to date from the VaultKey watch's own
//! events. The policy reconcile reads its count here: scanning every key on each reconcile, as
//! each arriving key started one, was quadratic in the number of keys.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use kube::{ResourceExt, runtime::watcher::Event};

use crate::cached::CachedKey;

/// A policy, by namespace and name.
pub type PolicyName = (String, String);

/// Keys per policy, and the policies whose count moved since they were last told.
#[derive(Debug, Default)]
pub struct KeyCounts(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// Each key's policy.
    policy_of: HashMap<String, PolicyName>,
    counts: HashMap<PolicyName, u32>,
    changed: HashSet<PolicyName>,
    /// The keys a relist has shown so far: those it does not show are gone.
    relisting: Option<HashSet<String>>,
}

impl Inner {
    fn set(&mut self, uid: &str, policy: Option<PolicyName>) {
        let was = match &policy {
            Some(p) if self.policy_of.get(uid) == Some(p) => return,
            Some(p) => self.policy_of.insert(uid.to_owned(), p.clone()),
            None => self.policy_of.remove(uid),
        };
        if let Some(was) = was {
            if let Some(n) = self.counts.get_mut(&was) {
                *n = n.saturating_sub(1);
            }
            self.changed.insert(was);
        }
        if let Some(p) = policy {
            *self.counts.entry(p.clone()).or_default() += 1;
            self.changed.insert(p);
        }
    }
}

/// The policy a key draws on, read without parsing the rest of it (an unreadable key with a
/// policy name counts, as it did when keys were counted from the cache).
fn policy_of(key: &CachedKey) -> Option<PolicyName> {
    Some((key.namespace()?, key.policy_name()?.to_owned()))
}

impl KeyCounts {
    /// Takes in one event of the VaultKey watch.
    pub fn observe(&self, event: &Event<CachedKey>) {
        let Ok(mut inner) = self.0.lock() else {
            return;
        };
        match event {
            Event::Init => inner.relisting = Some(HashSet::new()),
            Event::InitApply(key) | Event::Apply(key) => {
                let Some(uid) = key.uid() else { return };
                if let Some(seen) = inner.relisting.as_mut() {
                    seen.insert(uid.clone());
                }
                inner.set(&uid, policy_of(key));
            }
            Event::Delete(key) => {
                if let Some(uid) = key.uid() {
                    inner.set(&uid, None);
                }
            }
            Event::InitDone => {
                let Some(seen) = inner.relisting.take() else {
                    return;
                };
                let gone: Vec<String> = inner
                    .policy_of
                    .keys()
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    inner.set(&uid, None);
                }
            }
        }
    }

    /// The keys of the policy `name` in `ns`.
    pub fn count(&self, ns: &str, name: &str) -> u32 {
        self.0.lock().map_or(0, |inner| {
            inner
                .counts
                .get(&(ns.to_owned(), name.to_owned()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// The policies whose count moved since the last call.
    pub fn take_changed(&self) -> Vec<PolicyName> {
        self.0
            .lock()
            .map_or_else(|_| Vec::new(), |mut inner| inner.changed.drain().collect())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(uid: &str, policy: &str) -> CachedKey {
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"policyRef": {"name": policy}},
        }))
        .unwrap()
    }

    fn p(name: &str) -> PolicyName {
        ("ns".into(), name.into())
    }

    #[test]
    fn keys_are_counted_per_policy_and_changes_are_told_once() {
        let c = KeyCounts::default();
        c.observe(&Event::Apply(key("a", "p")));
        c.observe(&Event::Apply(key("b", "p")));
        c.observe(&Event::Apply(key("b", "p")));
        c.observe(&Event::Apply(key("c", "q")));
        assert_eq!((c.count("ns", "p"), c.count("ns", "q")), (2, 1));
        let mut changed = c.take_changed();
        changed.sort();
        assert_eq!(changed, vec![p("p"), p("q")]);
        assert!(c.take_changed().is_empty());
        c.observe(&Event::Apply(key("b", "p")));
        assert!(c.take_changed().is_empty(), "a status write moves nothing");
        c.observe(&Event::Delete(key("a", "p")));
        assert_eq!(c.count("ns", "p"), 1);
        assert_eq!(c.take_changed(), vec![p("p")]);
    }

    #[test]
    fn a_relist_forgets_the_keys_it_does_not_show() {
        let c = KeyCounts::default();
        c.observe(&Event::Apply(key("a", "p")));
        c.observe(&Event::Apply(key("b", "p")));
        c.observe(&Event::Init);
        c.observe(&Event::InitApply(key("b", "p")));
        c.observe(&Event::InitDone);
        assert_eq!(c.count("ns", "p"), 1);
    }
}
