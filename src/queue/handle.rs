//! One way to call the queue, across the network or inside this process.
//!
//! Remote workers and runs on a shared server talk gRPC through [`Client`].
//! A local run's scheduler and workers live in the same process as its
//! queue, and a gRPC round trip there (HTTP/2 framing, protobuf both ways,
//! two trips through loopback TCP) cost more than the queue operation
//! itself. [`QueueHandle::Local`] calls the same [`QueueService`] the server
//! would, so validation, long polls, metrics and audit records are the same
//! either way; only the transport is gone.

use std::sync::Arc;

use tonic::{Request, Status};

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

    pub async fn enqueue(&mut self, request: EnqueueRequest) -> Result<EnqueueResponse, Status> {
        match self {
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

    pub async fn get_task(&mut self, request: GetTaskRequest) -> Result<GetTaskResponse, Status> {
        match self {
            QueueHandle::Remote(c) => c.get_task(request).await,
            QueueHandle::Local(s) => s.get_task(Request::new(request)).await,
        }
        .map(tonic::Response::into_inner)
    }
}

/// Stops an in-process queue's lease reaper when dropped.
pub struct ReaperGuard(tokio::task::JoinHandle<()>);

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
