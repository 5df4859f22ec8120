//! Reading backups back: listing them, checking every object against its
//! hash, and rebuilding a workspace from one.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::manifest::Manifest;
use super::repo::{Fetched, Repo};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};

/// A file of a backup whose object is missing or not what the manifest says.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub path: String,
    pub object: String,
    pub reason: String,
}

/// Fetch `manifest`'s objects, checking each piece's hash as it comes and
/// each file's size and hash at its end, and write every file to the
/// writer `open` gives for its path (one piece in memory at a time).
/// Returns every file that failed its check; what was written of a failed
/// file is the caller's to discard.
async fn fetch_verified<W: std::io::Write>(
    repo: &Repo,
    manifest: &Manifest,
    mut open: impl FnMut(&str) -> Result<W>,
) -> Result<Vec<Problem>> {
    use sha2::Digest;
    let mut problems = Vec::new();
    let sealed = manifest.encrypted_to.is_some();
    'files: for entry in &manifest.files {
        let mut out = open(&entry.path)?;
        let mut whole = sha2::Sha256::new();
        let mut size = 0u64;
        for sha256 in entry.objects() {
            let object = repo.object_key(sha256, sealed);
            let problem = |reason: String| Problem {
                path: entry.path.clone(),
                object: object.clone(),
                reason,
            };
            match repo.get_object(sha256, sealed).await? {
                Fetched::Missing => problems.push(problem("the object is missing".into())),
                Fetched::Unreadable(why) => problems.push(problem(why)),
                Fetched::Bytes(piece) => {
                    let found = sha256_hex(&piece);
                    if found == sha256 {
                        whole.update(&piece);
                        size += piece.len() as u64;
                        out.write_all(&piece)
                            .map_err(|e| Error::Failed(format!("restoring {}: {e}", entry.path)))?;
                        continue;
                    }
                    problems.push(problem(format!(
                        "the object's SHA-256 is {found}, the manifest says {sha256}"
                    )));
                }
            }
            continue 'files;
        }
        out.flush()
            .map_err(|e| Error::Failed(format!("restoring {}: {e}", entry.path)))?;
        let problem = |reason: String| Problem {
            path: entry.path.clone(),
            object: match entry.chunks.len() {
                0 => repo.object_key(&entry.sha256, sealed),
                n => format!("{n} pieces"),
            },
            reason,
        };
        if size != entry.size {
            problems.push(problem(format!(
                "the file has {size} bytes, the manifest says {}",
                entry.size
            )));
        } else if crate::digest::hex(&whole.finalize()) != entry.sha256 {
            problems.push(problem(format!(
                "the pieces put together do not have the SHA-256 {}",
                entry.sha256
            )));
        }
    }
    Ok(problems)
}

/// Check every object of `manifest` against its hash.
pub async fn verify(repo: &Repo, manifest: &Manifest) -> Result<Vec<Problem>> {
    fetch_verified(repo, manifest, |_| Ok(std::io::sink())).await
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub id: String,
    pub folder: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// Records in the restored audit chain, which verified; `None` when the
    /// audit log was not in the backup (it lives in Redis).
    pub audit_records: Option<u64>,
    /// With --force over a workspace: where the files it replaced were moved.
    pub replaced_into: Option<PathBuf>,
}

/// Rebuild the workspace of `manifest` in `folder`: an empty or missing
/// one, or with `force` an existing workspace whose database no process
/// has open (what it replaces is moved aside, not deleted). Every object
/// is checked before anything is put in place: a damaged backup leaves
/// `folder` as it was.
pub async fn restore(
    repo: &Repo,
    manifest: &Manifest,
    folder: &Path,
    force: bool,
) -> Result<Restored> {
    let occupied = folder.exists()
        && std::fs::read_dir(folder)
            .map_err(|e| Error::io(folder, e))?
            .next()
            .is_some();
    if occupied && !force {
        return Err(Error::usage(format!(
            "--to {}: the folder is not empty; restore into an empty or new folder, or give --force to replace the workspace there",
            folder.display()
        )));
    }
    if occupied {
        let db = folder.join(".nova").join(crate::workspace::DB_FILE);
        if let Some(pid) = in_use(&db) {
            return Err(Error::Failed(format!(
                "{}: the database is in use by process {pid}; stop it (nova serve, a run) before restoring over it",
                db.display()
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
    let problems = fetch_verified(repo, manifest, |path| {
        let file = staging.path().join(path);
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::File::create(&file)
            .map(std::io::BufWriter::new)
            .map_err(|e| Error::io(&file, e))
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
            repo.label(),
            list.join("\n")
        )));
    }

    let audit_records = if manifest.audit_in_backup() {
        Some(check_audit(staging.path(), manifest).await?)
    } else {
        None
    };
    let replaced_into = if occupied {
        move_in(staging.path(), folder, true)?
    } else if folder.exists() {
        // Into the folder itself, not a new one in its place: a shell whose
        // current directory it is still sees the workspace.
        move_in(staging.path(), folder, false)?;
        None
    } else {
        let staged = staging.keep();
        std::fs::rename(&staged, folder).map_err(|e| Error::io(folder, e))?;
        None
    };
    Ok(Restored {
        id: manifest.id.clone(),
        folder: folder.to_path_buf(),
        files: manifest.files.len(),
        bytes: manifest.total_bytes(),
        audit_records,
        replaced_into,
    })
}

/// Move each top-level entry of `staged` into `folder`. With `aside`, what
/// an entry replaces is first moved to `folder/.nova-replaced-TIME`, which
/// is returned when anything was replaced.
fn move_in(staged: &Path, folder: &Path, aside: bool) -> Result<Option<PathBuf>> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    let kept = folder.join(format!(".nova-replaced-{stamp}"));
    let mut replaced = false;
    for entry in std::fs::read_dir(staged).map_err(|e| Error::io(staged, e))? {
        let entry = entry.map_err(|e| Error::io(staged, e))?;
        let into = folder.join(entry.file_name());
        if aside && into.symlink_metadata().is_ok() {
            if !replaced {
                std::fs::create_dir_all(&kept).map_err(|e| Error::io(&kept, e))?;
                replaced = true;
            }
            let keep = kept.join(entry.file_name());
            std::fs::rename(&into, &keep).map_err(|e| Error::io(&into, e))?;
        }
        std::fs::rename(entry.path(), &into).map_err(|e| Error::io(&into, e))?;
    }
    Ok(replaced.then_some(kept))
}

/// A process (other than this one) that has `db` or its WAL open, read
/// from /proc: SQLite's own locks say nothing about an idle connection.
fn in_use(db: &Path) -> Option<u32> {
    let db = std::fs::canonicalize(db).ok()?;
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let me = std::process::id();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && (target == db || target == wal)
            {
                return Some(pid);
            }
        }
    }
    None
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
