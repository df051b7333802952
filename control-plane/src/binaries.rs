//! Where the control plane's binaries are: built by `scripts/control-plane/build` into a cache
//! folder per release, as setup-envtest caches them.

use std::path::PathBuf;

use crate::error::Error;

/// The Kubernetes release the binaries are built from (`scripts/control-plane/go.mod`).
pub const RELEASE: &str = "v1.37.2";

/// The folder holding etcd, kube-apiserver, kube-controller-manager and kubectl.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// `KEYBRAKE_K8S_DIR`, else `$XDG_CACHE_HOME/keybrake/k8s-RELEASE` (or under `~/.cache`);
    /// fails, naming the missing file, unless every binary is there.
    pub fn locate() -> Result<Binaries, Error> {
        let dir = match std::env::var_os("KEYBRAKE_K8S_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let cache = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .unwrap_or_else(|| PathBuf::from(".cache"));
                cache.join("keybrake").join(format!("k8s-{RELEASE}"))
            }
        };
        let found = Binaries { dir };
        for bin in [
            found.etcd(),
            found.apiserver(),
            found.controller_manager(),
            found.kubectl(),
        ] {
            if !bin.is_file() {
                return Err(Error::MissingBinary(bin));
            }
        }
        Ok(found)
    }

    /// etcd.
    pub fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    /// kube-apiserver.
    pub fn apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    /// kube-controller-manager.
    pub fn controller_manager(&self) -> PathBuf {
        self.dir.join("kube-controller-manager")
    }

    /// kubectl of the same release.
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }
}
