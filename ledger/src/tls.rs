//! TLS material for `rediss://` connections: a private CA to trust instead of the webpki roots,
//! and a client certificate and key for mutual TLS. Read from PEM files once, at start, and
//! checked there, so a bad file stops the start naming the file instead of failing every
//! connection later.

use std::path::{Path, PathBuf};

use redis::{ClientTlsConfig, TlsCertificates};
use rustls::{ClientConfig, RootCertStore, crypto::ring};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Where the TLS files are; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates of the CA(s) that sign the Redis servers' certificates, trusted instead
    /// of the webpki roots (`KEYBRAKE_REDIS_CA_FILE`).
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to Redis for mutual TLS
    /// (`KEYBRAKE_REDIS_CLIENT_CERT_FILE`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (`KEYBRAKE_REDIS_CLIENT_KEY_FILE`).
    pub client_key_file: Option<PathBuf>,
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read the Redis {what} {path}: {source}")]
    Read {
        /// Which file (and its variable).
        what: &'static str,
        /// The path it was read from.
        path: PathBuf,
        /// The failure reading it.
        source: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("the Redis {what} {path} is not usable: {reason}")]
    Invalid {
        /// Which file (and its variable).
        what: &'static str,
        /// The path it was read from.
        path: PathBuf,
        /// What in its content cannot be used.
        reason: String,
    },
    /// Only one of the client certificate and its key is set.
    #[error(
        "mutual TLS needs both KEYBRAKE_REDIS_CLIENT_CERT_FILE and KEYBRAKE_REDIS_CLIENT_KEY_FILE; only one is set"
    )]
    HalfPair,
    /// The client key does not belong to the certificate (or rustls refuses the pair).
    #[error("the Redis client certificate {cert} and key {key} do not make a pair: {reason}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why the two do not form a usable pair.
        reason: String,
    },
}

const CA: &str = "CA file (KEYBRAKE_REDIS_CA_FILE)";
const CERT: &str = "client certificate (KEYBRAKE_REDIS_CLIENT_CERT_FILE)";
const KEY: &str = "client key (KEYBRAKE_REDIS_CLIENT_KEY_FILE)";

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The certificates in a PEM file: at least one, each well-formed PEM.
fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, format!("bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(invalid(
            what,
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(certs)
}

impl TlsFiles {
    /// Whether no file is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert_file.is_none() && self.client_key_file.is_none()
    }

    /// Reads and checks the files: `None` when none is set (the webpki roots, no client
    /// certificate).
    pub fn load(&self) -> Result<Option<TlsCertificates>, TlsError> {
        if self.is_empty() {
            return Ok(None);
        }
        let mut roots = RootCertStore::empty();
        let root_cert = match &self.ca_file {
            Some(path) => {
                let pem = read(CA, path)?;
                for cert in certificates(CA, path, &pem)? {
                    roots.add(cert).map_err(|e| invalid(CA, path, e))?;
                }
                Some(pem)
            }
            None => None,
        };
        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => None,
            (Some(cert_path), Some(key_path)) => {
                let client_cert = read(CERT, cert_path)?;
                let chain = certificates(CERT, cert_path, &client_cert)?;
                let client_key = read(KEY, key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&client_key)
                    .map_err(|e| invalid(KEY, key_path, format!("no PEM private key ({e})")))?;
                // rustls checks that the key signs for the certificate; ask it now, not at the
                // first handshake. The provider is only used for this check.
                ClientConfig::builder_with_provider(ring::default_provider().into())
                    .with_safe_default_protocol_versions()
                    .and_then(|b| {
                        b.with_root_certificates(roots.clone())
                            .with_client_auth_cert(chain, key)
                    })
                    .map_err(|e| TlsError::Pair {
                        cert: cert_path.clone(),
                        key: key_path.clone(),
                        reason: e.to_string(),
                    })?;
                Some(ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            _ => return Err(TlsError::HalfPair),
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keybrake-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn nothing_set_is_no_tls_material() {
        assert!(TlsFiles::default().load().unwrap().is_none());
    }

    #[test]
    fn a_missing_file_is_named() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = files.load().unwrap_err().to_string();
        assert!(
            err.contains(
                "cannot read the Redis CA file (KEYBRAKE_REDIS_CA_FILE) /nonexistent/ca.pem"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let dir = temp_dir("empty");
        let files = TlsFiles {
            ca_file: Some(file(&dir, "ca.pem", "not a certificate\n")),
            ..Default::default()
        };
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let files = TlsFiles {
            ca_file: Some(file(
                &dir,
                "bad.pem",
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            )),
            ..Default::default()
        };
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("bad.pem is not usable: bad PEM"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_file_without_a_key_is_named() {
        let dir = temp_dir("key");
        let files = TlsFiles {
            client_cert_file: Some(file(
                &dir,
                "cert.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            )),
            client_key_file: Some(file(&dir, "key.pem", "not a key\n")),
            ..Default::default()
        };
        let err = files.load().unwrap_err().to_string();
        assert!(
            err.contains("client key (KEYBRAKE_REDIS_CLIENT_KEY_FILE)")
                && err.contains("key.pem is not usable: no PEM private key"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let files = TlsFiles {
            client_cert_file: Some("/tmp/cert.pem".into()),
            ..Default::default()
        };
        assert!(matches!(files.load(), Err(TlsError::HalfPair)));
    }
}
