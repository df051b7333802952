//! The control plane's keys, made once per folder: a CA, kube-apiserver's serving certificate
//! for 127.0.0.1 and localhost, the ServiceAccount token signing key pair, and the administrator's
//! bearer token (kube-apiserver's static token file, group `system:masters`).

use std::{io::Read, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::{Error, io};

pub const CA: &str = "ca.pem";
pub const SERVING: &str = "apiserver.pem";
pub const SERVING_KEY: &str = "apiserver-key.pem";
pub const SA_KEY: &str = "sa-key.pem";
pub const SA_PUB: &str = "sa.pub";
pub const TOKENS: &str = "tokens.csv";

/// What the rest of the crate needs from the keys.
pub struct Pki {
    pub ca_pem: String,
    pub admin_token: String,
}

impl Pki {
    /// Reads the keys in `dir`, or makes them when the folder has none.
    pub fn ensure(dir: &Path) -> Result<Pki, Error> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| io(format!("reading {}", dir.join(name).display()), e))
        };
        if !dir.join(TOKENS).exists() {
            generate(dir)?;
        }
        let tokens = read(TOKENS)?;
        let admin_token = tokens
            .split(',')
            .next()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Kubeconfig(format!("{TOKENS} has no token")))?
            .to_owned();
        Ok(Pki {
            ca_pem: read(CA)?,
            admin_token,
        })
    }
}

fn generate(dir: &Path) -> Result<(), Error> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| io(format!("writing {}", dir.join(name).display()), e))
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keybrake control plane CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    write(CA, ca.self_signed(&ca_key)?.pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.use_authority_key_identifier_extension = true;
    write(SERVING, serving.signed_by(&key, &issuer)?.pem())?;
    write(SERVING_KEY, key.serialize_pem())?;

    let sa = KeyPair::generate()?;
    write(SA_KEY, sa.serialize_pem())?;
    write(SA_PUB, sa.public_key_pem())?;

    // token,user,uid,"groups": kube-apiserver's --token-auth-file.
    write(
        TOKENS,
        format!(
            "{},keybrake-admin,keybrake-admin,\"system:masters\"\n",
            random_token()?
        ),
    )
}

fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| io("reading /dev/urandom".into(), e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
