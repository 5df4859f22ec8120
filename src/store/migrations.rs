//! Versioned schema migrations, tracked in `PRAGMA user_version`.
//!
//! Migration `n` (1-based) takes the schema from version `n - 1` to `n`. All
//! pending migrations run in one `IMMEDIATE` transaction, so two nova processes
//! starting at once cannot both migrate, and a failed migration changes nothing.
//! Never edit a migration that has shipped; add a new one.

use std::path::Path;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::{StoreError, StoreResult, sqlite_err};

const MIGRATIONS: &[&str] = &[
    // 1: the last verified state of every agent task.
    "CREATE TABLE task_states (
        agent      TEXT NOT NULL,
        task       TEXT NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed', 'skipped')),
        run_id     TEXT,
        updated_at INTEGER NOT NULL,
        detail     TEXT,
        PRIMARY KEY (agent, task)
    ) WITHOUT ROWID;",
    // 2: the task queue (queue::sqlite). `seq` orders tasks oldest first.
    "CREATE TABLE queue_tasks (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT NOT NULL UNIQUE,
        queue            TEXT NOT NULL,
        type             TEXT NOT NULL,
        payload          TEXT NOT NULL,
        metadata         TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('PENDING', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED')),
        priority         INTEGER NOT NULL,
        attempts         INTEGER NOT NULL,
        max_attempts     INTEGER NOT NULL,
        retry_backoff_ms INTEGER NOT NULL,
        run_at           INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        result           TEXT NOT NULL DEFAULT '',
        worker_id        TEXT NOT NULL DEFAULT '',
        lease_id         TEXT NOT NULL DEFAULT '',
        lease_expires_at INTEGER NOT NULL DEFAULT 0,
        idempotency_key  TEXT UNIQUE,
        last_error       TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX queue_tasks_due ON queue_tasks (status, priority DESC, run_at, seq);
    CREATE INDEX queue_tasks_leases ON queue_tasks (status, lease_expires_at);",
    // 3: KPI snapshots (kpi::store) and the hash-chained audit log (audit).
    "CREATE TABLE kpi_snapshots (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        taken_at INTEGER NOT NULL,
        source   TEXT NOT NULL,
        snapshot TEXT NOT NULL
    );
    CREATE INDEX kpi_snapshots_source ON kpi_snapshots (source, seq);
    CREATE TABLE audit_log (
        seq       INTEGER PRIMARY KEY,
        at        INTEGER NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        target    TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        details   TEXT NOT NULL,
        controls  TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );
    CREATE INDEX audit_log_action ON audit_log (action, seq);",
    // 4: orchestration runs (orchestrate): the run, each task's outcome, and the hub's messages.
    "CREATE TABLE runs (
        id          TEXT PRIMARY KEY,
        plan        TEXT NOT NULL,
        mode        TEXT NOT NULL,
        apply       INTEGER NOT NULL,
        status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'denied', 'interrupted')),
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        args        TEXT NOT NULL,
        report      TEXT
    );
    CREATE TABLE run_tasks (
        run_id      TEXT NOT NULL REFERENCES runs (id),
        agent       TEXT NOT NULL,
        task        TEXT NOT NULL,
        phase       TEXT NOT NULL,
        status      TEXT NOT NULL,
        attempts    INTEGER NOT NULL,
        exit_code   INTEGER,
        started_at  INTEGER,
        finished_at INTEGER,
        peak_rss    INTEGER,
        mean_rss    INTEGER,
        mean_cpu    REAL,
        gpu_memory  INTEGER,
        gpu_util    REAL,
        worker      TEXT NOT NULL DEFAULT '',
        detail      TEXT NOT NULL DEFAULT '',
        log_tail    TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (run_id, agent, task)
    ) WITHOUT ROWID;
    CREATE TABLE run_messages (
        run_id  TEXT NOT NULL REFERENCES runs (id),
        seq     INTEGER NOT NULL,
        at      INTEGER NOT NULL,
        kind    TEXT NOT NULL,
        agent   TEXT NOT NULL DEFAULT '',
        body    TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;",
    // 5: the host samples nova monitor keeps (a bounded history).
    "CREATE TABLE monitor_samples (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        at     INTEGER NOT NULL,
        sample TEXT NOT NULL
    );",
    // 6: queues paused by an operator (queue::sqlite): Dequeue skips them.
    "CREATE TABLE paused_queues (
        queue     TEXT PRIMARY KEY,
        paused_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

/// The schema version this nova writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

pub(super) fn read_version(conn: &Connection, path: &Path) -> StoreResult<u32> {
    // One statement, so one read snapshot: read apart, another process's
    // first migration could commit between the version and the table list,
    // and its fresh tables would look like another program's.
    let (version, tables): (u32, Option<String>) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version),
                    (SELECT group_concat(name, ', ') FROM
                        (SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name LIMIT 5))",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sqlite_err(path))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    // Another program's database: nova's migrations would add their tables
    // beside its own.
    if let (0, Some(tables)) = (version, tables) {
        return Err(StoreError::NotNova {
            path: path.to_path_buf(),
            tables,
        });
    }
    Ok(version)
}

/// Bring the schema up to [`SCHEMA_VERSION`]; returns the version reached.
pub(super) fn apply(conn: &Connection, path: &Path) -> StoreResult<u32> {
    if read_version(conn, path)? == SCHEMA_VERSION {
        return Ok(SCHEMA_VERSION);
    }
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(sqlite_err(path))?;
    // Re-read inside the write lock: another process may have migrated meanwhile.
    let current = read_version(&tx, path)?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(sqlite_err(path))?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)
            .map_err(sqlite_err(path))?;
    }
    tx.commit().map_err(sqlite_err(path))?;
    Ok(SCHEMA_VERSION)
}
