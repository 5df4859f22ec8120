//! A target seen as a backup repository: objects by content hash and
//! manifests by id, encrypted on the way out and decrypted on the way in
//! when a key is given.
//!
//! Layout: `objects/<2 hex>/<name>` (the content's SHA-256, or its keyed
//! hash when encrypted), `backups/<id>.json` (or `.json.age`, encrypted),
//! and `checkpoints/<id>` (signed audit heads, never encrypted: they hold
//! only a record count and a hash).

use std::collections::HashSet;
use std::path::Path;

use super::key::Key;
use super::manifest::Manifest;
use super::target::Target;
use crate::error::{Error, Result};
use crate::workspace::Workspace;

pub struct Repo {
    pub target: Target,
    pub key: Option<Key>,
}

/// A backup as listed: its id, and its manifest when it could be read
/// (an encrypted one needs the key).
#[derive(Debug)]
pub struct Listed {
    pub id: String,
    pub encrypted: bool,
    pub manifest: Option<Manifest>,
}

/// What fetching one object found.
pub enum Fetched {
    Missing,
    Bytes(Vec<u8>),
    /// Present, but it does not decrypt with the key.
    Unreadable(String),
}

impl Repo {
    /// The repository `url` names (else nova.yaml's `backup.to`), opened
    /// with the key file `key` (else `backup.key`). `flag` names the option
    /// in messages; `create` makes a missing folder (only a backup may).
    pub fn open(
        ws: &Workspace,
        url: Option<&str>,
        flag: &str,
        key: Option<&Path>,
        create: bool,
    ) -> Result<Repo> {
        let url = url
            .map(str::to_string)
            .or_else(|| ws.config.backup.to.clone())
            .ok_or_else(|| {
                Error::usage(format!(
                    "{flag}: no backup target; give {flag} URL or set backup.to in nova.yaml"
                ))
            })?;
        let target = Target::open(&url, &ws.root, create)?;
        let key = key
            .map(Path::to_path_buf)
            .or_else(|| ws.config.backup.key.clone())
            .map(|file| Key::load(&ws.root.join(file)))
            .transpose()?;
        Ok(Repo { target, key })
    }

    pub fn label(&self) -> &str {
        &self.target.label
    }

    /// Where the object with content hash `sha256` is stored: under its
    /// hash, or its keyed hash when `sealed` (encrypted; needs the key).
    pub fn object_key(&self, sha256: &str, sealed: bool) -> String {
        let name = match (&self.key, sealed) {
            (Some(key), true) => key.object_name(sha256),
            _ => sha256.to_string(),
        };
        format!("objects/{}/{name}", &name[..2])
    }

    /// The keys of every object in the target: one listing, so that a
    /// backup asks for each piece's presence here instead of once per piece.
    pub async fn object_keys(&self) -> Result<HashSet<String>> {
        Ok(self.target.list("objects").await?.into_iter().collect())
    }

    /// Store `bytes` (whose SHA-256 is `sha256`) unless `known` (the target's
    /// objects) has it; the bytes written (0 when it was there).
    pub async fn put_object(
        &self,
        sha256: &str,
        bytes: Vec<u8>,
        known: &mut HashSet<String>,
    ) -> Result<u64> {
        let key = self.object_key(sha256, self.key.is_some());
        if known.contains(&key) {
            return Ok(0);
        }
        let stored = match &self.key {
            Some(k) => k.seal(&bytes),
            None => bytes,
        };
        let size = stored.len() as u64;
        self.target.put(&key, stored).await?;
        known.insert(key);
        Ok(size)
    }

    /// The object holding content `sha256` of a backup that is `sealed` or not.
    pub async fn get_object(&self, sha256: &str, sealed: bool) -> Result<Fetched> {
        let key = self.object_key(sha256, sealed);
        let opener = self.key.as_ref().filter(|_| sealed);
        Ok(match (self.target.get(&key).await?, opener) {
            (None, _) => Fetched::Missing,
            (Some(bytes), None) => Fetched::Bytes(bytes),
            (Some(bytes), Some(k)) => match k.open(&bytes, &key) {
                Ok(plain) => Fetched::Bytes(plain),
                Err(e) => Fetched::Unreadable(e.to_string()),
            },
        })
    }

    /// Write `manifest` (last, so the backup is listed only once complete);
    /// the bytes written.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<u64> {
        let json = serde_json::to_vec(manifest).expect("a manifest serializes");
        let (key, bytes) = match &self.key {
            Some(k) => (format!("backups/{}.json.age", manifest.id), k.seal(&json)),
            None => (format!("backups/{}.json", manifest.id), json),
        };
        let size = bytes.len() as u64;
        self.target.put(&key, bytes).await?;
        Ok(size)
    }

    /// Every complete backup, oldest first.
    pub async fn list(&self) -> Result<Vec<Listed>> {
        let mut keys = self.target.list("backups").await?;
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(id) = manifest_id(&key) else {
                continue;
            };
            let encrypted = key.ends_with(".age");
            let manifest = if encrypted && self.key.is_none() {
                None
            } else {
                self.read_manifest(&key).await?
            };
            out.push(Listed {
                id: id.to_string(),
                encrypted,
                manifest,
            });
        }
        // Ids sort by the second they were taken; within one, by the time
        // the manifest records (an unreadable one keeps its place by id).
        out.sort_by_key(|l| {
            let at = l.manifest.as_ref().map_or(0, |m| m.created_at);
            (l.id.get(..16).unwrap_or_default().to_string(), at)
        });
        Ok(out)
    }

    /// Every complete backup's manifest, oldest first; an encrypted one
    /// without the key is an error that says so.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for listed in self.list().await? {
            out.push(self.readable(listed)?);
        }
        Ok(out)
    }

    /// The manifest of backup `id`; the newest when `id` is `None`.
    pub async fn manifest(&self, id: Option<&str>) -> Result<Manifest> {
        let Some(id) = id else {
            let newest =
                self.list().await?.pop().ok_or_else(|| {
                    Error::Failed(format!("{} holds no backup yet", self.label()))
                })?;
            return self.readable(newest);
        };
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(Error::usage(format!(
                "backup id {id:?}: ids are letters, digits and '-' (see nova backup list)"
            )));
        }
        let plain = format!("backups/{id}.json");
        if let Some(m) = self.read_manifest(&plain).await? {
            return Ok(m);
        }
        let sealed = format!("{plain}.age");
        if self.key.is_none() && self.target.exists(&sealed).await? {
            return Err(encrypted_needs_key(id, self.label()));
        }
        self.read_manifest(&sealed).await?.ok_or_else(|| {
            Error::usage(format!(
                "no backup {id} in {} (see nova backup list)",
                self.label()
            ))
        })
    }

    fn readable(&self, listed: Listed) -> Result<Manifest> {
        listed
            .manifest
            .ok_or_else(|| encrypted_needs_key(&listed.id, self.label()))
    }

    async fn read_manifest(&self, key: &str) -> Result<Option<Manifest>> {
        let Some(bytes) = self.target.get(key).await? else {
            return Ok(None);
        };
        let bytes = match (&self.key, key.ends_with(".age")) {
            (Some(k), true) => k.open(&bytes, key)?,
            _ => bytes,
        };
        Manifest::parse(&bytes, key).map(Some)
    }

    /// Remove backup `id`'s manifest (the objects stay until garbage-collected).
    pub async fn delete_manifest(&self, id: &str, encrypted: bool) -> Result<()> {
        let suffix = if encrypted { ".age" } else { "" };
        self.target
            .delete(&format!("backups/{id}.json{suffix}"))
            .await
    }
}

/// The id in a manifest's key (`backups/ID.json` or `backups/ID.json.age`).
fn manifest_id(key: &str) -> Option<&str> {
    let name = key.strip_prefix("backups/")?;
    name.strip_suffix(".json")
        .or_else(|| name.strip_suffix(".json.age"))
        .filter(|id| !id.contains('/'))
}

fn encrypted_needs_key(id: &str, label: &str) -> Error {
    Error::usage(format!(
        "backup {id} in {label} is encrypted; give --key FILE (or set backup.key in nova.yaml)"
    ))
}
