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
    // 7: the tables written once or more per task, rebuilt for cheaper writes
    // (the rows are kept, and so is the queue's sequence). A CHECK of
    // `status IN (three or more values)` built a temporary index on every
    // INSERT and UPDATE that set a status; the same rule as ORs does not.
    // The idempotency key's index holds only the tasks that have one.
    "CREATE TABLE task_states_v7 (
        agent      TEXT NOT NULL,
        task       TEXT NOT NULL,
        status     TEXT NOT NULL CHECK (status = 'pending' OR status = 'done' OR status = 'failed' OR status = 'skipped'),
        run_id     TEXT,
        updated_at INTEGER NOT NULL,
        detail     TEXT,
        PRIMARY KEY (agent, task)
    ) WITHOUT ROWID;
    INSERT INTO task_states_v7 SELECT agent, task, status, run_id, updated_at, detail FROM task_states;
    DROP TABLE task_states;
    ALTER TABLE task_states_v7 RENAME TO task_states;

    CREATE TABLE queue_tasks_v7 (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT NOT NULL UNIQUE,
        queue            TEXT NOT NULL,
        type             TEXT NOT NULL,
        payload          TEXT NOT NULL,
        metadata         TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status = 'PENDING' OR status = 'IN_PROGRESS' OR status = 'COMPLETED'
                                             OR status = 'FAILED' OR status = 'CANCELLED'),
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
        idempotency_key  TEXT,
        last_error       TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO queue_tasks_v7 (seq, id, queue, type, payload, metadata, status, priority, attempts, max_attempts,
            retry_backoff_ms, run_at, created_at, updated_at, result, worker_id, lease_id, lease_expires_at,
            idempotency_key, last_error)
        SELECT seq, id, queue, type, payload, metadata, status, priority, attempts, max_attempts,
            retry_backoff_ms, run_at, created_at, updated_at, result, worker_id, lease_id, lease_expires_at,
            idempotency_key, last_error FROM queue_tasks;
    -- Purged tasks' numbers are not handed out again.
    DELETE FROM sqlite_sequence WHERE name = 'queue_tasks_v7';
    UPDATE sqlite_sequence SET name = 'queue_tasks_v7' WHERE name = 'queue_tasks';
    DROP TABLE queue_tasks;
    ALTER TABLE queue_tasks_v7 RENAME TO queue_tasks;
    CREATE UNIQUE INDEX queue_tasks_idempotency ON queue_tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX queue_tasks_due ON queue_tasks (status, priority DESC, run_at, seq);
    CREATE INDEX queue_tasks_leases ON queue_tasks (status, lease_expires_at);",
    // 8: workers connected by a Work stream (queue::sqlite), for `nova queue workers`.
    "CREATE TABLE queue_workers (
        id           TEXT PRIMARY KEY,
        record       TEXT NOT NULL,
        last_seen_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 9: large payloads in a table of their own, written once (queue::sqlite
    // puts one there when it is over 1 KiB, and leaves the task's own column
    // empty): SQLite rewrites a whole row, overflow pages and all, on every
    // UPDATE, and a task's row is updated at its lease and at its ack while
    // its payload (an agent's job: kilobytes) never changes. Small ones stay
    // in the row, where one write is cheaper than two. Deleting a task
    // deletes its payload.
    "CREATE TABLE queue_payloads (
        seq     INTEGER PRIMARY KEY,
        payload TEXT NOT NULL
    );
    CREATE TRIGGER queue_tasks_payload AFTER DELETE ON queue_tasks
    BEGIN
        DELETE FROM queue_payloads WHERE seq = OLD.seq;
    END;",
    // 10: the queue's tasks numbered without AUTOINCREMENT, which writes
    // `sqlite_sequence` on every enqueue: one page in six of a durable
    // commit. A new task is still numbered after every task in the queue
    // (the largest number plus one); only the number of a purged newest task
    // can come again, and nothing keeps one: outside this table a task is
    // named by its id, and a deleted task's payload goes with it.
    "CREATE TABLE queue_tasks_v10 (
        seq              INTEGER PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        queue            TEXT NOT NULL,
        type             TEXT NOT NULL,
        payload          TEXT NOT NULL,
        metadata         TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status = 'PENDING' OR status = 'IN_PROGRESS' OR status = 'COMPLETED'
                                             OR status = 'FAILED' OR status = 'CANCELLED'),
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
        idempotency_key  TEXT,
        last_error       TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO queue_tasks_v10 (seq, id, queue, type, payload, metadata, status, priority, attempts, max_attempts,
            retry_backoff_ms, run_at, created_at, updated_at, result, worker_id, lease_id, lease_expires_at,
            idempotency_key, last_error)
        SELECT seq, id, queue, type, payload, metadata, status, priority, attempts, max_attempts,
            retry_backoff_ms, run_at, created_at, updated_at, result, worker_id, lease_id, lease_expires_at,
            idempotency_key, last_error FROM queue_tasks;
    DROP TABLE queue_tasks;
    ALTER TABLE queue_tasks_v10 RENAME TO queue_tasks;
    DELETE FROM sqlite_sequence WHERE name = 'queue_tasks';
    -- A number can now come again: no payload may wait under one.
    DELETE FROM queue_payloads WHERE seq NOT IN (SELECT seq FROM queue_tasks);
    CREATE UNIQUE INDEX queue_tasks_idempotency ON queue_tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX queue_tasks_due ON queue_tasks (status, priority DESC, run_at, seq);
    CREATE INDEX queue_tasks_leases ON queue_tasks (status, lease_expires_at);
    CREATE TRIGGER queue_tasks_payload AFTER DELETE ON queue_tasks
    BEGIN
        DELETE FROM queue_payloads WHERE seq = OLD.seq;
    END;",
    // 11: no index of the audit log by action. Every reader takes the whole
    // chain in order (verifying it, filtering in memory), so the index was
    // only written: the most pages of any table in a local run's commits
    // (three records a task under three actions, three places in it).
    "DROP INDEX audit_log_action;",
    // 12: how many finished tasks each queue keeps by status, kept by
    // triggers in the same transactions as the tasks they count, so that
    // `stats` (the dashboard asks every half second while a page watches)
    // does not group every task the store has ever finished. Pending and
    // leased tasks are counted from their indexes (since 15, partial
    // indexes of those statuses only); the triggers fire once a task (as it finishes), not on every
    // enqueue and lease. (Finished is written as neither pending nor
    // leased: a trigger's `IN` list is a temporary table built each time
    // it is tested, which doubled the writer's CPU.)
    "CREATE TABLE queue_finished (
        queue  TEXT NOT NULL,
        status TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (queue, status)
    ) WITHOUT ROWID;
    INSERT INTO queue_finished (queue, status, n)
        SELECT queue, status, COUNT(*) FROM queue_tasks
        WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') GROUP BY queue, status;
    CREATE TRIGGER queue_finished_insert AFTER INSERT ON queue_tasks
        WHEN NEW.status <> 'PENDING' AND NEW.status <> 'IN_PROGRESS'
    BEGIN
        INSERT INTO queue_finished (queue, status, n) VALUES (NEW.queue, NEW.status, 1)
            ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER queue_finished_delete AFTER DELETE ON queue_tasks
        WHEN OLD.status <> 'PENDING' AND OLD.status <> 'IN_PROGRESS'
    BEGIN
        UPDATE queue_finished SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status;
    END;
    CREATE TRIGGER queue_finished_update AFTER UPDATE OF queue, status ON queue_tasks
        WHEN (OLD.queue IS NOT NEW.queue OR OLD.status IS NOT NEW.status)
            AND ((OLD.status <> 'PENDING' AND OLD.status <> 'IN_PROGRESS')
                OR (NEW.status <> 'PENDING' AND NEW.status <> 'IN_PROGRESS'))
    BEGIN
        UPDATE queue_finished SET n = n - 1 WHERE queue = OLD.queue AND status = OLD.status;
        INSERT INTO queue_finished (queue, status, n)
            SELECT NEW.queue, NEW.status, 1 WHERE NEW.status <> 'PENDING' AND NEW.status <> 'IN_PROGRESS'
            ON CONFLICT (queue, status) DO UPDATE SET n = n + 1;
    END;",
    // 13: a run records every task it plans when it starts (`waiting`,
    // then `not run` if it never started), so a run's view lists them all;
    // `planned` is the task's place in the plan, for their order.
    "ALTER TABLE run_tasks ADD COLUMN planned INTEGER;",
    // 14: a run can end `unfinished`: work left (checks that say a task is
    // not done, tasks not run) with nothing failed, which `failed` misnamed.
    // The table is rebuilt for its CHECK (rows and their order kept; the
    // run's tasks and messages still refer to it by id, with foreign keys
    // off while migrations run and checked before they commit).
    "CREATE TABLE runs_v14 (
        id          TEXT PRIMARY KEY,
        plan        TEXT NOT NULL,
        mode        TEXT NOT NULL,
        apply       INTEGER NOT NULL,
        status      TEXT NOT NULL CHECK (status = 'running' OR status = 'done' OR status = 'failed'
                                        OR status = 'unfinished' OR status = 'denied' OR status = 'interrupted'),
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        args        TEXT NOT NULL,
        report      TEXT
    );
    INSERT INTO runs_v14 (rowid, id, plan, mode, apply, status, started_at, finished_at, args, report)
        SELECT rowid, id, plan, mode, apply, status, started_at, finished_at, args, report FROM runs;
    DROP TABLE runs;
    ALTER TABLE runs_v14 RENAME TO runs;",
    // 15: the queue's two indexes hold only the tasks they are looked up
    // for: due tasks (pending) and leases (in progress). A finished task
    // left both, and each of its changes wrote index pages no query reads.
    "DROP INDEX queue_tasks_due;
    CREATE INDEX queue_tasks_due ON queue_tasks (priority DESC, run_at, seq) WHERE status = 'PENDING';
    DROP INDEX queue_tasks_leases;
    CREATE INDEX queue_tasks_leases ON queue_tasks (lease_expires_at) WHERE status = 'IN_PROGRESS';",
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
    // A migration that rebuilds a table others refer to (SQLite's way of
    // changing a CHECK) drops it first: with foreign keys enforced, that
    // would delete or refuse. They are off while the migrations run (the
    // pragma cannot change inside a transaction) and checked before commit.
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(sqlite_err(path))?;
    let migrated = migrate(conn, path);
    let enforced = conn
        .pragma_update(None, "foreign_keys", true)
        .map_err(sqlite_err(path));
    migrated.and(enforced).map(|()| SCHEMA_VERSION)
}

fn migrate(conn: &Connection, path: &Path) -> StoreResult<()> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(sqlite_err(path))?;
    // Re-read inside the write lock: another process may have migrated meanwhile.
    let current = read_version(&tx, path)?;
    if current == SCHEMA_VERSION {
        return tx.commit().map_err(sqlite_err(path));
    }
    // Rows that referred to nothing before (written by some other tool with
    // foreign keys off) are not the migrations' doing: only new ones fail it.
    let dangling = || {
        tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(sqlite_err(path))
    };
    let before = dangling()?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(sqlite_err(path))?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)
            .map_err(sqlite_err(path))?;
    }
    let after = dangling()?;
    if after > before {
        return Err(sqlite_err(path)(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            Some(format!(
                "migrating the schema would leave {} rows referring to rows that are gone",
                after - before
            )),
        )));
    }
    tx.commit().map_err(sqlite_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_version(conn: &Connection, version: usize) {
        for (i, sql) in MIGRATIONS.iter().take(version).enumerate() {
            conn.execute_batch(sql).unwrap();
            conn.pragma_update(None, "user_version", (i + 1) as u32)
                .unwrap();
        }
    }

    fn rows(conn: &Connection, sql: &str) -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Version 7 rebuilds the per-task tables: every row survives, the
    /// status rules still hold, and the idempotency key is still unique and
    /// looked up by index.
    #[test]
    fn rebuilding_the_task_tables_keeps_rows_sequence_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let conn = Connection::open(&path).unwrap();
        at_version(&conn, 6);
        conn.execute_batch(
            "INSERT INTO task_states VALUES ('orion', 'nemo', 'done', 'r1', 5, NULL);
             INSERT INTO queue_tasks (id, queue, type, payload, metadata, status, priority, attempts,
                 max_attempts, retry_backoff_ms, run_at, created_at, updated_at, idempotency_key)
             VALUES ('a', 'default', 't', 'p1', '[]', 'PENDING', 0, 0, 1, 10, 1, 1, 1, 'key-a'),
                    ('b', 'default', 't', 'p2', '[]', 'COMPLETED', 0, 1, 1, 10, 1, 1, 2, NULL),
                    ('c', 'default', 't', 'p3', '[]', 'FAILED', 0, 1, 1, 10, 1, 1, 3, NULL);
             DELETE FROM queue_tasks WHERE id = 'c';",
        )
        .unwrap();
        let dump = "SELECT seq || id || queue || type || payload || metadata || status || priority || attempts
            || max_attempts || retry_backoff_ms || run_at || created_at || updated_at || result || worker_id
            || lease_id || lease_expires_at || coalesce(idempotency_key, '-') || last_error
            FROM queue_tasks ORDER BY seq";
        let before = rows(&conn, dump);

        assert_eq!(apply(&conn, &path).unwrap(), SCHEMA_VERSION);
        assert_eq!(rows(&conn, dump), before);
        assert_eq!(
            rows(
                &conn,
                "SELECT agent || task || status || run_id FROM task_states"
            ),
            ["orionnemodoner1"]
        );
        conn.execute_batch(
            "INSERT INTO queue_tasks (id, queue, type, payload, metadata, status, priority, attempts,
                 max_attempts, retry_backoff_ms, run_at, created_at, updated_at)
             VALUES ('d', 'default', 't', 'p4', '[]', 'PENDING', 0, 0, 1, 10, 1, 1, 4)",
        )
        .unwrap();
        // Numbered after every task there (since version 10, the purged
        // newest task's number can come again).
        assert_eq!(
            rows(
                &conn,
                "SELECT CAST(seq AS TEXT) FROM queue_tasks WHERE id = 'd'"
            ),
            ["3"]
        );

        let refused = |sql: &str| {
            let err = conn.execute_batch(sql).unwrap_err().to_string();
            assert!(err.contains("constraint failed"), "{sql}: {err}");
        };
        refused("UPDATE queue_tasks SET status = 'LOST' WHERE id = 'a'");
        refused("UPDATE task_states SET status = 'lost'");
        refused("UPDATE queue_tasks SET idempotency_key = 'key-a' WHERE id = 'b'");
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM queue_tasks WHERE idempotency_key = ?1",
                ["key-a"],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("queue_tasks_idempotency"), "{plan}");

        // A deleted task takes its payload with it.
        conn.execute_batch(
            "INSERT INTO queue_payloads (seq, payload) VALUES (1, 'large'), (2, 'large');
             DELETE FROM queue_tasks WHERE id = 'a';",
        )
        .unwrap();
        assert_eq!(
            rows(&conn, "SELECT CAST(seq AS TEXT) FROM queue_payloads"),
            ["2"]
        );
    }

    /// Version 10 numbers the queue's tasks without `sqlite_sequence`: every
    /// row and large payload survives, a new task is numbered after them,
    /// the indexes and the payload's trigger are back, and a payload left
    /// without its task is gone (its number may come again).
    #[test]
    fn numbering_tasks_without_autoincrement_keeps_rows_payloads_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let conn = Connection::open(&path).unwrap();
        at_version(&conn, 9);
        conn.execute_batch(
            "INSERT INTO queue_tasks (id, queue, type, payload, metadata, status, priority, attempts,
                 max_attempts, retry_backoff_ms, run_at, created_at, updated_at, idempotency_key)
             VALUES ('a', 'default', 't', '', '[]', 'PENDING', 0, 0, 1, 10, 1, 1, 1, 'key-a'),
                    ('b', 'default', 't', 'p2', '[]', 'IN_PROGRESS', 0, 1, 1, 10, 1, 1, 2, NULL),
                    ('c', 'default', 't', 'p3', '[]', 'COMPLETED', 0, 1, 1, 10, 1, 1, 3, NULL);
             INSERT INTO queue_payloads (seq, payload) VALUES (1, 'large'), (9, 'orphan');
             DELETE FROM queue_tasks WHERE id = 'c';",
        )
        .unwrap();
        let dump = "SELECT t.seq || t.id || t.payload || coalesce(p.payload, '-') || t.status
            || coalesce(t.idempotency_key, '-') FROM queue_tasks t LEFT JOIN queue_payloads p USING (seq)
            ORDER BY t.seq";
        let before = rows(&conn, dump);
        assert_eq!(before, ["1alargePENDINGkey-a", "2bp2-IN_PROGRESS-"]);

        assert_eq!(apply(&conn, &path).unwrap(), SCHEMA_VERSION);
        assert_eq!(rows(&conn, dump), before);
        let table: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'queue_tasks'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!table.contains("AUTOINCREMENT"), "{table}");
        assert!(
            rows(
                &conn,
                "SELECT name FROM sqlite_sequence WHERE name = 'queue_tasks'"
            )
            .is_empty()
        );
        assert_eq!(
            rows(&conn, "SELECT CAST(seq AS TEXT) FROM queue_payloads"),
            ["1"]
        );
        conn.execute_batch(
            "INSERT INTO queue_tasks (id, queue, type, payload, metadata, status, priority, attempts,
                 max_attempts, retry_backoff_ms, run_at, created_at, updated_at)
             VALUES ('d', 'default', 't', 'p4', '[]', 'PENDING', 0, 0, 1, 10, 1, 1, 4)",
        )
        .unwrap();
        assert_eq!(
            rows(
                &conn,
                "SELECT CAST(seq AS TEXT) FROM queue_tasks WHERE id = 'd'"
            ),
            ["3"]
        );
        for (sql, index) in [
            (
                "SELECT id FROM queue_tasks WHERE idempotency_key = 'key-a'",
                "queue_tasks_idempotency",
            ),
            (
                "SELECT id FROM queue_tasks WHERE status = 'PENDING' ORDER BY priority DESC, run_at, seq",
                "queue_tasks_due",
            ),
            (
                "SELECT 1 FROM queue_tasks WHERE status = 'IN_PROGRESS' AND lease_expires_at <= 5",
                "queue_tasks_leases",
            ),
        ] {
            let plan: String = conn
                .query_row(&format!("EXPLAIN QUERY PLAN {sql}"), [], |r| r.get(3))
                .unwrap();
            assert!(plan.contains(index), "{sql}: {plan}");
        }
        conn.execute_batch("DELETE FROM queue_tasks WHERE id = 'a'")
            .unwrap();
        assert!(rows(&conn, "SELECT CAST(seq AS TEXT) FROM queue_payloads").is_empty());
    }

    /// Version 11 drops the audit log's index by action, which no query
    /// reads; the records stay.
    #[test]
    fn the_audit_logs_unread_index_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let conn = Connection::open(&path).unwrap();
        at_version(&conn, 10);
        conn.execute_batch(
            "INSERT INTO audit_log (seq, at, actor, action, target, outcome, details, controls, prev_hash, hash)
             VALUES (1, 1, 'me', 'task.start', 't', 'started', '{}', '[]', '', 'h1')",
        )
        .unwrap();
        assert_eq!(apply(&conn, &path).unwrap(), SCHEMA_VERSION);
        assert!(
            rows(
                &conn,
                "SELECT name FROM sqlite_master WHERE name = 'audit_log_action'"
            )
            .is_empty()
        );
        assert_eq!(rows(&conn, "SELECT action FROM audit_log"), ["task.start"]);
    }

    /// Version 12 counts the finished tasks already stored, and its
    /// triggers keep the counts equal to a count of the rows through every
    /// change a task goes through: enqueued, leased, finished, retried,
    /// moved to another queue, purged.
    #[test]
    fn the_finished_counts_follow_every_change_of_a_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let conn = Connection::open(&path).unwrap();
        at_version(&conn, 11);
        let insert = |id: &str, queue: &str, status: &str| {
            conn.execute(
                "INSERT INTO queue_tasks (id, queue, type, payload, metadata, status, priority, attempts,
                     max_attempts, retry_backoff_ms, run_at, created_at, updated_at)
                 VALUES (?1, ?2, 't', '', '[]', ?3, 0, 0, 1, 10, 1, 1, 1)",
                [id, queue, status],
            )
            .unwrap();
        };
        for (id, queue, status) in [
            ("a", "jobs", "COMPLETED"),
            ("b", "jobs", "COMPLETED"),
            ("c", "jobs", "FAILED"),
            ("d", "mail", "CANCELLED"),
            ("e", "mail", "PENDING"),
        ] {
            insert(id, queue, status);
        }
        assert_eq!(apply(&conn, &path).unwrap(), SCHEMA_VERSION);
        let counted = "SELECT queue || ' ' || status || ' ' || n FROM queue_finished WHERE n > 0 ORDER BY queue, status";
        let grouped = "SELECT queue || ' ' || status || ' ' || COUNT(*) FROM queue_tasks
            WHERE status <> 'PENDING' AND status <> 'IN_PROGRESS' GROUP BY queue, status ORDER BY queue, status";
        assert_eq!(
            rows(&conn, counted),
            ["jobs COMPLETED 2", "jobs FAILED 1", "mail CANCELLED 1"]
        );
        for change in [
            "INSERT INTO queue_tasks (id, queue, type, payload, metadata, status, priority, attempts,
                 max_attempts, retry_backoff_ms, run_at, created_at, updated_at)
             VALUES ('f', 'jobs', 't', '', '[]', 'PENDING', 0, 0, 1, 10, 1, 1, 1)",
            "UPDATE queue_tasks SET status = 'IN_PROGRESS' WHERE id IN ('e', 'f')",
            "UPDATE queue_tasks SET status = 'COMPLETED' WHERE id = 'f'",
            "UPDATE queue_tasks SET status = 'FAILED' WHERE id = 'e'",
            "UPDATE queue_tasks SET status = 'PENDING', attempts = 0 WHERE id = 'c'",
            "UPDATE queue_tasks SET queue = 'mail' WHERE id = 'a'",
            "UPDATE queue_tasks SET result = 'kept', updated_at = 9 WHERE id = 'b'",
            "UPDATE queue_tasks SET status = 'CANCELLED' WHERE id = 'c'",
            "DELETE FROM queue_tasks WHERE id IN ('b', 'd')",
        ] {
            conn.execute_batch(change).unwrap();
            assert_eq!(rows(&conn, counted), rows(&conn, grouped), "after {change}");
        }
        assert_eq!(
            rows(&conn, counted),
            [
                "jobs CANCELLED 1",
                "jobs COMPLETED 1",
                "mail COMPLETED 1",
                "mail FAILED 1"
            ]
        );
    }

    /// Version 14 lets a run end `unfinished`: every run, in its order,
    /// and its tasks and messages survive the rebuild; the tasks still
    /// refer to their run (foreign keys enforced again afterwards) and the
    /// status is still checked.
    #[test]
    fn a_run_can_end_unfinished_and_the_rebuild_keeps_runs_and_their_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        at_version(&conn, 13);
        conn.execute_batch(
            "INSERT INTO runs (id, plan, mode, apply, status, started_at, finished_at, args, report)
                 VALUES ('b', 'p', 'parallel', 1, 'failed', 5, 6, '[]', 'r.md'),
                        ('a', 'p', 'sequential', 0, 'done', 5, NULL, '[]', NULL);
             INSERT INTO run_tasks (run_id, agent, task, phase, status, attempts)
                 VALUES ('b', 'x', 't', 'one', 'failed', 1);
             INSERT INTO run_messages (run_id, seq, at, kind, body) VALUES ('a', 1, 5, 'note', 'hi');",
        )
        .unwrap();
        let unfinished = "UPDATE runs SET status = 'unfinished' WHERE id = 'a'";
        assert!(conn.execute_batch(unfinished).is_err());
        assert_eq!(apply(&conn, &path).unwrap(), SCHEMA_VERSION);
        conn.execute_batch(unfinished).unwrap();
        assert_eq!(
            rows(
                &conn,
                "SELECT id || ' ' || status || ' ' || mode || ' ' || COALESCE(report, '-')
                 FROM runs ORDER BY started_at, rowid"
            ),
            ["b failed parallel r.md", "a unfinished sequential -"]
        );
        assert_eq!(rows(&conn, "SELECT run_id || task FROM run_tasks"), ["bt"]);
        assert_eq!(
            rows(&conn, "SELECT run_id || body FROM run_messages"),
            ["ahi"]
        );
        assert!(
            conn.execute_batch("UPDATE runs SET status = 'lost' WHERE id = 'a'")
                .is_err()
        );
        let enforced: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(enforced, 1);
        assert!(
            conn.execute_batch(
                "INSERT INTO run_tasks (run_id, agent, task, phase, status, attempts)
                 VALUES ('nobody', 'x', 't', 'one', 'done', 1)"
            )
            .is_err(),
            "a task of no run"
        );
    }

    /// Rows that referred to nothing before the migrations (written with
    /// foreign keys off by some other tool) do not stop them: only rows the
    /// migrations would leave dangling do.
    #[test]
    fn dangling_rows_from_before_do_not_stop_the_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.db");
        let conn = Connection::open(&path).unwrap();
        at_version(&conn, 13);
        conn.pragma_update(None, "foreign_keys", false).unwrap();
        conn.execute_batch(
            "INSERT INTO run_tasks (run_id, agent, task, phase, status, attempts)
                 VALUES ('gone', 'x', 't', 'one', 'done', 1)",
        )
        .unwrap();
        conn.pragma_update(None, "foreign_keys", true).unwrap();
        assert_eq!(apply(&conn, &path).unwrap(), SCHEMA_VERSION);
        assert_eq!(rows(&conn, "SELECT run_id FROM run_tasks"), ["gone"]);
    }
}
