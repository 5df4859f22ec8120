//! One way to call the queue, across the network or inside this process.
//!
//! Remote workers and runs on a shared server talk gRPC through [`Client`].
//! A local run's scheduler and workers live in the same process as its
//! queue, and a gRPC round trip there (HTTP/2 framing, protobuf both ways,
//! two trips through loopback TCP) cost more than the queue operation
//! itself. [`QueueHandle::Local`] calls the same [`QueueService`] the server
//! would, so validation, long polls, metrics and audit records are the same
//! either way; only the transport is gone.
//!
//! Across the network, the calls a run's scheduler makes that are safe to
//! repeat (reads, and enqueues with an idempotency key) are retried with
//! backoff while the server or its store is unavailable, so a server or a
//! redis-server that restarts does not end the run.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Code, Request, Status};

use super::any::AnyQueue;
use super::client::Client;
use super::proto::task_queue_server::TaskQueue;
use super::proto::*;
use super::service::QueueService;
use crate::audit::AuditLog;

#[derive(Clone)]
pub enum QueueHandle {
    Remote(Client),
    Local(Arc<QueueService<AnyQueue>>),
}

impl QueueHandle {
    /// The queue on `backend`, served inside this process, with its lease
    /// reaper; the reaper stops when the returned guard is dropped.
    pub fn in_process(backend: AnyQueue, audit: Option<AuditLog>) -> (QueueHandle, ReaperGuard) {
        let backend = Arc::new(backend);
        let reaper = tokio::spawn(super::server::reap_loop(backend.clone()));
        let service = QueueService::new(backend).with_audit(audit);
        (QueueHandle::Local(Arc::new(service)), ReaperGuard(reaper))
    }

    /// Enqueue; over the network, retried while unavailable when the
    /// request has an idempotency key (a repeat cannot make a second task).
    pub async fn enqueue(&mut self, request: EnqueueRequest) -> Result<EnqueueResponse, Status> {
        match self {
            QueueHandle::Remote(c) if !request.idempotency_key.is_empty() => {
                retried("enqueue", || {
                    let (mut c, request) = (c.clone(), request.clone());
                    async move { c.enqueue(request).await }
                })
                .await
            }
            QueueHandle::Remote(c) => c.enqueue(request).await,
            QueueHandle::Local(s) => s.enqueue(Request::new(request)).await,
        }
        .map(tonic::Response::into_inner)
    }

    pub async fn dequeue(&mut self, request: DequeueRequest) -> Result<DequeueResponse, Status> {
        match self {
            QueueHandle::Remote(c) => c.dequeue(request).await,
            QueueHandle::Local(s) => s.dequeue(Request::new(request)).await,
        }
        .map(tonic::Response::into_inner)
    }

    pub async fn ack(&mut self, request: AckRequest) -> Result<AckResponse, Status> {
        match self {
            QueueHandle::Remote(c) => c.ack(request).await,
            QueueHandle::Local(s) => s.ack(Request::new(request)).await,
        }
        .map(tonic::Response::into_inner)
    }

    pub async fn heartbeat(
        &mut self,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, Status> {
        match self {
            QueueHandle::Remote(c) => c.heartbeat(request).await,
            QueueHandle::Local(s) => s.heartbeat(Request::new(request)).await,
        }
        .map(tonic::Response::into_inner)
    }

    pub async fn release(&mut self, request: ReleaseRequest) -> Result<ReleaseResponse, Status> {
        match self {
            QueueHandle::Remote(c) => c.release(request).await,
            QueueHandle::Local(s) => s.release(Request::new(request)).await,
        }
        .map(tonic::Response::into_inner)
    }

    /// Read a task; over the network, retried while unavailable.
    pub async fn get_task(&mut self, request: GetTaskRequest) -> Result<GetTaskResponse, Status> {
        match self {
            QueueHandle::Remote(c) => {
                retried("get", || {
                    let (mut c, request) = (c.clone(), request.clone());
                    async move { c.get_task(request).await }
                })
                .await
            }
            QueueHandle::Local(s) => s.get_task(Request::new(request)).await,
        }
        .map(tonic::Response::into_inner)
    }
}

/// How long a repeatable call is retried while the server or its store is
/// unavailable before its error stands: longer than a Redis or server
/// restart takes, short enough that a server gone for good is reported.
const RETRY_FOR: Duration = Duration::from_secs(300);
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// `call` until it gives anything but UNAVAILABLE, or [`RETRY_FOR`] passed.
async fn retried<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    let mut wait = RETRY_FIRST;
    loop {
        match call().await {
            Err(e) if e.code() == Code::Unavailable && start.elapsed() + wait < RETRY_FOR => {
                tracing::warn!(call = what, error = %e.message(), retry_in = ?wait, "the queue is unavailable; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MOST);
            }
            outcome => return outcome,
        }
    }
}

/// Stops an in-process queue's lease reaper when dropped.
pub struct ReaperGuard(tokio::task::JoinHandle<()>);

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
