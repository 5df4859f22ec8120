//! The Redis queue backend: for many machines sharing one queue.
//!
//! Every step that changes a task is one Lua routine (in this folder; run as
//! a function of nova's library, or as a script on an older Redis: see
//! `routines`), so Redis applies it whole or not at all, and several `nova
//! serve` processes can share a Redis without locks of their own. A server or worker that dies
//! between two steps leaves each task in exactly one state: pending (in a
//! ready or delayed set), leased (in the lease set, reaped when it expires),
//! or finished. The key layout is described in `prelude.lua`. Durability is
//! Redis's own: run it with `--appendonly yes --appendfsync always` when an
//! acknowledged enqueue must survive a power cut.

use std::sync::Arc;

use ::redis::aio::ConnectionManager;
use ::redis::{RedisError, Value};
use rand::Rng;

use super::backend::{HandOff, QueueBackend, QueueError, QueueResult};
use super::model::{
    AckSpec, DEFAULT_LEASE_MS, DequeueSpec, NewTask, Stats, Status, Task, WORKER_FORGET_MS,
    WORKER_TTL_MS, WorkerRecord, new_id,
};
use super::proto::TaskMetadataEntry;
use routines::{Caller, ROUTINES, Routine};

mod routines;

/// The key prefix of the queue's data in Redis.
pub const DEFAULT_PREFIX: &str = "nova:q:";
/// Most expired leases one script returns to the queue.
const REAP_LIMIT: u32 = 1000;
/// How many tasks one purge script looks at.
const PURGE_CHUNK: u32 = 500;
/// How many whole tasks `list` reads from Redis per round trip.
const LIST_CHUNK: isize = 200;
/// How many tasks' status and queue `list` reads per round trip, looking
/// for those it lists.
const LOOK_CHUNK: isize = 500;

/// The enqueue script's 10 arguments per task, appended to `args`; each
/// task as stored if it is new (Redis answers a task only when it is not).
fn enqueue_args(tasks: Vec<NewTask>, now: i64, args: &mut Vec<Vec<u8>>) -> Vec<Task> {
    let mut stored = Vec::with_capacity(tasks.len());
    for t in tasks {
        let metadata = serde_json::to_string(&t.metadata).expect("metadata serializes");
        let task = t.into_task(new_id(), now);
        args.extend([
            arg(&task.id),
            arg(&task.queue),
            arg(&task.r#type),
            arg(&task.payload),
            metadata.into_bytes(),
            arg(task.priority),
            arg(task.max_attempts),
            arg(task.retry_backoff_ms),
            arg(task.run_at),
            arg(&task.idempotency_key),
        ]);
        stored.push(task);
    }
    stored
}

/// The enqueue script's answers: each task, and whether it already existed.
fn enqueued(reply: Value, stored: Vec<Task>) -> QueueResult<Vec<(Task, bool)>> {
    let reply = as_array(reply)?;
    if reply.len() != stored.len() {
        return Err(corrupt("one answer per enqueued task"));
    }
    reply
        .into_iter()
        .zip(stored)
        .map(|(item, new)| {
            let mut fields = as_array(item)?;
            if fields.is_empty() {
                return Err(corrupt("empty enqueue answer"));
            }
            match as_string(fields.remove(0))?.as_str() {
                "new" => Ok((new, false)),
                "existing" => Ok((
                    answered(fields.into_iter().next().unwrap_or(Value::Nil))?,
                    true,
                )),
                other => Err(corrupt(other)),
            }
        })
        .collect()
}

/// The field order of `FIELDS` in `prelude.lua`.
const FIELDS: [&str; 19] = [
    "id",
    "type",
    "payload",
    "metadata",
    "status",
    "created_at",
    "updated_at",
    "result",
    "worker_id",
    "queue",
    "priority",
    "attempts",
    "max_attempts",
    "run_at",
    "idempotency_key",
    "last_error",
    "lease_expires_at",
    "lease_id",
    "retry_backoff_ms",
];

#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    caller: Arc<Caller>,
    url: String,
    prefix: Arc<str>,
}

fn unavailable(e: RedisError) -> QueueError {
    QueueError::Unavailable(format!("redis: {e}"))
}

fn corrupt(what: &str) -> QueueError {
    QueueError::Unavailable(format!("redis: unexpected reply: {what}"))
}

impl RedisQueue {
    /// Connect to the Redis at `url` (`redis://HOST:PORT/DB`). The connection
    /// is re-established by itself if it drops.
    pub async fn connect(url: &str) -> QueueResult<RedisQueue> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Connect, keeping this queue's keys under `prefix` (several queues can
    /// share one Redis database this way; `nova bench` uses its own).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> QueueResult<RedisQueue> {
        let client = ::redis::Client::open(url).map_err(|e| {
            QueueError::InvalidArgument(format!(
                "bad Redis URL {:?}: {e}",
                crate::store_url::without_password(url)
            ))
        })?;
        let conn = client
            .get_connection_manager_with_config(crate::store_url::redis_connection_config())
            .await
            .map_err(|e| {
                QueueError::Unavailable(format!(
                    "cannot connect to {}: {e}",
                    crate::store_url::without_password(url)
                ))
            })?;
        let caller = Arc::new(Caller::new(&conn, true).await);
        Ok(RedisQueue {
            conn,
            caller,
            url: url.to_string(),
            prefix: Arc::from(prefix),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Delete every key under this queue's prefix: all its tasks, gone.
    pub async fn delete_all(&self) -> QueueResult<u64> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                let n: u64 = ::redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn invoke(&self, routine: &Routine, args: Vec<Vec<u8>>) -> QueueResult<Value> {
        self.caller
            .call(&self.conn, routine, &self.prefix, &args)
            .await
            .map_err(unavailable)
    }

    /// Run a routine that answers one outcome for one task.
    async fn one(&self, routine: &Routine, id: &str, args: Vec<Vec<u8>>) -> QueueResult<Task> {
        let reply = self.invoke(routine, args).await?;
        outcome(id, as_array(reply)?)
    }

    /// This queue with its routines run as scripts whatever Redis offers,
    /// as on a Redis older than 7 (for the tests of that path).
    #[doc(hidden)]
    pub async fn scripts_only(mut self) -> RedisQueue {
        self.caller = Arc::new(Caller::new(&self.conn, false).await);
        self
    }

    /// Whether the routines run as functions of nova's library in Redis.
    pub fn uses_functions(&self) -> bool {
        self.caller.uses_functions()
    }
}

/// What `lease_tasks` reads (lease_fn.lua).
/// What `lease_tasks` reads (lease_fn.lua), appended to `args`; answers the
/// first of the fresh lease ids it gives.
impl RedisQueue {
    /// How many tasks have `status` (in `queue`, or in every queue), as the
    /// counts the routines keep say.
    async fn count_of(&self, status: Status, queue: Option<&str>) -> QueueResult<u64> {
        let mut conn = self.conn.clone();
        if let Some(queue) = queue {
            let n: Option<i64> = ::redis::cmd("HGET")
                .arg(self.key("counts"))
                .arg(format!("{queue}\t{}", status.as_str()))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            return Ok(n.unwrap_or(0).max(0) as u64);
        }
        let counts: Counts = ::redis::cmd("HGETALL")
            .arg(self.key("counts"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(counted(&counts, |_, s| s == status.as_str()))
    }

    /// Tasks in enqueue order, after the task numbered `after`, walking
    /// `set` (scored by enqueue number: every task ever stored, or those
    /// failed or cancelled): up to `limit` (0: all) of `status` and `queue`.
    async fn list_walk(
        &self,
        set: &str,
        status: Option<Status>,
        queue: Option<&str>,
        limit: u32,
        after: Option<f64>,
    ) -> QueueResult<Vec<Task>> {
        let mut conn = self.conn.clone();
        let mut found = Vec::new();
        let mut from = after.map_or_else(|| "-inf".to_string(), |seq| format!("({seq}"));
        // Walking every task for some: each one's status and queue first.
        let look_first = set == "all" && (status.is_some() || queue.is_some());
        loop {
            let page = self
                .page_after(set, &from, if look_first { LOOK_CHUNK } else { LIST_CHUNK })
                .await?;
            let Some((_, last)) = page.last() else {
                return Ok(found);
            };
            from = format!("({last}");
            let mut ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
            if look_first {
                // Only each one's status and queue first: whole tasks
                // (payloads and all) only for those that match.
                let mut pipe = ::redis::pipe();
                for id in &ids {
                    pipe.cmd("HMGET")
                        .arg(self.key(&format!("t:{id}")))
                        .arg(&["status", "queue"]);
                }
                let rows: Vec<(Option<String>, Option<String>)> =
                    pipe.query_async(&mut conn).await.map_err(unavailable)?;
                let mut rows = rows.into_iter();
                ids.retain(|_| {
                    rows.next().is_some_and(|(st, q)| {
                        status.is_none_or(|s| st.as_deref() == Some(s.as_str()))
                            && queue.is_none_or(|want| q.as_deref() == Some(want))
                    })
                });
            }
            if limit > 0 {
                ids.truncate(limit as usize - found.len());
            }
            for chunk in ids.chunks(LIST_CHUNK as usize) {
                for task in self.read_tasks(chunk).await? {
                    if status.is_some_and(|s| task.status != s.as_str())
                        || queue.is_some_and(|q| task.queue != q)
                    {
                        continue;
                    }
                    found.push(task);
                    if limit > 0 && found.len() >= limit as usize {
                        return Ok(found);
                    }
                }
            }
        }
    }

    /// Make the set `set` of tasks of `status` (FAILED or CANCELLED) whole
    /// when it holds fewer than the counts: the routines keep both sets, but
    /// a store an older nova wrote (or one that still shares the store) has
    /// such tasks the sets lack. They are filed by walking every task. A
    /// task that changes meanwhile is filed by its routine; one filed here
    /// just after leaving its status is read, seen not to match, and left
    /// out of the list.
    async fn file_finals(&self, set: &str, status: Status) -> QueueResult<()> {
        let mut conn = self.conn.clone();
        let filed: u64 = ::redis::cmd("ZCARD")
            .arg(self.key(set))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if filed >= self.count_of(status, None).await? {
            return Ok(());
        }
        tracing::info!("filing this store's failed and cancelled tasks for listing");
        let mut from = "-inf".to_string();
        loop {
            let page = self.page_after("all", &from, LOOK_CHUNK).await?;
            let Some((_, last)) = page.last() else { break };
            from = format!("({last}");
            let statuses = self.field_of(&page, "status").await?;
            let mut file = ::redis::pipe();
            let mut filed = 0;
            for ((id, seq), status) in page.iter().zip(statuses) {
                let set = match status.as_deref() {
                    Some("FAILED") => "failed",
                    Some("CANCELLED") => "cancelled",
                    _ => continue,
                };
                file.cmd("ZADD")
                    .arg(self.key(set))
                    .arg(*seq)
                    .arg(id)
                    .ignore();
                filed += 1;
            }
            if filed > 0 {
                let () = file.query_async(&mut conn).await.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    /// Up to `limit` tasks of `queue` in enqueue order, after the task
    /// numbered `after`. When that is all of them (the counts say how many
    /// there are), they are looked for newest first, which finds a recent
    /// queue's (a run's) at once in a long history, and the walk stops at
    /// the last; otherwise oldest first, up to the limit.
    async fn list_queue(
        &self,
        queue: &str,
        limit: u32,
        after: Option<f64>,
    ) -> QueueResult<Vec<Task>> {
        let mut conn = self.conn.clone();
        // The counts and the newest task number together: a task enqueued
        // afterwards is not counted, and is above where the walk starts.
        let (counts, newest): (Counts, Vec<(String, f64)>) = ::redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(self.key("counts"))
            .cmd("ZREVRANGE")
            .arg(self.key("all"))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let most = counted(&counts, |q, _| q == queue);
        let Some((_, newest)) = newest.first() else {
            return Ok(Vec::new());
        };
        if most == 0 {
            return Ok(Vec::new());
        }
        if limit > 0 && most > limit as u64 {
            return self.list_walk("all", None, Some(queue), limit, after).await;
        }
        let mut ids: Vec<String> = Vec::new();
        let mut below = format!("{newest}");
        let floor = after.map_or_else(|| "-inf".to_string(), |seq| format!("({seq}"));
        while (ids.len() as u64) < most {
            let page: Vec<(String, f64)> = ::redis::cmd("ZREVRANGEBYSCORE")
                .arg(self.key("all"))
                .arg(&below)
                .arg(&floor)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(LOOK_CHUNK)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let Some((_, last)) = page.last() else { break };
            below = format!("({last}");
            let queues = self.field_of(&page, "queue").await?;
            ids.extend(
                page.into_iter()
                    .zip(queues)
                    .filter(|(_, q)| q.as_deref() == Some(queue))
                    .map(|((id, _), _)| id),
            );
        }
        ids.reverse();
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_CHUNK as usize) {
            let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
            found.extend(self.read_tasks(&chunk).await?);
        }
        Ok(found)
    }

    /// Up to `limit` tasks of a live `status` in enqueue order, after the
    /// task numbered `after`, read from the set that holds every task of
    /// that status (`set`: pending or leases), not from the whole history.
    async fn list_live(
        &self,
        set: &str,
        status: Status,
        queue: Option<&str>,
        limit: u64,
        after: Option<f64>,
    ) -> QueueResult<Vec<Task>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(self.key(set))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        // Each one's place, queue and status first; whole tasks only for
        // those listed.
        let mut picked: Vec<(i64, String)> = Vec::new();
        for chunk in ids.chunks(LOOK_CHUNK as usize) {
            let mut pipe = ::redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(self.key(&format!("t:{id}")))
                    .arg(&["seq", "queue", "status"]);
            }
            let rows: Vec<(Option<i64>, Option<String>, Option<String>)> =
                pipe.query_async(&mut conn).await.map_err(unavailable)?;
            for (id, (seq, q, st)) in chunk.iter().zip(rows) {
                // Gone or changed since the set was read: not listed.
                let (Some(seq), Some(q), Some(st)) = (seq, q, st) else {
                    continue;
                };
                if st == status.as_str()
                    && queue.is_none_or(|want| want == q)
                    && after.is_none_or(|a| seq as f64 > a)
                {
                    picked.push((seq, id.clone()));
                }
            }
        }
        picked.sort_unstable();
        picked.truncate(limit as usize);
        let ids: Vec<&str> = picked.iter().map(|(_, id)| id.as_str()).collect();
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_CHUNK as usize) {
            found.extend(
                self.read_tasks(chunk)
                    .await?
                    .into_iter()
                    .filter(|t| t.status == status.as_str()),
            );
        }
        Ok(found)
    }

    /// The next `count` members of sorted set `set` scored above `from`
    /// (`-inf`, or `(N`), with their scores: a page of tasks by number.
    async fn page_after(
        &self,
        set: &str,
        from: &str,
        count: isize,
    ) -> QueueResult<Vec<(String, f64)>> {
        let mut conn = self.conn.clone();
        ::redis::cmd("ZRANGEBYSCORE")
            .arg(self.key(set))
            .arg(from)
            .arg("+inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// One field of each task of `page` (ids with their numbers), in that
    /// order; `None` for a task deleted meanwhile.
    async fn field_of(
        &self,
        page: &[(String, f64)],
        field: &str,
    ) -> QueueResult<Vec<Option<String>>> {
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        for (id, _) in page {
            pipe.cmd("HGET")
                .arg(self.key(&format!("t:{id}")))
                .arg(field);
        }
        pipe.query_async(&mut conn).await.map_err(unavailable)
    }

    /// The tasks `ids` name, in that order; one deleted meanwhile is left out.
    async fn read_tasks(&self, ids: &[&str]) -> QueueResult<Vec<Task>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.key(&format!("t:{id}")))
                .arg(&FIELDS[..]);
        }
        let rows: Vec<Vec<Value>> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        rows.into_iter()
            .filter(|row| row.first().is_some_and(|id| *id != Value::Nil))
            .map(task)
            .collect()
    }
}

/// The `counts` hash as read: `queue\tstatus` and how many.
type Counts = Vec<(String, i64)>;

/// How many tasks the counts hold whose queue and status `of` takes.
fn counted(counts: &Counts, of: impl Fn(&str, &str) -> bool) -> u64 {
    counts
        .iter()
        .filter(|(key, _)| key.split_once('\t').is_some_and(|(q, s)| of(q, s)))
        .map(|(_, n)| (*n).max(0) as u64)
        .sum()
}

fn lease_args(spec: DequeueSpec, args: &mut Vec<Vec<u8>>) -> String {
    let max = spec.max_tasks.clamp(1, 256);
    args.extend([
        spec.worker_id.into_bytes(),
        arg(lease_ms(spec.lease_ms)),
        arg(max),
        arg(spec.queues.len()),
    ]);
    args.extend(spec.queues.into_iter().map(String::into_bytes));
    let first = new_id();
    args.push(arg(&first));
    args.extend((1..max).map(|_| arg(new_id())));
    args.push(arg(spec.max_bytes));
    args.push(arg(super::model::TASK_OVERHEAD));
    first
}

/// What `ack_all` reads for one ack (ack_fn.lua).
fn ack_args(a: &AckSpec) -> [Vec<u8>; 8] {
    [
        arg(&a.task_id),
        arg(if a.success { 1 } else { 0 }),
        arg(&a.result),
        arg(a.lease_id.as_deref().unwrap_or("")),
        arg(if a.retry { 1 } else { 0 }),
        arg(&a.error),
        arg(rand::rng().random::<f64>()),
        arg(if a.brief { 1 } else { 0 }),
    ]
}

fn arg(value: impl ToString) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn as_array(value: Value) -> QueueResult<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt(&format!("{other:?}"))),
    }
}

fn as_string(value: Value) -> QueueResult<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        Value::Int(n) => Ok(n.to_string()),
        Value::Nil => Ok(String::new()),
        other => Err(corrupt(&format!("{other:?}"))),
    }
}

/// A task from its fields in `FIELDS` order (as `HMGET` answers them).
fn task(values: Vec<Value>) -> QueueResult<Task> {
    let f: Vec<String> = values
        .into_iter()
        .map(as_string)
        .collect::<QueueResult<_>>()?;
    task_of(f)
}

/// A task as the routines answer one: its fields in `FIELDS` order, as
/// prelude.lua's `fetch` reads them. (Packed into one string they cost
/// Redis, the busiest process on the one-task-per-call path, about 5 µs a
/// task to build; parsing nineteen values costs this side a little more,
/// which its spare threads can pay.)
fn answered(value: Value) -> QueueResult<Task> {
    match value {
        Value::Array(fields) => task(fields),
        other => Err(corrupt(&format!("a task's fields, not {other:?}"))),
    }
}

fn task_of(f: Vec<String>) -> QueueResult<Task> {
    if f.len() != FIELDS.len() {
        return Err(corrupt(&format!(
            "{} task fields, expected {}",
            f.len(),
            FIELDS.len()
        )));
    }
    let int = |i: usize| -> QueueResult<i64> {
        f[i].parse::<f64>()
            .map(|n| n as i64)
            .map_err(|_| corrupt(&format!("{} = {:?}", FIELDS[i], f[i])))
    };
    let pairs: Vec<(String, String)> = serde_json::from_str(&f[3]).unwrap_or_default();
    Ok(Task {
        id: f[0].clone(),
        r#type: f[1].clone(),
        payload: f[2].clone(),
        metadata: pairs
            .into_iter()
            .map(|(key, value)| TaskMetadataEntry { key, value })
            .collect(),
        status: f[4].clone(),
        created_at: int(5)?,
        updated_at: int(6)?,
        result: f[7].clone(),
        worker_id: f[8].clone(),
        queue: f[9].clone(),
        priority: int(10)? as i32,
        attempts: int(11)? as u32,
        max_attempts: int(12)? as u32,
        run_at: int(13)?,
        idempotency_key: f[14].clone(),
        last_error: f[15].clone(),
        lease_expires_at: int(16)?,
        lease_id: f[17].clone(),
        retry_backoff_ms: int(18)? as u32,
    })
}

/// `{'ok', fields...}`, `{'notfound'}` or `{'precondition', message}`.
fn outcome(id: &str, mut reply: Vec<Value>) -> QueueResult<Task> {
    if reply.is_empty() {
        return Err(corrupt("empty outcome"));
    }
    let code = as_string(reply.remove(0))?;
    match code.as_str() {
        "ok" => answered(reply.into_iter().next().unwrap_or(Value::Nil)),
        // A brief ack's answer: the task's status only.
        "brief" => Ok(super::model::brief_task(
            id.to_string(),
            as_string(reply.into_iter().next().unwrap_or(Value::Nil))?,
        )),
        "notfound" => Err(QueueError::NotFound(id.to_string())),
        "precondition" => Err(QueueError::FailedPrecondition(as_string(
            reply.into_iter().next().unwrap_or(Value::Nil),
        )?)),
        other => Err(corrupt(other)),
    }
}

/// `ack_all`'s answer: one outcome per ack, in order.
fn ack_outcomes(reply: Value, acks: &[AckSpec]) -> QueueResult<Vec<QueueResult<Task>>> {
    let reply = as_array(reply)?;
    if reply.len() != acks.len() {
        return Err(corrupt("one outcome per ack"));
    }
    reply
        .into_iter()
        .zip(acks)
        .map(|(item, a)| Ok(outcome(&a.task_id, as_array(item)?)))
        .collect()
}

/// Counts by `queue\tstatus`, the oldest due pending task with its run_at,
/// and the number of live leases.
type StatsReply = (Vec<(String, i64)>, Vec<(String, f64)>, u64, Vec<String>);

fn lease_ms(ms: u32) -> u32 {
    if ms == 0 { DEFAULT_LEASE_MS } else { ms }
}

impl QueueBackend for RedisQueue {
    async fn enqueue(&self, tasks: Vec<NewTask>, now: i64) -> QueueResult<Vec<(Task, bool)>> {
        let mut args = vec![arg(now)];
        let stored = enqueue_args(tasks, now, &mut args);
        let reply = self.invoke(&ROUTINES.enqueue, args).await?;
        enqueued(reply, stored)
    }

    /// One script: the acks, the enqueue, then the lease.
    async fn enqueue_and_lease(
        &self,
        acks: Vec<AckSpec>,
        tasks: Vec<NewTask>,
        next: DequeueSpec,
        now: i64,
    ) -> QueueResult<HandOff> {
        let mut args = Vec::with_capacity(4 + 8 * acks.len() + 10 * tasks.len() + 8);
        args.extend([arg(now), arg(acks.len())]);
        for a in &acks {
            args.extend(ack_args(a));
        }
        args.push(arg(tasks.len()));
        let stored = enqueue_args(tasks, now, &mut args);
        let worker = next.worker_id.clone();
        let expires = now + i64::from(lease_ms(next.lease_ms));
        let first_lease = lease_args(next, &mut args);
        let reply = as_array(self.invoke(&ROUTINES.enqueue_lease, args).await?)?;
        let [acked, enqueue_answers, leased] = <[Value; 3]>::try_from(reply).map_err(|_| {
            corrupt("the acks' outcomes, the enqueue's answers and the leased tasks")
        })?;
        let acked = ack_outcomes(acked, &acks)?;
        let leased = match leased {
            // The one new task, leased as asked (enqueue_lease.lua's store_leased).
            Value::Int(1) => {
                let mut task = stored
                    .first()
                    .cloned()
                    .ok_or_else(|| corrupt("a leased new task, and none was sent"))?;
                task.status = Status::InProgress.as_str().to_string();
                task.attempts = 1;
                task.worker_id = worker;
                task.lease_id = first_lease;
                task.lease_expires_at = expires;
                vec![task]
            }
            tasks => as_array(tasks)?
                .into_iter()
                .map(answered)
                .collect::<QueueResult<Vec<Task>>>()?,
        };
        Ok(HandOff {
            acked,
            stored: enqueued(enqueue_answers, stored)?,
            leased,
        })
    }

    async fn dequeue(&self, spec: DequeueSpec, now: i64) -> QueueResult<Vec<Task>> {
        let mut args = vec![arg(now)];
        lease_args(spec, &mut args);
        let reply = self.invoke(&ROUTINES.dequeue, args).await?;
        as_array(reply)?.into_iter().map(answered).collect()
    }

    async fn ack(&self, acks: Vec<AckSpec>, now: i64) -> QueueResult<Vec<QueueResult<Task>>> {
        let mut args = vec![arg(now)];
        for a in &acks {
            args.extend(ack_args(a));
        }
        ack_outcomes(self.invoke(&ROUTINES.ack, args).await?, &acks)
    }

    async fn due(&self, now: i64) -> QueueResult<u64> {
        let reply = self.invoke(&ROUTINES.due, vec![arg(now)]).await?;
        match reply {
            Value::Int(n) if n >= 0 => Ok(n as u64),
            other => Err(corrupt(&format!("{other:?}"))),
        }
    }

    /// One script: the ack, then (when it was applied) the lease.
    async fn ack_and_lease(
        &self,
        ack: AckSpec,
        next: DequeueSpec,
        now: i64,
    ) -> QueueResult<(QueueResult<Task>, Vec<Task>)> {
        let mut args = vec![arg(now)];
        args.extend(ack_args(&ack));
        lease_args(next, &mut args);
        let mut reply = as_array(self.invoke(&ROUTINES.ack_lease, args).await?)?;
        if reply.len() != 2 {
            return Err(corrupt("an ack's outcome and the leased tasks"));
        }
        let leased = as_array(reply.pop().expect("two items"))?
            .into_iter()
            .map(answered)
            .collect::<QueueResult<Vec<Task>>>()?;
        let acked = outcome(&ack.task_id, as_array(reply.pop().expect("two items"))?);
        Ok((acked, leased))
    }

    async fn heartbeat(
        &self,
        task_id: String,
        lease_id: String,
        ms: u32,
        now: i64,
    ) -> QueueResult<Task> {
        let args = vec![arg(now), arg(&task_id), arg(lease_id), arg(lease_ms(ms))];
        self.one(&ROUTINES.heartbeat, &task_id, args).await
    }

    async fn release(&self, task_id: String, lease_id: String, now: i64) -> QueueResult<Task> {
        let args = vec![arg(now), arg(&task_id), arg(lease_id)];
        self.one(&ROUTINES.release, &task_id, args).await
    }

    async fn get(&self, task_id: String) -> QueueResult<Task> {
        let mut conn = self.conn.clone();
        let values: Vec<Value> = ::redis::cmd("HMGET")
            .arg(self.key(&format!("t:{task_id}")))
            .arg(&FIELDS[..])
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if values.first().is_none_or(|v| *v == Value::Nil) {
            return Err(QueueError::NotFound(task_id));
        }
        task(values)
    }

    async fn list(
        &self,
        status: Option<Status>,
        queue: Option<String>,
        limit: u32,
        after: Option<String>,
    ) -> QueueResult<Vec<Task>> {
        let mut conn = self.conn.clone();
        let after = match after {
            None => None,
            Some(after) => {
                let seq: Option<f64> = ::redis::cmd("ZSCORE")
                    .arg(self.key("all"))
                    .arg(&after)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                Some(seq.ok_or(QueueError::NotFound(after))?)
            }
        };
        let Some(status) = status else {
            if let Some(queue) = queue.as_deref() {
                return self.list_queue(queue, limit, after).await;
            }
            return self.list_walk("all", None, None, limit, after).await;
        };
        // No more tasks can match than the counts hold: none, and nothing
        // need be read; a few, and a walk stops at the last of them.
        let most = self.count_of(status, queue.as_deref()).await?;
        let want = if limit == 0 {
            most
        } else {
            most.min(limit as u64)
        };
        if want == 0 {
            return Ok(Vec::new());
        }
        let queue = queue.as_deref();
        match status {
            Status::Pending => self.list_live("pending", status, queue, want, after).await,
            Status::InProgress => self.list_live("leases", status, queue, want, after).await,
            Status::Failed | Status::Cancelled => {
                let set = if status == Status::Failed {
                    "failed"
                } else {
                    "cancelled"
                };
                self.file_finals(set, status).await?;
                self.list_walk(
                    set,
                    Some(status),
                    queue,
                    u32::try_from(want).unwrap_or(u32::MAX),
                    after,
                )
                .await
            }
            // Most tasks: found first by walking every task.
            Status::Completed => {
                self.list_walk(
                    "all",
                    Some(status),
                    queue,
                    u32::try_from(want).unwrap_or(u32::MAX),
                    after,
                )
                .await
            }
        }
    }

    async fn cancel(&self, task_id: String, now: i64) -> QueueResult<Task> {
        let args = vec![arg(now), arg(&task_id)];
        self.one(&ROUTINES.cancel, &task_id, args).await
    }

    async fn retry(&self, task_id: String, now: i64) -> QueueResult<Task> {
        let args = vec![arg(now), arg(&task_id)];
        self.one(&ROUTINES.retry, &task_id, args).await
    }

    async fn worker_seen(&self, worker: WorkerRecord) -> QueueResult<()> {
        let record = serde_json::to_string(&worker).expect("a worker record serializes");
        let mut conn = self.conn.clone();
        ::redis::cmd("HSET")
            .arg(self.key("workers"))
            .arg(&worker.id)
            .arg(record)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn worker_gone(&self, id: String) -> QueueResult<()> {
        let mut conn = self.conn.clone();
        ::redis::cmd("HDEL")
            .arg(self.key("workers"))
            .arg(id)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn workers(&self, now: i64) -> QueueResult<Vec<WorkerRecord>> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = ::redis::cmd("HGETALL")
            .arg(self.key("workers"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut listed = Vec::new();
        let mut forget = Vec::new();
        for (id, record) in all {
            let worker: WorkerRecord = serde_json::from_str(&record).map_err(|e| {
                QueueError::Unavailable(format!("the record of worker {id} is damaged: {e}"))
            })?;
            if worker.last_seen_at < now - WORKER_FORGET_MS {
                forget.push(id);
            } else if worker.last_seen_at >= now - WORKER_TTL_MS {
                listed.push(worker);
            }
        }
        if !forget.is_empty() {
            ::redis::cmd("HDEL")
                .arg(self.key("workers"))
                .arg(forget)
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(listed)
    }

    async fn stats(&self, now: i64) -> QueueResult<Stats> {
        let mut conn = self.conn.clone();
        let (counts, oldest, in_flight, mut paused): StatsReply = ::redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(self.key("counts"))
            .cmd("ZRANGEBYSCORE")
            .arg(self.key("pending"))
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .cmd("ZCOUNT")
            .arg(self.key("leases"))
            .arg(format!("({now}"))
            .arg("+inf")
            .cmd("SMEMBERS")
            .arg(self.key("paused"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut counts: Vec<(String, String, u64)> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .filter_map(|(key, n)| {
                let (queue, status) = key.split_once('\t')?;
                Some((queue.to_string(), status.to_string(), n as u64))
            })
            .collect();
        counts.sort();
        paused.sort();
        Ok(Stats {
            counts,
            oldest_pending_age_ms: oldest
                .first()
                .map(|(_, t)| (now - *t as i64).max(0))
                .unwrap_or(0),
            in_flight_leases: in_flight,
            paused,
        })
    }

    async fn set_paused(&self, queue: String, paused: bool, _now: i64) -> QueueResult<bool> {
        let mut conn = self.conn.clone();
        let changed: i64 = ::redis::cmd(if paused { "SADD" } else { "SREM" })
            .arg(self.key("paused"))
            .arg(&queue)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(changed > 0)
    }

    async fn reap(&self, now: i64) -> QueueResult<u64> {
        let mut total = 0;
        loop {
            let reply = self
                .invoke(&ROUTINES.reap, vec![arg(now), arg(REAP_LIMIT)])
                .await?;
            let Value::Int(n) = reply else {
                return Err(corrupt(&format!("{reply:?}")));
            };
            total += n as u64;
            if n < REAP_LIMIT as i64 {
                return Ok(total);
            }
        }
    }

    async fn purge(&self, before: i64, queue: Option<String>) -> QueueResult<u64> {
        let queue = queue.unwrap_or_default();
        let (mut after, mut total) = (0i64, 0u64);
        loop {
            let reply = self
                .invoke(
                    &ROUTINES.purge,
                    vec![
                        arg(super::model::now_ms()),
                        arg(before),
                        arg(&queue),
                        arg(after),
                        arg(PURGE_CHUNK),
                    ],
                )
                .await?;
            let parts = as_array(reply)?;
            let int = |i: usize| match parts.get(i) {
                Some(Value::Int(n)) => Ok(*n),
                other => Err(corrupt(&format!("purge reply {other:?}"))),
            };
            let (deleted, last, seen) = (int(0)?, int(1)?, int(2)?);
            total += deleted as u64;
            if seen < PURGE_CHUNK as i64 {
                return Ok(total);
            }
            after = last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(fields: &[&str]) -> Value {
        Value::Array(
            fields
                .iter()
                .map(|f| Value::BulkString(f.as_bytes().to_vec()))
                .collect(),
        )
    }

    #[test]
    fn answered_tasks_read_back_whatever_their_fields_hold() {
        let mut fields = vec!["0"; FIELDS.len()];
        fields[0] = "id-1";
        fields[2] = "12:34 a payload: with colons, digits and ümlauts";
        fields[3] = "[]";
        fields[7] = "";
        let t = answered(answer(&fields)).unwrap();
        assert_eq!(t.id, "id-1");
        assert_eq!(t.payload, fields[2]);
        assert_eq!(t.result, "");
        // A field the hash lacks (HMGET's nil) reads as empty.
        let mut values = match answer(&fields) {
            Value::Array(v) => v,
            _ => unreachable!(),
        };
        values[15] = Value::Nil;
        assert_eq!(answered(Value::Array(values)).unwrap().last_error, "");
    }

    #[test]
    fn damaged_answered_tasks_are_errors_not_panics() {
        let mut not_a_number = vec!["0"; FIELDS.len()];
        not_a_number[5] = "yesterday";
        for bad in [
            answer(&["id-1", "bench"]),
            answer(&not_a_number),
            Value::Array(vec![Value::BulkString(vec![0xff, 0xfe]); FIELDS.len()]),
            Value::BulkString(b"3:abc".to_vec()),
            Value::Int(3),
        ] {
            assert!(answered(bad).is_err());
        }
    }
}
