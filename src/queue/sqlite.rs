//! The SQLite queue backend: the embedded default.
//!
//! Writes go through the file's one writer ([`Writer`]): every operation
//! waiting is applied in its own savepoint of one `IMMEDIATE` transaction and
//! committed once. An enqueue or ack is answered once it is on disk, and one
//! fsync serves every commit made while the last one ran (group commit), so
//! throughput is not bound to one fsync per operation. Leases (dequeue,
//! heartbeat, the reaper) are answered once committed, without waiting for
//! an fsync: a power cut can only lose the newest of them, and a lost lease
//! puts its task back in the queue, which at-least-once delivery allows; they
//! reach the disk with the next enqueue or ack. Reads (get, list, stats) use
//! their own connection and run beside the writer (WAL).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::backend::{HandOff, QueueBackend, QueueError, QueueResult};
use super::model::{
    AckSpec, DEFAULT_LEASE_MS, DequeueSpec, NewTask, Stats, Status, TASK_OVERHEAD, Task,
    WORKER_FORGET_MS, WORKER_TTL_MS, WorkerRecord, backoff_ms, new_id,
};
use super::proto::TaskMetadataEntry;
use crate::store::Store;
use crate::store::writer::{Durability, Writer};

#[derive(Clone)]
pub struct SqliteQueue {
    writer: Arc<Writer>,
    reader: Arc<Mutex<Connection>>,
    /// What an answered enqueue or ack promises (see [`SqliteQueue::for_local_run`]).
    durability: Durability,
}

impl SqliteQueue {
    /// Open (creating and migrating if needed) the queue in the database at `path`.
    pub fn open(path: &Path) -> QueueResult<SqliteQueue> {
        let unavailable = |e: crate::store::StoreError| QueueError::Unavailable(e.to_string());
        let writer = Writer::shared(path).map_err(unavailable)?;
        let reader = Store::open(path).map_err(unavailable)?.into_connection();
        Ok(SqliteQueue {
            writer,
            reader: Arc::new(Mutex::new(reader)),
            durability: Durability::Durable,
        })
    }

    /// Enqueues and acks answered once committed, with their fsync run in
    /// the background ([`Durability::Background`]). Only for a queue whose
    /// answers nobody outside this process hears of: a local run's own
    /// scheduler and workers. What the run reports comes after a durable
    /// commit, which the WAL's order puts after every write before it; a
    /// power cut mid-run loses at most the last moment's writes, in order,
    /// and `--resume` goes on from what is on disk.
    pub fn for_local_run(mut self) -> SqliteQueue {
        self.durability = Durability::Background;
        self
    }

    async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> QueueResult<T> + Send + 'static,
    ) -> QueueResult<T> {
        self.writer.write(op, QueueError::Unavailable).await
    }

    /// An enqueue or ack: answered as this queue promises (durable, or for
    /// a local run in the background).
    async fn write_answered<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> QueueResult<T> + Send + 'static,
    ) -> QueueResult<T> {
        self.writer
            .write_with(self.durability, op, QueueError::Unavailable)
            .await
    }

    /// A write whose loss in a power cut only returns tasks to the queue
    /// (leases and their renewals): committed before it is answered, on
    /// disk with the next durable commit (see [`Durability::Relaxed`]).
    async fn write_relaxed<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> QueueResult<T> + Send + 'static,
    ) -> QueueResult<T> {
        self.writer
            .write_with(Durability::Relaxed, op, QueueError::Unavailable)
            .await
    }

    async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> QueueResult<T> + Send + 'static,
    ) -> QueueResult<T> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            op(&conn)
        })
        .await
        .map_err(|e| QueueError::Unavailable(e.to_string()))?
    }
}

const COLUMNS: &str = "t.id, t.type, coalesce(p.payload, t.payload), t.metadata, t.status, t.created_at, t.updated_at, t.result, \
    t.worker_id, t.queue, t.priority, t.attempts, t.max_attempts, t.run_at, t.idempotency_key, t.last_error, \
    t.lease_expires_at, t.lease_id, t.retry_backoff_ms";
/// Where [`COLUMNS`] come from: a task's row (`t`) and, for a payload over
/// [`INLINE_PAYLOAD`] bytes, the payload's own row (`p`), kept apart so that
/// updating the task does not rewrite it.
const TASKS: &str = "queue_tasks t LEFT JOIN queue_payloads p ON p.seq = t.seq";
const INLINE_PAYLOAD: usize = 1024;

fn task_from_row(row: &Row) -> rusqlite::Result<Task> {
    task_from_row_at(row, 0)
}

/// The task in [`COLUMNS`] order from column `at` on.
fn task_from_row_at(row: &Row, at: usize) -> rusqlite::Result<Task> {
    let metadata: String = row.get(at + 3)?;
    let pairs: Vec<(String, String)> = serde_json::from_str(&metadata).unwrap_or_default();
    Ok(Task {
        id: row.get(at)?,
        r#type: row.get(at + 1)?,
        payload: row.get(at + 2)?,
        metadata: pairs
            .into_iter()
            .map(|(key, value)| TaskMetadataEntry { key, value })
            .collect(),
        status: row.get(at + 4)?,
        created_at: row.get(at + 5)?,
        updated_at: row.get(at + 6)?,
        result: row.get(at + 7)?,
        worker_id: row.get(at + 8)?,
        queue: row.get(at + 9)?,
        priority: row.get(at + 10)?,
        attempts: row.get(at + 11)?,
        max_attempts: row.get(at + 12)?,
        run_at: row.get(at + 13)?,
        idempotency_key: row.get::<_, Option<String>>(at + 14)?.unwrap_or_default(),
        last_error: row.get(at + 15)?,
        lease_expires_at: row.get(at + 16)?,
        lease_id: row.get(at + 17)?,
        retry_backoff_ms: row.get(at + 18)?,
    })
}

fn sql_err(e: rusqlite::Error) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn find(conn: &Connection, id: &str) -> QueueResult<Task> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM {TASKS} WHERE t.id = ?1"))
        .map_err(sql_err)?
        .query_row([id], task_from_row)
        .optional()
        .map_err(sql_err)?
        .ok_or_else(|| QueueError::NotFound(id.to_string()))
}

/// What an ack reads of a task: the fields it checks and changes, without
/// the payload and the rest (a brief ack answers only the id and status).
fn find_for_ack(conn: &Connection, id: &str) -> QueueResult<Task> {
    conn.prepare_cached(
        "SELECT status, attempts, max_attempts, retry_backoff_ms, lease_id, lease_expires_at
         FROM queue_tasks WHERE id = ?1",
    )
    .map_err(sql_err)?
    .query_row([id], |r| {
        Ok(Task {
            id: id.to_string(),
            status: r.get(0)?,
            attempts: r.get(1)?,
            max_attempts: r.get(2)?,
            retry_backoff_ms: r.get(3)?,
            lease_id: r.get(4)?,
            lease_expires_at: r.get(5)?,
            ..Task::default()
        })
    })
    .optional()
    .map_err(sql_err)?
    .ok_or_else(|| QueueError::NotFound(id.to_string()))
}

fn not_in_progress(task: &Task) -> QueueError {
    QueueError::FailedPrecondition(format!(
        "task {} is {}, not IN_PROGRESS",
        task.id, task.status
    ))
}

/// The task, if the caller's lease (when given) still holds it at `now`.
fn held(conn: &Connection, id: &str, lease_id: Option<&str>, now: i64) -> QueueResult<Task> {
    let task = find(conn, id)?;
    check_held(&task, lease_id, now)?;
    Ok(task)
}

/// Whether the caller's lease (when given) still holds `task` at `now`.
fn check_held(task: &Task, lease_id: Option<&str>, now: i64) -> QueueResult<()> {
    let id = &task.id;
    if task.status != Status::InProgress.as_str() {
        return Err(not_in_progress(task));
    }
    if let Some(lease) = lease_id
        && lease != task.lease_id
    {
        return Err(QueueError::FailedPrecondition(format!(
            "lease {lease} does not hold task {id}: the lease id is wrong, or the task was handed out again"
        )));
    }
    if task.lease_expires_at <= now {
        return Err(QueueError::FailedPrecondition(format!(
            "the lease on task {id} expired; it will be handed out again"
        )));
    }
    Ok(())
}

/// A final ack sent again by the lease that gave it (its answer was lost, say
/// to a server restart): answered with the task as it stands, changing nothing.
/// A finished task keeps the id of the lease that finished it for this.
fn repeated_ack(task: &Task, ack: &AckSpec) -> bool {
    let outcome = if ack.success {
        Status::Completed
    } else {
        Status::Failed
    };
    ack.lease_id
        .as_deref()
        .is_some_and(|lease| lease == task.lease_id)
        && task.status == outcome.as_str()
}

/// Whether any lease has expired by `?1`.
const ANY_EXPIRED: &str =
    "SELECT 1 FROM queue_tasks WHERE status = 'IN_PROGRESS' AND lease_expires_at <= ?1 LIMIT 1";

fn reap_expired(conn: &Connection, now: i64) -> QueueResult<u64> {
    // Usually nothing has expired, and this look is much cheaper than the
    // UPDATE, which collects rows in a temporary table before changing them
    // (it changes the index it searches).
    let expired = conn
        .prepare_cached(ANY_EXPIRED)
        .map_err(sql_err)?
        .exists([now])
        .map_err(sql_err)?;
    if !expired {
        return Ok(0);
    }
    let n = conn
        .prepare_cached(
            "UPDATE queue_tasks SET status = 'PENDING', last_error = 'lease expired (worker ' || worker_id || ')',
                 worker_id = '', lease_id = '', lease_expires_at = 0, updated_at = ?1
             WHERE status = 'IN_PROGRESS' AND lease_expires_at <= ?1",
        )
        .map_err(sql_err)?
        .execute([now])
        .map_err(sql_err)?;
    Ok(n as u64)
}

fn enqueue_one(conn: &Connection, task: NewTask, now: i64) -> QueueResult<(Task, bool)> {
    if let Some(key) = &task.idempotency_key {
        let existing = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM {TASKS} WHERE t.idempotency_key = ?1"
            ))
            .map_err(sql_err)?
            .query_row([key], task_from_row)
            .optional()
            .map_err(sql_err)?;
        if let Some(existing) = existing {
            return Ok((existing, true));
        }
    }
    let metadata = serde_json::to_string(&task.metadata).expect("metadata serializes");
    // The row as inserted (the columns' defaults included), without reading it back.
    let task = task.into_task(new_id(), now);
    insert(conn, &task, &metadata)?;
    Ok((task, false))
}

/// Store `task` as a new row, as it is: its status, attempts and lease too.
fn insert(conn: &Connection, task: &Task, metadata: &str) -> QueueResult<()> {
    let large = task.payload.len() > INLINE_PAYLOAD;
    conn.prepare_cached(
        "INSERT INTO queue_tasks (id, queue, type, payload, metadata, status, priority, attempts, max_attempts,
             retry_backoff_ms, run_at, created_at, updated_at, idempotency_key, worker_id, lease_id,
             lease_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )
    .map_err(sql_err)?
    .execute(params![
        task.id,
        task.queue,
        task.r#type,
        if large { "" } else { task.payload.as_str() },
        metadata,
        task.status,
        task.priority,
        task.attempts,
        task.max_attempts,
        task.retry_backoff_ms,
        task.run_at,
        task.created_at,
        task.updated_at,
        (!task.idempotency_key.is_empty()).then_some(&task.idempotency_key),
        task.worker_id,
        task.lease_id,
        task.lease_expires_at,
    ])
    .map_err(sql_err)?;
    if large {
        conn.prepare_cached(
            "INSERT INTO queue_payloads (seq, payload) VALUES (last_insert_rowid(), ?1)",
        )
        .map_err(sql_err)?
        .execute([&task.payload])
        .map_err(sql_err)?;
    }
    Ok(())
}

/// Whether a lease for `spec` now would take the new `task` and nothing
/// else: it is due, has no idempotency key (it is new), its queue is one
/// the worker asked for and not paused, and none of the worker's queues
/// has another task due (expired leases returned first, as a lease does).
fn takes_only_the_new_task(
    conn: &Connection,
    task: &NewTask,
    spec: &DequeueSpec,
    now: i64,
) -> QueueResult<bool> {
    if task.delay_ms != 0
        || task.idempotency_key.is_some()
        || !(spec.queues.is_empty() || spec.queues.contains(&task.queue))
    {
        return Ok(false);
    }
    reap_expired(conn, now)?;
    let paused = conn
        .prepare_cached("SELECT 1 FROM paused_queues WHERE queue = ?1")
        .map_err(sql_err)?
        .exists([&task.queue])
        .map_err(sql_err)?;
    if paused {
        return Ok(false);
    }
    let sql = format!(
        "SELECT 1 FROM queue_tasks t WHERE t.status = 'PENDING' AND t.run_at <= ?{} LIMIT 1",
        of_queues(&spec.queues)
    );
    let other = conn
        .prepare_cached(&sql)
        .map_err(sql_err)?
        .exists(params_from_iter(due_args(now, &spec.queues)))
        .map_err(sql_err)?;
    Ok(!other)
}

/// The new `task` stored as leased for `spec`: what an enqueue and then a
/// lease would leave, without filing it as pending first (a row's index
/// entries written once, not three times). The task as enqueued, and as
/// leased.
fn store_leased(
    conn: &Connection,
    task: NewTask,
    spec: &DequeueSpec,
    now: i64,
) -> QueueResult<(Task, Task)> {
    let metadata = serde_json::to_string(&task.metadata).expect("metadata serializes");
    let stored = task.into_task(new_id(), now);
    let lease_ms = if spec.lease_ms == 0 {
        DEFAULT_LEASE_MS
    } else {
        spec.lease_ms
    };
    let leased = Task {
        status: Status::InProgress.as_str().to_string(),
        attempts: 1,
        worker_id: spec.worker_id.clone(),
        lease_id: new_id(),
        lease_expires_at: now + i64::from(lease_ms),
        ..stored.clone()
    };
    insert(conn, &leased, &metadata)?;
    Ok((stored, leased))
}

/// The condition that a task `t` is in one of `queues` (all when empty).
/// Comparisons, not `IN (...)`: SQLite builds a list of three or more into
/// a temporary table on every call.
fn of_queues(queues: &[String]) -> String {
    if queues.is_empty() {
        return String::new();
    }
    format!(" AND ({})", vec!["t.queue = ?"; queues.len()].join(" OR "))
}

/// The arguments of a look for tasks due at `now` in `queues`.
fn due_args(now: i64, queues: &[String]) -> Vec<rusqlite::types::Value> {
    let mut args: Vec<rusqlite::types::Value> = vec![now.into()];
    args.extend(queues.iter().map(|q| q.clone().into()));
    args
}

/// The next due tasks of `queues` (any when empty) that are not paused, in
/// the order they are handed out; arguments as [`due_args`] gives them,
/// then the most to take.
fn due_sql(queues: &[String]) -> String {
    // NOT EXISTS, not NOT IN: a lookup in paused_queues' key per candidate
    // instead of a temporary table built on every call.
    format!(
        "SELECT t.seq, {COLUMNS} FROM {TASKS}
         WHERE t.status = 'PENDING' AND t.run_at <= ?
           AND NOT EXISTS (SELECT 1 FROM paused_queues pq WHERE pq.queue = t.queue){}
         ORDER BY t.priority DESC, t.run_at, t.seq LIMIT ?",
        of_queues(queues)
    )
}

fn dequeue(conn: &Connection, spec: &DequeueSpec, now: i64) -> QueueResult<Vec<Task>> {
    reap_expired(conn, now)?;
    let limit = spec.max_tasks.clamp(1, 256) as i64;
    let sql = due_sql(&spec.queues);
    let mut args = due_args(now, &spec.queues);
    args.push(limit.into());
    let candidates: Vec<(i64, Task)> = conn
        .prepare_cached(&sql)
        .map_err(sql_err)?
        .query_map(params_from_iter(args), |r| {
            Ok((r.get(0)?, task_from_row_at(r, 1)?))
        })
        .map_err(sql_err)?
        .collect::<Result<_, _>>()
        .map_err(sql_err)?;

    let lease_ms = if spec.lease_ms == 0 {
        DEFAULT_LEASE_MS
    } else {
        spec.lease_ms
    } as i64;
    // Without RETURNING, which SQLite buffers in a temporary table: the
    // leased task is the candidate with the columns this statement sets.
    let mut stmt = conn
        .prepare_cached(
            "UPDATE queue_tasks SET status = 'IN_PROGRESS', worker_id = ?1, lease_id = ?2, lease_expires_at = ?3,
                 attempts = attempts + 1, updated_at = ?4
             WHERE seq = ?5",
        )
        .map_err(sql_err)?;
    let mut used = 0u64;
    let mut leased = Vec::with_capacity(candidates.len());
    for (i, (seq, mut task)) in candidates.into_iter().enumerate() {
        used += task_size(&task);
        if i > 0 && spec.max_bytes != 0 && used > spec.max_bytes {
            break;
        }
        task.status = Status::InProgress.as_str().to_string();
        task.worker_id = spec.worker_id.clone();
        task.lease_id = new_id();
        task.lease_expires_at = now + lease_ms;
        task.attempts += 1;
        task.updated_at = now;
        stmt.execute(params![
            task.worker_id,
            task.lease_id,
            task.lease_expires_at,
            now,
            seq
        ])
        .map_err(sql_err)?;
        leased.push(task);
    }
    Ok(leased)
}

/// What a task counts against a dequeue's `max_bytes`: its variable-length
/// fields in bytes (a metadata entry as about its stored `["key","value"],`)
/// and a fixed allowance for the rest.
fn task_size(task: &Task) -> u64 {
    let metadata: usize = task
        .metadata
        .iter()
        .map(|e| e.key.len() + e.value.len() + 8)
        .sum();
    (task.payload.len() + metadata + task.result.len() + task.last_error.len()) as u64
        + TASK_OVERHEAD
}

fn paused_queues(conn: &Connection) -> QueueResult<Vec<String>> {
    conn.prepare_cached("SELECT queue FROM paused_queues ORDER BY queue")
        .map_err(sql_err)?
        .query_map([], |r| r.get(0))
        .map_err(sql_err)?
        .collect::<Result<Vec<String>, _>>()
        .map_err(sql_err)
}

fn ack_one(conn: &Connection, ack: &AckSpec, now: i64) -> QueueResult<Task> {
    let mut task = if ack.brief {
        find_for_ack(conn, &ack.task_id)?
    } else {
        find(conn, &ack.task_id)?
    };
    if repeated_ack(&task, ack) {
        return Ok(task);
    }
    check_held(&task, ack.lease_id.as_deref(), now)?;
    // Each branch sets the columns in SQL and the same fields on the task
    // answered, so the row is not read back.
    task.result = ack.result.clone();
    task.lease_expires_at = 0;
    task.updated_at = now;
    if ack.success {
        conn.prepare_cached(
            "UPDATE queue_tasks SET status = 'COMPLETED', result = ?1, lease_expires_at = 0, updated_at = ?2
             WHERE id = ?3",
        )
        .map_err(sql_err)?
        .execute(params![ack.result, now, ack.task_id])
        .map_err(sql_err)?;
        task.status = Status::Completed.as_str().to_string();
    } else if ack.retry && task.attempts < task.max_attempts {
        let run_at = now + backoff_ms(task.retry_backoff_ms, task.attempts);
        conn.prepare_cached(
            "UPDATE queue_tasks SET status = 'PENDING', result = ?1, last_error = ?2, run_at = ?3, worker_id = '',
                 lease_id = '', lease_expires_at = 0, updated_at = ?4 WHERE id = ?5",
        )
        .map_err(sql_err)?
        .execute(params![ack.result, ack.error, run_at, now, ack.task_id])
        .map_err(sql_err)?;
        task.status = Status::Pending.as_str().to_string();
        task.last_error = ack.error.clone();
        task.run_at = run_at;
        task.worker_id.clear();
        task.lease_id.clear();
    } else {
        conn.prepare_cached(
            "UPDATE queue_tasks SET status = 'FAILED', result = ?1, last_error = ?2, lease_expires_at = 0,
                 updated_at = ?3 WHERE id = ?4",
        )
        .map_err(sql_err)?
        .execute(params![ack.result, ack.error, now, ack.task_id])
        .map_err(sql_err)?;
        task.status = Status::Failed.as_str().to_string();
        task.last_error = ack.error.clone();
    }
    Ok(task)
}

/// Apply acks, each succeeding or failing on its own; a store error fails them all.
fn acks_each(conn: &Connection, acks: &[AckSpec], now: i64) -> QueueResult<Vec<QueueResult<Task>>> {
    let mut outcomes = Vec::with_capacity(acks.len());
    for ack in acks {
        match ack_one(conn, ack, now) {
            Err(QueueError::Unavailable(e)) => return Err(QueueError::Unavailable(e)),
            other => outcomes.push(other),
        }
    }
    Ok(outcomes)
}

impl QueueBackend for SqliteQueue {
    async fn enqueue(&self, tasks: Vec<NewTask>, now: i64) -> QueueResult<Vec<(Task, bool)>> {
        self.write_answered(move |conn| {
            tasks
                .into_iter()
                .map(|t| enqueue_one(conn, t, now))
                .collect()
        })
        .await
    }

    async fn dequeue(&self, spec: DequeueSpec, now: i64) -> QueueResult<Vec<Task>> {
        self.write_relaxed(move |conn| dequeue(conn, &spec, now))
            .await
    }

    async fn ack(&self, acks: Vec<AckSpec>, now: i64) -> QueueResult<Vec<QueueResult<Task>>> {
        self.write_answered(move |conn| acks_each(conn, &acks, now))
            .await
    }

    /// One writer job: the ack, then (when it was applied) the lease, in
    /// one savepoint of one commit (both or, on a store error, neither).
    async fn ack_and_lease(
        &self,
        ack: AckSpec,
        next: DequeueSpec,
        now: i64,
    ) -> QueueResult<(QueueResult<Task>, Vec<Task>)> {
        self.write_answered(move |conn| {
            let acked = match ack_one(conn, &ack, now) {
                Err(QueueError::Unavailable(e)) => return Err(QueueError::Unavailable(e)),
                other => other,
            };
            let leased = match acked {
                Ok(_) => dequeue(conn, &next, now)?,
                Err(_) => Vec::new(),
            };
            Ok((acked, leased))
        })
        .await
    }

    async fn release(&self, task_id: String, lease_id: String, now: i64) -> QueueResult<Task> {
        self.write(move |conn| {
            let mut task = held(conn, &task_id, Some(&lease_id), now)?;
            let attempts = task.attempts.saturating_sub(1);
            conn.prepare_cached(
                "UPDATE queue_tasks SET status = 'PENDING', attempts = ?1, worker_id = '', lease_id = '',
                     lease_expires_at = 0, updated_at = ?2 WHERE id = ?3",
            )
            .map_err(sql_err)?
            .execute(params![attempts, now, task_id])
            .map_err(sql_err)?;
            task.status = Status::Pending.as_str().to_string();
            task.attempts = attempts;
            task.worker_id.clear();
            task.lease_id.clear();
            task.lease_expires_at = 0;
            task.updated_at = now;
            Ok(task)
        })
        .await
    }

    /// One writer job: the acks, the enqueue and the lease in one commit.
    async fn enqueue_and_lease(
        &self,
        acks: Vec<AckSpec>,
        tasks: Vec<NewTask>,
        next: DequeueSpec,
        now: i64,
    ) -> QueueResult<HandOff> {
        self.write_answered(move |conn| {
            let acked = acks_each(conn, &acks, now)?;
            if let [task] = tasks.as_slice()
                && takes_only_the_new_task(conn, task, &next, now)?
            {
                let task = tasks.into_iter().next().expect("one task");
                let (stored, leased) = store_leased(conn, task, &next, now)?;
                return Ok(HandOff {
                    acked,
                    stored: vec![(stored, false)],
                    leased: vec![leased],
                });
            }
            let stored = tasks
                .into_iter()
                .map(|t| enqueue_one(conn, t, now))
                .collect::<QueueResult<Vec<_>>>()?;
            let leased = dequeue(conn, &next, now)?;
            Ok(HandOff {
                acked,
                stored,
                leased,
            })
        })
        .await
    }

    async fn heartbeat(
        &self,
        task_id: String,
        lease_id: String,
        lease_ms: u32,
        now: i64,
    ) -> QueueResult<Task> {
        self.write_relaxed(move |conn| {
            let mut task = held(conn, &task_id, Some(&lease_id), now)?;
            let lease_ms = if lease_ms == 0 {
                DEFAULT_LEASE_MS
            } else {
                lease_ms
            } as i64;
            conn.prepare_cached(
                "UPDATE queue_tasks SET lease_expires_at = ?1, updated_at = ?2 WHERE id = ?3",
            )
            .map_err(sql_err)?
            .execute(params![now + lease_ms, now, task_id])
            .map_err(sql_err)?;
            task.lease_expires_at = now + lease_ms;
            task.updated_at = now;
            Ok(task)
        })
        .await
    }

    async fn get(&self, task_id: String) -> QueueResult<Task> {
        // A lookup by primary key takes microseconds: done here when the
        // reading connection is free, it costs less than the hand-off to
        // the blocking pool and back (a local run's scheduler asks often).
        if let Ok(conn) = self.reader.try_lock() {
            return find(&conn, &task_id);
        }
        self.read(move |conn| find(conn, &task_id)).await
    }

    async fn list(
        &self,
        status: Option<Status>,
        queue: Option<String>,
        limit: u32,
        after: Option<String>,
    ) -> QueueResult<Vec<Task>> {
        self.read(move |conn| {
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(after) = &after {
                let seq: i64 = conn
                    .query_row("SELECT seq FROM queue_tasks WHERE id = ?1", [after], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(sql_err)?
                    .ok_or_else(|| QueueError::NotFound(after.clone()))?;
                args.push(seq.into());
            }
            // No more finished tasks of a status can match than its count:
            // none, and the history is not read; a few, and the walk stops
            // at the last of them.
            let mut limit = limit;
            if let Some(status) = status.filter(|s| s.is_final()) {
                let most: i64 = conn
                    .prepare_cached(
                        "SELECT COALESCE(SUM(n), 0) FROM queue_finished
                         WHERE status = ?1 AND (?2 IS NULL OR queue = ?2)",
                    )
                    .map_err(sql_err)?
                    .query_row(params![status.as_str(), queue], |r| r.get(0))
                    .map_err(sql_err)?;
                let most = most.clamp(0, u32::MAX as i64) as u32;
                if most == 0 {
                    return Ok(Vec::new());
                }
                limit = if limit == 0 { most } else { limit.min(most) };
            }
            let sql = list_sql(status, after.is_some(), queue.is_some(), limit);
            args.extend(queue.map(Into::into));
            conn.prepare_cached(&sql)
                .map_err(sql_err)?
                .query_map(params_from_iter(args), task_from_row)
                .map_err(sql_err)?
                .collect::<Result<_, _>>()
                .map_err(sql_err)
        })
        .await
    }

    async fn cancel(&self, task_id: String, now: i64) -> QueueResult<Task> {
        self.write(move |conn| {
            let task = find(conn, &task_id)?;
            if task.status != Status::Pending.as_str() && task.status != Status::InProgress.as_str() {
                return Err(QueueError::FailedPrecondition(format!(
                    "task {task_id} is {}; only PENDING and IN_PROGRESS tasks can be cancelled",
                    task.status
                )));
            }
            conn.prepare_cached(
                "UPDATE queue_tasks SET status = 'CANCELLED', lease_id = '', lease_expires_at = 0, updated_at = ?1
                 WHERE id = ?2",
            )
            .map_err(sql_err)?
            .execute(params![now, task_id])
            .map_err(sql_err)?;
            find(conn, &task_id)
        })
        .await
    }

    async fn retry(&self, task_id: String, now: i64) -> QueueResult<Task> {
        self.write(move |conn| {
            let task = find(conn, &task_id)?;
            if task.status != Status::Failed.as_str() && task.status != Status::Cancelled.as_str() {
                return Err(QueueError::FailedPrecondition(format!(
                    "task {task_id} is {}; only FAILED and CANCELLED tasks can be retried",
                    task.status
                )));
            }
            conn.prepare_cached(
                "UPDATE queue_tasks SET status = 'PENDING', attempts = 0, run_at = ?1, worker_id = '', lease_id = '',
                     lease_expires_at = 0, updated_at = ?1 WHERE id = ?2",
            )
            .map_err(sql_err)?
            .execute(params![now, task_id])
            .map_err(sql_err)?;
            find(conn, &task_id)
        })
        .await
    }

    async fn set_paused(&self, queue: String, paused: bool, now: i64) -> QueueResult<bool> {
        self.write(move |conn| {
            let changed = if paused {
                conn.execute(
                    "INSERT OR IGNORE INTO paused_queues (queue, paused_at) VALUES (?1, ?2)",
                    params![queue, now],
                )
            } else {
                conn.execute("DELETE FROM paused_queues WHERE queue = ?1", [&queue])
            }
            .map_err(sql_err)?;
            Ok(changed > 0)
        })
        .await
    }

    async fn worker_seen(&self, worker: WorkerRecord) -> QueueResult<()> {
        // Presence, not a promise: losing it in a power cut loses nothing.
        self.write_relaxed(move |conn| {
            let record = serde_json::to_string(&worker).expect("a worker record serializes");
            conn.prepare_cached(
                "INSERT INTO queue_workers (id, record, last_seen_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record, last_seen_at = excluded.last_seen_at",
            )
            .map_err(sql_err)?
            .execute(params![worker.id, record, worker.last_seen_at])
            .map_err(sql_err)?;
            conn.prepare_cached("DELETE FROM queue_workers WHERE last_seen_at < ?1")
                .map_err(sql_err)?
                .execute([worker.last_seen_at - WORKER_FORGET_MS])
                .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    async fn worker_gone(&self, id: String) -> QueueResult<()> {
        self.write_relaxed(move |conn| {
            conn.prepare_cached("DELETE FROM queue_workers WHERE id = ?1")
                .map_err(sql_err)?
                .execute([id])
                .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    async fn workers(&self, now: i64) -> QueueResult<Vec<WorkerRecord>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, record FROM queue_workers WHERE last_seen_at >= ?1 ORDER BY id",
            )
            .map_err(sql_err)?
            .query_map([now - WORKER_TTL_MS], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(sql_err)?
            .map(|row| {
                let (id, record) = row.map_err(sql_err)?;
                serde_json::from_str(&record).map_err(|e| {
                    QueueError::Unavailable(format!("the record of worker {id} is damaged: {e}"))
                })
            })
            .collect()
        })
        .await
    }

    async fn stats(&self, now: i64) -> QueueResult<Stats> {
        self.read(move |conn| {
            let counts = conn
                .prepare_cached(COUNTS)
                .map_err(sql_err)?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))
                .map_err(sql_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_err)?;
            let oldest: Option<i64> = conn
                .query_row("SELECT MIN(run_at) FROM queue_tasks WHERE status = 'PENDING' AND run_at <= ?1", [now], |r| r.get(0))
                .map_err(sql_err)?;
            let in_flight: i64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM queue_tasks WHERE status = 'IN_PROGRESS' AND lease_expires_at > ?1",
                    [now],
                    |r| r.get(0),
                )
                .map_err(sql_err)?;
            Ok(Stats {
                counts,
                oldest_pending_age_ms: oldest.map(|t| (now - t).max(0)).unwrap_or(0),
                in_flight_leases: in_flight as u64,
                paused: paused_queues(conn)?,
            })
        })
        .await
    }

    async fn due(&self, now: i64) -> QueueResult<u64> {
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT (SELECT COUNT(*) FROM queue_tasks WHERE status = 'PENDING' AND run_at <= ?1
                        AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.queue = queue_tasks.queue))
                     + (SELECT COUNT(*) FROM queue_tasks WHERE status = 'IN_PROGRESS' AND lease_expires_at <= ?1)",
                )
                .map_err(sql_err)?
                .query_row([now], |r| r.get(0))
                .map_err(sql_err)?;
            Ok(n as u64)
        })
        .await
    }

    async fn reap(&self, now: i64) -> QueueResult<u64> {
        self.write_relaxed(move |conn| reap_expired(conn, now))
            .await
    }

    async fn purge(&self, before: i64, queue: Option<String>) -> QueueResult<u64> {
        // In chunks, so other writers get the database between them.
        let mut total = 0;
        loop {
            let queue = queue.clone();
            let n = self
                .write(move |conn| purge_finished(conn, before, queue.as_deref()))
                .await?;
            total += n;
            if n < PURGE_CHUNK {
                return Ok(total);
            }
        }
    }
}

/// Tasks by queue and status: the finished ones from the counts the
/// triggers keep, the live ones counted through their partial indexes (one
/// `status IN (...)` would read every row of a long history).
const COUNTS: &str = "SELECT queue, status, n FROM queue_finished WHERE n > 0
     UNION ALL
     SELECT queue, 'PENDING', COUNT(*) FROM queue_tasks WHERE status = 'PENDING' GROUP BY queue
     UNION ALL
     SELECT queue, 'IN_PROGRESS', COUNT(*) FROM queue_tasks WHERE status = 'IN_PROGRESS' GROUP BY queue
     ORDER BY 1, 2";

/// A list's query: tasks of `status` (any when `None`), after a task's
/// `seq` (the first argument, when `after`), of one queue (the next
/// argument, when `of_queue`), in the order they were enqueued. Live tasks
/// are few beside a long history, and their partial index finds them; left
/// to itself, SQLite would walk every row in `seq` order to find them.
/// Finished tasks are most rows, found soonest in that walk.
fn list_sql(status: Option<Status>, after: bool, of_queue: bool, limit: u32) -> String {
    let index = match status {
        Some(Status::Pending) => " INDEXED BY queue_tasks_due",
        Some(Status::InProgress) => " INDEXED BY queue_tasks_leases",
        _ => "",
    };
    let from = TASKS.replacen("queue_tasks t", &format!("queue_tasks t{index}"), 1);
    let mut sql = format!("SELECT {COLUMNS} FROM {from} WHERE 1 = 1");
    if after {
        sql.push_str(" AND t.seq > ?");
    }
    if let Some(status) = status {
        // Written out, so that the partial index of that status can serve it.
        sql.push_str(&format!(" AND t.status = '{}'", status.as_str()));
    }
    if of_queue {
        sql.push_str(" AND t.queue = ?");
    }
    sql.push_str(" ORDER BY t.seq");
    if limit > 0 {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    sql
}

/// Most tasks one purge transaction deletes.
const PURGE_CHUNK: u64 = 5_000;

fn purge_finished(conn: &Connection, before: i64, queue: Option<&str>) -> QueueResult<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM queue_tasks WHERE seq IN (
                 SELECT seq FROM queue_tasks
                 WHERE status IN ('COMPLETED', 'FAILED', 'CANCELLED') AND updated_at < ?1
                   AND (?2 IS NULL OR queue = ?2)
                 LIMIT ?3)",
        )
        .map_err(sql_err)?
        .execute(rusqlite::params![before, queue, PURGE_CHUNK as i64])
        .map_err(sql_err)?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(worker: &str) -> DequeueSpec {
        DequeueSpec {
            worker_id: worker.into(),
            queues: Vec::new(),
            lease_ms: 60_000,
            max_tasks: 1,
            max_bytes: 0,
        }
    }

    fn ack(task: &Task, success: bool, retry: bool) -> AckSpec {
        AckSpec {
            task_id: task.id.clone(),
            success,
            result: format!("result of {}", task.id),
            lease_id: Some(task.lease_id.clone()),
            retry,
            error: if success {
                String::new()
            } else {
                "it broke".into()
            },
            brief: false,
        }
    }

    /// The queue's lookups of live tasks go through the partial indexes
    /// that hold only them (a plan line `SCAN queue_tasks` or `SCAN t`
    /// would read every row of a long history).
    #[test]
    fn live_tasks_are_found_without_reading_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Store::open(&dir.path().join("nova.db"))
            .unwrap()
            .into_connection();
        for sql in [
            COUNTS.to_string(),
            list_sql(Some(Status::Pending), true, true, 100),
            list_sql(Some(Status::InProgress), false, false, 0),
            due_sql(&[]),
            due_sql(&["a".into(), "b".into()]),
            ANY_EXPIRED.into(),
        ] {
            // Unbound parameters read as NULL, which a plan does not mind.
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut steps = explain.raw_query();
            let mut plan: Vec<String> = Vec::new();
            while let Some(row) = steps.next().unwrap() {
                plan.push(row.get(3).unwrap());
            }
            assert!(
                !plan
                    .iter()
                    .any(|step| step == "SCAN queue_tasks" || step == "SCAN t"),
                "{sql}: {plan:?}"
            );
        }
        let indexes: Vec<String> = conn
            .prepare("SELECT sql FROM sqlite_master WHERE name IN ('queue_tasks_due', 'queue_tasks_leases') ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            indexes[0].ends_with("WHERE status = 'PENDING'"),
            "{indexes:?}"
        );
        assert!(
            indexes[1].ends_with("WHERE status = 'IN_PROGRESS'"),
            "{indexes:?}"
        );
    }

    /// Counts and lists by status, with tasks in every status in two
    /// queues: each status's list holds its tasks in the order enqueued,
    /// and the counts add up.
    #[tokio::test]
    async fn lists_and_counts_by_status() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::open(&dir.path().join("nova.db")).unwrap();
        let new = |q: &str| {
            let mut t = NewTask::new("kind", "payload");
            t.queue = q.into();
            t
        };
        let ids: Vec<String> = queue
            .enqueue(
                vec![new("a"), new("b"), new("a"), new("b"), new("a"), new("b")],
                1_000,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|(t, _)| t.id)
            .collect();
        // Leased: the first two due (ids 0 and 1); 0 completed, 1 failed
        // for good; 2 cancelled; 3 leased; 4 and 5 pending.
        let leased = queue.dequeue(spec("w"), 2_000).await.unwrap().remove(0);
        let second = queue.dequeue(spec("w"), 2_000).await.unwrap().remove(0);
        assert_eq!([&leased.id, &second.id], [&ids[0], &ids[1]]);
        queue
            .ack(vec![ack(&leased, true, false)], 3_000)
            .await
            .unwrap();
        queue
            .ack(vec![ack(&second, false, false)], 3_000)
            .await
            .unwrap();
        queue.cancel(ids[2].clone(), 3_000).await.unwrap();
        let third = queue.dequeue(spec("w"), 4_000).await.unwrap().remove(0);
        assert_eq!(third.id, ids[3]);

        let listed = |status: Option<Status>, q: Option<&str>, after: Option<&str>| {
            let queue = queue.clone();
            let (q, after) = (q.map(String::from), after.map(String::from));
            async move {
                queue
                    .list(status, q, 0, after)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|t| t.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(listed(Some(Status::Pending), None, None).await, ids[4..6]);
        assert_eq!(
            listed(Some(Status::Pending), Some("b"), None).await,
            ids[5..6]
        );
        assert_eq!(
            listed(Some(Status::Pending), None, Some(&ids[4])).await,
            ids[5..6]
        );
        assert_eq!(
            listed(Some(Status::InProgress), None, None).await,
            ids[3..4]
        );
        assert_eq!(listed(Some(Status::Completed), None, None).await, ids[0..1]);
        assert_eq!(
            listed(Some(Status::Failed), Some("b"), None).await,
            ids[1..2]
        );
        assert_eq!(listed(Some(Status::Cancelled), None, None).await, ids[2..3]);
        assert_eq!(listed(None, None, Some(&ids[3])).await, ids[4..6]);

        let counts = queue.stats(5_000).await.unwrap().counts;
        let count = |q: &str, status: &str| (q.to_string(), status.to_string(), 1);
        assert_eq!(
            counts,
            [
                count("a", "CANCELLED"),
                count("a", "COMPLETED"),
                count("a", "PENDING"),
                count("b", "FAILED"),
                count("b", "IN_PROGRESS"),
                count("b", "PENDING"),
            ]
        );
    }

    /// Enqueue, dequeue, heartbeat and ack answer the task without reading
    /// it back: each answer must be the row as stored.
    #[tokio::test]
    async fn every_answer_is_the_row_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SqliteQueue::open(&dir.path().join("nova.db")).unwrap();
        let same = |answer: &Task, stored: &Task| assert_eq!(answer, stored);

        let mut new = NewTask::new("kind", "payload");
        new.metadata = vec![("k".into(), "v \"quoted\"".into())];
        new.idempotency_key = Some("key-1".into());
        new.priority = 3;
        new.max_attempts = 2;
        new.retry_backoff_ms = 1;
        // Over INLINE_PAYLOAD: kept in a row of its own.
        let large = format!("second {}", "x".repeat(INLINE_PAYLOAD));
        let mut failing = NewTask::new("kind", large.clone());
        failing.queue = "other".into();
        let enqueued = queue.enqueue(vec![new, failing], 1_000).await.unwrap();
        for (task, _) in &enqueued {
            same(task, &queue.get(task.id.clone()).await.unwrap());
        }

        let first = queue.dequeue(spec("w1"), 2_000).await.unwrap().remove(0);
        same(&first, &queue.get(first.id.clone()).await.unwrap());
        let beat = queue
            .heartbeat(first.id.clone(), first.lease_id.clone(), 30_000, 2_500)
            .await
            .unwrap();
        same(&beat, &queue.get(first.id.clone()).await.unwrap());

        // Retried (attempt 1 of 2), leased again, completed.
        let retried = queue
            .ack(vec![ack(&beat, false, true)], 3_000)
            .await
            .unwrap();
        let retried = retried.into_iter().next().unwrap().unwrap();
        assert_eq!(retried.status, "PENDING");
        same(&retried, &queue.get(first.id.clone()).await.unwrap());
        let again = queue.dequeue(spec("w2"), 9_000).await.unwrap().remove(0);
        assert_eq!(again.id, first.id);
        same(&again, &queue.get(first.id.clone()).await.unwrap());
        let done = queue
            .ack(vec![ack(&again, true, false)], 9_500)
            .await
            .unwrap();
        let done = done.into_iter().next().unwrap().unwrap();
        assert_eq!(done.status, "COMPLETED");
        same(&done, &queue.get(first.id.clone()).await.unwrap());

        let second = queue.dequeue(spec("w3"), 10_000).await.unwrap().remove(0);
        let failed = queue
            .ack(vec![ack(&second, false, false)], 10_500)
            .await
            .unwrap();
        let failed = failed.into_iter().next().unwrap().unwrap();
        assert_eq!(failed.status, "FAILED");
        same(&failed, &queue.get(second.id.clone()).await.unwrap());
        assert_eq!(failed.payload, large);

        let conn = Connection::open(dir.path().join("nova.db")).unwrap();
        let stored: Vec<(String, i64)> = conn
            .prepare("SELECT t.payload, p.seq IS NOT NULL FROM queue_tasks t LEFT JOIN queue_payloads p USING (seq) ORDER BY t.seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored, [("payload".to_string(), 0), (String::new(), 1)]);
    }
}
