//! Work streams waiting for a task, which an enqueue on the same server
//! hands its new task to in the backend call that stores it; and the acks
//! such a stream's worker sent while it waited, which travel in that same
//! call.
//!
//! A stream joins the idle ones when it found nothing to lease. An enqueue
//! takes one and leases for it in the call that stores the task (one
//! backend call, one script on Redis, instead of an enqueue, a wake-up and a
//! lease). A stream withdraws before it does anything else; if an enqueue
//! took it first, it waits for what that enqueue hands over.
//!
//! Newest first, not oldest: with more workers than tasks in flight, the
//! stream that just finished a task takes the next, so the work stays on a
//! few warm connections while the others sleep. Taking the oldest spread
//! every task over all of them (50 workers cost more CPU a task than 4, and
//! ran slower; see docs/performance.md, session 22). Which worker gets a
//! task was never promised.
//!
//! Before the newest, though, of the streams holding their worker's acks
//! the one that has waited the longest: the acks ride the call that hands
//! it the task, and an answered ack may wait for that only so long (1 ms)
//! before its stream applies it in a call of its own. Newest first alone left the stream that finished
//! a moment before another waiting behind it, again and again: with 4
//! workers on Redis one task in ten paid that extra call. The streams that
//! hold acks are the few that just finished a task, so the work still stays
//! on a few connections.
//!
//! A stream whose worker has just reported a failed task goes behind every
//! other: a broken worker fails its tasks fast and is idle again first, and
//! newest-first would hand it every task (and every retry) while healthy
//! workers sat idle.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::backend::QueueResult;
use super::model::{AckSpec, DequeueSpec, Task};

#[derive(Default)]
pub(super) struct IdleStreams {
    next_id: AtomicU64,
    waiting: Mutex<VecDeque<IdleStream>>,
}

/// An idle stream as an enqueue takes it: what to lease for it, the acks
/// to apply first, and where to hand the result.
pub(super) struct IdleStream {
    id: u64,
    /// Taken after every other stream (its worker's last task failed).
    behind: bool,
    pub(super) spec: DequeueSpec,
    pub(super) acks: Vec<AckSpec>,
    pub(super) hand: oneshot::Sender<Handed>,
}

/// What an enqueue hands an idle stream: the tasks leased for it, and the
/// outcome of each ack it carried, in order.
#[derive(Debug, Default)]
pub(super) struct Handed {
    pub(super) tasks: Vec<Task>,
    pub(super) acked: Vec<QueueResult<Task>>,
}

/// A stream's place among the idle ones: its id, and where its tasks
/// arrive (an error: the enqueue that took it failed, and its acks are
/// still the stream's to apply).
pub(super) type IdleTicket = (u64, oneshot::Receiver<Handed>);

impl IdleStreams {
    /// Wait for a task as `spec` says, taken before the streams already
    /// waiting or (not `first`) after all of them; `acks` go with the call
    /// that hands it one.
    pub(super) fn register(
        &self,
        spec: DequeueSpec,
        acks: Vec<AckSpec>,
        first: bool,
    ) -> IdleTicket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (hand, arrive) = oneshot::channel();
        let stream = IdleStream {
            id,
            behind: !first,
            spec,
            acks,
            hand,
        };
        if first {
            self.list().push_back(stream);
        } else {
            self.list().push_front(stream);
        }
        (id, arrive)
    }

    /// Stop waiting; false when an enqueue took the stream first (its tasks are on the way).
    pub(super) fn withdraw(&self, id: u64) -> bool {
        let mut list = self.list();
        match list.iter().position(|s| s.id == id) {
            Some(at) => {
                list.remove(at);
                true
            }
            None => false,
        }
    }

    /// Of the live streams that take tasks of `queue`, the one holding acks
    /// that has waited the longest, or else the newest.
    pub(super) fn take(&self, queue: &str) -> Option<IdleStream> {
        let mut list = self.list();
        list.retain(|s| !s.hand.is_closed());
        let takes =
            |s: &IdleStream| s.spec.queues.is_empty() || s.spec.queues.iter().any(|q| q == queue);
        let at = list
            .iter()
            .position(|s| !s.behind && !s.acks.is_empty() && takes(s))
            .or_else(|| list.iter().rposition(takes))?;
        list.remove(at)
    }

    fn list(&self) -> std::sync::MutexGuard<'_, VecDeque<IdleStream>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
