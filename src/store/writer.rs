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
//! A [`Durability::Durable`] write is answered once it is on disk: its batch
//! commits with `synchronous = FULL`, one fsync for the whole batch, and
//! operations that arrive meanwhile wait to form the next batch. A write
//! whose loss in a power cut does no harm (a queue lease: the task would go
//! back to the queue, as at-least-once delivery allows) may be
//! [`Durability::Relaxed`]: a batch of only such writes commits without the
//! fsync (`synchronous = NORMAL`). It is still committed before its caller
//! hears back, survives the process being killed, and goes to disk with the
//! next durable commit, since the WAL is written in order. A
//! [`Durability::Background`] write is answered the same way, and the WAL is
//! fsynced within 20 ms whatever else is written.

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
const BACKGROUND_SYNC_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

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
    /// that the caller does not wait for within 20 ms
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
    /// Why every write fails from now on, once an fsync has failed.
    failure: Arc<OnceLock<String>>,
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
        // Each operation runs in a savepoint, whose journal (the pages it
        // changed, as they were) SQLite keeps in memory up to 64 KiB and
        // then moves to a temporary file for the rest of the transaction:
        // an enqueue of a hundred tasks went over, and the writer spent
        // half its time writing that file. Kept in memory, the journal is
        // emptied as each savepoint is released: one operation's pages.
        conn.execute_batch("PRAGMA temp_store = MEMORY")
            .map_err(|e| StoreError::Sqlite {
                path: path.to_path_buf(),
                source: e,
            })?;
        let key = std::fs::canonicalize(path).unwrap_or(key);
        let (jobs, rx) = mpsc::channel::<Queued>();
        let failure = Arc::new(OnceLock::new());
        let failed = failure.clone();
        let thread = std::thread::Builder::new()
            .name("nova-db-writer".into())
            .spawn(move || write_loop(conn, rx, &failed))
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let writer = Arc::new(Writer {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
            failure,
        });
        reg.insert(key, Arc::downgrade(&writer));
        Ok(writer)
    }

    /// Why every write to this database fails from now on (an fsync
    /// failed, so nothing written can be known to be on disk); `None` while
    /// writes go on. Long-running callers (a run) stop on it rather than
    /// go on with every write failing.
    pub fn failed(&self) -> Option<String> {
        self.failure.get().cloned()
    }

    /// Queue a write without waiting for it: it takes its place in the
    /// writer's order now (a write queued later commits after it), and
    /// `answer` gets its result once committed. False when the writer has
    /// stopped.
    pub fn submit<T: Send + 'static, E: Send + 'static>(
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

fn write_loop(conn: Connection, rx: mpsc::Receiver<Queued>, failure: &OnceLock<String>) {
    // The connection starts with synchronous = FULL (Store::open).
    let mut synced = true;
    // In WAL mode, background writes are fsynced by this loop itself.
    let mut wal = match conn.path() {
        Some(db)
            if conn
                .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .is_ok_and(|mode| mode.eq_ignore_ascii_case("wal")) =>
        {
            Some(WalFile::new(PathBuf::from(format!("{db}-wal"))))
        }
        _ => None,
    };
    // When background writes committed since the last fsync must be synced.
    let mut sync_due: Option<std::time::Instant> = None;
    loop {
        let first = match sync_due {
            None => rx.recv().ok(),
            Some(due) => {
                match rx.recv_timeout(due.saturating_duration_since(std::time::Instant::now())) {
                    Ok(job) => Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Some(wal) = wal.as_mut() {
                            let _ = wal.sync(failure);
                        }
                        sync_due = None;
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some(first) = first else { break };
        let mut queued = vec![first];
        while queued.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => queued.push(job),
                Err(_) => break,
            }
        }
        if let Some(failed) = failure.get() {
            for q in queued {
                let (reply, _) = (q.job)(None);
                reply(Err(failed.clone()));
            }
            continue;
        }
        // Without a WAL this loop can sync, a background write is durable.
        let durable = queued.iter().any(|q| {
            q.durability == Durability::Durable
                || (wal.is_none() && q.durability == Durability::Background)
        });
        let background = queued
            .iter()
            .any(|q| q.durability == Durability::Background);
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
        let mut commit = {
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
        } else if synced {
            // This commit's fsync put every commit before it on disk. SQLite
            // syncs the WAL through the descriptor it holds, though, and only
            // a sync by the WAL's name finds one removed or replaced under it
            // (the workspace deleted mid-run): background writes waiting for
            // their fsync get that sync here, answering this batch with its
            // failure.
            if sync_due.take().is_some()
                && let Some(wal) = wal.as_mut()
                && let Err(why) = wal.sync(failure)
            {
                commit = Err(why);
            }
        } else if background {
            sync_due.get_or_insert_with(|| std::time::Instant::now() + BACKGROUND_SYNC_DELAY);
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
    if sync_due.is_some()
        && let Some(wal) = wal.as_mut()
    {
        let _ = wal.sync(failure);
    }
}

/// The WAL file, for the fsync that background writes get when no durable
/// commit (which fsyncs the WAL inside the commit, `synchronous = FULL`)
/// came within [`BACKGROUND_SYNC_DELAY`] of them. An fsync of the WAL puts
/// every commit before it on disk.
///
/// A failed fsync leaves the database's durability unknown: every later
/// write fails with it (the writer's `failure`, which [`Writer::failed`]
/// reports), as a database server would stop, rather than go on answering
/// writes that may not be on disk.
struct WalFile {
    path: PathBuf,
    /// The open file, and its device and inode: reopened when the path no
    /// longer names the same file.
    file: Option<(std::fs::File, (u64, u64))>,
}

impl WalFile {
    fn new(path: PathBuf) -> WalFile {
        WalFile { path, file: None }
    }

    /// Fsync the WAL; a failure is kept in `failure` for good.
    fn sync(&mut self, failure: &OnceLock<String>) -> Result<(), String> {
        if let Some(why) = failure.get() {
            return Err(why.clone());
        }
        let _timer = crate::timer!("store.fsync");
        crate::counter!("store.fsyncs").inc();
        self.sync_file().map_err(|e| {
            let why = format!(
                "writing {} to disk failed ({e}); nova stops writing to this database",
                self.path.display()
            );
            tracing::error!("{why}");
            let _ = failure.set(why.clone());
            why
        })
    }

    fn sync_file(&mut self) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(path: &Path) -> i64 {
        let reader = Store::open(path).unwrap().into_connection();
        reader
            .query_row("SELECT count(*) FROM paused_queues", [], |r| r.get(0))
            .unwrap()
    }

    /// Insert a row with `durability`; the connection's `synchronous`
    /// setting while it did.
    fn insert(w: &Writer, durability: Durability) -> Result<i64, String> {
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
                .and_then(|_| conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0)))
                .map_err(|e| e.to_string())
            },
            |e| e,
        ))
    }

    /// Durable writes commit with `synchronous = FULL`, the others without
    /// it, whatever came before; every kind is committed for every reader
    /// once answered, and a background write gets its fsync soon after
    /// (other tests' writers may add fsyncs to the count, never take any).
    #[test]
    fn each_batch_commits_with_the_durability_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let w = Writer::shared(&path).unwrap();
        const FULL: i64 = 2;
        const NORMAL: i64 = 1;
        assert_eq!(insert(&w, Durability::Durable), Ok(FULL));
        assert_eq!(insert(&w, Durability::Relaxed), Ok(NORMAL));
        assert_eq!(insert(&w, Durability::Relaxed), Ok(NORMAL));
        assert_eq!(insert(&w, Durability::Durable), Ok(FULL));
        let fsyncs = crate::counter!("store.fsyncs").get();
        assert_eq!(insert(&w, Durability::Background), Ok(NORMAL));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while crate::counter!("store.fsyncs").get() == fsyncs {
            assert!(std::time::Instant::now() < deadline, "no fsync followed");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(rows(&path), 5);
    }

    /// The savepoints' journals stay in memory (`temp_store = MEMORY`): on
    /// a temporary file, each operation over 64 KiB of changed pages had
    /// the writer write them all out again.
    #[test]
    fn savepoint_journals_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::shared(&dir.path().join("nova.db")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let temp_store = rt.block_on(w.write(
            |conn| conn.query_row("PRAGMA temp_store", [], |r| r.get::<_, i64>(0)),
            rusqlite::Error::InvalidParameterName,
        ));
        const MEMORY: i64 = 2;
        assert_eq!(temp_store.unwrap(), MEMORY);
    }

    /// When the WAL cannot be synced after background writes, every later
    /// write fails rather than be answered without knowing it is on disk.
    /// What was written before stays.
    #[test]
    fn a_failed_fsync_stops_every_later_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let w = Writer::shared(&path).unwrap();
        insert(&w, Durability::Durable).unwrap();
        std::fs::remove_file(dir.path().join("nova.db-wal")).unwrap();
        insert(&w, Durability::Background).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let e = loop {
            std::thread::sleep(BACKGROUND_SYNC_DELAY);
            match insert(&w, Durability::Relaxed) {
                Err(e) => break e,
                Ok(_) => assert!(std::time::Instant::now() < deadline, "writes go on"),
            }
        };
        assert!(
            e.contains("nova.db-wal") && e.contains("nova stops writing"),
            "{e}"
        );
        assert!(insert(&w, Durability::Durable).is_err());
        drop(w);
        assert!(rows(&path) >= 1);
    }
}
