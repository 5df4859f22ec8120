//! Running the queue as a gRPC server: the `TaskQueue` service, the standard
//! `grpc.health.v1` service, bearer-token checks, the lease reaper, and a
//! graceful stop (stop accepting, finish in-flight calls; leases are left to
//! expire, so tasks held by workers are neither lost nor run twice early).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tonic::service::Interceptor;
use tonic::transport::Server;
use tonic::{Request, Status};

use super::backend::QueueBackend;
use super::model::now_ms;
use super::proto::task_queue_server::TaskQueueServer;
use super::service::QueueService;
use crate::audit::AuditLog;

/// Largest request the server accepts: a 1 MiB payload plus metadata, or a batch.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// What the transport decodes before the service checks [`MAX_MESSAGE`].
const TRANSPORT_LIMIT: usize = 4 * MAX_MESSAGE;
const REAP_EVERY: Duration = Duration::from_millis(500);

/// Checks `authorization: Bearer <token>` in constant time when a token is set.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
}

impl BearerAuth {
    pub fn new(token: Option<String>) -> Self {
        BearerAuth {
            token: token.map(Arc::from),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong bearer token (authorization: Bearer ...)",
            ))
        }
    }
}

/// gRPC's conventions where tonic's codes differ: a request over the size
/// limit is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE; grpc-go agrees
/// with the convention), and a request that is not a valid protobuf message
/// is INVALID_ARGUMENT (tonic says INTERNAL, which blames the server).
fn conventional_codes<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers();
    let status = headers.get("grpc-status").and_then(|v| v.to_str().ok());
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    let code = match status {
        Some("11") if message.contains("message length too large") => Some("8"),
        Some("13") if message.contains("failed to decode") => Some("3"),
        _ => None,
    };
    if let Some(code) = code {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static(code));
    }
    response
}

/// A listener on a free loopback port, and its address: where an in-process
/// server (a local run, a benchmark) takes its clients.
pub async fn loopback_listener() -> crate::error::Result<(TcpListener, std::net::SocketAddr)> {
    let failed =
        |e: std::io::Error| crate::error::Error::Failed(format!("cannot listen on loopback: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    Ok((listener, addr))
}

/// Serve `backend` on `listener` until `shutdown` resolves.
pub async fn serve<B: QueueBackend>(
    backend: B,
    listener: TcpListener,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_audited(backend, listener, token, None, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given, recording cancels and
/// re-queues in `audit`.
pub async fn serve_audited<B: QueueBackend>(
    backend: B,
    listener: TcpListener,
    token: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    audit: Option<AuditLog>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let backend = Arc::new(backend);
    let reaper = tokio::spawn(reap_loop(backend.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TaskQueueServer<QueueService<B>>>()
        .await;

    let service = QueueService::new(backend).with_audit(audit);
    let closer = service.clone();
    let (stopped, stop_seen) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        closer.close();
        let _ = stopped.send(());
    };
    let queue = TaskQueueServer::new(service)
        .max_decoding_message_size(TRANSPORT_LIMIT)
        .max_encoding_message_size(MAX_MESSAGE);
    let queue = tonic::service::interceptor::InterceptedService::new(queue, BearerAuth::new(token));
    let serving = builder
        .layer(tower::util::MapResponseLayer::new(conventional_codes))
        .add_service(health_service)
        .add_service(queue)
        .serve_with_incoming_shutdown(incoming(listener), shutdown);
    // Once told to stop, connections get DRAIN to close. One whose peer
    // vanished (a host cut off, no FIN or RST will ever come) would
    // otherwise keep the server from stopping at all.
    let drained = async {
        if stop_seen.await.is_ok() {
            tokio::time::sleep(DRAIN).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = serving => result,
        () = drained => {
            tracing::warn!(after = ?DRAIN, "connections still open after the stop; closing them");
            Ok(())
        }
    };
    reaper.abort();
    result
}

/// How long a stopping server waits for its connections to close.
const DRAIN: Duration = Duration::from_secs(10);

/// Accepted connections with Nagle's algorithm off: a response is several
/// small HTTP/2 frames, and holding the later ones back until the client's
/// delayed ACK costs a request-reply client 40 ms a call.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    })
}

pub(crate) async fn reap_loop<B: QueueBackend>(backend: Arc<B>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match backend.reap(now_ms()).await {
            Ok(0) => {}
            Ok(n) => {
                crate::counter!("queue.leases.expired").add(n);
                tracing::info!(tasks = n, "leases expired; tasks returned to the queue")
            }
            Err(e) => tracing::warn!(error = %e, "lease reaper failed"),
        }
    }
}

pub use crate::runtime::signal;
