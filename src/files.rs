//! Reading a file nova was pointed at, safely: it must be a regular file
//! (not a FIFO that would block for ever, a device that never ends, or a
//! folder) and no bigger than a limit the caller states, checked on the open
//! file so a file that grows while it is read is still bounded.

use std::io::Read;
use std::path::Path;

/// Why a file could not be read: it is not what nova can read (bad input,
/// exit 2), or reading it failed (exit 1). `crate::error` turns it into
/// the matching error; this module stays a leaf every other one may use.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Bad(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileError {
    fn usage(message: String) -> Self {
        FileError::Bad(message)
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

type Result<T> = std::result::Result<T, FileError>;
use FileError as Error;

/// The bytes of the regular file at `path`, at most `max` of them; bad input
/// (exit 2) naming the path otherwise.
pub fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    // Without O_NONBLOCK, opening a FIFO would wait for a writer for ever.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match (e.kind(), e.raw_os_error()) {
            (std::io::ErrorKind::NotFound, _) => {
                Error::usage(format!("{}: no such file", path.display()))
            }
            (_, Some(libc::ELOOP)) => Error::usage(format!(
                "{}: a symbolic link that leads back to itself",
                path.display()
            )),
            (_, Some(libc::ENOTDIR)) => Error::usage(format!(
                "{}: a folder in the path is a file",
                path.display()
            )),
            _ => Error::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::usage(format!(
            "{}: not a regular file (a {})",
            path.display(),
            kind(&meta)
        )));
    }
    if meta.len() > max {
        return Err(Error::usage(format!(
            "{}: {} is more than the {} nova reads from such a file",
            path.display(),
            bytesize::ByteSize(meta.len()),
            bytesize::ByteSize(max)
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::usage(format!(
            "{}: grew past {} while it was read",
            path.display(),
            bytesize::ByteSize(max)
        )));
    }
    Ok(bytes)
}

/// What a path that is not a regular file is, in a word.
pub fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "folder"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else {
        "special file"
    }
}

/// The UTF-8 text of the regular file at `path` ([`read_limited`]), without
/// a leading byte-order mark; bad input naming the path and the first byte
/// that is not UTF-8 otherwise.
pub fn read_text(path: &Path, max: u64) -> Result<String> {
    let bytes = read_limited(path, max)?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        Error::usage(format!(
            "{}: not UTF-8 text (byte {} is not valid UTF-8)",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

/// The bearer token in `file` (`--token-file`), trimmed; `None` without a file.
pub fn read_token(file: Option<&Path>) -> Result<Option<String>> {
    let Some(file) = file else { return Ok(None) };
    let text = crate::files::read_text(file, crate::files::limits::TOKEN)?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(Error::usage(format!(
            "--token-file {}: the file is empty",
            file.display()
        )));
    }
    Ok(Some(token))
}

/// Limits on what nova reads from the files it is pointed at.
pub mod limits {
    /// A blueprint or plan file.
    pub const BLUEPRINT: u64 = 1024 * 1024;
    /// nova.yaml.
    pub const CONFIG: u64 = 1024 * 1024;
    /// A Rego policy file.
    pub const POLICY: u64 = 1024 * 1024;
    /// A policy input (`nova policy eval --input`).
    pub const POLICY_INPUT: u64 = 1024 * 1024;
    /// A token file.
    pub const TOKEN: u64 = 64 * 1024;
}

/// The path of nova's own binary, to start another nova with. When the
/// binary was replaced while this process runs (an upgrade, a rebuild),
/// Linux names the old one `PATH (deleted)`; the new binary at `PATH` is the
/// one to start.
pub fn own_executable() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    if !exe.exists()
        && let Some(path) = exe.to_str().and_then(|p| p.strip_suffix(" (deleted)"))
        && Path::new(path).is_file()
    {
        return Ok(path.into());
    }
    Ok(exe)
}
