//! The VaultKeys as the API server has them, so a call is refused the moment its VaultKey is
//! revoked (`spec.revoked`) or deleted, even while the operator is down and has not yet revoked
//! the key in Redis. Redis stays the primary check (every call goes through the reserve script);
//! this is the second one, from the source of truth users edit with kubectl.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use keybrake_crds::{Listed, VaultKey};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, reflector::ObjectRef, watcher},
};

/// Where a key stands in the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The VaultKey exists and is not revoked (or the API server could not say).
    Live,
    /// `spec.revoked` is true.
    Revoked,
    /// The VaultKey no longer exists.
    Gone,
}

/// A cache of VaultKeys, kept by a watch. The watch lists them as stored (`Listed`): one
/// object our types cannot read must not blind the proxy to every other revocation.
#[derive(Clone)]
pub struct KeyIndex {
    store: reflector::Store<Listed<VaultKey>>,
    /// Keys the API server has that our types cannot read: refused as revoked (fail closed;
    /// the operator revokes them in Redis too). Parsed once per watch event, not per call.
    unreadable: Arc<Mutex<HashSet<ObjectRef<Listed<VaultKey>>>>>,
    client: Client,
}

impl KeyIndex {
    /// Starts watching all VaultKeys; the returned future runs the watch until dropped.
    pub fn start(client: Client) -> (KeyIndex, impl std::future::Future<Output = ()>) {
        let (store, writer) = reflector::store::<Listed<VaultKey>>();
        let unreadable: Arc<Mutex<HashSet<ObjectRef<Listed<VaultKey>>>>> = Arc::default();
        let marks = unreadable.clone();
        let events = reflector(
            writer,
            watcher(
                Api::<Listed<VaultKey>>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(move |event| {
            // Parsed before the lock is taken; a poisoned lock still holds a usable set.
            let change = match event {
                Ok(watcher::Event::Apply(k) | watcher::Event::InitApply(k)) => {
                    Some((ObjectRef::from_obj(&k), k.parse().is_err()))
                }
                Ok(watcher::Event::Delete(k)) => Some((ObjectRef::from_obj(&k), false)),
                _ => None,
            };
            if let Some((at, unreadable)) = change {
                let mut marks = marks.lock().unwrap_or_else(|p| p.into_inner());
                if unreadable {
                    marks.insert(at);
                } else {
                    marks.remove(&at);
                }
            }
            futures::future::ready(())
        });
        (
            KeyIndex {
                store,
                unreadable,
                client,
            },
            events,
        )
    }

    /// The standing of `namespace/name`. A key missing from the cache is looked up in the API
    /// server before it is called gone (the cache may trail a key issued a moment ago); when the
    /// API server cannot be asked, the Redis record decides.
    pub async fn standing(&self, vault_key: &str) -> Standing {
        let Some((ns, name)) = vault_key.split_once('/') else {
            return Standing::Live;
        };
        let synced = matches!(self.store.wait_until_ready().now_or_never(), Some(Ok(())));
        if !synced {
            return Standing::Live;
        }
        // Revoked by its flag, or unreadable (a flag we cannot trust either way).
        let of = |k: &Listed<VaultKey>, unreadable: bool| {
            if unreadable || k.spec_bool(&["revoked"]) == Some(true) {
                Standing::Revoked
            } else {
                Standing::Live
            }
        };
        let at = ObjectRef::new(name).within(ns);
        if let Some(k) = self.store.get(&at) {
            let unreadable = self
                .unreadable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&at);
            return of(&k, unreadable);
        }
        let api: Api<Listed<VaultKey>> = Api::namespaced(self.client.clone(), ns);
        match tokio::time::timeout(Duration::from_secs(1), api.get_opt(name)).await {
            Ok(Ok(Some(k))) => {
                let unreadable = k.parse().is_err();
                of(&k, unreadable)
            }
            Ok(Ok(None)) => Standing::Gone,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, vault_key, "could not look up a VaultKey missing from the cache");
                Standing::Live
            }
            Err(_) => Standing::Live,
        }
    }
}
