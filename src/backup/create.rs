//! Taking a backup: the database snapshot and the workspace's files, each
//! written once to the target by its hash, then the manifest.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use rand::Rng;

use super::manifest::{AuditHead, Entry, FORMAT, Manifest};
use super::target::{Target, manifest_key, object_key};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// What a backup wrote.
#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub manifest: Manifest,
    pub target: String,
    /// Objects (and their bytes) written by this backup; the rest were there.
    pub uploaded_objects: u64,
    pub uploaded_bytes: u64,
    pub seconds: f64,
}

/// A file to back up: where it will be in a restored workspace, and where it is now.
struct Source {
    path: String,
    file: PathBuf,
}

pub async fn create(ws: &Workspace, target: &Target, with_runs: bool) -> Result<Outcome> {
    let start = Instant::now();
    let scratch = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut sources = Vec::new();
    let mut schema_version = 0;
    let mut audit_head = None;
    let db = ws.db_path();
    if db.exists() {
        let snapshot = scratch.path().join("nova.db");
        let (version, head) = {
            let snapshot = snapshot.clone();
            tokio::task::spawn_blocking(move || snapshot_database(&db, &snapshot))
                .await
                .map_err(|e| Error::Failed(e.to_string()))??
        };
        schema_version = version;
        audit_head = head;
        sources.push(Source {
            path: ".nova/nova.db".into(),
            file: snapshot,
        });
    }
    if let Some(config) = &ws.config_file {
        let name = config
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "nova.yaml".into());
        sources.push(Source {
            path: name,
            file: config.clone(),
        });
    }
    walk(&ws.blueprint_dir(), "blueprints", &mut sources)?;
    walk(&ws.policy_dir(), "policies", &mut sources)?;
    walk(&ws.home.join("reports"), ".nova/reports", &mut sources)?;
    walk(&ws.home.join("logs"), ".nova/logs", &mut sources)?;
    if with_runs {
        walk(&ws.home.join("runs"), ".nova/runs", &mut sources)?;
    }
    sources.sort_by(|a, b| a.path.cmp(&b.path));

    let mut files = Vec::with_capacity(sources.len());
    let (mut uploaded_objects, mut uploaded_bytes) = (0, 0);
    for source in sources {
        let bytes = match std::fs::read(&source.file) {
            Ok(bytes) => bytes,
            // A log rotated away or a run pruned while we walked.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&source.file, e)),
        };
        let sha256 = sha256_hex(&bytes);
        let key = object_key(&sha256);
        let size = bytes.len() as u64;
        if !target.exists(&key).await? {
            target.put(&key, bytes).await?;
            uploaded_objects += 1;
            uploaded_bytes += size;
        }
        files.push(Entry {
            path: source.path,
            size,
            sha256,
        });
    }

    let manifest = Manifest {
        format: FORMAT.into(),
        id: new_id(),
        created_at: crate::queue::model::now_ms(),
        nova_version: env!("CARGO_PKG_VERSION").into(),
        schema_version,
        audit_head,
        with_runs,
        files,
    };
    // Last: until it is written, the objects above belong to no backup.
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    uploaded_bytes += json.len() as u64;
    uploaded_objects += 1;
    target.put(&manifest_key(&manifest.id), json).await?;
    Ok(Outcome {
        manifest,
        target: target.label.clone(),
        uploaded_objects,
        uploaded_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Copy the live database to `to` with SQLite's online backup API (one
/// step, so one read snapshot, while others go on writing); its schema
/// version and audit head.
fn snapshot_database(from: &Path, to: &Path) -> Result<(u32, Option<AuditHead>)> {
    let failed = |e: rusqlite::Error| Error::Failed(format!("{}: {e}", from.display()));
    let source = crate::store::Store::open_read_only(from)?;
    let mut copy = rusqlite::Connection::open(to).map_err(failed)?;
    {
        let backup =
            rusqlite::backup::Backup::new(source.connection(), &mut copy).map_err(failed)?;
        loop {
            match backup.step(-1).map_err(failed)? {
                rusqlite::backup::StepResult::Done => break,
                // Another connection holds a lock for a moment: try again.
                _ => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
    let version: u32 = copy
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    let has_audit: bool = copy
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
            [],
            |r| r.get(0),
        )
        .map_err(failed)?;
    let head = if has_audit {
        use rusqlite::OptionalExtension;
        copy.query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(AuditHead {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            },
        )
        .optional()
        .map_err(failed)?
    } else {
        None
    };
    // One file, whatever the source's journal mode: nothing beside it to lose.
    copy.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
        .map_err(failed)?;
    Ok((version, head))
}

/// Add every regular file under `dir` as `prefix/relative/path` (nothing
/// when `dir` does not exist; links are not followed).
fn walk(dir: &Path, prefix: &str, out: &mut Vec<Source>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}/{name}");
        if kind.is_dir() {
            walk(&entry.path(), &path, out)?;
        } else if kind.is_file() {
            out.push(Source {
                path,
                file: entry.path(),
            });
        }
    }
    Ok(())
}

/// A backup id that sorts by time: `20261202T101500Z-3f9a`.
fn new_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(['-', ':'], "");
    format!("{stamp}-{:04x}", rand::rng().random::<u16>())
}
