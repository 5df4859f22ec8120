//! The typed client the rest of nova uses to talk to a queue server, local or
//! remote, with an optional bearer token.

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::proto::task_queue_client::TaskQueueClient;
use super::proto::{
    AckRequest, DequeueRequest, EnqueueOutcome, EnqueueRequest, EnqueueResponse, WorkRequest,
    WorkResponse, WorkerInfo,
};

pub type Client = TaskQueueClient<InterceptedService<Channel, AddToken>>;

#[derive(Clone)]
pub struct AddToken(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {url}: {}", chain(source))]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Connected, but the first call failed at the connection level: the
    /// TLS or HTTP/2 handshake said no.
    #[error("cannot talk to {url}: {reason}")]
    Handshake { url: String, reason: String },
}

/// An error with its causes (tonic's own says only "transport error"),
/// each said once (rustls's errors repeat their cause in their text).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// Connect to `url` (`http://host:port`); `token` is sent as a bearer token.
pub async fn connect(url: &str, token: Option<&str>) -> Result<Client, ConnectError> {
    connect_with(url, token, &crate::tls::ClientTls::default()).await
}

/// Connect to `url`, over TLS as `tls` says when it is `https://`.
pub async fn connect_with(
    url: &str,
    token: Option<&str>,
    tls: &crate::tls::ClientTls,
) -> Result<Client, ConnectError> {
    let bad = |reason: String| ConnectError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(bad("expected http://HOST:PORT or https://HOST:PORT".into()));
    }
    // http::Uri forgets a port it cannot read rather than refusing it.
    let authority = uri.authority().map_or("", |a| a.as_str());
    if let Some((_, port)) = authority.rsplit_once(':')
        && !port.ends_with(']')
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(bad(format!("{port} is not a port (1 to 65535)")));
    }
    let mut endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad(e.to_string()))?;
    match uri.scheme_str() {
        Some("https") => {
            let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
            endpoint = endpoint
                .tls_config(tls.config(host))
                .map_err(|e| bad(chain(&e)))?;
        }
        _ if tls.is_set() => {
            return Err(bad(
                "--ca, --client-cert and --client-key need an https:// URL".into(),
            ));
        }
        _ => {}
    }
    let token = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse::<AsciiMetadataValue>()
                .map_err(|_| bad("the token is not printable ASCII".into()))?,
        ),
        None => None,
    };
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| ConnectError::Connect {
            url: url.to_string(),
            source,
        })?;
    probe(url, &channel, uri.scheme_str() == Some("https"), tls).await?;
    Ok(TaskQueueClient::with_interceptor(channel, AddToken(token))
        .max_decoding_message_size(super::server::MAX_MESSAGE)
        .max_encoding_message_size(4 * super::server::MAX_MESSAGE))
}

/// One health check, so that a connection the server refuses (a TLS
/// server spoken to in plain text, a client certificate it does not trust)
/// fails here, with what to change, rather than as a vague error on the
/// first real call. Answers other than a broken connection are fine.
async fn probe(
    url: &str,
    channel: &Channel,
    https: bool,
    tls: &crate::tls::ClientTls,
) -> Result<(), ConnectError> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let Err(status) = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
    else {
        return Ok(());
    };
    if !matches!(
        status.code(),
        tonic::Code::Unknown
            | tonic::Code::Unavailable
            | tonic::Code::Internal
            | tonic::Code::Cancelled
    ) {
        return Ok(());
    }
    let mut reason = match std::error::Error::source(&status) {
        Some(source) => chain(source),
        None => status.message().to_string(),
    };
    reason.push_str(if !https {
        " (if the server uses TLS, its URL is https://)"
    } else if tls.has_identity() {
        " (the server may not trust this client's certificate, --client-cert)"
    } else {
        " (if the server requires client certificates, give --client-cert and --client-key)"
    });
    Err(ConnectError::Handshake {
        url: url.to_string(),
        reason,
    })
}

impl From<ConnectError> for crate::error::Error {
    /// A malformed URL is bad input (exit 2); an unreachable server is a failure (exit 1).
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::BadUrl { .. } => crate::error::Error::Usage(e.to_string()),
            ConnectError::Connect { .. } | ConnectError::Handshake { .. } => {
                crate::error::Error::Failed(e.to_string())
            }
        }
    }
}

/// The error a refusal from the queue server is to nova's user: bad input
/// (exit 2), a wrong token (exit 3), or a failure (exit 1).
pub fn grpc_error(status: tonic::Status) -> crate::error::Error {
    use crate::error::Error;
    use tonic::Code;
    let mut message = status.message().to_string();
    if let Some(source) = std::error::Error::source(&status) {
        let causes = chain(source);
        if causes.starts_with(&message) {
            message = causes;
        } else if !message.contains(&causes) {
            message = format!("{message}: {causes}");
        }
    }
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted => Error::usage(message),
        Code::Unauthenticated => Error::Denied(message),
        _ => Error::Failed(format!("{:?}: {message}", status.code())),
    }
}

/// A worker's end of the `Work` stream: tasks pushed by the server as
/// credit allows, acks sent back on the same stream (see
/// [`super::work_stream`] for the server's side).
pub struct WorkStream {
    requests: tokio::sync::mpsc::Sender<WorkRequest>,
    responses: tonic::Streaming<WorkResponse>,
}

impl WorkStream {
    /// Open a stream that leases as `lease` says, granting `credit` tasks.
    /// Its acks are answered briefly (each task's id and status: the worker
    /// has the rest). A server older than the stream answers `Unimplemented`.
    pub async fn open(
        client: &mut Client,
        lease: DequeueRequest,
        credit: u32,
    ) -> Result<WorkStream, Status> {
        Self::open_as(client, lease, credit, None).await
    }

    /// [`WorkStream::open`], saying who the worker is (listed by `nova
    /// queue workers` while the stream lasts).
    pub async fn open_as(
        client: &mut Client,
        lease: DequeueRequest,
        credit: u32,
        worker: Option<WorkerInfo>,
    ) -> Result<WorkStream, Status> {
        Self::open_with(client, lease, credit, worker, false).await
    }

    /// [`WorkStream::open`] whose applied acks are not answered (a refused
    /// one still is): [`WorkStream::finish`] then says that every ack was
    /// applied. For a worker that does not look at its acks' answers, and
    /// whose acks may wait on the server for the next enqueue to carry them
    /// (at most one poll of the server) while the queue holds nothing.
    pub async fn open_quiet(
        client: &mut Client,
        lease: DequeueRequest,
        credit: u32,
    ) -> Result<WorkStream, Status> {
        Self::open_with(client, lease, credit, None, true).await
    }

    async fn open_with(
        client: &mut Client,
        lease: DequeueRequest,
        credit: u32,
        worker: Option<WorkerInfo>,
        quiet: bool,
    ) -> Result<WorkStream, Status> {
        let (requests, rx) = tokio::sync::mpsc::channel(16);
        requests
            .try_send(WorkRequest {
                lease: Some(lease),
                credit,
                acks: Vec::new(),
                worker,
                brief_acks: true,
                quiet_acks: quiet,
            })
            .expect("a new channel has room");
        let responses = client
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(WorkStream {
            requests,
            responses,
        })
    }

    /// Ack tasks and grant `credit` more.
    pub async fn send(&self, credit: u32, acks: Vec<AckRequest>) -> Result<(), Status> {
        self.requests
            .send(WorkRequest {
                lease: None,
                credit,
                acks,
                worker: None,
                brief_acks: false,
                quiet_acks: false,
            })
            .await
            .map_err(|_| Status::unavailable("the work stream has ended"))
    }

    /// The server's next message: leased tasks and ack outcomes; `None` when
    /// the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<WorkResponse>, Status> {
        self.responses.message().await
    }

    /// End the worker's side and wait for the server to end its own, which
    /// it does once every ack sent before has been applied or refused: the
    /// tasks pushed meanwhile (their leases run out, as a worker's that
    /// left) and the outcomes still to come, in order.
    pub async fn finish(self) -> Result<Vec<WorkResponse>, Status> {
        let WorkStream {
            requests,
            mut responses,
        } = self;
        drop(requests);
        let mut rest = Vec::new();
        while let Some(message) = responses.message().await? {
            rest.push(message);
        }
        Ok(rest)
    }
}

/// A producer's end of the `EnqueueStream`: one task per request, each
/// answered in order (see [`super::enqueue_stream`] for the server's side).
/// What a producer that enqueues one task at a time uses instead of a unary
/// Enqueue per task.
pub struct EnqueueStream {
    requests: tokio::sync::mpsc::Sender<EnqueueRequest>,
    responses: tonic::Streaming<EnqueueOutcome>,
}

impl EnqueueStream {
    /// Open a stream. A server older than the stream answers `Unimplemented`.
    pub async fn open(client: &mut Client) -> Result<EnqueueStream, Status> {
        let (requests, rx) = tokio::sync::mpsc::channel(16);
        let responses = client
            .enqueue_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(EnqueueStream {
            requests,
            responses,
        })
    }

    /// Enqueue one task and wait for its answer, as a unary Enqueue would
    /// answer it: a refused request is its status (the stream goes on).
    pub async fn enqueue(&mut self, request: EnqueueRequest) -> Result<EnqueueResponse, Status> {
        let ended = || Status::unavailable("the enqueue stream has ended");
        self.requests.send(request).await.map_err(|_| ended())?;
        let outcome = self.responses.message().await?.ok_or_else(ended)?;
        if outcome.code != 0 {
            return Err(Status::new(outcome.code.into(), outcome.message));
        }
        Ok(EnqueueResponse {
            task: outcome.task,
            existing: outcome.existing,
        })
    }
}
