//! Reading backups back: listing them, checking every object against its
//! hash, and rebuilding a workspace from one.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::manifest::Manifest;
use super::target::{Target, manifest_key, object_key};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};

/// Every complete backup in the target (those with a manifest), oldest first.
pub async fn list(target: &Target) -> Result<Vec<Manifest>> {
    let mut keys = target.list("backups").await?;
    keys.retain(|k| k.ends_with(".json"));
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(bytes) = target.get(&key).await? {
            out.push(Manifest::parse(&bytes, &key)?);
        }
    }
    Ok(out)
}

/// The manifest of backup `id`; the newest when `id` is `None`.
pub async fn manifest(target: &Target, id: Option<&str>) -> Result<Manifest> {
    match id {
        Some(id) => {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(Error::usage(format!(
                    "backup id {id:?}: ids are letters, digits and '-' (see nova backup list)"
                )));
            }
            let key = manifest_key(id);
            let bytes = target.get(&key).await?.ok_or_else(|| {
                Error::usage(format!(
                    "no backup {id} in {} (see nova backup list)",
                    target.label
                ))
            })?;
            Manifest::parse(&bytes, &key)
        }
        None => list(target)
            .await?
            .pop()
            .ok_or_else(|| Error::Failed(format!("{} holds no backup yet", target.label))),
    }
}

/// A file of a backup whose object is missing or not what the manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub path: String,
    pub object: String,
    pub reason: String,
}

/// Fetch `manifest`'s objects and hand each verified file to `keep`;
/// returns every file that failed its check.
async fn fetch_verified(
    target: &Target,
    manifest: &Manifest,
    mut keep: impl FnMut(&str, Vec<u8>) -> Result<()>,
) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for entry in &manifest.files {
        let key = object_key(&entry.sha256);
        let problem = |reason: String| Problem {
            path: entry.path.clone(),
            object: key.clone(),
            reason,
        };
        match target.get(&key).await? {
            None => problems.push(problem("the object is missing".into())),
            Some(bytes) => {
                let found = sha256_hex(&bytes);
                if found != entry.sha256 {
                    problems.push(problem(format!(
                        "the object's SHA-256 is {found}, the manifest says {}",
                        entry.sha256
                    )));
                } else if bytes.len() as u64 != entry.size {
                    problems.push(problem(format!(
                        "the object has {} bytes, the manifest says {}",
                        bytes.len(),
                        entry.size
                    )));
                } else {
                    keep(&entry.path, bytes)?;
                }
            }
        }
    }
    Ok(problems)
}

/// Check every object of `manifest` against its hash.
pub async fn verify(target: &Target, manifest: &Manifest) -> Result<Vec<Problem>> {
    fetch_verified(target, manifest, |_, _| Ok(())).await
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub id: String,
    pub folder: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// Records in the restored audit chain, which verified.
    pub audit_records: u64,
}

/// Rebuild the workspace of `manifest` in `folder`, which must be empty or
/// missing. Every object is checked before anything is put in place: a
/// damaged backup leaves `folder` as it was.
pub async fn restore(target: &Target, manifest: &Manifest, folder: &Path) -> Result<Restored> {
    if folder.exists() {
        let mut entries = std::fs::read_dir(folder).map_err(|e| Error::io(folder, e))?;
        if entries.next().is_some() {
            return Err(Error::usage(format!(
                "--to {}: the folder is not empty; restore into an empty or new folder",
                folder.display()
            )));
        }
    }
    let parent = folder
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    // Staged beside the folder (same file system), moved in once all is verified.
    let staging = tempfile::Builder::new()
        .prefix(".nova-restore-")
        .tempdir_in(parent)
        .map_err(|e| Error::io(parent, e))?;
    let problems = fetch_verified(target, manifest, |path, bytes| {
        let file = staging.path().join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| Error::io(&file, e))
    })
    .await?;
    if !problems.is_empty() {
        let list: Vec<String> = problems
            .iter()
            .map(|p| format!("  {} ({}): {}", p.path, p.object, p.reason))
            .collect();
        return Err(Error::Failed(format!(
            "backup {} in {} is damaged; nothing was restored:\n{}",
            manifest.id,
            target.label,
            list.join("\n")
        )));
    }

    let audit_records = check_audit(staging.path(), manifest).await?;
    if folder.exists() {
        std::fs::remove_dir(folder).map_err(|e| Error::io(folder, e))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, folder).map_err(|e| Error::io(folder, e))?;
    Ok(Restored {
        id: manifest.id.clone(),
        folder: folder.to_path_buf(),
        files: manifest.files.len(),
        bytes: manifest.total_bytes(),
        audit_records,
    })
}

/// The restored database's audit chain must hold and end where the
/// manifest says the backup's did.
async fn check_audit(staged: &Path, manifest: &Manifest) -> Result<u64> {
    let db = staged.join(".nova").join(crate::workspace::DB_FILE);
    if !db.exists() {
        return Ok(0);
    }
    let log = crate::audit::AuditLog::sqlite_for_reading(&db)
        .map_err(|e| Error::Failed(format!("the restored database: {e}")))?;
    let verification = log
        .verify()
        .await
        .map_err(|e| Error::Failed(format!("the restored database: {e}")))?;
    if let Some(broken) = verification.broken {
        return Err(Error::Failed(format!(
            "backup {}: the restored audit chain breaks at record {}: {}; nothing was restored",
            manifest.id, broken.seq, broken.reason
        )));
    }
    let head = manifest.audit_head.as_ref();
    if verification.head.as_deref() != head.map(|h| h.hash.as_str())
        || verification.records != head.map_or(0, |h| h.seq)
    {
        return Err(Error::Failed(format!(
            "backup {}: the restored audit chain ends at record {} ({}), the manifest says {}; nothing was restored",
            manifest.id,
            verification.records,
            verification.head.as_deref().unwrap_or("none"),
            head.map_or("no records".to_string(), |h| format!(
                "{} ({})",
                h.seq, h.hash
            ))
        )));
    }
    Ok(verification.records)
}
