//! The `TaskQueue` gRPC service over any [`QueueBackend`].
//!
//! It validates every request (see [`super::validate`]), maps backend errors
//! to gRPC codes, and implements the long poll of `Dequeue`: a caller that
//! asks to wait is woken by an enqueue on this server, or by the service's
//! one poller, which every [`POLL`] asks the backend how many tasks are due
//! (another server's or process's enqueues, delayed tasks, expired leases)
//! and wakes that many waiters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tonic::{Request, Response, Status as GrpcStatus};

use super::backend::{HandOff, QueueBackend, QueueError};
use super::idle::{Handed, IdleStreams};
use super::model::{AckSpec, DequeueSpec, Status, WORKER_REFRESH, WorkerRecord, now_ms};
use super::pollers::Pollers;
use super::proto::task_queue_server::TaskQueue;
use super::proto::*;
use super::server::MAX_MESSAGE;
use super::validate;
use crate::audit::{AuditLog, Event};

/// How often the poller asks the backend for due tasks while long polls wait.
pub const POLL: Duration = Duration::from_millis(50);
/// How long a Work stream's answered ack may wait for the enqueue that
/// hands its stream the next task, to go to the backend in that call (see
/// [`super::work_stream`]): its worker may be waiting for the answer.
pub const HOLD_ANSWERED: Duration = Duration::from_millis(1);
pub const MAX_WAIT_MS: u32 = 60_000;
pub const MAX_LEASE_MS: u32 = 24 * 3600 * 1000;
pub const MAX_DEQUEUE: u32 = 256;
/// Tasks read from the backend at a time while listing.
const LIST_PAGE: u32 = 500;
/// The bytes of tasks one Dequeue answer may carry: the message limit less
/// room for the first task, which the answer holds twice (`task` and `tasks`).
pub const REPLY_BUDGET: u64 = (MAX_MESSAGE - 4 * 1024 * 1024) as u64;

/// What the long polls of one service share: the wake-up, how many are
/// waiting, and whether the poller runs.
#[derive(Default)]
pub(super) struct Waiters {
    pub(super) notify: Notify,
    waiting: AtomicUsize,
    poller: AtomicBool,
    /// Counts the times this server learnt of tasks no idle stream was
    /// handed (an enqueue that found none waiting, a retry, the poller
    /// finding tasks due): a stream whose last look found nothing, and
    /// that has seen no change here since, knows the queue holds nothing
    /// for it without asking the backend.
    generation: AtomicU64,
    /// Fired on each of the poller's ticks: a stream holding acks for the
    /// next enqueue to carry applies them itself.
    pub(super) tick: Notify,
}

impl Waiters {
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Counts a long poll as waiting while it lives.
pub(super) struct Waiting<'a>(&'a Waiters);

impl<'a> Waiting<'a> {
    fn enter(waiters: &'a Waiters) -> Waiting<'a> {
        waiters.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every `every`, while long polls wait, ask the backend how many tasks are
/// due (other servers' enqueues, delayed tasks, expired leases) and wake
/// that many waiters: one cheap question per server instead of a dequeue
/// per waiter (50 idle workers sent 1,000 lease scripts a second). Ends
/// when the service is gone.
async fn poll_for_waiters<B: QueueBackend>(
    backend: Arc<B>,
    waiters: Weak<Waiters>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(w) = waiters.upgrade() else { return };
        let waiting = w.waiting.load(Ordering::Acquire);
        if waiting == 0 {
            continue;
        }
        w.tick.notify_waiters();
        // On an error, every waiter looks and meets it itself.
        let due = backend.due(now_ms()).await.unwrap_or(u64::MAX);
        if due > 0 {
            w.changed();
        }
        for _ in 0..due.min(waiting as u64) {
            w.notify.notify_one();
        }
    }
}

pub struct QueueService<B> {
    backend: Arc<B>,
    waiters: Arc<Waiters>,
    idle: Arc<IdleStreams>,
    pollers: Arc<Pollers>,
    /// Turns true when the server stops: Work streams and long polls end,
    /// so a graceful shutdown does not wait for them.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    audit: Option<AuditLog>,
    poll: Duration,
    answered_hold: Duration,
}

impl<B> Clone for QueueService<B> {
    fn clone(&self) -> Self {
        QueueService {
            backend: self.backend.clone(),
            waiters: self.waiters.clone(),
            idle: self.idle.clone(),
            pollers: self.pollers.clone(),
            closing: self.closing.clone(),
            audit: self.audit.clone(),
            poll: self.poll,
            answered_hold: self.answered_hold,
        }
    }
}

impl<B: QueueBackend> QueueService<B> {
    pub fn new(backend: Arc<B>) -> Self {
        QueueService {
            backend,
            waiters: Arc::new(Waiters::default()),
            idle: Arc::new(IdleStreams::default()),
            pollers: Arc::new(Pollers::default()),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            audit: None,
            poll: POLL,
            answered_hold: HOLD_ANSWERED,
        }
    }

    /// How long a Work stream's answered ack waits for an enqueue to carry
    /// it (default [`HOLD_ANSWERED`]).
    pub fn with_answered_hold(mut self, hold: Duration) -> Self {
        self.answered_hold = hold;
        self
    }

    pub(super) fn answered_hold(&self) -> Duration {
        self.answered_hold
    }

    /// Ask the backend for due tasks this often while long polls wait
    /// (default [`POLL`]).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Record cancels and re-queues (changes made by hand) in `audit`.
    pub fn with_audit(mut self, audit: Option<AuditLog>) -> Self {
        self.audit = audit;
        self
    }

    async fn audit(&self, action: &str, task: &Task, peer: Option<std::net::SocketAddr>) {
        if let Some(log) = &self.audit {
            let actor = peer.map_or_else(|| "client".to_string(), |p| format!("client:{}", p.ip()));
            crate::audit::record(
                log,
                Event::new(actor, action, format!("task {}", task.id), "ok").details(
                    serde_json::json!({"queue": task.queue, "type": task.r#type, "status": task.status}),
                ),
            )
            .await;
        }
    }

    /// Pause or resume `queue`, audited; whether it changed, and the queues paused now.
    async fn set_paused(
        &self,
        queue: String,
        paused: bool,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(bool, Vec<String>), GrpcStatus> {
        let queue = validate::queue_name("queue", &queue).map_err(invalid)?;
        let changed = self
            .backend
            .set_paused(queue.clone(), paused, now_ms())
            .await
            .map_err(to_status)?;
        let action = if paused {
            "queue.pause"
        } else {
            "queue.resume"
        };
        tracing::info!(%queue, changed, "{action}");
        if let Some(log) = &self.audit {
            let actor = peer.map_or_else(|| "client".to_string(), |p| format!("client:{}", p.ip()));
            crate::audit::record(
                log,
                Event::new(actor, action, format!("queue {queue}"), "ok")
                    .details(serde_json::json!({"changed": changed})),
            )
            .await;
        }
        let stats = self.backend.stats(now_ms()).await.map_err(to_status)?;
        Ok((changed, stats.paused))
    }

    /// Lease tasks for `spec`, waiting up to `wait_ms` for one to be due
    /// (the long poll of Dequeue and of an ack's `next`).
    /// Without `look_first` the caller has just looked and found nothing:
    /// the first look waits for a wake-up (an enqueue here, or the poller),
    /// so a worker whose ack leased nothing costs no second empty look.
    async fn lease(
        &self,
        spec: DequeueSpec,
        wait_ms: u32,
        look_first: bool,
    ) -> Result<Vec<Task>, GrpcStatus> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64);
        let mut look = look_first;
        loop {
            let notified = self.waiters.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let tasks = if look {
                self.backend
                    .dequeue(spec.clone(), now_ms())
                    .await
                    .map_err(to_status)?
            } else {
                Vec::new()
            };
            look = true;
            let now = tokio::time::Instant::now();
            if !tasks.is_empty() || now >= deadline {
                crate::counter!("queue.tasks.leased").add(tasks.len() as u64);
                for task in &tasks {
                    tracing::debug!(task = %task.id, worker = %task.worker_id, attempt = task.attempts, "leased");
                }
                return Ok(tasks);
            }
            // Woken by an enqueue here, or by the poller when the backend
            // has due tasks this server did not see arrive.
            self.start_poller();
            let _waiting = Waiting::enter(&self.waiters);
            let mut closing = self.closing();
            if *closing.borrow_and_update() {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(deadline - now) => {}
                _ = closing.changed() => return Ok(Vec::new()),
            }
        }
    }

    /// `call` of `spec`, a poller's (Dequeue, or an ack's `next`): the
    /// poller is noted in the store when due (see [`super::pollers`]), and
    /// again every [`WORKER_REFRESH`] while `call` waits in a long poll.
    async fn polling<T, F: Future<Output = T>>(
        &self,
        spec: DequeueSpec,
        peer: Option<std::net::SocketAddr>,
        wait_ms: u32,
        call: impl FnOnce(DequeueSpec) -> F,
    ) -> T {
        self.note_poller(&spec, peer, false).await;
        if Duration::from_millis(wait_ms.into()) < WORKER_REFRESH {
            return call(spec).await;
        }
        let call = call(spec.clone());
        tokio::pin!(call);
        let start = tokio::time::Instant::now() + WORKER_REFRESH;
        let mut every = tokio::time::interval_at(start, WORKER_REFRESH);
        loop {
            tokio::select! {
                biased;
                out = &mut call => return out,
                _ = every.tick() => self.note_poller(&spec, peer, true).await,
            }
        }
    }

    async fn note_poller(
        &self,
        spec: &DequeueSpec,
        peer: Option<std::net::SocketAddr>,
        waiting: bool,
    ) {
        // Calls from inside this process have no address: not listed.
        let Some(peer) = peer else { return };
        let now = now_ms();
        let record = if waiting {
            self.pollers
                .waiting(&spec.worker_id, &spec.queues, peer, now)
        } else {
            self.pollers
                .called(&spec.worker_id, &spec.queues, peer, now)
        };
        if let Some(record) = record {
            // A store that cannot note it answers the call itself.
            if let Err(e) = self.backend.worker_seen(record).await {
                tracing::warn!(worker = %spec.worker_id, error = %e, "cannot note the polling worker in the store");
            }
        }
    }

    pub(super) fn backend(&self) -> &B {
        &self.backend
    }

    pub(super) fn backend_arc(&self) -> Arc<B> {
        self.backend.clone()
    }

    /// End every Work stream and long poll (the server is stopping).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// One Enqueue, as the unary call and the producer's stream make it.
    pub(super) async fn enqueue_one(
        &self,
        request: EnqueueRequest,
    ) -> Result<EnqueueResponse, GrpcStatus> {
        check_size(&request)?;
        let brief = request.brief;
        let task = validate::enqueue("", request).map_err(invalid)?;
        // A task due now goes straight to a Work stream waiting for one.
        let taker = (task.delay_ms == 0)
            .then(|| self.idle.take(&task.queue))
            .flatten();
        let (mut stored, handed) = match taker {
            Some(taker) => {
                // On an error the taker's hand is dropped, and it applies
                // its acks itself.
                let HandOff {
                    acked,
                    stored,
                    leased,
                } = self
                    .backend
                    .enqueue_and_lease(taker.acks, vec![task], taker.spec, now_ms())
                    .await
                    .map_err(to_status)?;
                crate::counter!("queue.tasks.leased").add(leased.len() as u64);
                let handed = !leased.is_empty();
                // A stream that went in the meantime leaves these to their
                // lease, as a worker that died holding them would.
                let _ = taker.hand.send(Handed {
                    tasks: leased,
                    acked,
                });
                (stored, handed)
            }
            None => (
                self.backend
                    .enqueue(vec![task], now_ms())
                    .await
                    .map_err(to_status)?,
                false,
            ),
        };
        let (mut task, existing) = stored.pop().expect("one task in, one task out");
        if brief {
            without_contents(&mut task);
        }
        crate::counter!("queue.tasks.enqueued").inc();
        tracing::debug!(task = %task.id, queue = %task.queue, existing, "enqueued");
        self.wake(usize::from(!existing && !handed));
        Ok(EnqueueResponse {
            task: Some(task),
            existing,
        })
    }

    pub(super) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub(super) fn idle(&self) -> &IdleStreams {
        &self.idle
    }

    pub(super) fn waiters(&self) -> &Waiters {
        &self.waiters
    }

    /// Count the caller as a waiter (the poller looks for it) while the guard lives.
    pub(super) fn enter_waiting(&self) -> Waiting<'_> {
        Waiting::enter(&self.waiters)
    }

    /// Start this service's poller, once.
    pub(super) fn start_poller(&self) {
        if self.waiters.poller.swap(true, Ordering::AcqRel) {
            return;
        }
        let backend = self.backend.clone();
        let waiters = Arc::downgrade(&self.waiters);
        tokio::spawn(poll_for_waiters(backend, waiters, self.poll));
    }

    /// Wake as many waiting long polls as there are new tasks to take: one
    /// each, not every waiter for every task (with 50 workers waiting, each
    /// enqueue sent 50 of them to the backend to find one task).
    pub(super) fn wake(&self, tasks: usize) {
        if tasks > 0 {
            self.waiters.changed();
        }
        for _ in 0..tasks {
            self.waiters.notify.notify_one();
        }
    }

    /// Wake every waiting long poll (a queue was resumed: any may now have work).
    fn wake_all(&self) {
        self.waiters.changed();
        self.waiters.notify.notify_waiters();
    }
}

/// A checked Dequeue request; `field` names where it came from in error
/// messages (`""` for Dequeue itself, `"next."` inside an ack).
fn dequeue_spec(field: &str, req: DequeueRequest) -> Result<DequeueSpec, GrpcStatus> {
    if req.worker_id.len() > 128 {
        return Err(invalid(format!("{field}worker_id: at most 128 characters")));
    }
    for (i, queue) in req.queues.iter().enumerate() {
        if !validate::is_name(queue) {
            return Err(invalid(format!(
                "{field}queues[{i}]: queue name {queue:?} must match [A-Za-z0-9_.-]{{1,128}}"
            )));
        }
    }
    if req.wait_ms > MAX_WAIT_MS {
        return Err(invalid(format!(
            "{field}wait_ms: {} is more than {MAX_WAIT_MS}",
            req.wait_ms
        )));
    }
    if req.lease_ms > MAX_LEASE_MS {
        return Err(invalid(format!(
            "{field}lease_ms: {} is more than {MAX_LEASE_MS} (a day)",
            req.lease_ms
        )));
    }
    if req.max_tasks > MAX_DEQUEUE {
        return Err(invalid(format!(
            "{field}max_tasks: {} is more than {MAX_DEQUEUE}",
            req.max_tasks
        )));
    }
    Ok(DequeueSpec {
        worker_id: req.worker_id,
        queues: req.queues,
        lease_ms: req.lease_ms,
        max_tasks: req.max_tasks.max(1),
        max_bytes: REPLY_BUDGET,
    })
}

/// Workers connected now (see [`QueueBackend::workers`]), each with the ids
/// of the tasks it holds a lease on.
pub async fn connected_workers<B: QueueBackend>(
    backend: &B,
    now: i64,
) -> Result<Vec<(WorkerRecord, Vec<String>)>, QueueError> {
    let workers = backend.workers(now).await?;
    let mut held: HashMap<String, Vec<String>> = HashMap::new();
    for t in backend
        .list(Some(Status::InProgress), None, 0, None)
        .await?
    {
        held.entry(t.worker_id).or_default().push(t.id);
    }
    Ok(workers
        .into_iter()
        .map(|w| {
            let tasks = held.remove(&w.id).unwrap_or_default();
            (w, tasks)
        })
        .collect())
}

pub fn to_status(e: QueueError) -> GrpcStatus {
    match e {
        QueueError::NotFound(_) => GrpcStatus::not_found(e.to_string()),
        QueueError::FailedPrecondition(m) => GrpcStatus::failed_precondition(m),
        QueueError::InvalidArgument(m) => GrpcStatus::invalid_argument(m),
        QueueError::Unavailable(m) => GrpcStatus::unavailable(m),
    }
}

/// A task as a brief enqueue answer has it: everything but the payload
/// and metadata the producer sent.
fn without_contents(task: &mut Task) {
    task.payload = String::new();
    task.metadata = Vec::new();
}

/// Refuse a request larger than [`MAX_MESSAGE`]. The transport accepts up to
/// four times that, so a client that sends too much reads this status rather
/// than a reset stream.
pub(super) fn check_size(message: &impl prost::Message) -> Result<(), GrpcStatus> {
    let len = message.encoded_len();
    if len > MAX_MESSAGE {
        return Err(GrpcStatus::resource_exhausted(format!(
            "request is {len} bytes; the limit is {MAX_MESSAGE} bytes"
        )));
    }
    Ok(())
}

pub(super) fn invalid(message: String) -> GrpcStatus {
    GrpcStatus::invalid_argument(message)
}

pub(super) fn ack_spec(field: &str, req: AckRequest) -> Result<AckSpec, GrpcStatus> {
    validate::task_id(&format!("{field}task_id"), &req.task_id).map_err(invalid)?;
    // Ack takes its `next` off before this; anywhere else it would be ignored.
    if req.next.is_some() {
        return Err(invalid(format!(
            "{field}next: only a single Ack can lease the next tasks; AckBatch cannot"
        )));
    }
    if req.error.len() > validate::MAX_PAYLOAD || req.result.len() > validate::MAX_PAYLOAD {
        return Err(invalid(format!("{field}result/error: at most 1 MiB each")));
    }
    Ok(AckSpec {
        task_id: req.task_id,
        success: req.success,
        result: req.result,
        lease_id: (!req.lease_id.is_empty()).then_some(req.lease_id),
        retry: req.retry,
        error: req.error,
        brief: false,
    })
}

#[tonic::async_trait]
impl<B: QueueBackend> TaskQueue for QueueService<B> {
    async fn enqueue(
        &self,
        request: Request<EnqueueRequest>,
    ) -> Result<Response<EnqueueResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.enqueue");
        self.enqueue_one(request.into_inner())
            .await
            .map(Response::new)
    }

    type EnqueueStreamStream = super::enqueue_stream::EnqueueStream;

    async fn enqueue_stream(
        &self,
        request: Request<tonic::Streaming<EnqueueRequest>>,
    ) -> Result<Response<Self::EnqueueStreamStream>, GrpcStatus> {
        let (out, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(super::enqueue_stream::serve(
            self.clone(),
            request.into_inner(),
            out,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn dequeue(
        &self,
        request: Request<DequeueRequest>,
    ) -> Result<Response<DequeueResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.dequeue");
        let peer = request.remote_addr();
        let req = request.into_inner();
        let wait_ms = req.wait_ms;
        let spec = dequeue_spec("", req)?;
        let tasks = self
            .polling(spec, peer, wait_ms, |spec| self.lease(spec, wait_ms, true))
            .await?;
        Ok(Response::new(DequeueResponse {
            has_task: !tasks.is_empty(),
            task: tasks.first().cloned(),
            tasks,
        }))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.ack");
        let peer = request.remote_addr();
        let mut request = request.into_inner();
        check_size(&request)?;
        // The next lease is checked before the ack is applied, so a bad
        // request changes nothing.
        let next = match request.next.take() {
            Some(next) => {
                let wait_ms = next.wait_ms;
                Some((dequeue_spec("next.", next)?, wait_ms))
            }
            None => None,
        };
        let spec = ack_spec("", request)?;
        if let Some((lease, _)) = &next {
            self.note_poller(lease, peer, false).await;
        }
        // With `next`, one backend call acks and leases (one script on Redis).
        let (acked, leased) = match &next {
            Some((lease, _)) => self
                .backend
                .ack_and_lease(spec, lease.clone(), now_ms())
                .await
                .map_err(to_status)?,
            None => {
                let mut outcomes = self
                    .backend
                    .ack(vec![spec], now_ms())
                    .await
                    .map_err(to_status)?;
                (
                    outcomes.pop().expect("one ack in, one outcome out"),
                    Vec::new(),
                )
            }
        };
        let task = acked.map_err(|e| {
            crate::counter!("queue.acks.refused").inc();
            tracing::info!(reason = %e, "ack refused");
            to_status(e)
        })?;
        crate::counter!("queue.acks.applied").inc();
        tracing::debug!(task = %task.id, status = %task.status, "acknowledged");
        if task.status == Status::Pending.as_str() {
            self.wake(1);
        }
        crate::counter!("queue.tasks.leased").add(leased.len() as u64);
        // Nothing was due: wait for the next task as Dequeue would. The ack
        // is applied whatever happens next: a failing lease answers no
        // tasks, and the caller's Dequeue meets the failure itself.
        let next = match next {
            Some((spec, wait_ms)) if leased.is_empty() && wait_ms > 0 => {
                // The ack's own lease just found nothing: wait before looking again.
                self.polling(spec, peer, wait_ms, |spec| self.lease(spec, wait_ms, false))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e.message(), "the lease after an ack failed");
                        Vec::new()
                    })
            }
            _ => leased,
        };
        Ok(Response::new(AckResponse {
            task: Some(task),
            next,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.list_tasks");
        let req = request.into_inner();
        let status = match req.status.as_str() {
            "" => None,
            s => Some(
                Status::parse(s)
                    .filter(|st| st.as_str() == s)
                    .ok_or_else(|| {
                        let valid: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                        invalid(format!(
                            "status: unknown status {s:?}; valid statuses: {}",
                            valid.join(", ")
                        ))
                    })?,
            ),
        };
        let queue = if req.queue.is_empty() {
            None
        } else {
            Some(validate::queue_name("queue", &req.queue).map_err(invalid)?)
        };
        // Read in pages and stop at the answer's size limit: a queue bigger
        // than one message is listed in parts, each naming where the next begins.
        let mut tasks: Vec<Task> = Vec::new();
        let mut used = 0u64;
        let mut after = (!req.after.is_empty()).then(|| req.after.clone());
        let mut next = String::new();
        'pages: loop {
            let want = match req.limit {
                0 => LIST_PAGE,
                n => (n - tasks.len() as u32).min(LIST_PAGE),
            };
            let page = self
                .backend
                .list(status, queue.clone(), want, after.clone())
                .await
                .map_err(|e| match e {
                    QueueError::NotFound(id) => invalid(format!(
                        "after: no task {id} (it may have been purged); list again from the start"
                    )),
                    other => to_status(other),
                })?;
            let full = page.len() as u32 == want;
            for task in page {
                let size = prost::Message::encoded_len(&task) as u64 + 8;
                if !tasks.is_empty() && used + size > REPLY_BUDGET {
                    next = tasks.last().map(|t| t.id.clone()).unwrap_or_default();
                    break 'pages;
                }
                used += size;
                tasks.push(task);
            }
            if !full || (req.limit > 0 && tasks.len() as u32 >= req.limit) {
                break;
            }
            after = tasks.last().map(|t| t.id.clone());
        }
        Ok(Response::new(ListTasksResponse { tasks, next }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.heartbeat");
        let req = request.into_inner();
        validate::task_id("task_id", &req.task_id).map_err(invalid)?;
        validate::task_id("lease_id", &req.lease_id).map_err(invalid)?;
        if req.lease_ms > MAX_LEASE_MS {
            return Err(invalid(format!(
                "lease_ms: {} is more than {MAX_LEASE_MS} (a day)",
                req.lease_ms
            )));
        }
        let task = self
            .backend
            .heartbeat(req.task_id, req.lease_id, req.lease_ms, now_ms())
            .await
            .map_err(to_status)?;
        tracing::trace!(task = %task.id, until = task.lease_expires_at, "lease extended");
        Ok(Response::new(HeartbeatResponse { task: Some(task) }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, GrpcStatus> {
        let req = request.into_inner();
        validate::task_id("task_id", &req.task_id).map_err(invalid)?;
        validate::task_id("lease_id", &req.lease_id).map_err(invalid)?;
        let task = self
            .backend
            .release(req.task_id, req.lease_id, now_ms())
            .await
            .map_err(to_status)?;
        crate::counter!("queue.tasks.released").inc();
        tracing::debug!(task = %task.id, "released");
        self.wake(1);
        Ok(Response::new(ReleaseResponse { task: Some(task) }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.get_task");
        let req = request.into_inner();
        validate::task_id("task_id", &req.task_id).map_err(invalid)?;
        let task = self.backend.get(req.task_id).await.map_err(to_status)?;
        Ok(Response::new(GetTaskResponse { task: Some(task) }))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.cancel");
        let peer = request.remote_addr();
        let req = request.into_inner();
        validate::task_id("task_id", &req.task_id).map_err(invalid)?;
        let task = self
            .backend
            .cancel(req.task_id, now_ms())
            .await
            .map_err(to_status)?;
        tracing::info!(task = %task.id, "cancelled");
        self.audit("queue.cancel", &task, peer).await;
        Ok(Response::new(CancelResponse { task: Some(task) }))
    }

    async fn retry(
        &self,
        request: Request<RetryRequest>,
    ) -> Result<Response<RetryResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.retry");
        let peer = request.remote_addr();
        let req = request.into_inner();
        validate::task_id("task_id", &req.task_id).map_err(invalid)?;
        let task = self
            .backend
            .retry(req.task_id, now_ms())
            .await
            .map_err(to_status)?;
        tracing::info!(task = %task.id, "re-queued");
        self.audit("queue.retry", &task, peer).await;
        self.wake(1);
        Ok(Response::new(RetryResponse { task: Some(task) }))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.list_workers");
        let workers = connected_workers(&*self.backend, now_ms())
            .await
            .map_err(to_status)?;
        Ok(Response::new(ListWorkersResponse {
            workers: workers
                .into_iter()
                .map(|(w, task_ids)| WorkerEntry {
                    task_ids,
                    worker_id: w.id,
                    info: Some(WorkerInfo {
                        host: w.host,
                        version: w.version,
                        pid: w.pid,
                        concurrency: w.concurrency,
                    }),
                    queues: w.queues,
                    connected_at: w.connected_at,
                    last_seen_at: w.last_seen_at,
                })
                .collect(),
        }))
    }

    async fn stats(
        &self,
        _request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.stats");
        let stats = self.backend.stats(now_ms()).await.map_err(to_status)?;
        Ok(Response::new(StatsResponse {
            counts: stats
                .counts
                .into_iter()
                .map(|(queue, status, count)| QueueStatusCount {
                    queue,
                    status,
                    count,
                })
                .collect(),
            oldest_pending_age_ms: stats.oldest_pending_age_ms,
            in_flight_leases: stats.in_flight_leases,
            paused_queues: stats.paused,
        }))
    }

    async fn pause_queue(
        &self,
        request: Request<PauseQueueRequest>,
    ) -> Result<Response<PauseQueueResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.pause_queue");
        let peer = request.remote_addr();
        let queue = request.into_inner().queue;
        let (changed, paused_queues) = self.set_paused(queue, true, peer).await?;
        Ok(Response::new(PauseQueueResponse {
            changed,
            paused_queues,
        }))
    }

    async fn resume_queue(
        &self,
        request: Request<ResumeQueueRequest>,
    ) -> Result<Response<ResumeQueueResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.resume_queue");
        let peer = request.remote_addr();
        let queue = request.into_inner().queue;
        let (changed, paused_queues) = self.set_paused(queue, false, peer).await?;
        // Waiting long polls find the queue's tasks now, not at their next poll.
        self.wake_all();
        Ok(Response::new(ResumeQueueResponse {
            changed,
            paused_queues,
        }))
    }

    async fn enqueue_batch(
        &self,
        request: Request<EnqueueBatchRequest>,
    ) -> Result<Response<EnqueueBatchResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.enqueue_batch");
        let req = request.into_inner();
        check_size(&req)?;
        if req.tasks.len() > validate::MAX_BATCH {
            return Err(invalid(format!(
                "tasks: {} tasks; at most {} per batch",
                req.tasks.len(),
                validate::MAX_BATCH
            )));
        }
        let brief: Vec<bool> = req.tasks.iter().map(|t| t.brief).collect();
        let tasks = req
            .tasks
            .into_iter()
            .enumerate()
            .map(|(i, t)| validate::enqueue(&format!("tasks[{i}]."), t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let stored = self
            .backend
            .enqueue(tasks, now_ms())
            .await
            .map_err(to_status)?;
        crate::counter!("queue.tasks.enqueued").add(stored.len() as u64);
        for (task, existing) in &stored {
            tracing::debug!(task = %task.id, queue = %task.queue, existing, "enqueued");
        }
        self.wake(stored.len());
        Ok(Response::new(EnqueueBatchResponse {
            tasks: stored
                .into_iter()
                .zip(brief)
                .map(|((mut t, _), brief)| {
                    if brief {
                        without_contents(&mut t);
                    }
                    t
                })
                .collect(),
        }))
    }

    async fn ack_batch(
        &self,
        request: Request<AckBatchRequest>,
    ) -> Result<Response<AckBatchResponse>, GrpcStatus> {
        let _timer = crate::timer!("queue.grpc.ack_batch");
        let req = request.into_inner();
        check_size(&req)?;
        if req.acks.len() > validate::MAX_BATCH {
            return Err(invalid(format!(
                "acks: {} acks; at most {} per batch",
                req.acks.len(),
                validate::MAX_BATCH
            )));
        }
        let specs = req
            .acks
            .into_iter()
            .enumerate()
            .map(|(i, a)| ack_spec(&format!("acks[{i}]."), a))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<String> = specs.iter().map(|s| s.task_id.clone()).collect();
        let outcomes = self.backend.ack(specs, now_ms()).await.map_err(to_status)?;
        let mut requeued = 0;
        let outcomes = ids
            .into_iter()
            .zip(outcomes)
            .map(|(task_id, outcome)| outcome_of(task_id, outcome, &mut requeued))
            .collect();
        self.wake(requeued);
        Ok(Response::new(AckBatchResponse { outcomes }))
    }

    type WorkStream = super::work_stream::WorkStream;

    async fn work(
        &self,
        request: Request<tonic::Streaming<WorkRequest>>,
    ) -> Result<Response<Self::WorkStream>, GrpcStatus> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| invalid("the stream ended before its first request".into()))?;
        check_size(&first)?;
        let lease = first.lease.clone().ok_or_else(|| {
            invalid("lease: the stream's first request must say what to lease".into())
        })?;
        let spec = dequeue_spec(
            "lease.",
            DequeueRequest {
                wait_ms: 0,
                max_tasks: 0,
                ..lease
            },
        )?;
        let worker = match &first.worker {
            Some(info) => {
                validate::worker_info(info).map_err(invalid)?;
                let now = now_ms();
                Some(WorkerRecord {
                    id: spec.worker_id.clone(),
                    host: info.host.clone(),
                    version: info.version.clone(),
                    pid: info.pid,
                    concurrency: info.concurrency,
                    queues: spec.queues.clone(),
                    connected_at: now,
                    last_seen_at: now,
                })
            }
            None => None,
        };
        let (out, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(super::work_stream::serve(
            self.clone(),
            spec,
            first,
            inbound,
            out,
            worker,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// An ack's outcome as AckBatch and the Work stream answer it, counted;
/// `requeued` counts the tasks it put back in the queue (to wake takers).
pub(super) fn outcome_of(
    task_id: String,
    outcome: Result<Task, QueueError>,
    requeued: &mut usize,
) -> AckOutcome {
    match outcome {
        Ok(task) => {
            crate::counter!("queue.acks.applied").inc();
            tracing::debug!(task = %task.id, status = %task.status, "acknowledged");
            *requeued += usize::from(task.status == Status::Pending.as_str());
            AckOutcome {
                task_id,
                code: 0,
                message: String::new(),
                task: Some(task),
            }
        }
        Err(e) => {
            crate::counter!("queue.acks.refused").inc();
            tracing::info!(task = %task_id, reason = %e, "ack refused");
            let status = to_status(e);
            AckOutcome {
                task_id,
                code: status.code() as i32,
                message: status.message().to_string(),
                task: None,
            }
        }
    }
}
