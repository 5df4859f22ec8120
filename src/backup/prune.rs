//! Keeping the newest N backups: the older manifests go first, then every
//! object no remaining manifest names (including what an interrupted
//! backup left behind). Signed audit checkpoints are never removed.
//!
//! Prune must not run while a backup to the same target is being taken: a
//! backup that found an object already there counts on it staying. The
//! target's exclusive lock (taken by `ops::prune`) sees to that.

use std::collections::HashSet;

use serde::Serialize;

use super::repo::Repo;
use crate::error::{Error, Result};

#[derive(Debug, Serialize)]
pub struct Pruned {
    /// The backups removed, oldest first.
    pub removed: Vec<String>,
    pub kept: usize,
    /// Objects deleted because no remaining backup used them.
    pub objects_removed: usize,
}

pub async fn prune(repo: &Repo, keep: usize) -> Result<Pruned> {
    if keep == 0 {
        return Err(Error::usage(
            "--keep 0 would remove every backup; keep at least 1",
        ));
    }
    let all = repo.list().await?;
    // Every manifest must be readable before anything is deleted: objects
    // used only by an unreadable one would otherwise look unused.
    if let Some(sealed) = all.iter().find(|l| l.manifest.is_none()) {
        return Err(Error::usage(format!(
            "backup {} in {} is encrypted; give --key FILE so that prune can see what it uses",
            sealed.id,
            repo.label()
        )));
    }
    let cut = all.len().saturating_sub(keep);
    let (old, kept) = all.split_at(cut);
    let mut used = HashSet::new();
    for listed in kept {
        let manifest = listed.manifest.as_ref().expect("checked above");
        let sealed = manifest.encrypted_to.is_some();
        for entry in &manifest.files {
            for sha256 in entry.objects() {
                used.insert(repo.object_key(sha256, sealed));
            }
        }
    }
    for listed in old {
        repo.delete_manifest(&listed.id, listed.encrypted).await?;
    }
    let mut objects_removed = 0;
    for key in repo.target.list("objects").await? {
        if !used.contains(&key) {
            repo.target.delete(&key).await?;
            objects_removed += 1;
        }
    }
    Ok(Pruned {
        removed: old.iter().map(|l| l.id.clone()).collect(),
        kept: kept.len(),
        objects_removed,
    })
}
