//! Signed audit checkpoints: the audit chain's head at each backup, signed
//! with an Ed25519 key kept outside the database and stored in the backup
//! target, in the C2SP signed-note checkpoint format
//! (<https://c2sp.org/tlog-checkpoint>): origin, record count, head hash
//! (base64), a blank line, signature lines.
//!
//! The chain inside the database proves only that it is consistent; whoever
//! can write the file can rewrite all of it. A checkpoint outside it pins
//! record N's hash: a chain rewritten or cut short after N no longer
//! matches, however consistent it is.
//!
//! nova's chain is a hash chain, not a Merkle tree, so the "root hash" is
//! the last record's hash: a witness can read and check the signature of a
//! nova checkpoint, but not ask for consistency proofs.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};

use super::manifest::AuditHead;
use super::target::Target;
use crate::error::{Error, Result};

/// The key that signs checkpoints, with its public (verifier) form.
pub struct SigningKey {
    signer: StandardSigner,
    /// `name+id+key`: what a verifier needs, safe to publish.
    pub verifier_key: String,
    pub file: PathBuf,
}

impl SigningKey {
    /// The key in `file`, created there (readable by its owner only) on
    /// first use, named `nova-audit/<host>`.
    pub fn load_or_create(file: &Path) -> Result<SigningKey> {
        let skey = match std::fs::read_to_string(file) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(file)?,
            Err(e) => return Err(Error::io(file, e)),
        };
        let signer = StandardSigner::new(&skey).map_err(|e| {
            Error::Failed(format!(
                "{}: not a signed-note signing key (PRIVATE+KEY+...): {e}",
                file.display()
            ))
        })?;
        // The verifier key is the public half: derive it from the private one.
        let verifier_key = verifier_key_of(&skey).ok_or_else(|| {
            Error::Failed(format!("{}: not an Ed25519 signing key", file.display()))
        })?;
        Ok(SigningKey {
            signer,
            verifier_key,
            file: file.to_path_buf(),
        })
    }

    /// The signed checkpoint of `head`.
    pub fn sign(&self, head: &AuditHead) -> Result<Vec<u8>> {
        let text = body(self.origin(), head)?;
        let mut note = Note::new(text.as_bytes(), &[])
            .map_err(|e| Error::Failed(format!("checkpoint: {e}")))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| Error::Failed(format!("signing the checkpoint: {e}")))?;
        Ok(note.to_bytes())
    }

    /// The log's origin line: the key's name.
    fn origin(&self) -> &str {
        self.verifier_key.split('+').next().unwrap_or_default()
    }
}

fn create(file: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let host = sysinfo::System::host_name()
        .ok()
        .map(|h| h.replace(|c: char| c.is_whitespace() || c == '+', "-"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let (skey, _) =
        signed_note::generate_key(&mut rand_core_06::OsRng, &format!("nova-audit/{host}"));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| Error::io(file, e))?;
    writeln!(out, "{skey}").map_err(|e| Error::io(file, e))?;
    Ok(skey)
}

/// `PRIVATE+KEY+name+id+base64(alg || seed)` → `name+id+base64(alg || public)`.
fn verifier_key_of(skey: &str) -> Option<String> {
    let mut parts = skey.splitn(5, '+');
    let (_, _, name, _, key) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let key = BASE64.decode(key).ok()?;
    let seed: [u8; 32] = key.get(1..)?.try_into().ok()?;
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    Some(signed_note::new_ed25519_verifier_key(name, &public))
}

/// The checkpoint text: origin, size, root hash (base64 of the raw hash).
fn body(origin: &str, head: &AuditHead) -> Result<String> {
    let raw = decode_hex(&head.hash)
        .ok_or_else(|| Error::Failed(format!("audit head hash {:?} is not hex", head.hash)))?;
    Ok(format!("{origin}\n{}\n{}\n", head.seq, BASE64.encode(raw)))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Where backup `id`'s checkpoint is stored.
pub fn key_for(id: &str) -> String {
    format!("checkpoints/{id}")
}

/// One stored checkpoint, read and checked against a chain.
#[derive(Debug, Serialize)]
pub struct Checked {
    pub key: String,
    pub size: u64,
    pub hash: String,
    /// Why it does not hold; `None` when it does.
    pub problem: Option<String>,
}

/// Every checkpoint in `target`, checked: signed by `verifier_key`, and the
/// chain (`hash_at(seq)`, `records` long) has that record with that hash.
pub async fn check_all(
    target: &Target,
    verifier_key: &str,
    records: u64,
    hash_at: impl Fn(u64) -> Option<String>,
) -> Result<Vec<Checked>> {
    let verifier = StandardVerifier::new(verifier_key)
        .map_err(|e| Error::usage(format!("verifier key {verifier_key:?}: {e}")))?;
    let verifiers = VerifierList::new(vec![Box::new(verifier)]);
    let mut keys = target.list("checkpoints").await?;
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let Some(bytes) = target.get(&key).await? else {
            continue;
        };
        out.push(check_one(&key, &bytes, &verifiers, records, &hash_at));
    }
    Ok(out)
}

fn check_one(
    key: &str,
    bytes: &[u8],
    verifiers: &VerifierList,
    records: u64,
    hash_at: &impl Fn(u64) -> Option<String>,
) -> Checked {
    let mut checked = Checked {
        key: key.to_string(),
        size: 0,
        hash: String::new(),
        problem: None,
    };
    let note = match Note::from_bytes(bytes) {
        Ok(note) => note,
        Err(e) => {
            checked.problem = Some(format!("not a signed note: {e}"));
            return checked;
        }
    };
    if let Err(e) = note.verify(verifiers) {
        checked.problem = Some(format!("its signature does not verify with this key: {e}"));
        return checked;
    }
    let text = String::from_utf8_lossy(note.text());
    let mut lines = text.lines();
    let (_origin, size, root) = (lines.next(), lines.next(), lines.next());
    let size = size.and_then(|s| s.parse::<u64>().ok());
    let root = root.and_then(|r| BASE64.decode(r).ok());
    let (Some(size), Some(root)) = (size, root) else {
        checked.problem = Some("not a checkpoint (origin, size, root hash)".into());
        return checked;
    };
    checked.size = size;
    checked.hash = crate::digest::hex(&root);
    checked.problem = if size > records {
        Some(format!(
            "it pins record {size}, the chain has only {records}: records were removed"
        ))
    } else if size == 0 {
        None
    } else {
        match hash_at(size) {
            Some(hash) if hash == checked.hash => None,
            Some(hash) => Some(format!(
                "record {size} has hash {hash}, the checkpoint says {}: the chain was rewritten",
                checked.hash
            )),
            None => Some(format!("record {size} is missing from the chain")),
        }
    };
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_verifies_and_pins_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k")).unwrap();
        let again = SigningKey::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(key.verifier_key, again.verifier_key);
        let hash = crate::digest::sha256_hex(b"record 7");
        let note = key
            .sign(&AuditHead {
                seq: 7,
                hash: hash.clone(),
            })
            .unwrap();
        let text = String::from_utf8(note.clone()).unwrap();
        assert!(text.starts_with("nova-audit/"), "{text}");
        assert!(text.contains("\n7\n"), "{text}");
        assert!(text.contains("\n\n\u{2014} nova-audit/"), "{text}");

        let verifiers = VerifierList::new(vec![Box::new(
            StandardVerifier::new(&key.verifier_key).unwrap(),
        )]);
        let same = |_: u64| Some(hash.clone());
        assert!(
            check_one("c", &note, &verifiers, 9, &same)
                .problem
                .is_none()
        );
        let other = |_: u64| Some(crate::digest::sha256_hex(b"forged"));
        assert!(
            check_one("c", &note, &verifiers, 9, &other)
                .problem
                .unwrap()
                .contains("rewritten")
        );
        assert!(
            check_one("c", &note, &verifiers, 6, &same)
                .problem
                .unwrap()
                .contains("removed")
        );
        let mut tampered = note.clone();
        let at = text.find("\n7\n").unwrap() + 1;
        tampered[at] = b'8';
        assert!(
            check_one("c", &tampered, &verifiers, 9, &same)
                .problem
                .unwrap()
                .contains("signature")
        );
    }
}
