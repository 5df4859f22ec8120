//! Taking a backup: the database snapshot and the workspace's files, each
//! written once to the target by its hash, then the manifest.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use rand::Rng;

use super::checkpoint::{self, SigningKey};
use super::manifest::{AUDIT_LOG, AuditHead, CHUNK_SIZE, Entry, FORMAT, Manifest, Outside, QUEUE};
use super::repo::Repo;
use crate::digest::{hex, sha256_hex};
use crate::error::{Error, Result};
use crate::store_url::StoreUrl;
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
    /// Where the signed checkpoint of the audit head was stored.
    pub checkpoint: Option<String>,
}

/// A file to back up: where it will be in a restored workspace, and where it is now.
struct Source {
    path: String,
    file: PathBuf,
}

/// Take a backup of `ws`, whose queue is in `store`, into `repo`; with
/// `signer`, its audit head's signed checkpoint is stored too (before the
/// manifest, like the objects).
pub async fn create(
    ws: &Workspace,
    store: &StoreUrl,
    repo: &Repo,
    with_runs: bool,
    signer: Option<&SigningKey>,
) -> Result<Outcome> {
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
    let outside = outside(ws, store);
    if let StoreUrl::Redis(url) = store {
        audit_head = redis_audit_head(url).await?;
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
    let mut known = repo.object_keys().await?;
    for source in sources {
        let Some(entry) = store_file(
            repo,
            &source,
            &mut known,
            &mut uploaded_objects,
            &mut uploaded_bytes,
        )
        .await?
        else {
            // A log rotated away or a run pruned while we walked.
            continue;
        };
        files.push(entry);
    }

    let id = new_id();
    let mut checkpoint = None;
    if let (Some(signer), Some(head)) = (signer, &audit_head) {
        let key = checkpoint::key_for(&id);
        repo.target.put(&key, signer.sign(head)?).await?;
        checkpoint = Some(key);
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        id,
        created_at: crate::queue::model::now_ms(),
        nova_version: env!("CARGO_PKG_VERSION").into(),
        schema_version,
        audit_head,
        outside,
        with_runs,
        encrypted_to: repo.key.as_ref().map(|k| k.recipient()),
        files,
    };
    // Last: until it is written, the objects above belong to no backup.
    uploaded_bytes += repo.put_manifest(&manifest).await?;
    uploaded_objects += 1;
    Ok(Outcome {
        manifest,
        target: repo.label().to_string(),
        uploaded_objects,
        uploaded_bytes,
        seconds: start.elapsed().as_secs_f64(),
        checkpoint,
    })
}

/// Store `source` piece by piece (one piece in memory at a time): the
/// whole file when it is small, else [`CHUNK_SIZE`] pieces, each under its
/// own hash and only if the target lacks it. Its manifest entry; `None`
/// when the file is gone.
async fn store_file(
    repo: &Repo,
    source: &Source,
    known: &mut std::collections::HashSet<String>,
    objects: &mut u64,
    bytes: &mut u64,
) -> Result<Option<Entry>> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = match std::fs::File::open(&source.file) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&source.file, e)),
    };
    let mut whole = sha2::Sha256::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    loop {
        let mut piece = Vec::with_capacity(CHUNK_SIZE);
        (&mut file)
            .take(CHUNK_SIZE as u64)
            .read_to_end(&mut piece)
            .map_err(|e| Error::io(&source.file, e))?;
        if piece.is_empty() && !chunks.is_empty() {
            break;
        }
        let full = piece.len() == CHUNK_SIZE;
        size += piece.len() as u64;
        whole.update(&piece);
        let sha256 = sha256_hex(&piece);
        let written = repo.put_object(&sha256, piece, known).await?;
        if written > 0 {
            *objects += 1;
            *bytes += written;
        }
        chunks.push(sha256);
        if !full {
            break;
        }
    }
    if chunks.len() == 1 {
        chunks.clear();
    }
    Ok(Some(Entry {
        path: source.path.clone(),
        size,
        sha256: hex(&whole.finalize()),
        chunks,
    }))
}

/// What of the workspace lives in `store` rather than in its database.
fn outside(ws: &Workspace, store: &StoreUrl) -> Option<Outside> {
    match store {
        StoreUrl::Redis(url) => Some(Outside {
            store: crate::store_url::without_password(url),
            holds: vec![QUEUE.into(), AUDIT_LOG.into()],
        }),
        // The audit log stays in the workspace database whatever file the queue is in.
        StoreUrl::Sqlite(path) if *path != ws.db_path() => Some(Outside {
            store: format!("sqlite:{}", path.display()),
            holds: vec![QUEUE.into()],
        }),
        StoreUrl::Sqlite(_) => None,
    }
}

/// The last record of the audit chain kept in Redis at `url`.
async fn redis_audit_head(url: &str) -> Result<Option<AuditHead>> {
    let failed = |e: crate::audit::AuditError| {
        Error::Failed(format!("the head of the audit chain, to sign: {e}"))
    };
    let log = crate::audit::AuditLog::redis(url).await.map_err(failed)?;
    let newest = log
        .newest(crate::audit::filter::Filter::default(), 1)
        .await
        .map_err(failed)?;
    Ok(newest.into_iter().next().map(|r| AuditHead {
        seq: r.seq,
        hash: r.hash,
    }))
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
