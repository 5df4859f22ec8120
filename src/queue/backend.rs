//! The interface every queue backend implements, and its errors.
//!
//! Each method is one atomic step: a backend either applies all of it or none
//! of it, and the rules (lease checks, retry backoff, idempotency) are the same
//! whichever backend runs them. `now` is passed in so a server's clock, not
//! the store's, decides what is due and what has expired.

use std::future::Future;

use super::model::{AckSpec, DequeueSpec, NewTask, Stats, Status, Task, WorkerRecord};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("task {0} not found")]
    NotFound(String),
    /// The task is not in a state that allows the operation (a lost lease, a finished task).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The store failed; the operation may be retried.
    #[error("store error: {0}")]
    Unavailable(String),
}

pub type QueueResult<T> = Result<T, QueueError>;

/// What an enqueue handed to a waiting worker answers: the outcome of each
/// ack it carried (in order), each task stored (and whether it already
/// existed), and the tasks leased.
#[derive(Debug, Default)]
pub struct HandOff {
    pub acked: Vec<QueueResult<Task>>,
    pub stored: Vec<(Task, bool)>,
    pub leased: Vec<Task>,
}

pub trait QueueBackend: Send + Sync + 'static {
    /// Enqueue tasks; for each, the stored task and whether it already existed
    /// (an idempotency key matched).
    fn enqueue(
        &self,
        tasks: Vec<NewTask>,
        now: i64,
    ) -> impl Future<Output = QueueResult<Vec<(Task, bool)>>> + Send;

    /// Lease up to `spec.max_tasks` due tasks, highest priority first, then oldest.
    fn dequeue(
        &self,
        spec: DequeueSpec,
        now: i64,
    ) -> impl Future<Output = QueueResult<Vec<Task>>> + Send;

    /// Apply acks; each succeeds or fails on its own.
    fn ack(
        &self,
        acks: Vec<AckSpec>,
        now: i64,
    ) -> impl Future<Output = QueueResult<Vec<QueueResult<Task>>>> + Send;

    /// Apply one ack and, when it was applied, lease the caller's next
    /// tasks: what an Ack with `next` asks. A backend that can do both in
    /// one round trip overrides this.
    fn ack_and_lease(
        &self,
        ack: AckSpec,
        next: DequeueSpec,
        now: i64,
    ) -> impl Future<Output = QueueResult<(QueueResult<Task>, Vec<Task>)>> + Send {
        async move {
            let acked = self
                .ack(vec![ack], now)
                .await?
                .pop()
                .expect("one ack in, one outcome out");
            // The ack stands whatever the lease does: a failing lease
            // answers no tasks, and the caller's next Dequeue meets it.
            let leased = match &acked {
                Ok(_) => self.dequeue(next, now).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "the lease after an ack failed");
                    Vec::new()
                }),
                Err(_) => Vec::new(),
            };
            Ok((acked, leased))
        }
    }

    /// Apply a waiting worker's acks, enqueue tasks, then lease for that
    /// worker: a new task handed to a waiting worker in the call that
    /// stores it, with the acks its worker sent since its last call (each
    /// succeeds or fails on its own). The enqueue stands whatever the lease
    /// does (a failing lease answers no tasks). A backend that can do all
    /// three in one round trip overrides this.
    fn enqueue_and_lease(
        &self,
        acks: Vec<AckSpec>,
        tasks: Vec<NewTask>,
        next: DequeueSpec,
        now: i64,
    ) -> impl Future<Output = QueueResult<HandOff>> + Send {
        async move {
            let acked = if acks.is_empty() {
                Vec::new()
            } else {
                self.ack(acks, now).await?
            };
            let stored = self.enqueue(tasks, now).await?;
            let leased = self.dequeue(next, now).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the lease after an enqueue failed");
                Vec::new()
            });
            Ok(HandOff {
                acked,
                stored,
                leased,
            })
        }
    }

    /// About how many tasks a Dequeue over every queue that is not paused
    /// could lease now (due pending tasks and expired leases): a cheap
    /// question the service's one poller asks for all waiting long polls.
    /// `u64::MAX` when a backend cannot tell cheaply: every waiter looks.
    fn due(&self, now: i64) -> impl Future<Output = QueueResult<u64>> + Send {
        let _ = now;
        async { Ok(u64::MAX) }
    }

    /// Extend a lease the caller still holds.
    fn heartbeat(
        &self,
        task_id: String,
        lease_id: String,
        lease_ms: u32,
        now: i64,
    ) -> impl Future<Output = QueueResult<Task>> + Send;

    /// Hand back a task the caller's lease holds, without spending an
    /// attempt: PENDING again at once, due as it was.
    fn release(
        &self,
        task_id: String,
        lease_id: String,
        now: i64,
    ) -> impl Future<Output = QueueResult<Task>> + Send;

    fn get(&self, task_id: String) -> impl Future<Output = QueueResult<Task>> + Send;

    /// Tasks oldest first, optionally of one status and one queue, from
    /// after the task `after` (NotFound when there is no such task); `limit`
    /// 0 means all.
    fn list(
        &self,
        status: Option<Status>,
        queue: Option<String>,
        limit: u32,
        after: Option<String>,
    ) -> impl Future<Output = QueueResult<Vec<Task>>> + Send;

    /// Cancel a pending or running task.
    fn cancel(&self, task_id: String, now: i64) -> impl Future<Output = QueueResult<Task>> + Send;

    /// Put a failed or cancelled task back in the queue with a fresh attempt budget.
    fn retry(&self, task_id: String, now: i64) -> impl Future<Output = QueueResult<Task>> + Send;

    /// Pause (`true`) or resume a queue: Dequeue leases nothing from a
    /// paused queue until it is resumed. Whether the state changed.
    fn set_paused(
        &self,
        queue: String,
        paused: bool,
        now: i64,
    ) -> impl Future<Output = QueueResult<bool>> + Send;

    fn stats(&self, now: i64) -> impl Future<Output = QueueResult<Stats>> + Send;

    /// Note a worker connected, or still connected (replacing its record),
    /// and forget records not refreshed for [`super::model::WORKER_FORGET_MS`].
    fn worker_seen(&self, worker: WorkerRecord) -> impl Future<Output = QueueResult<()>> + Send;

    /// Forget a worker whose stream ended.
    fn worker_gone(&self, id: String) -> impl Future<Output = QueueResult<()>> + Send;

    /// Workers seen within [`super::model::WORKER_TTL_MS`] of `now`, by id.
    fn workers(&self, now: i64) -> impl Future<Output = QueueResult<Vec<WorkerRecord>>> + Send;

    /// Return tasks whose lease expired before `now` to the queue; how many.
    fn reap(&self, now: i64) -> impl Future<Output = QueueResult<u64>> + Send;

    /// Delete finished tasks (COMPLETED, FAILED, CANCELLED) last changed
    /// before `before`, of one queue or of all; how many. Their idempotency
    /// keys go with them: the same key enqueues a new task afterwards.
    fn purge(
        &self,
        before: i64,
        queue: Option<String>,
    ) -> impl Future<Output = QueueResult<u64>> + Send;
}
