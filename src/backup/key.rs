//! The key that encrypts a backup: an age X25519 identity in a file (the
//! format `age-keygen` writes), kept by the operator away from the target.
//!
//! Every object and manifest is encrypted to the identity's public key
//! before it leaves the host. Objects are named by a keyed hash of their
//! content (HMAC-SHA256 with a secret derived from the identity), so equal
//! files are still stored once but a name says nothing about what is inside.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub struct Key {
    identity: age::x25519::Identity,
    names: [u8; 32],
    pub file: PathBuf,
}

impl Key {
    /// Read the identity in `file` (comment lines, as `age-keygen` writes
    /// them, are skipped).
    pub fn load(file: &Path) -> Result<Key> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::usage(format!(
                    "{}: no such key file; `nova backup keygen FILE` writes one",
                    file.display()
                ))
            } else {
                Error::io(file, e)
            }
        })?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or_default();
        let identity = age::x25519::Identity::from_str(line).map_err(|e| {
            Error::usage(format!(
                "{}: not an age identity (AGE-SECRET-KEY-1...): {e}; `nova backup keygen FILE` writes one",
                file.display()
            ))
        })?;
        Ok(Key::from_identity(identity, file))
    }

    /// Write a new identity to `file`, readable by its owner only; refuses
    /// to replace an existing file (that key may be all that opens old backups).
    pub fn generate(file: &Path) -> Result<Key> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let identity = age::x25519::Identity::generate();
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::usage(format!(
                        "{}: already exists; nova never replaces a backup key",
                        file.display()
                    ))
                } else {
                    Error::io(file, e)
                }
            })?;
        writeln!(
            out,
            "# nova backup key (age X25519 identity); keep a copy away from the backups\n# public key: {}\n{}",
            identity.to_public(),
            identity.to_string().expose_secret()
        )
        .map_err(|e| Error::io(file, e))?;
        Ok(Key::from_identity(identity, file))
    }

    fn from_identity(identity: age::x25519::Identity, file: &Path) -> Key {
        let mut names = Sha256::new();
        names.update(b"nova backup object names\n");
        names.update(identity.to_string().expose_secret().as_bytes());
        Key {
            identity,
            names: names.finalize().into(),
            file: file.to_path_buf(),
        }
    }

    /// The public key (`age1...`) backups are encrypted to.
    pub fn recipient(&self) -> String {
        self.identity.to_public().to_string()
    }

    /// The stored name of the object whose content has SHA-256 `sha256` (hex).
    pub fn object_name(&self, sha256: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.names).expect("HMAC takes any key");
        mac.update(sha256.as_bytes());
        crate::digest::hex(&mac.finalize().into_bytes())
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        age::encrypt(&self.identity.to_public(), plaintext).expect("encrypting to an X25519 key")
    }

    /// The plaintext of `ciphertext` read from `key`; an error names both.
    pub fn open(&self, ciphertext: &[u8], key: &str) -> Result<Vec<u8>> {
        age::decrypt(&self.identity, ciphertext).map_err(|e| {
            Error::Failed(format!(
                "{key}: cannot decrypt with the key in {}: {e}",
                self.file.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Key;

    #[test]
    fn sealed_bytes_open_with_the_same_key_only_and_names_hide_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate(&dir.path().join("a.key")).unwrap();
        let other = Key::generate(&dir.path().join("b.key")).unwrap();
        let sealed = key.seal(b"audit evidence");
        assert!(!sealed.windows(5).any(|w| w == b"audit"));
        assert_eq!(key.open(&sealed, "x").unwrap(), b"audit evidence");
        assert!(other.open(&sealed, "x").is_err());
        let sha = crate::digest::sha256_hex(b"audit evidence");
        assert_ne!(key.object_name(&sha), sha);
        assert_ne!(key.object_name(&sha), other.object_name(&sha));
        let reloaded = Key::load(&dir.path().join("a.key")).unwrap();
        assert_eq!(reloaded.object_name(&sha), key.object_name(&sha));
        assert!(Key::generate(&dir.path().join("a.key")).is_err());
    }
}
