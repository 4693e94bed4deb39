//! A node's record of its instances: a JSON map in one file (mode 0600, it holds
//! passwords), rewritten atomically (temp file + rename) so a crash never leaves half a
//! record.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::{InstanceId, ServiceError};

/// Instances by id, each with the type's own record `T`.
pub struct InstanceTable<T> {
    path: PathBuf,
    entries: Mutex<BTreeMap<InstanceId, T>>,
}

impl<T: Serialize + DeserializeOwned + Clone> InstanceTable<T> {
    /// Loads `path` (an absent file is an empty table).
    pub fn load(path: &Path) -> Result<Self, ServiceError> {
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ServiceError::Other(format!(
                    "{} is not a valid instance table ({e}); restore it from a backup",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(ServiceError::io("cannot read instance table", path, e)),
        };
        Ok(InstanceTable {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
        })
    }

    pub async fn get(&self, id: &InstanceId) -> Option<T> {
        self.entries.lock().await.get(id).cloned()
    }

    pub async fn ids(&self) -> Vec<InstanceId> {
        self.entries.lock().await.keys().cloned().collect()
    }

    pub async fn len(&self) -> usize {
        self.entries.lock().await.len()
    }

    pub async fn is_empty(&self) -> bool {
        self.entries.lock().await.is_empty()
    }

    /// Inserts or replaces `id`, then persists; on a write failure the table is unchanged.
    pub async fn put(&self, id: &InstanceId, value: T) -> Result<(), ServiceError> {
        let mut entries = self.entries.lock().await;
        let mut next = entries.clone();
        next.insert(id.clone(), value);
        self.write(&next)?;
        *entries = next;
        Ok(())
    }

    /// Removes `id` (absent is fine), then persists.
    pub async fn remove(&self, id: &InstanceId) -> Result<Option<T>, ServiceError> {
        let mut entries = self.entries.lock().await;
        let mut next = entries.clone();
        let old = next.remove(id);
        if old.is_some() {
            self.write(&next)?;
            *entries = next;
        }
        Ok(old)
    }

    fn write(&self, entries: &BTreeMap<InstanceId, T>) -> Result<(), ServiceError> {
        let bytes = serde_json::to_vec_pretty(entries)
            .map_err(|e| ServiceError::Other(format!("cannot encode instance table: {e}")))?;
        let tmp = self.path.with_extension("tmp");
        let io = |e| ServiceError::io("cannot write instance table", &self.path, e);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn entries_survive_a_reload_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        let id = InstanceId::new("abc-1").unwrap();
        let table: InstanceTable<String> = InstanceTable::load(&path).unwrap();
        table.put(&id, "secret".into()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again: InstanceTable<String> = InstanceTable::load(&path).unwrap();
        assert_eq!(again.get(&id).await.as_deref(), Some("secret"));
        assert_eq!(again.remove(&id).await.unwrap().as_deref(), Some("secret"));
        assert!(
            InstanceTable::<String>::load(&path)
                .unwrap()
                .is_empty()
                .await
        );
    }

    #[test]
    fn a_corrupt_table_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = InstanceTable::<String>::load(&path)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("instances.json"), "{err}");
    }
}
