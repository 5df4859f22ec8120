//! Where backups go: a URL turned into an object store and its key layout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// An object store holding backups, and what to call it in messages.
pub struct Target {
    store: Arc<dyn ObjectStore>,
    pub label: String,
}

impl Target {
    /// Open the target `url` names: a folder (`file:///path` or a path,
    /// relative to `root`). `create` makes a missing folder (a backup);
    /// without it a missing folder is refused, so a mistyped target is not
    /// answered with "no backups" and left behind as an empty folder.
    pub fn open(url: &str, root: &Path, create: bool) -> Result<Target> {
        if url.trim().is_empty() {
            return Err(Error::usage("--to: the backup target is empty"));
        }
        let folder = match url.split_once("://") {
            Some(("file", rest)) => PathBuf::from(rest),
            Some((scheme, _)) => {
                return Err(Error::usage(format!(
                    "--to {url}: nova cannot back up to {scheme}:// targets; give a folder (a path or file:///path)"
                )));
            }
            None => root.join(url),
        };
        if create {
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        } else if !folder.is_dir() {
            return Err(Error::usage(format!(
                "{url}: there is no backup folder at {}",
                folder.display()
            )));
        }
        let store = LocalFileSystem::new_with_prefix(&folder)
            .map_err(|e| Error::Failed(format!("backup target {}: {e}", folder.display())))?;
        Ok(Target {
            store: Arc::new(store),
            label: folder.display().to_string(),
        })
    }

    fn failed(&self, what: &str, e: object_store::Error) -> Error {
        Error::Failed(format!("backup target {}: {what}: {e}", self.label))
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&Key::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed(key, e)),
        }
    }

    /// Write `bytes` at `key` (atomically: a reader sees all of it or nothing).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&Key::from(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failed(key, e))
    }

    /// The object at `key`; `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.store.get(&Key::from(key)).await {
            Ok(found) => Ok(Some(
                found
                    .bytes()
                    .await
                    .map_err(|e| self.failed(key, e))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(key, e)),
        }
    }

    /// The keys under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        use futures_util::TryStreamExt;
        let metas: Vec<_> = self
            .store
            .list(Some(&Key::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.failed(prefix, e))?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }
}

/// Where the object with this SHA-256 (hex) lives.
pub fn object_key(sha256: &str) -> String {
    format!("objects/{}/{sha256}", &sha256[..2])
}

/// Where the manifest of backup `id` lives.
pub fn manifest_key(id: &str) -> String {
    format!("backups/{id}.json")
}
