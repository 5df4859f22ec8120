//! The workspace database: one SQLite file, `$NOVA_HOME/nova.db`.
//!
//! This module owns the connection: it checks that the file really is a SQLite
//! database before SQLite touches it, applies the versioned schema migrations
//! (`PRAGMA user_version`) in one transaction, and refuses a database written
//! by a newer nova. Connections run in WAL mode with a busy timeout, foreign
//! keys on and `synchronous = FULL`, so a committed write survives a power cut.
//! Read-only commands open the file read-only and never migrate it.

mod migrations;
mod task_states;
pub mod writer;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use migrations::SCHEMA_VERSION;
pub use task_states::{TaskState, TaskStatus, record_task_state};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{} is not a SQLite database (its first bytes are {found:?}); nova left it untouched: move it away or point --home/NOVA_HOME elsewhere",
        path.display()
    )]
    NotADatabase { path: PathBuf, found: String },

    #[error(
        "{} was written by a newer nova: its schema version is {found}, and this nova ({}) knows versions up to {supported}; upgrade nova to use it",
        path.display(),
        env!("CARGO_PKG_VERSION")
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "{} is another program's SQLite database (it has tables {tables}, and no nova schema); nova left it untouched: point --home/NOVA_HOME or --store elsewhere",
        path.display()
    )]
    NotNova { path: PathBuf, tables: String },

    #[error(
        "{} is not a regular file (a {kind}); nova left it untouched: point --home/NOVA_HOME elsewhere",
        path.display()
    )]
    NotAFile { path: PathBuf, kind: &'static str },

    #[error("{}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// True when the file itself is unusable input rather than a failure at run time.
    pub fn is_bad_input(&self) -> bool {
        match self {
            StoreError::NotADatabase { .. }
            | StoreError::TooNew { .. }
            | StoreError::NotAFile { .. }
            | StoreError::NotNova { .. } => true,
            // A damaged file (truncated, overwritten) is the input that is bad.
            StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            } => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ),
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Schema version of the file as opened (read-only stores may be older).
    version: u32,
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> StoreResult<Store> {
        check_header(path)?;
        let conn = Connection::open(path).map_err(sqlite_err(path))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err(path))?;
        // Refuse a newer schema before anything (even the journal mode) is changed.
        let version = retry_while_busy(|| {
            migrations::read_version(&conn, path)?;
            configure(&conn, path)?;
            migrations::apply(&conn, path)
        })?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            version,
        })
    }

    /// Open an existing database for reading only; it is neither created nor migrated.
    pub fn open_read_only(path: &Path) -> StoreResult<Store> {
        check_header(path)?;
        // Read-write without create, though nothing is written: only a
        // connection that may write removes the `-wal` and `-shm` files when
        // it closes (a read-only one leaves them beside nova.db). SQLite
        // opens a write-protected file read-only by itself.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let open = |conn: Connection| -> StoreResult<(Connection, u32)> {
            conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err(path))?;
            stable_plans(&conn, path)?;
            let version = migrations::read_version(&conn, path)?;
            Ok((conn, version))
        };
        let first = Connection::open_with_flags(path, flags)
            .map_err(sqlite_err(path))
            .and_then(open);
        let (conn, version) = match first {
            // A workspace nova may not write (a read-only folder or mount):
            // SQLite cannot make the WAL's shared-memory file there, so the
            // database is read as it is on disk, which nobody can change.
            Err(StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            }) if matches!(
                e.code,
                rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen
            ) =>
            {
                let uri = format!(
                    "file:{}?immutable=1",
                    path.display()
                        .to_string()
                        .replace('%', "%25")
                        .replace('?', "%3f")
                        .replace('#', "%23")
                );
                let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_URI
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                open(Connection::open_with_flags(uri, flags).map_err(sqlite_err(path))?)?
            }
            other => other?,
        };
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open file.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Hand over the configured, migrated connection (the queue's writer uses it).
    pub fn into_connection(self) -> Connection {
        self.conn
    }

    /// The connection, for the subsystems that keep their own tables here.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        sqlite_err(&self.path)
    }
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuse a file that exists, is not empty and does not start with SQLite's magic
/// string, before SQLite opens it (SQLite would otherwise add `-wal`/`-shm` files).
fn check_header(path: &Path) -> StoreResult<()> {
    // A FIFO or a device in nova.db's place would hang or never end: look first.
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(StoreError::NotAFile {
            path: path.to_path_buf(),
            kind: crate::files::kind(&meta),
        });
    }
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut head = Vec::with_capacity(16);
    (&mut file)
        .take(16)
        .read_to_end(&mut head)
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if head.is_empty() || head == SQLITE_MAGIC {
        return Ok(());
    }
    Err(StoreError::NotADatabase {
        path: path.to_path_buf(),
        found: String::from_utf8_lossy(&head).into_owned(),
    })
}

/// Run `step` again while another process holds the lock it needs. Switching a
/// new file to WAL answers "locked" at once instead of waiting for the busy
/// timeout, so several processes opening one new database need this.
fn retry_while_busy<T>(mut step: impl FnMut() -> StoreResult<T>) -> StoreResult<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match step() {
            Err(StoreError::Sqlite {
                source: rusqlite::Error::SqliteFailure(e, _),
                ..
            }) if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn configure(conn: &Connection, path: &Path) -> StoreResult<()> {
    stable_plans(conn, path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(sqlite_err(path))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .map_err(sqlite_err(path))?;
    Ok(())
}

/// Plans that do not depend on the values bound to a statement. Without
/// this, SQLite re-prepares a cached statement each time a new value is
/// bound to a parameter its planner looked at (`LIMIT ?`, a range with
/// STAT4): a fifth of the queue's instructions went to parsing the same
/// SQL again.
fn stable_plans(conn: &Connection, path: &Path) -> StoreResult<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(sqlite_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes starting together on a fresh workspace all open it: none
    /// may take another's first migration, half committed as it looks, for a
    /// foreign database.
    #[test]
    fn many_openers_of_a_fresh_file_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("nova.db");
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || Store::open(&path).map(|s| s.version))
                })
                .collect();
            for opener in openers {
                let opened = opener.join().unwrap();
                assert_eq!(
                    opened.map_err(|e| e.to_string()),
                    Ok(SCHEMA_VERSION),
                    "round {round}"
                );
            }
        }
    }
}
