//! The server side of the `EnqueueStream` RPC: a producer's one long-lived
//! stream instead of a unary Enqueue per task.
//!
//! Each request is one task, enqueued exactly as the unary Enqueue does it
//! (the same checks, the same hand-off to a waiting worker) and answered
//! by one `EnqueueOutcome`, in the order the requests came. A refused
//! request is answered with its code and message and the stream goes on,
//! so one bad task does not cost a producer its stream. As with the `Work`
//! stream, what this saves is framing: a unary call opens an HTTP/2 stream
//! and sends headers both ways and trailers, where a message on an open
//! stream is one DATA frame.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Status as GrpcStatus, Streaming};

use super::backend::QueueBackend;
use super::proto::{EnqueueOutcome, EnqueueRequest};
use super::service::QueueService;

pub type EnqueueStream = Pin<Box<dyn Stream<Item = Result<EnqueueOutcome, GrpcStatus>> + Send>>;

/// Serve one producer's stream until it ends, breaks, or the server stops.
pub(super) async fn serve<B: QueueBackend>(
    service: QueueService<B>,
    mut inbound: Streaming<EnqueueRequest>,
    out: mpsc::Sender<Result<EnqueueOutcome, GrpcStatus>>,
) {
    let mut closing = service.closing();
    loop {
        let request = tokio::select! {
            request = inbound.message() => Some(request),
            _ = closing.wait_for(|closing| *closing) => None,
        };
        let Some(request) = request else {
            let _ = out
                .send(Err(GrpcStatus::unavailable(
                    "the server is stopping; connect again",
                )))
                .await;
            return;
        };
        let request = match request {
            Ok(Some(request)) => request,
            // The producer ended its stream.
            Ok(None) => return,
            Err(status) => {
                let _ = out.send(Err(status)).await;
                return;
            }
        };
        let _timer = crate::timer!("queue.stream.enqueue");
        let outcome = match service.enqueue_one(request).await {
            Ok(response) => EnqueueOutcome {
                code: 0,
                message: String::new(),
                task: response.task,
                existing: response.existing,
            },
            Err(refused) => EnqueueOutcome {
                code: refused.code() as i32,
                message: refused.message().to_string(),
                task: None,
                existing: false,
            },
        };
        if out.send(Ok(outcome)).await.is_err() {
            return;
        }
    }
}
