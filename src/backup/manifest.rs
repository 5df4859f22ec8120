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
    /// The audit chain's last record in the snapshot, if it has any.
    pub audit_head: Option<AuditHead>,
    pub with_runs: bool,
    pub files: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// One file, at its path in a restored workspace (`.nova/...` for `$NOVA_HOME`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
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
            let hex =
                entry.sha256.len() == 64 && entry.sha256.bytes().all(|b| b.is_ascii_hexdigit());
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
