//! The proxy's CA, copied into every key's Secret so workloads trust a privately issued proxy
//! certificate with no code change. Read from the Secret cert-manager (or the user) keeps it in
//! (`ca.crt`), followed: a new CA reaches every key's Secret at once, through a reconcile of
//! every VaultKey.

use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use keybrake_ledger::secret_env::{CA_FILE, ProxyCa};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

/// The CA as last read, shared with the reconciles.
#[derive(Debug, Default)]
pub struct ProxyCaCache {
    current: RwLock<Option<ProxyCa>>,
}

impl ProxyCaCache {
    /// The CA to write into key Secrets (`None` when no CA Secret is configured or read yet).
    pub fn get(&self) -> Option<ProxyCa> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, next: ProxyCa) -> bool {
        match self.current.write() {
            Ok(mut c) if c.as_ref() != Some(&next) => {
                *c = Some(next);
                true
            }
            _ => false,
        }
    }
}

/// The PEM of a Secret's `ca.crt`, when it holds one that looks like PEM.
pub fn ca_of(secret: &Secret) -> Option<String> {
    let pem = secret.data.as_ref()?.get(CA_FILE)?;
    let text = String::from_utf8(pem.0.clone()).ok()?;
    text.contains("-----BEGIN CERTIFICATE-----").then_some(text)
}

/// Follows the Secret `name` in `namespace` into `cache`; yields `()` each time the CA changes,
/// to reconcile every key. Runs until dropped.
pub fn follow(
    client: Client,
    (namespace, name): (String, String),
    mount_path: String,
    cache: Arc<ProxyCaCache>,
) -> impl Stream<Item = ()> + Send + 'static {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let secret = format!("{namespace}/{name}");
    watcher(api, config)
        .default_backoff()
        .applied_objects()
        .filter_map(move |change| {
            let (cache, mount_path, secret) = (cache.clone(), mount_path.clone(), secret.clone());
            async move {
                match change {
                    Ok(s) => match ca_of(&s) {
                        Some(pem) => cache.set(ProxyCa { pem, mount_path }).then(|| {
                            tracing::info!(secret, "read the proxy's CA; rewriting key Secrets");
                        }),
                        None => {
                            tracing::error!(secret, "the proxy CA Secret has no PEM ca.crt; key Secrets keep the last CA");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(secret, error = %e, "watching the proxy CA Secret");
                        None
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn only_a_pem_ca_is_taken() {
        let with = |v: &str| Secret {
            data: Some([(CA_FILE.to_owned(), ByteString(v.as_bytes().to_vec()))].into()),
            ..Default::default()
        };
        assert!(ca_of(&with("-----BEGIN CERTIFICATE-----\nMII...\n")).is_some());
        assert!(ca_of(&with("not a certificate")).is_none());
        assert!(ca_of(&Secret::default()).is_none());
        let cache = ProxyCaCache::default();
        let ca = ProxyCa {
            pem: "p".into(),
            mount_path: "/m".into(),
        };
        assert!(cache.set(ca.clone()));
        assert!(!cache.set(ca.clone()), "the same CA again is no change");
        assert_eq!(cache.get(), Some(ca));
    }
}
