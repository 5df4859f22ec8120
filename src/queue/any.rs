//! [`AnyQueue`]: whichever backend the store URL names, as one type, so the
//! server and the commands are written once.

use super::backend::{HandOff, QueueBackend, QueueResult};
use super::model::{AckSpec, DequeueSpec, NewTask, Stats, Status, Task, WorkerRecord};
use super::redis::RedisQueue;
use super::sqlite::SqliteQueue;

#[derive(Clone)]
pub enum AnyQueue {
    Sqlite(SqliteQueue),
    Redis(RedisQueue),
}

impl AnyQueue {
    /// The queue of a local run, whose answers only its own scheduler and
    /// workers hear of (see [`SqliteQueue::for_local_run`]); Redis keeps
    /// its own persistence rules.
    pub fn for_local_run(self) -> AnyQueue {
        match self {
            AnyQueue::Sqlite(q) => AnyQueue::Sqlite(q.for_local_run()),
            other => other,
        }
    }
}

macro_rules! each {
    ($self:ident, $q:ident => $call:expr) => {
        match $self {
            AnyQueue::Sqlite($q) => $call.await,
            AnyQueue::Redis($q) => $call.await,
        }
    };
}

impl QueueBackend for AnyQueue {
    async fn enqueue(&self, tasks: Vec<NewTask>, now: i64) -> QueueResult<Vec<(Task, bool)>> {
        each!(self, q => q.enqueue(tasks, now))
    }

    async fn dequeue(&self, spec: DequeueSpec, now: i64) -> QueueResult<Vec<Task>> {
        each!(self, q => q.dequeue(spec, now))
    }

    async fn ack(&self, acks: Vec<AckSpec>, now: i64) -> QueueResult<Vec<QueueResult<Task>>> {
        each!(self, q => q.ack(acks, now))
    }

    async fn ack_and_lease(
        &self,
        ack: AckSpec,
        next: DequeueSpec,
        now: i64,
    ) -> QueueResult<(QueueResult<Task>, Vec<Task>)> {
        each!(self, q => q.ack_and_lease(ack, next, now))
    }

    async fn enqueue_and_lease(
        &self,
        acks: Vec<AckSpec>,
        tasks: Vec<NewTask>,
        next: DequeueSpec,
        now: i64,
    ) -> QueueResult<HandOff> {
        each!(self, q => q.enqueue_and_lease(acks, tasks, next, now))
    }

    async fn release(&self, task_id: String, lease_id: String, now: i64) -> QueueResult<Task> {
        each!(self, q => q.release(task_id, lease_id, now))
    }

    async fn due(&self, now: i64) -> QueueResult<u64> {
        each!(self, q => q.due(now))
    }

    async fn heartbeat(
        &self,
        task_id: String,
        lease_id: String,
        lease_ms: u32,
        now: i64,
    ) -> QueueResult<Task> {
        each!(self, q => q.heartbeat(task_id, lease_id, lease_ms, now))
    }

    async fn get(&self, task_id: String) -> QueueResult<Task> {
        each!(self, q => q.get(task_id))
    }

    async fn list(
        &self,
        status: Option<Status>,
        queue: Option<String>,
        limit: u32,
        after: Option<String>,
    ) -> QueueResult<Vec<Task>> {
        each!(self, q => q.list(status, queue, limit, after))
    }

    async fn cancel(&self, task_id: String, now: i64) -> QueueResult<Task> {
        each!(self, q => q.cancel(task_id, now))
    }

    async fn retry(&self, task_id: String, now: i64) -> QueueResult<Task> {
        each!(self, q => q.retry(task_id, now))
    }

    async fn set_paused(&self, queue: String, paused: bool, now: i64) -> QueueResult<bool> {
        each!(self, q => q.set_paused(queue, paused, now))
    }

    async fn stats(&self, now: i64) -> QueueResult<Stats> {
        each!(self, q => q.stats(now))
    }

    async fn worker_seen(&self, worker: WorkerRecord) -> QueueResult<()> {
        each!(self, q => q.worker_seen(worker))
    }

    async fn worker_gone(&self, id: String) -> QueueResult<()> {
        each!(self, q => q.worker_gone(id))
    }

    async fn workers(&self, now: i64) -> QueueResult<Vec<WorkerRecord>> {
        each!(self, q => q.workers(now))
    }

    async fn reap(&self, now: i64) -> QueueResult<u64> {
        each!(self, q => q.reap(now))
    }

    async fn purge(&self, before: i64, queue: Option<String>) -> QueueResult<u64> {
        each!(self, q => q.purge(before, queue))
    }
}
