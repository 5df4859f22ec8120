//! A backup's manifest: what it holds, each file's size and hash, and the
//! state of the workspace it was taken from.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const FORMAT: &str = "nova-backup/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// Sortable by time: `YYYYMMDDTHHMMSSZ-xxxx`.
    pub id: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub nova_version: String,
    /// The database's schema version.
    pub schema_version: u32,
    /// The audit chain's last record in the snapshot, if it has any; when
    /// [`Outside`] names the audit log, that chain's last record when the
    /// backup was taken.
    pub audit_head: Option<AuditHead>,
    /// The workspace's state that lives in a store of its own and is not in
    /// this backup (absent when everything is in the workspace database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<Outside>,
    pub with_runs: bool,
    /// The age public key the objects were encrypted to, if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_to: Option<String>,
    pub files: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// A store outside the workspace that holds some of its state: the queue
/// on Redis or in another SQLite file, and on Redis the audit log too.
/// Redis's own persistence (RDB snapshots, the AOF) keeps what is there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Outside {
    /// The store's URL, without a password.
    pub store: String,
    /// What it holds: [`QUEUE`], and [`AUDIT_LOG`] on Redis.
    pub holds: Vec<String>,
}

pub const QUEUE: &str = "queue";
pub const AUDIT_LOG: &str = "audit log";

/// One file, at its path in a restored workspace (`.nova/...` for `$NOVA_HOME`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// For a file larger than [`CHUNK_SIZE`]: the SHA-256 of each piece, in
    /// order, each stored as its own object (the whole file is not). A
    /// database or a log that grew at its end then shares every piece
    /// but the changed ones with the backup before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
}

/// The size of the pieces a large file is stored in (a multiple of
/// SQLite's page size, so a changed page changes one piece).
pub const CHUNK_SIZE: usize = 64 * 1024;

impl Entry {
    /// The content hashes of the objects holding this file.
    pub fn objects(&self) -> impl Iterator<Item = &str> {
        let whole = self.chunks.is_empty().then_some(self.sha256.as_str());
        whole
            .into_iter()
            .chain(self.chunks.iter().map(String::as_str))
    }
}

impl Manifest {
    /// Whether the audit chain is in the backup's database (and so a
    /// restore can check it against [`Manifest::audit_head`]).
    pub fn audit_in_backup(&self) -> bool {
        self.outside
            .as_ref()
            .is_none_or(|o| !o.holds.iter().any(|h| h == AUDIT_LOG))
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Parse a manifest read from `key`, naming it in the error.
    pub fn parse(bytes: &[u8], key: &str) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::Failed(format!("{key}: not a nova backup manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(Error::Failed(format!(
                "{key}: format {:?}, this nova reads {FORMAT:?}",
                manifest.format
            )));
        }
        for entry in &manifest.files {
            let safe = !entry.path.is_empty()
                && !entry.path.starts_with('/')
                && entry
                    .path
                    .split('/')
                    .all(|part| part != ".." && !part.is_empty());
            let is_hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
            let hex = is_hex(&entry.sha256) && entry.chunks.iter().all(|c| is_hex(c));
            if !safe || !hex {
                return Err(Error::Failed(format!(
                    "{key}: entry {:?} has an unsafe path or a malformed hash",
                    entry.path
                )));
            }
        }
        Ok(manifest)
    }
}
