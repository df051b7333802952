//! Optional persistence: the objects are written to a JSON file shortly after each change and
//! read back at start, so `keybrake dev` can restart without losing objects.

use std::{path::Path, sync::Arc, time::Duration};

use serde_json::{Value, json};

use crate::{
    resources::{ResourceKey, from_crd},
    store::Store,
};

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The file could not be read or written.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O failure reading or writing it.
        source: std::io::Error,
    },
    /// The file is not a kube-lite state file.
    #[error("state file {path} is not valid kube-lite state: {why}")]
    Format {
        /// The file.
        path: String,
        /// What in its content is wrong.
        why: String,
    },
}

/// Writes the store to `path` atomically (temp file, then rename).
pub fn save(store: &Store, path: &Path) -> Result<(), PersistError> {
    let doc = {
        let st = store.lock();
        let objects: Vec<Value> = st
            .objects
            .iter()
            .flat_map(|(key, objs)| {
                objs.values()
                    .map(move |o| json!({"group": key.group, "plural": key.plural, "object": **o}))
            })
            .collect();
        json!({"resourceVersion": st.rv, "objects": objects})
    };
    let io = |source| PersistError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Loads `path` into `store` (a missing file is an empty start). CRDs are registered first so
/// their objects are served again.
pub fn load(store: &Store, path: &Path) -> Result<(), PersistError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PersistError::Io {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let format = |why: String| PersistError::Format {
        path: path.display().to_string(),
        why,
    };
    let doc: Value = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    let rv = doc["resourceVersion"]
        .as_u64()
        .ok_or_else(|| format("no resourceVersion".into()))?;
    let mut objects = Vec::new();
    for entry in doc["objects"]
        .as_array()
        .ok_or_else(|| format("no objects".into()))?
    {
        let key = ResourceKey {
            group: entry["group"].as_str().unwrap_or("").to_owned(),
            plural: entry["plural"].as_str().unwrap_or("").to_owned(),
        };
        objects.push((key, entry["object"].clone()));
    }
    let mut st = store.lock();
    for (key, obj) in &objects {
        if key.group == "apiextensions.k8s.io"
            && key.plural == "customresourcedefinitions"
            && let Ok(res) = from_crd(obj)
        {
            st.registry.insert(res);
        }
    }
    st.restore(rv, objects);
    Ok(())
}

/// Saves the store after changes, at most every 100 ms, until the store is dropped.
pub async fn keep_saving(store: Arc<Store>, path: std::path::PathBuf) {
    loop {
        store.changed.notified().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.take_dirty()
            && let Err(e) = save(&store, &path)
        {
            tracing::error!(error = %e, "could not save state");
        }
    }
}
