//! A private CA made at test time and two certificates it signs, written as PEM files: one for
//! the Redis servers (127.0.0.1 and localhost) and one for a client (mutual TLS). Nothing is
//! checked in: every run has its own CA.

use std::path::PathBuf;

use anyhow::Result;
use keybrake_ledger::connection::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// The CA, server and client files, deleted on drop.
pub struct TestPki {
    dir: TempDir,
    ca: CertificateParams,
}

impl TestPki {
    /// Makes the CA and signs the server and client certificates.
    pub fn generate() -> Result<TestPki> {
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "keybrake test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        std::fs::write(dir.path().join("ca.pem"), ca.self_signed(&ca_key)?.pem())?;
        std::fs::write(dir.path().join("ca-key.pem"), ca_key.serialize_pem())?;
        let issuer = Issuer::new(ca.clone(), ca_key);
        // The server certificate is also the client certificate a sentinel or a replica shows
        // when it connects to another node (redis-server's default), hence both purposes.
        let leaves = [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
            (
                "client",
                Vec::new(),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            ),
        ];
        for (name, sans, purposes) in leaves {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("keybrake test {name}"));
            params.extended_key_usages = purposes;
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer)?;
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem())?;
            std::fs::write(
                dir.path().join(format!("{name}-key.pem")),
                key.serialize_pem(),
            )?;
        }
        Ok(TestPki { dir, ca })
    }

    /// Signs another server certificate for 127.0.0.1 and localhost with the same CA (a
    /// renewal): `(certificate PEM, key PEM)`.
    pub fn renew_server(&self) -> Result<(String, String)> {
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(self.path("ca-key.pem"))?)?;
        let issuer = Issuer::new(self.ca.clone(), ca_key);
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "keybrake test server (renewed)");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    }

    /// A file of the set: `ca.pem`, `server.pem`, `server-key.pem`, `client.pem`,
    /// `client-key.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The deployables' TLS files: trust this CA; with `client`, also present the client
    /// certificate (mutual TLS).
    pub fn files(&self, client: bool) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.path("ca.pem")),
            client_cert_file: client.then(|| self.path("client.pem")),
            client_key_file: client.then(|| self.path("client-key.pem")),
        }
    }

    /// The same material as redis-rs takes it, for the harness's own connections.
    pub fn certificates(&self, client: bool) -> Result<redis::TlsCertificates> {
        self.files(client)
            .load()?
            .ok_or_else(|| anyhow::anyhow!("no TLS material"))
    }

    /// redis-server flags for TLS only, on `port` (no plain-text port); with `auth_clients`,
    /// every client must show a certificate this CA signed.
    pub fn server_args(&self, port: u16, auth_clients: bool) -> Vec<String> {
        let path = |n: &str| self.path(n).display().to_string();
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server-key.pem"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            if auth_clients { "yes" } else { "no" },
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

/// The harness's TLS-only servers take their certificates from here.
impl keybrake_redis_harness::TlsMaterial for TestPki {
    fn server_args(&self, port: u16, auth_clients: bool) -> Vec<String> {
        TestPki::server_args(self, port, auth_clients)
    }

    fn certificates(&self, client: bool) -> Result<redis::TlsCertificates> {
        TestPki::certificates(self, client)
    }
}
