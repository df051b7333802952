//! The operator's own writes, remembered by the resourceVersion each one left, so the watch
//! event that echoes a write does not start another reconcile of what was just decided. At
//! scale those echoes were most reconciles: each new key caused four (its creation, the
//! finalizer, its Secret, its status), three of them to find nothing to do.
//!
//! Only an exact match is an echo: the object as the write left it. Any other version (someone
//! else's change, or a later one of ours) is passed on as before.

use std::{collections::HashMap, sync::Mutex};

use kube::api::ObjectMeta;

/// How many versions are remembered per object: a reconcile writes an object at most twice
/// (the finalizer, the status), and an echo that never comes must not pile up.
const PER_OBJECT: usize = 4;

/// The versions our writes left, by object uid.
#[derive(Debug, Default)]
pub struct OwnWrites(Mutex<HashMap<String, Vec<String>>>);

impl OwnWrites {
    /// Remembers the version a write of ours left (`meta` from the API server's answer).
    pub fn record(&self, meta: &ObjectMeta) {
        let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) else {
            return;
        };
        let Ok(mut seen) = self.0.lock() else {
            return;
        };
        let versions = seen.entry(uid.clone()).or_default();
        if versions.len() == PER_OBJECT {
            versions.remove(0);
        }
        versions.push(version.clone());
    }

    /// True when `meta` is exactly what one of our writes left; that version is then forgotten
    /// (each write is echoed once). A deleted object is forgotten whole.
    pub fn is_echo(&self, meta: &ObjectMeta) -> bool {
        let (Some(uid), Some(version)) = (&meta.uid, &meta.resource_version) else {
            return false;
        };
        let Ok(mut seen) = self.0.lock() else {
            return false;
        };
        let Some(versions) = seen.get_mut(uid) else {
            return false;
        };
        let echo = match versions.iter().position(|v| v == version) {
            Some(i) => {
                versions.remove(i);
                true
            }
            None => false,
        };
        if versions.is_empty() || meta.deletion_timestamp.is_some() {
            seen.remove(uid);
        }
        echo
    }

    /// Forgets an object that is gone.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut seen) = self.0.lock() {
            seen.remove(uid);
        }
    }

    /// How many objects have a write not yet echoed (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |s| s.len())
    }

    /// Whether no write awaits its echo.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            resource_version: Some(version.into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_version_a_write_left_is_an_echo_and_only_once() {
        let own = OwnWrites::default();
        own.record(&meta("a", "10"));
        own.record(&meta("a", "12"));
        assert!(!own.is_echo(&meta("a", "11")), "someone else's write");
        assert!(!own.is_echo(&meta("b", "10")), "another object");
        assert!(own.is_echo(&meta("a", "10")));
        assert!(!own.is_echo(&meta("a", "10")), "echoed once");
        assert!(own.is_echo(&meta("a", "12")));
        assert!(own.is_empty());
    }

    #[test]
    fn an_echo_that_never_comes_does_not_pile_up() {
        let own = OwnWrites::default();
        for v in 0..10 {
            own.record(&meta("a", &v.to_string()));
        }
        assert!(!own.is_echo(&meta("a", "0")));
        assert!(own.is_echo(&meta("a", "9")));
        own.forget("a");
        assert!(own.is_empty());
    }
}
