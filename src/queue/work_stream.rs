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
//! the one that has held acks the longest, or else the one that went idle
//! last (behind every other, if its worker's last task failed; see
//! `IdleStreams`) and leases for it in the call that stores the
//! task (so a task costs two backend calls, not three), while the
//! service's poller still wakes it for tasks this server did not see
//! arrive. Every ack's outcome is answered, in order; a stream opened with
//! quiet acks is answered only the refused ones (a message less a task), and
//! its clean end after the worker's says that all the others were applied.
//! While the queue is known to hold nothing for it, a stream keeps its
//! worker's acks with its place among the idle streams, and the enqueue
//! that hands it the next task applies them in the same backend call (a
//! round trip to the store less a task), their answers going out with the
//! task; quiet acks wait so up to the poller's next tick, answered ones up
//! to [`super::service::HOLD_ANSWERED`] (1 ms), since their worker may wait
//! for the answer. A stream whose answered acks had to be applied by their
//! time limit applies its next ack at once, and after each further such
//! hold in a row twice as many, up to [`HOLD_PAUSE`]: where the next enqueue
//! waits for the answer (a run's scheduler), holding never pays.
//! The stream's end applies all it still holds.
//! Tasks leased for a worker whose stream then breaks keep their lease until
//! it expires, as with a worker that died holding them (at-least-once).
//! A worker that says who it is (host, version) is kept in the store while
//! its stream lasts, for `nova queue workers`.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Status as GrpcStatus, Streaming};

use super::backend::{QueueBackend, QueueResult};
use super::idle::{Handed, IdleTicket};
use super::model::{AckSpec, DequeueSpec, Task, WORKER_REFRESH, WorkerRecord, brief_task, now_ms};
use super::proto::{AckOutcome, AckRequest, WorkRequest, WorkResponse};
use super::service::{
    MAX_DEQUEUE, QueueService, ack_spec, check_size, invalid, outcome_of, to_status,
};
use super::validate;

pub type WorkStream = Pin<Box<dyn Stream<Item = Result<WorkResponse, GrpcStatus>> + Send>>;

/// Credit beyond this is not granted (a worker asking for more is
/// capped, not refused: it simply gets tasks as fast as it acks them).
const MAX_CREDIT: u32 = 65_536;

/// Quiet acks a stream holds for the next enqueue to carry; beyond this
/// it applies them at once.
const MAX_HELD: usize = 64;

/// At most this many acks are applied at once, after answered holds that
/// no enqueue came for, before holding is tried again: a worker whose next
/// task waits on the answer (a run's scheduler on a shared server) would
/// otherwise pay the hold ([`super::service::HOLD_ANSWERED`]) a task.
const HOLD_PAUSE: usize = 64;

/// Acks applied at once after `lost` answered holds in a row ran out: one
/// after the first, doubling up to [`HOLD_PAUSE`], so that a hold lost now
/// and then (a worker whose stream was not the one handed the next task)
/// costs little, and one that never pays is seldom tried.
fn hold_pause_after(lost: u32) -> usize {
    1usize
        .checked_shl(lost.saturating_sub(1))
        .unwrap_or(HOLD_PAUSE)
        .min(HOLD_PAUSE)
}

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
    let _presence = match worker {
        Some(w) => Some(Presence::start(service.backend_arc(), w).await),
        None => None,
    };
    let mut stream = StreamState {
        service: &service,
        brief: first.brief_acks,
        quiet: first.quiet_acks,
        idle: None,
        held: Vec::new(),
        answered: Vec::new(),
    };
    let mut credit = first.credit.min(MAX_CREDIT);
    let mut acks = first.acks;
    // Whether this worker's last ack reported a failure: it then waits
    // behind the other idle streams (see IdleStreams).
    let mut failed_last = false;
    // Whether the queue may have tasks for us that we have not looked for.
    let mut look = true;
    // The server's generation when our last look found nothing; None when
    // it found tasks.
    let mut empty_since: Option<u64> = None;
    // Whether the poller's tick asked for the held acks to be applied.
    let mut flush = false;
    // When the answered acks held now are applied if no enqueue took them.
    let mut hold_until: Option<tokio::time::Instant> = None;
    // Acks to apply at once before holding answered acks again.
    let mut hold_pause = 0usize;
    // Answered holds that ran out in a row, since one was carried.
    let mut holds_lost = 0u32;
    // Tasks an enqueue handed us, to send with the next reply.
    let mut handed: Vec<Task> = Vec::new();
    let mut closing = service.closing();
    loop {
        if *closing.borrow_and_update() {
            stream
                .end(
                    &out,
                    Some(GrpcStatus::unavailable(
                        "the server is stopping; connect again",
                    )),
                )
                .await;
            return;
        }
        let notified = service.waiters().notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let tick = service.waiters().tick.notified();
        tokio::pin!(tick);
        // Leave the idle streams before leasing any other way (so no
        // enqueue hands us tasks beyond our credit); an enqueue that took
        // us first is handing its tasks over now.
        handed.extend(stream.withdraw().await);
        credit = credit.saturating_sub(handed.len() as u32);
        let specs = match checked_acks(acks, stream.brief) {
            Ok(specs) => specs,
            Err(status) => return stream.end(&out, Some(status)).await,
        };
        acks = Vec::new();
        if !specs.is_empty() {
            failed_last = specs.iter().any(|a| !a.success);
            hold_pause = hold_pause.saturating_sub(specs.len());
        }
        stream.held.extend(specs);
        // Acks wait for the enqueue that hands us our next task, and go to
        // the backend in its call (a round trip less a task), while nothing
        // is known to wait for us in the queue: our last look found nothing
        // and the server has learnt of no task since. Quiet acks wait as
        // long as that lasts (up to a tick of the poller); answered ones up
        // to HOLD_ANSWERED, and not while holding has not been paying.
        let generation = service.waiters().generation();
        let hold = (stream.quiet || hold_pause == 0)
            && !flush
            && !look
            && credit > 0
            && empty_since == Some(generation)
            && stream.held.len() <= MAX_HELD;
        flush = false;
        let apply = if hold {
            Vec::new()
        } else {
            std::mem::take(&mut stream.held)
        };
        hold_until = match (hold && !stream.quiet && !stream.held.is_empty(), hold_until) {
            (false, _) => None,
            (true, Some(until)) => Some(until),
            (true, None) => Some(tokio::time::Instant::now() + service.answered_hold()),
        };
        let round = match step(&stream, &spec, credit, apply, look).await {
            Ok(round) => round,
            Err(status) => return stream.end(&out, Some(status)).await,
        };
        credit = credit.saturating_sub(round.reply.tasks.len() as u32);
        if round.looked {
            let found = !round.reply.tasks.is_empty();
            empty_since = (!found).then_some(generation);
            if !found {
                // Found nothing: wait for a wake-up before looking again.
                look = false;
            }
        }
        let mut reply = round.reply;
        if !stream.answered.is_empty() {
            stream.answered.append(&mut reply.acks);
            reply.acks = std::mem::take(&mut stream.answered);
        }
        if !handed.is_empty() {
            handed.append(&mut reply.tasks);
            reply.tasks = std::mem::take(&mut handed);
        }
        if (!reply.tasks.is_empty() || !reply.acks.is_empty()) && out.send(Ok(reply)).await.is_err()
        {
            return stream.end(&out, None).await;
        }
        if credit > 0 && !look {
            stream.idle = Some(service.idle().register(
                DequeueSpec {
                    max_tasks: credit.min(MAX_DEQUEUE),
                    ..spec.clone()
                },
                stream.held.clone(),
                !failed_last,
            ));
        }
        let waiting = (credit > 0).then(|| {
            service.start_poller();
            service.enter_waiting()
        });
        let holding = !stream.held.is_empty();
        let arrive = async {
            match stream.idle.as_mut() {
                Some((_, arrive)) => arrive.await,
                None => std::future::pending().await,
            }
        };
        let hold_ends = async {
            match hold_until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            message = inbound.message() => Event::Message(message),
            arrived = arrive => Event::Arrived(arrived),
            _ = &mut notified, if credit > 0 => Event::Look,
            _ = &mut tick, if holding => Event::Flush,
            () = hold_ends => Event::HoldEnded,
            _ = closing.changed() => Event::Closing,
            _ = out.closed() => Event::Gone,
        };
        match event {
            Event::Message(Ok(Some(request))) => {
                if let Err(status) = later_request(&request) {
                    return stream.end(&out, Some(status)).await;
                }
                // Without credit we heard no wake-ups: look again unless
                // the server has learnt of no task since our last look.
                if credit == 0
                    && request.credit > 0
                    && empty_since != Some(service.waiters().generation())
                {
                    look = true;
                }
                credit = credit.saturating_add(request.credit).min(MAX_CREDIT);
                acks = request.acks;
            }
            // The worker ended the stream, or the connection broke.
            Event::Message(Ok(None) | Err(_)) | Event::Gone => {
                return stream.end(&out, None).await;
            }
            Event::Arrived(arrived) => {
                stream.idle = None;
                match arrived {
                    Ok(given) => {
                        if !stream.held.is_empty() {
                            holds_lost = 0;
                        }
                        handed = stream.received(given)
                    }
                    // The enqueue failed: look for ourselves (and apply
                    // the acks it was to carry).
                    Err(_) => look = true,
                }
            }
            Event::Look => look = true,
            Event::Flush => flush = true,
            Event::HoldEnded => {
                flush = true;
                holds_lost += 1;
                hold_pause = hold_pause_after(holds_lost);
            }
            Event::Closing => {}
        }
        drop(waiting);
    }
}

/// What woke a stream that waits.
enum Event {
    Message(Result<Option<WorkRequest>, GrpcStatus>),
    Arrived(Result<Handed, oneshot::error::RecvError>),
    Look,
    Flush,
    /// Answered acks held for as long as they may be.
    HoldEnded,
    Closing,
    Gone,
}

/// What a stream keeps between its steps besides its credit and lease.
struct StreamState<'a, B: QueueBackend> {
    service: &'a QueueService<B>,
    brief: bool,
    quiet: bool,
    /// Our place among the idle streams an enqueue hands new tasks to.
    idle: Option<IdleTicket>,
    /// Quiet acks not yet applied, oldest first: a copy of them waits with
    /// our place among the idle streams, for the enqueue that takes it.
    held: Vec<AckSpec>,
    /// The answers to held acks an enqueue applied, for the next reply.
    answered: Vec<AckOutcome>,
}

impl<B: QueueBackend> StreamState<'_, B> {
    /// Leave the idle streams; the tasks an enqueue that took us first handed over.
    async fn withdraw(&mut self) -> Vec<Task> {
        match self.idle.take() {
            Some((id, arrive)) if !self.service.idle().withdraw(id) => match arrive.await {
                Ok(given) => self.received(given),
                // The enqueue failed: the held acks are still ours to apply.
                Err(_) => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// What an enqueue handed us: its tasks, and the answers to the held
    /// acks it applied (kept for the next reply).
    fn received(&mut self, given: Handed) -> Vec<Task> {
        let ids = std::mem::take(&mut self.held)
            .into_iter()
            .map(|a| a.task_id);
        let answers = answer(
            self.service,
            ids.zip(given.acked).collect(),
            self.brief,
            self.quiet,
        );
        self.answered.extend(answers);
        given.tasks
    }

    /// End the stream: apply the acks still held (the worker sent them; a
    /// clean end says every ack was applied), hand back tasks handed to us
    /// that the worker will never see, send what is left to answer, then
    /// `status` if the stream ends with one.
    async fn end(mut self, out: &Outbound, status: Option<GrpcStatus>) {
        let handed = self.withdraw().await;
        let backend = self.service.backend();
        for task in handed {
            if let Err(e) = backend
                .release(task.id.clone(), task.lease_id, now_ms())
                .await
            {
                tracing::warn!(task = %task.id, error = %e, "cannot hand back a task leased for a stream that ended");
            }
        }
        let status = match self.apply_held().await {
            Ok(()) => status,
            Err(failed) => Some(status.unwrap_or(failed)),
        };
        if !self.answered.is_empty() {
            let acks = std::mem::take(&mut self.answered);
            let _ = out
                .send(Ok(WorkResponse {
                    tasks: Vec::new(),
                    acks,
                }))
                .await;
        }
        if let Some(status) = status {
            let _ = out.send(Err(status)).await;
        }
    }

    async fn apply_held(&mut self) -> Result<(), GrpcStatus> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        let ids: Vec<String> = held.iter().map(|a| a.task_id.clone()).collect();
        let outcomes = self
            .service
            .backend()
            .ack(held, now_ms())
            .await
            .map_err(to_status)?;
        let answers = answer(
            self.service,
            ids.into_iter().zip(outcomes).collect(),
            self.brief,
            self.quiet,
        );
        self.answered.extend(answers);
        Ok(())
    }
}

/// A request after the stream's first may carry credit and acks only.
fn later_request(request: &WorkRequest) -> Result<(), GrpcStatus> {
    if request.lease.is_some() {
        return Err(invalid(
            "lease: only the stream's first request says what to lease".into(),
        ));
    }
    if request.quiet_acks {
        return Err(invalid(
            "quiet_acks: only the stream's first request asks for quiet acks".into(),
        ));
    }
    if request.brief_acks {
        return Err(invalid(
            "brief_acks: only the stream's first request asks for brief acks".into(),
        ));
    }
    Ok(())
}

/// One request's acks, checked.
fn checked_acks(acks: Vec<AckRequest>, brief: bool) -> Result<Vec<AckSpec>, GrpcStatus> {
    if acks.len() > validate::MAX_BATCH {
        return Err(invalid(format!(
            "acks: {} acks in one request; at most {}",
            acks.len(),
            validate::MAX_BATCH
        )));
    }
    acks.into_iter()
        .enumerate()
        .map(|(i, a)| {
            check_size(&a)?;
            let mut spec = ack_spec(&format!("acks[{i}]."), a)?;
            spec.brief = brief;
            Ok(spec)
        })
        .collect()
}

/// The answers to acks' outcomes (with `quiet`, the refused ones only),
/// waking a waiter for each task an ack put back in the queue.
fn answer<B: QueueBackend>(
    service: &QueueService<B>,
    outcomes: Vec<(String, QueueResult<Task>)>,
    brief: bool,
    quiet: bool,
) -> Vec<AckOutcome> {
    let mut requeued = 0;
    let answers = outcomes
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
    answers
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
    /// Written before the stream serves its first task, so a worker that
    /// holds a task is listed.
    async fn start(backend: Arc<B>, worker: WorkerRecord) -> Self {
        let id = worker.id.clone();
        let store = backend.clone();
        seen(&*store, &worker).await;
        let refresher = tokio::spawn(async move {
            let mut worker = worker;
            let start = tokio::time::Instant::now() + WORKER_REFRESH;
            let mut every = tokio::time::interval_at(start, WORKER_REFRESH);
            loop {
                every.tick().await;
                worker.last_seen_at = now_ms();
                seen(&*store, &worker).await;
            }
        });
        Presence {
            backend,
            id,
            refresher,
        }
    }
}

async fn seen<B: QueueBackend>(store: &B, worker: &WorkerRecord) {
    if let Err(e) = store.worker_seen(worker.clone()).await {
        tracing::warn!(worker = %worker.id, error = %e, "cannot note the worker in the store");
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
async fn step<B: QueueBackend>(
    stream: &StreamState<'_, B>,
    spec: &DequeueSpec,
    credit: u32,
    acks: Vec<AckSpec>,
    look: bool,
) -> Result<Round, GrpcStatus> {
    let _timer = (!acks.is_empty()).then(|| crate::timer!("queue.grpc.ack"));
    let want = credit.min(MAX_DEQUEUE);
    let next = DequeueSpec {
        max_tasks: want.max(1),
        ..spec.clone()
    };
    let backend = stream.service.backend();
    let mut looked = false;
    let (outcomes, mut tasks) = match acks.len() {
        0 => (Vec::new(), Vec::new()),
        1 if want > 0 => {
            let ack = acks.into_iter().next().expect("one ack");
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
            let ids: Vec<String> = acks.iter().map(|s| s.task_id.clone()).collect();
            let outcomes = backend.ack(acks, now_ms()).await.map_err(to_status)?;
            (
                ids.into_iter().zip(outcomes).collect::<Vec<_>>(),
                Vec::new(),
            )
        }
    };
    let applied = outcomes.iter().any(|(_, outcome)| outcome.is_ok());
    if want > 0 && !looked && (look || applied) {
        tasks = backend.dequeue(next, now_ms()).await.map_err(to_status)?;
        looked = true;
    }
    crate::counter!("queue.tasks.leased").add(tasks.len() as u64);
    let acks = answer(stream.service, outcomes, stream.brief, stream.quiet);
    Ok(Round {
        reply: WorkResponse { tasks, acks },
        looked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_lost_in_a_row_pause_holding_for_longer_each_time() {
        let pauses: Vec<usize> = (1..=9).map(hold_pause_after).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert_eq!(hold_pause_after(u32::MAX), HOLD_PAUSE);
    }
}
