//! TLS on both listeners, from a certificate in a Kubernetes Secret of the shape cert-manager
//! writes (`tls.crt`, `tls.key`; `ca.crt` is for clients). The Secret is watched: a renewed
//! certificate serves the next handshake while open connections keep theirs, so a rotation drops
//! nothing. A Secret that stops parsing is logged and the last good certificate kept.

use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use rustls::{
    ServerConfig,
    crypto::ring,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Why a certificate cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `KEYBRAKE_TLS_SECRET` is not `namespace/name`.
    #[error("KEYBRAKE_TLS_SECRET must be namespace/name, got {0:?}")]
    Name(String),
    /// The Secret does not exist.
    #[error(
        "the TLS Secret {0} does not exist (cert-manager writes it once the Certificate is issued)"
    )]
    Missing(String),
    /// The Secret lacks a key or holds something unusable.
    #[error("the TLS Secret {secret} is not usable: {reason}")]
    Invalid {
        /// `namespace/name`.
        secret: String,
        /// What is wrong with its certificate or key.
        reason: String,
    },
    /// The API server could not be asked.
    #[error("reading the TLS Secret: {0}")]
    Kube(#[from] kube::Error),
}

/// The certificate and key of a Secret's `tls.crt` and `tls.key`, checked as a pair.
pub fn certified_key(secret: &str, crt: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        secret: secret.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("tls.crt is not PEM ({e})")))?;
    if chain.is_empty() {
        return Err(invalid("tls.crt holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| invalid(format!("tls.key holds no PEM private key ({e})")))?;
    let provider = ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| invalid(format!("tls.key does not belong to tls.crt ({e})")))?;
    Ok(certified)
}

fn from_secret(name: &str, s: &Secret) -> Result<CertifiedKey, TlsError> {
    let get = |k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|v| v.0.clone())
            .ok_or_else(|| TlsError::Invalid {
                secret: name.to_owned(),
                reason: format!("no {k}"),
            })
    };
    certified_key(name, &get("tls.crt")?, &get("tls.key")?)
}

/// The certificate served now; swapped when the Secret changes.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Starts with `first`.
    pub fn new(first: CertifiedKey) -> Certificates {
        Certificates {
            current: RwLock::new(Arc::new(first)),
        }
    }

    /// Serves `next` from the next handshake on.
    pub fn replace(&self, next: CertifiedKey) {
        if let Ok(mut c) = self.current.write() {
            *c = Arc::new(next);
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// What a listener speaks, offered by ALPN: the data port both, the admin port HTTP/1.1 only
/// (offering h2 there would have a probe or a scraper that prefers it get a closed connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/2 and HTTP/1.1.
    Both,
    /// HTTP/1.1 only.
    Http1,
}

/// A rustls server configuration that asks `certs` at each handshake.
pub fn server_config(
    certs: Arc<Certificates>,
    protocols: Protocols,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(ring::default_provider().into())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = match protocols {
        Protocols::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocols::Http1 => vec![b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}

/// `namespace/name` split (both required: an empty namespace would watch every namespace).
pub fn secret_ref(text: &str) -> Result<(String, String), TlsError> {
    keybrake_crds::validate::namespaced_name(text).map_err(|_| TlsError::Name(text.to_owned()))
}

/// Reads the Secret once (the start fails when it is missing or unusable).
pub async fn load(client: &Client, secret: &str) -> Result<Certificates, TlsError> {
    let (ns, name) = secret_ref(secret)?;
    let found = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&name)
        .await?
        .ok_or_else(|| TlsError::Missing(secret.to_owned()))?;
    Ok(Certificates::new(from_secret(secret, &found)?))
}

/// Follows the Secret and swaps the certificate on each change, until the task is dropped.
pub async fn follow(
    client: Client,
    secret: String,
    certs: Arc<Certificates>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let Ok((ns, name)) = secret_ref(&secret) else {
        return;
    };
    let api = Api::<Secret>::namespaced(client, &ns);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut changes = watcher(api, config).applied_objects().boxed();
    while let Some(change) = changes.next().await {
        match change
            .map_err(|e| e.to_string())
            .and_then(|s| from_secret(&secret, &s).map_err(|e| e.to_string()))
        {
            Ok(next) => {
                certs.replace(next);
                metrics.tls_reloaded(true);
                tracing::info!(secret, "serving the TLS certificate from the Secret");
            }
            Err(e) => {
                metrics.tls_reloaded(false);
                tracing::error!(secret, error = %e, "the TLS Secret changed into something unusable; the last good certificate is kept");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_are_namespace_slash_name() {
        assert_eq!(
            secret_ref("keybrake-system/keybrake-proxy-tls").unwrap(),
            ("keybrake-system".into(), "keybrake-proxy-tls".into())
        );
        for bad in ["", "x", "/x", "x/", "a/b/c", "keybrake-proxy-tls"] {
            assert!(secret_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_certificate_needs_its_own_key() {
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let crt = one.cert.pem();
        assert!(
            certified_key(
                "s",
                crt.as_bytes(),
                one.signing_key.serialize_pem().as_bytes()
            )
            .is_ok()
        );
        let mismatched = certified_key(
            "s",
            crt.as_bytes(),
            other.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap_err();
        assert!(
            mismatched.to_string().contains("does not belong"),
            "{mismatched}"
        );
        let empty = certified_key("s", b"", b"").unwrap_err();
        assert!(empty.to_string().contains("no certificate"), "{empty}");
    }
}
