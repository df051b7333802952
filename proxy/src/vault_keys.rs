//! The VaultKeys as the API server has them, so a call is refused the moment its VaultKey is
//! revoked (`spec.revoked`) or deleted, even while the operator is down and has not yet revoked
//! the key in Redis. Redis stays the primary check (every call goes through the reserve script);
//! this is the second one, from the source of truth users edit with kubectl.

use std::time::Duration;

use futures::{FutureExt, StreamExt};
use keybrake_crds::VaultKey;
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

/// A cache of VaultKeys, kept by a watch.
#[derive(Clone)]
pub struct KeyIndex {
    store: reflector::Store<VaultKey>,
    client: Client,
}

impl KeyIndex {
    /// Starts watching all VaultKeys; the returned future runs the watch until dropped.
    pub fn start(client: Client) -> (KeyIndex, impl std::future::Future<Output = ()>) {
        let (store, writer) = reflector::store::<VaultKey>();
        let events = reflector(
            writer,
            watcher(
                Api::<VaultKey>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(|_| futures::future::ready(()));
        (KeyIndex { store, client }, events)
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
        let of = |k: &VaultKey| {
            if k.spec.revoked {
                Standing::Revoked
            } else {
                Standing::Live
            }
        };
        if let Some(k) = self.store.get(&ObjectRef::new(name).within(ns)) {
            return of(&k);
        }
        let api: Api<VaultKey> = Api::namespaced(self.client.clone(), ns);
        match tokio::time::timeout(Duration::from_secs(1), api.get_opt(name)).await {
            Ok(Ok(Some(k))) => of(&k),
            Ok(Ok(None)) => Standing::Gone,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, vault_key, "could not look up a VaultKey missing from the cache");
                Standing::Live
            }
            Err(_) => Standing::Live,
        }
    }
}
