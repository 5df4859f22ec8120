//! The one writer of a database file in this process, with group commit.
//!
//! Everything nova writes to `nova.db` (queue operations, audit records, run
//! outcomes) goes through one thread that owns the write connection. It takes
//! every operation waiting, runs each in its own savepoint of one `IMMEDIATE`
//! transaction, and commits once; writers in one process never wait on each
//! other's file lock. [`Writer::shared`] hands every caller in the process
//! the same writer for the same file. Other processes are kept in order by
//! SQLite's own lock (the transaction is `IMMEDIATE`).
//!
//! A [`Durability::Durable`] write is answered once it is on disk: a second
//! thread fsyncs the WAL after the commit (what `synchronous = FULL` would do
//! inside it), one fsync for every commit made while the last one ran, and
//! the writer goes on with the next batch meanwhile. A write whose loss in a
//! power cut does no harm (a queue lease: the task would go back to the
//! queue, as at-least-once delivery allows) may be [`Durability::Relaxed`]:
//! answered once committed, without waiting for any fsync. It is visible to
//! every reader, survives the process being killed, and goes to disk with
//! the next durable write, since the WAL is written in order. A
//! [`Durability::Background`] write is answered the same way, and an fsync
//! follows within a few milliseconds whatever else is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rusqlite::Connection;

use super::{Store, StoreError};

/// Most operations applied in one transaction.
const MAX_BATCH: usize = 2048;
/// How long a [`Durability::Background`] write may wait for its fsync, so
/// that one fsync covers the background writes of that moment.
const BACKGROUND_SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

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
    /// Answered once committed, as [`Durability::Relaxed`], with an fsync
    /// that the caller does not wait for within a few milliseconds
    /// ([`BACKGROUND_SYNC_DELAY`]), whatever else is written.
    Background,
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
    let wal = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
        .is_ok_and(|mode| mode.eq_ignore_ascii_case("wal"));
    let syncer = match conn.path() {
        Some(db) if wal && control(&conn, "PRAGMA synchronous = NORMAL").is_ok() => {
            Syncer::start(PathBuf::from(format!("{db}-wal")))
        }
        // Not in WAL mode (the connection starts with synchronous = FULL):
        // every commit is on disk when it returns.
        _ => None,
    };
    while let Ok(first) = rx.recv() {
        let mut queued = vec![first];
        while queued.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => queued.push(job),
                Err(_) => break,
            }
        }
        if let Some(failed) = syncer.as_ref().and_then(Syncer::failed) {
            for q in queued {
                let (reply, _) = (q.job)(None);
                reply(Err(failed.clone()));
            }
            continue;
        }
        if let Err(e) = control(&conn, "BEGIN IMMEDIATE") {
            let message = e.to_string();
            for q in queued {
                let (reply, _) = (q.job)(None);
                reply(Err(message.clone()));
            }
            continue;
        }
        let mut replies = Vec::with_capacity(queued.len());
        for q in queued {
            let _ = control(&conn, "SAVEPOINT op");
            let (reply, ok) = (q.job)(Some(&conn));
            if !ok {
                let _ = control(&conn, "ROLLBACK TO op");
            }
            let _ = control(&conn, "RELEASE op");
            replies.push((reply, q.durability));
        }
        let commit = {
            let _timer = crate::timer!("store.commit");
            control(&conn, "COMMIT").map_err(|e| e.to_string())
        };
        crate::counter!("store.commits").inc();
        crate::counter!("store.operations").add(replies.len() as u64);
        if commit.is_err() {
            let _ = control(&conn, "ROLLBACK");
        }
        let durable: Vec<Reply> = match &syncer {
            Some(syncer) if commit.is_ok() => {
                let (mut durable, mut sync) = (Vec::new(), false);
                for (reply, durability) in replies {
                    sync |= durability != Durability::Relaxed;
                    match durability {
                        Durability::Relaxed | Durability::Background => reply(Ok(())),
                        Durability::Durable => durable.push(reply),
                    }
                }
                if sync {
                    syncer.sync(durable);
                } else {
                    crate::counter!("store.commits.relaxed").inc();
                }
                continue;
            }
            _ => replies.into_iter().map(|(reply, _)| reply).collect(),
        };
        for reply in durable {
            reply(commit.clone());
        }
    }
    // The syncer answers what it holds before the connection closes.
    drop(syncer);
}

/// The fsync half of the writer in WAL mode. The writer commits with
/// `synchronous = NORMAL` (its frames are written to the WAL, not yet
/// flushed) and answers relaxed writes at once; durable ones wait here for
/// an fsync of the WAL that began after their commit. Meanwhile the writer
/// goes on with the next batch, so a relaxed write never waits for another
/// batch's fsync, and one fsync covers every commit made while the last one
/// ran. A commit is on disk once the WAL's frames up to it are (SQLite's
/// `synchronous = FULL` does exactly this fsync, only inside the commit).
///
/// A failed fsync leaves the database's durability unknown: every later
/// write fails with it, as a database server would stop, rather than go on
/// answering writes that may not be on disk.
struct Syncer {
    batches: Option<mpsc::Sender<Vec<Reply>>>,
    failed: Arc<OnceLock<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start(wal: PathBuf) -> Option<Syncer> {
        let (batches, rx) = mpsc::channel::<Vec<Reply>>();
        let failed = Arc::new(OnceLock::new());
        let failed_in = failed.clone();
        let thread = std::thread::Builder::new()
            .name("nova-db-sync".into())
            .spawn(move || sync_loop(wal, rx, failed_in))
            .ok()?;
        Some(Syncer {
            batches: Some(batches),
            failed,
            thread: Some(thread),
        })
    }

    /// Why writes fail from now on, once an fsync has failed.
    fn failed(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    /// Answer `replies` once the WAL, as written so far, is on disk.
    fn sync(&self, replies: Vec<Reply>) {
        if let Some(batches) = &self.batches
            && let Err(mpsc::SendError(replies)) = batches.send(replies)
        {
            for reply in replies {
                reply(Err("the database's fsync thread has stopped".into()));
            }
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        drop(self.batches.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The open WAL file, reopened when the path no longer names the same file
/// (another process's last connection removed it, a new one made it).
struct WalFile {
    path: PathBuf,
    file: Option<(std::fs::File, (u64, u64))>,
}

impl WalFile {
    fn sync(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::metadata(&self.path).map(|m| (m.dev(), m.ino()))?;
        if self.file.as_ref().is_none_or(|(_, id)| *id != on_disk) {
            let file = std::fs::File::open(&self.path)?;
            let id = file.metadata().map(|m| (m.dev(), m.ino()))?;
            // A WAL file this process has not synced before: its name in
            // the folder must be on disk too.
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            self.file = Some((file, id));
        }
        let (file, _) = self.file.as_ref().expect("opened above");
        file.sync_data()
    }
}

fn sync_loop(wal: PathBuf, rx: mpsc::Receiver<Vec<Reply>>, failed: Arc<OnceLock<String>>) {
    let mut wal = WalFile {
        path: wal,
        file: None,
    };
    while let Ok(first) = rx.recv() {
        let mut replies = first;
        while let Ok(more) = rx.try_recv() {
            replies.extend(more);
        }
        // Only background writes to sync: nobody waits, so wait a little
        // for more (or for a durable write) and sync them all at once,
        // rather than keep the disk busy with an fsync per commit.
        let deadline = std::time::Instant::now() + BACKGROUND_SYNC_DELAY;
        while replies.is_empty() {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(more) => replies.extend(more),
                Err(_) => break,
            }
        }
        let synced = match failed.get() {
            Some(why) => Err(why.clone()),
            None => {
                let _timer = crate::timer!("store.fsync");
                wal.sync().map_err(|e| {
                    let why = format!(
                        "writing {} to disk failed ({e}); nova stops writing to this database",
                        wal.path.display()
                    );
                    tracing::error!("{why}");
                    failed.get_or_init(|| why).clone()
                })
            }
        };
        crate::counter!("store.fsyncs").inc();
        for reply in replies {
            reply(synced.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(w: &Writer, durability: Durability) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(w.write_with(
            durability,
            |conn| {
                conn.execute(
                    "INSERT INTO paused_queues (queue, paused_at) VALUES (hex(randomblob(8)), 0)",
                    [],
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            },
            |e| e,
        ))
    }

    fn rows(path: &Path) -> i64 {
        let reader = Store::open(path).unwrap().into_connection();
        reader
            .query_row("SELECT count(*) FROM paused_queues", [], |r| r.get(0))
            .unwrap()
    }

    /// Both kinds of write are committed for every reader once answered; a
    /// durable one only after an fsync of the WAL (other tests' writers
    /// may add fsyncs to the count, never take any away).
    #[test]
    fn durable_writes_wait_for_an_fsync_and_every_write_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let w = Writer::shared(&path).unwrap();
        insert(&w, Durability::Relaxed).unwrap();
        let fsyncs = crate::counter!("store.fsyncs").get();
        insert(&w, Durability::Durable).unwrap();
        assert!(crate::counter!("store.fsyncs").get() > fsyncs);
        insert(&w, Durability::Relaxed).unwrap();
        assert_eq!(rows(&path), 3);
        // A background write is answered without waiting, and still synced.
        let fsyncs = crate::counter!("store.fsyncs").get();
        insert(&w, Durability::Background).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::counter!("store.fsyncs").get() == fsyncs {
            assert!(std::time::Instant::now() < deadline, "no fsync followed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(rows(&path), 4);
    }

    /// When the WAL cannot be synced, the durable write is answered with the
    /// failure, and every later write fails too rather than be answered
    /// without knowing it is on disk. What was written before stays.
    #[test]
    fn a_failed_fsync_stops_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let w = Writer::shared(&path).unwrap();
        insert(&w, Durability::Durable).unwrap();
        std::fs::remove_file(dir.path().join("nova.db-wal")).unwrap();
        let e = insert(&w, Durability::Durable).unwrap_err();
        assert!(
            e.contains("nova.db-wal") && e.contains("to disk failed"),
            "{e}"
        );
        let e = insert(&w, Durability::Relaxed).unwrap_err();
        assert!(e.contains("nova stops writing"), "{e}");
        drop(w);
        assert!(rows(&path) >= 1);
    }
}
