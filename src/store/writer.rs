//! The one writer of a database file in this process, with group commit.
//!
//! Everything nova writes to `nova.db` (queue operations, audit records, run
//! outcomes) goes through one thread that owns the write connection. It takes
//! every operation waiting, runs each in its own savepoint of one `IMMEDIATE`
//! transaction, commits once, and only then answers the callers. With
//! `synchronous = FULL` an answered write is on disk, the fsync is shared by
//! the whole batch, and writers in one process never wait on each other's
//! file lock. [`Writer::shared`] hands every caller in the process the same
//! writer for the same file. Other processes are kept in order by SQLite's
//! own lock (the transaction is `IMMEDIATE`).
//!
//! A write whose loss in a power cut does no harm (a queue lease: the task
//! would go back to the queue, as at-least-once delivery allows) may be
//! [`Durability::Relaxed`]: a batch of only such writes commits without the
//! fsync (`synchronous = NORMAL`). It is still committed before its caller
//! hears back, survives the process being killed, and goes to disk with the
//! next durable commit, since the WAL is written in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rusqlite::Connection;

use super::{Store, StoreError};

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 2048;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
/// An operation: run against the connection inside the batch transaction, or
/// (given `None`) told that the transaction could not begin. It answers with
/// what to tell its caller once the commit is known, and whether it succeeded
/// (a failed one is rolled back to its savepoint; the batch goes on).
type Job = Box<dyn FnOnce(Option<&Connection>) -> (Reply, bool) + Send>;

/// What a caller needs of its write before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// On disk (fsynced): it survives a power cut.
    Durable,
    /// Committed, and on disk with the next durable commit; a power cut
    /// before then may lose it, leaving the database as it was before.
    Relaxed,
}

struct Queued {
    job: Job,
    durability: Durability,
}

pub struct Writer {
    /// `None` once the writer is being dropped.
    jobs: Mutex<Option<mpsc::Sender<Queued>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The last user of a writer waits for its thread to close the connection:
/// SQLite checkpoints the WAL into the database file only when its last
/// connection closes, and a process that exits first leaves `nova.db` (what
/// a person copies) without its last writes beside a `-wal` file.
impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Writer>>> {
    static WRITERS: OnceLock<Mutex<HashMap<PathBuf, Weak<Writer>>>> = OnceLock::new();
    WRITERS.get_or_init(Default::default)
}

impl Writer {
    /// The writer of the database at `path` (opened, created and migrated if
    /// need be), shared with every other user of that file in this process.
    pub fn shared(path: &Path) -> Result<Arc<Writer>, StoreError> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = reg.get(&key).and_then(Weak::upgrade) {
            return Ok(w);
        }
        let conn = Store::open(path)?.into_connection();
        // Every kind of write nova makes keeps its statement prepared (the
        // default cache of 16 is smaller than that set).
        conn.set_prepared_statement_cache_capacity(128);
        let key = std::fs::canonicalize(path).unwrap_or(key);
        let (jobs, rx) = mpsc::channel::<Queued>();
        let thread = std::thread::Builder::new()
            .name("nova-db-writer".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let writer = Arc::new(Writer {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
        });
        reg.insert(key, Arc::downgrade(&writer));
        Ok(writer)
    }

    fn submit<T: Send + 'static, E: Send + 'static>(
        &self,
        durability: Durability,
        op: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        unavailable: impl Fn(String) -> E + Send + 'static,
        answer: impl FnOnce(Result<T, E>) + Send + 'static,
    ) -> bool {
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => op(conn),
                None => Err(unavailable(
                    "the store could not start a transaction".into(),
                )),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit| {
                answer(match commit {
                    Ok(()) => result,
                    Err(e) => Err(unavailable(e)),
                })
            });
            (reply, ok)
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|jobs| jobs.send(Queued { job, durability }).is_ok())
    }

    /// Run `op` in the next batch; its result once the batch is committed
    /// and on disk. `unavailable` makes the caller's error from a store failure.
    pub async fn write<T: Send + 'static, E: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        unavailable: impl Fn(String) -> E + Send + Clone + 'static,
    ) -> Result<T, E> {
        self.write_with(Durability::Durable, op, unavailable).await
    }

    /// [`Writer::write`] with the durability the caller needs.
    pub async fn write_with<T: Send + 'static, E: Send + 'static>(
        &self,
        durability: Durability,
        op: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        unavailable: impl Fn(String) -> E + Send + Clone + 'static,
    ) -> Result<T, E> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = unavailable.clone();
        if !self.submit(durability, op, unavailable, move |r| {
            let _ = tx.send(r);
        }) {
            return Err(stopped("the database writer has stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(stopped("the database writer has stopped".into())))
    }

    /// [`Writer::write`] for a caller that is not async (it blocks).
    pub fn write_blocking<T: Send + 'static, E: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        unavailable: impl Fn(String) -> E + Send + Clone + 'static,
    ) -> Result<T, E> {
        let (tx, rx) = mpsc::sync_channel(1);
        let stopped = unavailable.clone();
        if !self.submit(Durability::Durable, op, unavailable, move |r| {
            let _ = tx.send(r);
        }) {
            return Err(stopped("the database writer has stopped".into()));
        }
        rx.recv()
            .unwrap_or_else(|_| Err(stopped("the database writer has stopped".into())))
    }
}

/// Run one of the transaction's control statements (`BEGIN IMMEDIATE`,
/// `SAVEPOINT op`, ...) from the connection's statement cache: parsing them
/// afresh for every operation was a tenth of a local run's CPU.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn write_loop(conn: Connection, rx: mpsc::Receiver<Queued>) {
    // The connection starts with synchronous = FULL (Store::open).
    let mut synced = true;
    while let Ok(first) = rx.recv() {
        let mut queued = vec![first];
        while queued.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => queued.push(job),
                Err(_) => break,
            }
        }
        let durable = queued.iter().any(|q| q.durability == Durability::Durable);
        if durable != synced {
            let mode = if durable {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            if control(&conn, mode).is_ok() {
                synced = durable;
            }
        }
        let jobs = queued.into_iter().map(|q| q.job);
        if let Err(e) = control(&conn, "BEGIN IMMEDIATE") {
            let message = e.to_string();
            for job in jobs {
                let (reply, _) = job(None);
                reply(Err(message.clone()));
            }
            continue;
        }
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            let _ = control(&conn, "SAVEPOINT op");
            let (reply, ok) = job(Some(&conn));
            if !ok {
                let _ = control(&conn, "ROLLBACK TO op");
            }
            let _ = control(&conn, "RELEASE op");
            replies.push(reply);
        }
        let commit = {
            let _timer = crate::timer!("store.commit");
            control(&conn, "COMMIT").map_err(|e| e.to_string())
        };
        crate::counter!("store.commits").inc();
        if !synced {
            crate::counter!("store.commits.relaxed").inc();
        }
        crate::counter!("store.operations").add(replies.len() as u64);
        if commit.is_err() {
            let _ = control(&conn, "ROLLBACK");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(w: &Writer, durability: Durability) -> i64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(w.write_with(
            durability,
            |conn| {
                conn.execute(
                    "INSERT INTO paused_queues (queue, paused_at) VALUES (hex(randomblob(8)), 0)",
                    [],
                )?;
                conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
            },
            rusqlite::Error::InvalidParameterName,
        ))
        .unwrap()
    }

    /// Relaxed writes commit without `synchronous = FULL`, durable ones with
    /// it, whatever came before; both are committed for every reader.
    #[test]
    fn each_batch_commits_with_the_durability_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let w = Writer::shared(&path).unwrap();
        const FULL: i64 = 2;
        const NORMAL: i64 = 1;
        assert_eq!(synchronous(&w, Durability::Durable), FULL);
        assert_eq!(synchronous(&w, Durability::Relaxed), NORMAL);
        assert_eq!(synchronous(&w, Durability::Relaxed), NORMAL);
        assert_eq!(synchronous(&w, Durability::Durable), FULL);
        let reader = Store::open(&path).unwrap().into_connection();
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM paused_queues", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 4);
    }
}
