//! The server side of the `Work` stream: one long-lived stream per worker
//! instead of a unary Dequeue and Ack per task.
//!
//! A unary call pays for a new HTTP/2 stream each time (headers both ways,
//! trailers, the stream's bookkeeping): on the one-task-per-call path that
//! framing, not the queue operation, was most of a server's CPU. On a
//! stream a task is one DATA frame out and its ack one DATA frame back.
//! The worker grants credit (how many more tasks it will take); the server
//! leases while credit lasts, fusing a lease with the acks that arrive
//! (one backend call, one script on Redis). A stream that found nothing
//! waits among the service's idle streams: an enqueue on this server takes
//! the one that went idle last (behind every other, if its worker's last
//! task failed) and leases for it in the call that stores the
//! task (so a task costs two backend calls, not three), while the
//! service's poller still wakes it for tasks this server did not see
//! arrive. Every ack's outcome is answered, in order; a stream opened with
//! quiet acks is answered only the refused ones (a message less a task), and
//! its clean end after the worker's says that all the others were applied.
//! Tasks leased for a worker whose stream then breaks keep their lease until
//! it expires, as with a worker that died holding them (at-least-once).
//! A worker that says who it is (host, version) is kept in the store while
//! its stream lasts, for `nova queue workers`.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status as GrpcStatus, Streaming};

use super::backend::QueueBackend;
use super::model::{AckSpec, DequeueSpec, Task, WORKER_REFRESH, WorkerRecord, brief_task, now_ms};
use super::proto::{AckRequest, WorkRequest, WorkResponse};
use super::service::{
    IdleTicket, MAX_DEQUEUE, QueueService, ack_spec, check_size, invalid, outcome_of, to_status,
};
use super::validate;

pub type WorkStream = Pin<Box<dyn Stream<Item = Result<WorkResponse, GrpcStatus>> + Send>>;

/// Credit beyond this is not granted (a worker asking for more is
/// capped, not refused: it simply gets tasks as fast as it acks them).
const MAX_CREDIT: u32 = 65_536;

type Outbound = mpsc::Sender<Result<WorkResponse, GrpcStatus>>;

/// Serve one worker's stream until it ends, the worker goes or a request is
/// refused (the stream then ends with that status).
pub(super) async fn serve<B: QueueBackend>(
    service: QueueService<B>,
    spec: DequeueSpec,
    first: WorkRequest,
    mut inbound: Streaming<WorkRequest>,
    out: Outbound,
    worker: Option<WorkerRecord>,
) {
    let _presence = worker.map(|w| Presence::start(service.backend_arc(), w));
    let mut credit = first.credit.min(MAX_CREDIT);
    let mut acks = first.acks;
    // Whether this worker's last ack reported a failure: it then waits
    // behind the other idle streams (see IdleStreams).
    let mut failed_last = false;
    let brief = first.brief_acks;
    let quiet = first.quiet_acks;
    // Whether the queue may have tasks for us that we have not looked for.
    let mut look = true;
    // Our place among the idle streams an enqueue hands new tasks to.
    let mut idle: Option<IdleTicket> = None;
    // Tasks an enqueue handed us, to send with the next reply.
    let mut handed: Vec<Task> = Vec::new();
    let mut closing = service.closing();
    loop {
        if *closing.borrow_and_update() {
            let _ = out
                .send(Err(GrpcStatus::unavailable(
                    "the server is stopping; connect again",
                )))
                .await;
            return;
        }
        let notified = service.waiters().notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Leave the idle streams before leasing any other way (so no
        // enqueue hands us tasks beyond our credit); an enqueue that took
        // us first is handing its tasks over now.
        if let Some((id, arrive)) = idle.take()
            && !service.idle().withdraw(id)
        {
            handed.extend(arrive.await.unwrap_or_default());
        }
        credit = credit.saturating_sub(handed.len() as u32);
        if !acks.is_empty() {
            failed_last = acks.iter().any(|a| !a.success);
        }
        let round = match step(
            &service,
            &spec,
            credit,
            std::mem::take(&mut acks),
            look,
            brief,
            quiet,
        )
        .await
        {
            Ok(round) => round,
            Err(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        };
        credit = credit.saturating_sub(round.reply.tasks.len() as u32);
        if round.looked && round.reply.tasks.is_empty() {
            // Found nothing: wait for a wake-up before looking again.
            look = false;
        }
        let mut reply = round.reply;
        if !handed.is_empty() {
            handed.append(&mut reply.tasks);
            reply.tasks = std::mem::take(&mut handed);
        }
        if (!reply.tasks.is_empty() || !reply.acks.is_empty()) && out.send(Ok(reply)).await.is_err()
        {
            return;
        }
        if credit > 0 && !look {
            idle = Some(service.idle().register(
                DequeueSpec {
                    max_tasks: credit.min(MAX_DEQUEUE),
                    ..spec.clone()
                },
                !failed_last,
            ));
        }
        let waiting = (credit > 0).then(|| {
            service.start_poller();
            service.enter_waiting()
        });
        let arrive = async {
            match idle.as_mut() {
                Some((_, arrive)) => arrive.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    if request.lease.is_some() {
                        let _ = out.send(Err(invalid(
                            "lease: only the stream's first request says what to lease".into(),
                        ))).await;
                        return;
                    }
                    if request.quiet_acks {
                        let _ = out.send(Err(invalid(
                            "quiet_acks: only the stream's first request asks for quiet acks".into(),
                        ))).await;
                        return;
                    }
                    if request.brief_acks {
                        let _ = out.send(Err(invalid(
                            "brief_acks: only the stream's first request asks for brief acks".into(),
                        ))).await;
                        return;
                    }
                    if credit == 0 && request.credit > 0 {
                        look = true;
                    }
                    credit = credit.saturating_add(request.credit).min(MAX_CREDIT);
                    acks = request.acks;
                }
                // The worker ended the stream, or the connection broke.
                Ok(None) | Err(_) => return,
            },
            arrived = arrive => {
                idle = None;
                match arrived {
                    Ok(tasks) => handed = tasks,
                    // The enqueue failed: look for ourselves.
                    Err(_) => look = true,
                }
            }
            _ = &mut notified, if credit > 0 => look = true,
            _ = closing.changed() => {}
            _ = out.closed() => return,
        }
        drop(waiting);
    }
}

/// A worker's record in the store while its stream lasts: written at once,
/// refreshed every [`WORKER_REFRESH`], deleted when the stream ends. A
/// store that fails costs the listing, never the stream.
struct Presence<B: QueueBackend> {
    backend: Arc<B>,
    id: String,
    refresher: tokio::task::JoinHandle<()>,
}

impl<B: QueueBackend> Presence<B> {
    fn start(backend: Arc<B>, worker: WorkerRecord) -> Self {
        let id = worker.id.clone();
        let store = backend.clone();
        let refresher = tokio::spawn(async move {
            let mut worker = worker;
            let mut every = tokio::time::interval(WORKER_REFRESH);
            loop {
                every.tick().await;
                worker.last_seen_at = now_ms();
                if let Err(e) = store.worker_seen(worker.clone()).await {
                    tracing::warn!(worker = %worker.id, error = %e, "cannot note the worker in the store");
                }
            }
        });
        Presence {
            backend,
            id,
            refresher,
        }
    }
}

impl<B: QueueBackend> Drop for Presence<B> {
    fn drop(&mut self) {
        self.refresher.abort();
        let (backend, id) = (self.backend.clone(), std::mem::take(&mut self.id));
        tokio::spawn(async move {
            if let Err(e) = backend.worker_gone(id.clone()).await {
                tracing::warn!(worker = %id, error = %e, "cannot remove the worker from the store");
            }
        });
    }
}

/// What one step did: the reply to send, and whether it looked for tasks.
struct Round {
    reply: WorkResponse,
    looked: bool,
}

/// Apply `acks` and lease up to `credit` tasks (when `look` or an ack was
/// applied with credit left): one backend call for one ack and a lease.
/// With `brief`, an applied ack's task is answered with its id and status only.
async fn step<B: QueueBackend>(
    service: &QueueService<B>,
    spec: &DequeueSpec,
    credit: u32,
    acks: Vec<AckRequest>,
    look: bool,
    brief: bool,
    quiet: bool,
) -> Result<Round, GrpcStatus> {
    let _timer = (!acks.is_empty()).then(|| crate::timer!("queue.grpc.ack"));
    if acks.len() > validate::MAX_BATCH {
        return Err(invalid(format!(
            "acks: {} acks in one request; at most {}",
            acks.len(),
            validate::MAX_BATCH
        )));
    }
    let specs = acks
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            check_size(&a)?;
            let mut spec = ack_spec(&format!("acks[{i}]."), a)?;
            spec.brief = brief;
            Ok::<_, GrpcStatus>(spec)
        })
        .collect::<Result<Vec<AckSpec>, _>>()?;
    let want = credit.min(MAX_DEQUEUE);
    let next = DequeueSpec {
        max_tasks: want.max(1),
        ..spec.clone()
    };
    let backend = service.backend();
    let mut looked = false;
    let (outcomes, mut tasks) = match specs.len() {
        0 => (Vec::new(), Vec::new()),
        1 if want > 0 => {
            let ack = specs.into_iter().next().expect("one ack");
            let id = ack.task_id.clone();
            let (outcome, leased) = backend
                .ack_and_lease(ack, next.clone(), now_ms())
                .await
                .map_err(to_status)?;
            // A refused ack leases nothing: that says nothing about the queue.
            looked = outcome.is_ok();
            (vec![(id, outcome)], leased)
        }
        _ => {
            let ids: Vec<String> = specs.iter().map(|s| s.task_id.clone()).collect();
            let outcomes = backend.ack(specs, now_ms()).await.map_err(to_status)?;
            (ids.into_iter().zip(outcomes).collect(), Vec::new())
        }
    };
    if want > 0 && !looked && look {
        tasks = backend.dequeue(next, now_ms()).await.map_err(to_status)?;
        looked = true;
    }
    crate::counter!("queue.tasks.leased").add(tasks.len() as u64);
    let mut requeued = 0;
    let acks = outcomes
        .into_iter()
        .map(|(task_id, outcome)| {
            // Every backend may answer more than a brief ack asks for.
            let outcome = match outcome {
                Ok(task) if brief => Ok(brief_task(task.id, task.status)),
                other => other,
            };
            outcome_of(task_id, outcome, &mut requeued)
        })
        .filter(|answer| !(quiet && answer.code == 0))
        .collect();
    service.wake(requeued);
    Ok(Round {
        reply: WorkResponse { tasks, acks },
        looked,
    })
}
