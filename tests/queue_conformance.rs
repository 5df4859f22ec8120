//! The queue's delivery rules, checked over real gRPC against a real store.
//!
//! Each test starts `queue::server::serve` on a free loopback port with a
//! fresh backend and talks to it through nova's client. Every test runs
//! unchanged against each backend (`conformance!` at the bottom makes a
//! `sqlite::`, a `redis::` and a `redis_scripts::` copy): a SQLite file in a
//! temporary folder, and a `redis-server` the test starts on a free port and
//! stops, with the queue's routines as functions of nova's library and, as
//! on a Redis older than 7, as scripts.

mod common;

use std::time::Duration;

use common::redis_server::RedisServer;
use nova::queue::any::AnyQueue;
use nova::queue::client::{self, Client, EnqueueStream, WorkStream};
use nova::queue::proto::*;
use nova::queue::redis::RedisQueue;
use nova::queue::server;
use nova::queue::sqlite::SqliteQueue;
use tonic::Code;

struct Harness {
    client: Client,
    /// The same store the server uses, for what gRPC does not reach (purge).
    queue: AnyQueue,
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
    _redis: Option<RedisServer>,
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Redis,
    RedisScripts,
}

async fn start(backend: Backend, token: Option<&str>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (backend, redis) = match backend {
        Backend::Sqlite => (
            AnyQueue::Sqlite(SqliteQueue::open(&dir.path().join("nova.db")).unwrap()),
            None,
        ),
        Backend::Redis => {
            let server = RedisServer::start();
            let queue = RedisQueue::connect(&server.url()).await.unwrap();
            assert!(queue.uses_functions(), "the library did not load");
            (AnyQueue::Redis(queue), Some(server))
        }
        Backend::RedisScripts => {
            let server = RedisServer::start();
            let queue = RedisQueue::connect(&server.url())
                .await
                .unwrap()
                .scripts_only()
                .await;
            assert!(!queue.uses_functions());
            (AnyQueue::Redis(queue), Some(server))
        }
    };
    let (client, url, stop) = serve(backend.clone(), token).await;
    Harness {
        client,
        queue: backend,
        url,
        _stop: stop,
        _dir: dir,
        _redis: redis,
    }
}

/// The task `id` as the server has it now.
async fn get(c: &mut Client, id: impl Into<String>) -> Task {
    c.get_task(GetTaskRequest { task_id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

/// Serve `backend` on a free loopback port; the server stops when the sender drops.
async fn serve(
    backend: AnyQueue,
    token: Option<&str>,
) -> (Client, String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        backend,
        listener,
        token.map(String::from),
        async {
            let _ = stopped.await;
        },
    ));
    let client = client::connect(&url, token).await.unwrap();
    (client, url, stop)
}

fn req(kind: &str) -> EnqueueRequest {
    EnqueueRequest {
        r#type: kind.into(),
        payload: "{}".into(),
        ..Default::default()
    }
}

async fn enqueue(c: &mut Client, r: EnqueueRequest) -> Task {
    c.enqueue(r).await.unwrap().into_inner().task.unwrap()
}

async fn dequeue(c: &mut Client, worker: &str, lease_ms: u32) -> Option<Task> {
    let resp = c
        .dequeue(DequeueRequest {
            worker_id: worker.into(),
            lease_ms,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.has_task, resp.task.is_some());
    resp.task
}

async fn list(c: &mut Client) -> Vec<Task> {
    c.list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
}

fn ack(task: &Task, success: bool) -> AckRequest {
    AckRequest {
        task_id: task.id.clone(),
        success,
        lease_id: task.lease_id.clone(),
        ..Default::default()
    }
}

async fn original_semantics_hold(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let before = nova::queue::model::now_ms();
    let a = enqueue(c, req("a")).await;
    let b = enqueue(c, req("b")).await;
    assert_eq!(a.status, "PENDING");
    let stored = get(c, a.id.clone()).await;
    assert_eq!(stored, a, "enqueue answers the task as stored");
    assert!(
        a.created_at >= before && a.created_at < before + 60_000,
        "created_at is epoch milliseconds"
    );

    let got = dequeue(c, "w1", 0).await.unwrap();
    assert_eq!(
        (got.id.as_str(), got.status.as_str(), got.worker_id.as_str()),
        (a.id.as_str(), "IN_PROGRESS", "w1")
    );
    let done = c
        .ack(ack(&got, true))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(done.status, "COMPLETED");

    let got = dequeue(c, "w1", 0).await.unwrap();
    assert_eq!(got.id, b.id);
    let failed = c
        .ack(AckRequest {
            task_id: got.id.clone(),
            success: false,
            result: "boom".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(
        failed.status, "FAILED",
        "a failed ack without retry is final"
    );
    assert!(dequeue(c, "w1", 0).await.is_none());

    let all = list(c).await;
    assert_eq!(
        all.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [a.id.as_str(), b.id.as_str()]
    );
    let err = c
        .list_tasks(ListTasksRequest {
            status: "DONE".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("status"), "{}", err.message());
    let err = c
        .ack(AckRequest {
            task_id: "no-such-task".into(),
            success: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn priority_then_age_and_delay(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let low = enqueue(c, req("low")).await;
    let high = enqueue(
        c,
        EnqueueRequest {
            priority: 10,
            ..req("high")
        },
    )
    .await;
    let later = enqueue(
        c,
        EnqueueRequest {
            delay_ms: 400,
            priority: 100,
            ..req("later")
        },
    )
    .await;
    assert_eq!(dequeue(c, "w", 0).await.unwrap().id, high.id);
    assert_eq!(dequeue(c, "w", 0).await.unwrap().id, low.id);
    assert!(
        dequeue(c, "w", 0).await.is_none(),
        "a delayed task is not due yet"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dequeue(c, "w", 0).await.unwrap().id, later.id);
}

async fn an_expired_lease_moves_the_task_and_the_late_ack_is_refused(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let t = enqueue(c, req("slow")).await;
    let first = dequeue(c, "w1", 300).await.unwrap();
    assert!(
        dequeue(c, "w2", 300).await.is_none(),
        "leased tasks are not handed out twice"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = dequeue(c, "w2", 10_000)
        .await
        .expect("the task comes back after the lease");
    assert_eq!(second.id, t.id);
    assert_eq!(second.attempts, 2);
    assert_ne!(second.lease_id, first.lease_id);

    let late = c.ack(ack(&first, true)).await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "{}", late.message());
    let hb = c
        .heartbeat(HeartbeatRequest {
            task_id: t.id.clone(),
            lease_id: first.lease_id.clone(),
            lease_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(hb.code(), Code::FailedPrecondition);
    let now = get(c, t.id.clone()).await;
    assert_eq!(
        (now.status.as_str(), now.worker_id.as_str()),
        ("IN_PROGRESS", "w2")
    );
    assert_eq!(
        c.ack(ack(&second, true))
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
            .status,
        "COMPLETED"
    );
}

async fn a_heartbeat_keeps_the_lease(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let t = enqueue(c, req("long")).await;
    let held = dequeue(c, "w1", 300).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.heartbeat(HeartbeatRequest {
            task_id: t.id.clone(),
            lease_id: held.lease_id.clone(),
            lease_ms: 300,
        })
        .await
        .unwrap();
        assert!(dequeue(c, "w2", 300).await.is_none());
    }
    // A wrong lease id is refused without claiming the task moved on.
    let err = c
        .heartbeat(HeartbeatRequest {
            task_id: t.id.clone(),
            lease_id: "not-the-lease".into(),
            lease_ms: 300,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains("the lease id is wrong, or the task was handed out again"),
        "{}",
        err.message()
    );
    c.ack(ack(&held, true)).await.unwrap();

    // Once a lease has run out, its holder can neither extend it nor ack,
    // even before the reaper or another worker has taken the task back.
    let t = enqueue(c, req("short")).await;
    let held = dequeue(c, "w1", 50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    let err = c
        .heartbeat(HeartbeatRequest {
            task_id: t.id.clone(),
            lease_id: held.lease_id.clone(),
            lease_ms: 300,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = c.ack(ack(&held, true)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_ne!(
        c.get_task(GetTaskRequest { task_id: t.id })
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap()
            .status,
        "COMPLETED"
    );
}

async fn failed_attempts_retry_with_backoff_then_park(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let t = enqueue(
        c,
        EnqueueRequest {
            max_attempts: 3,
            retry_backoff_ms: 50,
            ..req("flaky")
        },
    )
    .await;
    for attempt in 1..=3u32 {
        let mut got = None;
        for _ in 0..50 {
            got = dequeue(c, "w", 0).await;
            if got.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = got.expect("the retry becomes due");
        assert_eq!(got.attempts, attempt);
        let r = AckRequest {
            retry: true,
            error: format!("failure {attempt}"),
            ..ack(&got, false)
        };
        let after = c.ack(r).await.unwrap().into_inner().task.unwrap();
        if attempt < 3 {
            assert_eq!(after.status, "PENDING");
            assert!(
                after.run_at > after.updated_at,
                "a retry waits for its backoff"
            );
        } else {
            assert_eq!(after.status, "FAILED");
            assert_eq!(after.last_error, "failure 3");
        }
    }
    let dead = c
        .list_tasks(ListTasksRequest {
            status: "FAILED".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(dead.len(), 1);
    let again = c
        .retry(RetryRequest {
            task_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!((again.status.as_str(), again.attempts), ("PENDING", 0));
    assert_eq!(dequeue(c, "w", 0).await.unwrap().id, t.id);
}

async fn idempotency_cancel_and_stats(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let first = c
        .enqueue(EnqueueRequest {
            idempotency_key: "k".into(),
            ..req("once")
        })
        .await
        .unwrap()
        .into_inner();
    let second = c
        .enqueue(EnqueueRequest {
            idempotency_key: "k".into(),
            ..req("once")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!first.existing && second.existing);
    assert_eq!(first.task.unwrap().id, second.task.as_ref().unwrap().id);
    assert_eq!(list(c).await.len(), 1);

    let other = enqueue(
        c,
        EnqueueRequest {
            queue: "mail".into(),
            ..req("send")
        },
    )
    .await;
    let cancelled = c
        .cancel(CancelRequest {
            task_id: other.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(cancelled.status, "CANCELLED");
    let again = c
        .cancel(CancelRequest {
            task_id: other.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);

    let held = dequeue(c, "w", 0).await.unwrap();
    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.in_flight_leases, 1);
    let counts: Vec<(String, String, u64)> = stats
        .counts
        .into_iter()
        .map(|c| (c.queue, c.status, c.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("default".into(), "IN_PROGRESS".into(), 1),
            ("mail".into(), "CANCELLED".into(), 1)
        ]
    );
    c.ack(ack(&held, true)).await.unwrap();
}

async fn batches_and_queue_selection(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let tasks = (0..10)
        .map(|i| EnqueueRequest {
            queue: if i % 2 == 0 { "even" } else { "odd" }.into(),
            ..req(&format!("t{i}"))
        })
        .collect();
    let stored = c
        .enqueue_batch(EnqueueBatchRequest { tasks })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(stored.len(), 10);
    let got = c
        .dequeue(DequeueRequest {
            worker_id: "w".into(),
            queues: vec!["odd".into()],
            max_tasks: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.tasks.len(), 5);
    assert!(got.tasks.iter().all(|t| t.queue == "odd"));
    let mut acks: Vec<AckRequest> = got.tasks.iter().map(|t| ack(t, true)).collect();
    acks.push(AckRequest {
        task_id: "missing".into(),
        success: true,
        ..Default::default()
    });
    let outcomes = c
        .ack_batch(AckBatchRequest { acks })
        .await
        .unwrap()
        .into_inner()
        .outcomes;
    assert!(outcomes[..5].iter().all(|o| o.code == 0));
    assert_eq!(outcomes[5].code, Code::NotFound as i32);

    // Several queues named: tasks of any of them, none of another.
    c.enqueue(EnqueueRequest {
        queue: "other".into(),
        ..req("not asked for")
    })
    .await
    .unwrap();
    let got = c
        .dequeue(DequeueRequest {
            worker_id: "w".into(),
            queues: vec!["none".into(), "even".into(), "odd".into(), "empty".into()],
            max_tasks: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.tasks.len(), 5);
    assert!(got.tasks.iter().all(|t| t.queue == "even"));
}

async fn a_long_poll_wakes_on_enqueue(backend: Backend) {
    // The service re-checks the backend only once an hour here, so the waiter
    // can only get the task in time through the enqueue's wake-up (the 50 ms
    // re-check hid a missing wake-up before).
    use nova::queue::proto::task_queue_server::TaskQueue;
    let h = start(backend, None).await;
    let service = std::sync::Arc::new(
        nova::queue::service::QueueService::new(std::sync::Arc::new(h.queue.clone()))
            .with_poll(Duration::from_secs(3600)),
    );
    let waiter = service.clone();
    let started = std::time::Instant::now();
    let poll = tokio::spawn(async move {
        let got = waiter
            .dequeue(tonic::Request::new(DequeueRequest {
                worker_id: "w".into(),
                wait_ms: 30_000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        (got, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = service
        .enqueue(tonic::Request::new(req("wake")))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let (got, waited) = poll.await.unwrap();
    assert_eq!(got.task.unwrap().id, t.id);
    assert!(
        waited < Duration::from_secs(15),
        "the waiter slept through the enqueue ({waited:?} of its 30 s wait)"
    );
}

/// A long poll on one server gets a task enqueued through another server
/// over the same store: the service's poller asks the backend what is due.
async fn a_long_poll_sees_another_servers_enqueue(backend: Backend) {
    use nova::queue::proto::task_queue_server::TaskQueue;
    let h = start(backend, None).await;
    let here = std::sync::Arc::new(
        nova::queue::service::QueueService::new(std::sync::Arc::new(h.queue.clone()))
            .with_poll(Duration::from_millis(20)),
    );
    let elsewhere = nova::queue::service::QueueService::new(std::sync::Arc::new(h.queue.clone()));
    let waiter = here.clone();
    let poll = tokio::spawn(async move {
        waiter
            .dequeue(tonic::Request::new(DequeueRequest {
                worker_id: "w".into(),
                queues: vec!["wanted".into()],
                wait_ms: 20_000,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A task in a queue the waiter does not ask for wakes it, but it waits on.
    elsewhere
        .enqueue(tonic::Request::new(EnqueueRequest {
            queue: "other".into(),
            ..req("not for it")
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!poll.is_finished(), "the waiter returned without a task");
    let t = elsewhere
        .enqueue(tonic::Request::new(EnqueueRequest {
            queue: "wanted".into(),
            ..req("for it")
        }))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poller never woke the waiter")
        .unwrap();
    assert_eq!(got.task.unwrap().id, t.id);
}

async fn bad_requests_are_refused_and_change_nothing(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    enqueue(c, req("keep")).await;
    let stored = list(c).await;
    let meta = |k: &str, v: usize| TaskMetadataEntry {
        key: k.into(),
        value: "v".repeat(v),
    };
    let cases: Vec<(EnqueueRequest, Code, &str)> = vec![
        (req(""), Code::InvalidArgument, "type"),
        (req(&"x".repeat(129)), Code::InvalidArgument, "type"),
        (
            EnqueueRequest {
                payload: "p".repeat(1024 * 1024 + 1),
                ..req("big")
            },
            Code::InvalidArgument,
            "payload",
        ),
        (
            EnqueueRequest {
                metadata: (0..65).map(|i| meta(&format!("k{i}"), 1)).collect(),
                ..req("m")
            },
            Code::InvalidArgument,
            "metadata",
        ),
        (
            EnqueueRequest {
                metadata: vec![meta("bad key", 1)],
                ..req("m")
            },
            Code::InvalidArgument,
            "metadata[0].key",
        ),
        (
            EnqueueRequest {
                metadata: vec![meta("", 1)],
                ..req("m")
            },
            Code::InvalidArgument,
            "metadata[0].key",
        ),
        (
            EnqueueRequest {
                metadata: vec![meta("k", 4097)],
                ..req("m")
            },
            Code::InvalidArgument,
            "metadata[0].value",
        ),
        (
            EnqueueRequest {
                queue: "no spaces".into(),
                ..req("q")
            },
            Code::InvalidArgument,
            "queue",
        ),
        (
            EnqueueRequest {
                payload: "p".repeat(17 * 1024 * 1024),
                ..req("huge")
            },
            Code::ResourceExhausted,
            "limit",
        ),
    ];
    for (request, code, field) in cases {
        let err = c.enqueue(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{field}: {}", err.message());
        assert!(
            err.message().contains(field),
            "message {:?} does not name {field}",
            err.message()
        );
    }
    let batch = EnqueueBatchRequest {
        tasks: vec![req("fine"), req("")],
    };
    let err = c.enqueue_batch(batch).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("tasks[1].type"), "{}", err.message());
    let err = c
        .dequeue(DequeueRequest {
            queues: vec!["bad queue".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("queues[0]"), "{}", err.message());
    let err = c
        .dequeue(DequeueRequest {
            wait_ms: 60_001,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("wait_ms"), "{}", err.message());

    // Bytes that are not an EnqueueRequest (field 1, `type`, as a number)
    // are the caller's fault: INVALID_ARGUMENT, not INTERNAL.
    let err = malformed_enqueue(&h.url).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("failed to decode"),
        "{}",
        err.message()
    );

    assert_eq!(
        list(&mut h.client).await,
        stored,
        "a refused request changed stored tasks"
    );
}

/// A message whose field 1 is a varint where EnqueueRequest has a string.
#[derive(Clone, PartialEq, prost::Message)]
struct NotAnEnqueueRequest {
    #[prost(uint64, tag = "1")]
    kind: u64,
}

async fn malformed_enqueue(url: &str) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<NotAnEnqueueRequest, EnqueueResponse> = Default::default();
    grpc.unary(
        tonic::Request::new(NotAnEnqueueRequest { kind: 7 }),
        http::uri::PathAndQuery::from_static("/nova.taskqueue.TaskQueue/Enqueue"),
        codec,
    )
    .await
    .unwrap_err()
}

async fn a_token_is_required_when_set(backend: Backend) {
    let h = start(backend, Some("s3cret")).await;
    let mut anonymous = client::connect(&h.url, None).await.unwrap();
    assert_eq!(
        anonymous.stats(StatsRequest {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut wrong = client::connect(&h.url, Some("guess")).await.unwrap();
    assert_eq!(
        wrong.stats(StatsRequest {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = h.client.clone();
    right.stats(StatsRequest {}).await.unwrap();

    // A producer's stream asks for the token as the unary calls do, and
    // stores nothing without it.
    let refused = match EnqueueStream::open(&mut anonymous).await {
        Err(status) => status,
        Ok(mut stream) => stream.enqueue(req("sneaky")).await.unwrap_err(),
    };
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut stream = EnqueueStream::open(&mut right).await.unwrap();
    stream.enqueue(req("allowed")).await.unwrap();
    let listed = list(&mut right).await;
    assert_eq!(
        listed.iter().map(|t| t.r#type.as_str()).collect::<Vec<_>>(),
        ["allowed"]
    );
}

mod original {
    include!(concat!(env!("OUT_DIR"), "/original/nova.taskqueue.rs"));
}

async fn a_client_of_the_original_proto_still_works(backend: Backend) {
    use original::task_queue_client::TaskQueueClient;
    let h = start(backend, None).await;
    let mut c = TaskQueueClient::connect(h.url.clone()).await.unwrap();
    let task = c
        .enqueue(original::EnqueueRequest {
            r#type: "legacy".into(),
            payload: "{\"x\":1}".into(),
            metadata: vec![original::TaskMetadataEntry {
                key: "k".into(),
                value: "v".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(task.status, "PENDING");
    let got = c
        .dequeue(original::DequeueRequest {
            worker_id: "old-worker".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.has_task);
    let got = got.task.unwrap();
    assert_eq!(
        (got.id.as_str(), got.worker_id.as_str(), got.status.as_str()),
        (task.id.as_str(), "old-worker", "IN_PROGRESS")
    );
    assert_eq!(got.metadata[0].key, "k");
    let acked = c
        .ack(original::AckRequest {
            task_id: got.id.clone(),
            success: true,
            result: "ok".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.task.unwrap().status, "COMPLETED");
    let all = c
        .list_tasks(original::ListTasksRequest {
            status: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].result, "ok");
    let err = c
        .list_tasks(original::ListTasksRequest {
            status: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn a_repeated_final_ack_is_answered_and_changes_nothing(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    enqueue(c, req("once")).await;
    let held = dequeue(c, "w1", 0).await.unwrap();
    let done = c
        .ack(ack(&held, true))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(done.status, "COMPLETED");
    // The worker did not see the answer (a restart, say) and sends it again.
    let again = c
        .ack(ack(&held, true))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(again, done, "the repeat changes nothing");
    // A different outcome, or another lease, is still refused.
    let err = c.ack(ack(&held, false)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let mut other = held.clone();
    other.lease_id = "not-the-lease".into();
    let err = c.ack(ack(&other, true)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

/// Each upgrade that changes the queue's routines adds a function library.
/// A server that loads its own removes nova's beyond the newest three (a
/// library no server has recorded counts as the oldest) and leaves every
/// other program's library alone.
#[tokio::test]
async fn a_server_removes_old_function_libraries_but_not_others() {
    let redis = RedisServer::start();
    let mut raw = ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let old = |c: char| format!("nova_{}", c.to_string().repeat(16));
    let libraries = ['a', 'b', 'c', 'd', 'e', 'f', '9'].map(old);
    for name in libraries
        .into_iter()
        .chain(["someone_else".into(), "nova_theirs".into()])
    {
        let code = format!(
            "#!lua name={name}\nredis.register_function('{name}_f', function() return 1 end)"
        );
        let _: String = ::redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg(code)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    // When servers of those versions last loaded them: a, b and c long ago,
    // e, f and 9 in the last minutes; d's never said.
    let now = nova::clock::now_ms();
    let _: i64 = ::redis::cmd("ZADD")
        .arg("nova:functions")
        .arg(&[
            (1, old('a')),
            (3, old('c')),
            (2, old('b')),
            (now - 60_000, old('e')),
            (now - 120_000, old('f')),
            (now - 180_000, old('9')),
        ])
        .query_async(&mut raw)
        .await
        .unwrap();

    let queue = RedisQueue::connect(&redis.url()).await.unwrap();
    assert!(queue.uses_functions());
    let listed: ::redis::Value = ::redis::cmd("FUNCTION")
        .arg("LIST")
        .query_async(&mut raw)
        .await
        .unwrap();
    let listed = format!("{listed:?}");
    // e and f with this server's are the newest three; 9 is past them but
    // was loaded minutes ago.
    for kept in [
        old('e'),
        old('f'),
        old('9'),
        "someone_else".into(),
        "nova_theirs".into(),
    ] {
        assert!(listed.contains(&kept), "{kept} was removed: {listed}");
    }
    for removed in [old('a'), old('b'), old('c'), old('d')] {
        assert!(
            !listed.contains(&removed),
            "{removed} is still there: {listed}"
        );
    }
    let recorded: Vec<String> = ::redis::cmd("ZREVRANGE")
        .arg("nova:functions")
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    assert!(
        listed.contains(&recorded[0]),
        "this server's own: {recorded:?}"
    );
    assert_eq!(recorded[1..], [old('e'), old('f'), old('9')]);
}

/// A Redis that lost nova's functions (restarted without persistence, or
/// `FUNCTION FLUSH`) is given the library again by the next call, which
/// goes on as if nothing had happened.
#[tokio::test]
async fn a_redis_that_lost_the_functions_gets_them_again() {
    // A service without the server's reaper, whose calls every 500 ms
    // could load the library again before the enqueue below does.
    let redis = RedisServer::start();
    let queue = RedisQueue::connect(&redis.url()).await.unwrap();
    let (mut c, _stop) = serve_polling(
        AnyQueue::Redis(queue.clone()),
        Duration::from_secs(3600),
        None,
    )
    .await;
    let first = enqueue(&mut c, req("first")).await;
    let raw = ::redis::Client::open(redis.url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
    let libraries = |raw: &mut ::redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        async move {
            let listed: ::redis::Value = ::redis::cmd("FUNCTION")
                .arg("LIST")
                .query_async(&mut raw)
                .await
                .unwrap();
            format!("{listed:?}").matches("nova_").count()
        }
    };
    assert!(libraries(&mut raw).await > 0);
    let _: () = ::redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(libraries(&mut raw).await, 0);

    let second = enqueue(&mut c, req("second")).await;
    assert!(
        libraries(&mut raw).await > 0,
        "the library was not loaded again"
    );
    assert!(queue.uses_functions());
    let got = dequeue(&mut c, "w", 0).await.unwrap();
    assert_eq!(got.id, first.id);
    let got = dequeue(&mut c, "w", 0).await.unwrap();
    assert_eq!(got.id, second.id);
}

/// A Redis busy for longer than the redis crate's default wait (500 ms:
/// another client's slow command here) is waited for: the enqueue made
/// meanwhile is answered as stored, and it is. (Reported as failed, the
/// task would still have been stored, and a retry would store it twice.)
#[tokio::test]
async fn a_busy_redis_is_waited_for_not_reported_as_down() {
    use nova::queue::backend::QueueBackend;
    use nova::queue::model::{NewTask, now_ms};
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
    ]);
    let queue = RedisQueue::connect(&redis.url()).await.unwrap();
    let raw = ::redis::Client::open(redis.url()).unwrap();
    let mut raw = raw.get_multiplexed_async_connection().await.unwrap();
    // This connection gives up on its own answer after 500 ms; Redis
    // sleeps on regardless.
    let busy = tokio::spawn(async move {
        let _: Result<(), _> = ::redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg("1.2")
            .query_async(&mut raw)
            .await;
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let stored = queue
        .enqueue(vec![NewTask::new("patient", "{}")], now_ms())
        .await
        .expect("an enqueue on a busy Redis waits for it");
    assert!(
        started.elapsed() > std::time::Duration::from_millis(500),
        "Redis was not busy for long enough to show anything"
    );
    busy.await.unwrap();
    let (task, existing) = &stored[0];
    assert!(!existing);
    assert_eq!(queue.get(task.id.clone()).await.unwrap().r#type, "patient");
}

/// Two servers on one Redis are one queue: a task enqueued through one is
/// handed out once across both, and either can finish it. One runs the
/// queue's routines as functions, the other as scripts (as a server on an
/// older Redis would): the same data either way.
#[tokio::test]
async fn two_servers_share_one_redis() {
    let redis = RedisServer::start();
    let mut servers = Vec::new();
    for scripts in [false, true] {
        let mut queue = RedisQueue::connect(&redis.url()).await.unwrap();
        if scripts {
            queue = queue.scripts_only().await;
        }
        assert_eq!(queue.uses_functions(), !scripts);
        servers.push(serve(AnyQueue::Redis(queue), None).await);
    }
    let mut a = servers[0].0.clone();
    let ids: Vec<String> = a
        .enqueue_batch(EnqueueBatchRequest {
            tasks: (0..300).map(|i| req(&format!("t{i}"))).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect();

    let mut workers = Vec::new();
    for (i, (client, _, _)) in servers.iter().enumerate() {
        for j in 0..2 {
            let mut c = client.clone();
            workers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(t) = dequeue(&mut c, &format!("s{i}w{j}"), 0).await {
                    got.push(t.clone());
                }
                got
            }));
        }
    }
    let mut handed_out = Vec::new();
    for w in workers {
        handed_out.extend(w.await.unwrap());
    }
    let mut seen: Vec<String> = handed_out.iter().map(|t| t.id.clone()).collect();
    seen.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected, "each task handed out exactly once");

    // Leases taken through one server are acked through the other.
    let mut b = servers[1].0.clone();
    for t in &handed_out {
        let via = if t.worker_id.starts_with("s0") {
            &mut b
        } else {
            &mut a
        };
        via.ack(ack(t, true)).await.unwrap();
    }
    let stats = b.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        stats
            .counts
            .iter()
            .map(|c| (c.status.as_str(), c.count))
            .collect::<Vec<_>>(),
        [("COMPLETED", 300)]
    );
}

async fn finished_tasks_are_purged_and_the_rest_stay(backend: Backend) {
    use nova::queue::backend::QueueBackend;
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let keyed = enqueue(
        c,
        EnqueueRequest {
            idempotency_key: "nightly".into(),
            ..req("done")
        },
    )
    .await;
    let t = dequeue(c, "w", 0).await.unwrap();
    c.ack(ack(&t, true)).await.unwrap();
    enqueue(c, req("fails")).await;
    let t = dequeue(c, "w", 0).await.unwrap();
    c.ack(ack(&t, false)).await.unwrap();
    let cancelled = enqueue(c, req("cancelled")).await;
    c.cancel(CancelRequest {
        task_id: cancelled.id.clone(),
    })
    .await
    .unwrap();
    let mail = enqueue(
        c,
        EnqueueRequest {
            queue: "mail".into(),
            ..req("sent")
        },
    )
    .await;
    let t = c
        .dequeue(DequeueRequest {
            worker_id: "w".into(),
            queues: vec!["mail".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(t.id, mail.id);
    c.ack(ack(&t, true)).await.unwrap();
    let pending = enqueue(c, req("waiting")).await;
    enqueue(c, req("second")).await;
    let running = dequeue(c, "w", 0).await.unwrap();
    assert_eq!(running.id, pending.id, "oldest first");
    let finished_at = nova::queue::model::now_ms();

    // Nothing finished before an hour ago.
    assert_eq!(
        h.queue.purge(finished_at - 3_600_000, None).await.unwrap(),
        0
    );
    assert_eq!(list(c).await.len(), 6);
    // One queue at a time: the three finished in `default` go.
    assert_eq!(
        h.queue
            .purge(finished_at + 1, Some("default".into()))
            .await
            .unwrap(),
        3
    );
    let mut left: Vec<String> = list(c).await.into_iter().map(|t| t.status).collect();
    left.sort();
    assert_eq!(
        left,
        ["COMPLETED", "IN_PROGRESS", "PENDING"],
        "mail's task and the unfinished stay"
    );
    let gone = c
        .get_task(GetTaskRequest {
            task_id: cancelled.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let counts: Vec<(String, String, u64)> = c
        .stats(StatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .counts
        .into_iter()
        .map(|c| (c.queue, c.status, c.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("default".into(), "IN_PROGRESS".into(), 1),
            ("default".into(), "PENDING".into(), 1),
            ("mail".into(), "COMPLETED".into(), 1),
        ]
    );
    // The idempotency key went with its task: the same key is a new task now.
    let again = c
        .enqueue(EnqueueRequest {
            idempotency_key: "nightly".into(),
            ..req("done")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.existing);
    assert_ne!(again.task.unwrap().id, keyed.id);
    // Every queue: mail's finished task goes; pending, running and new stay.
    assert_eq!(h.queue.purge(finished_at + 1, None).await.unwrap(), 1);
    assert_eq!(list(c).await.len(), 3);
    c.ack(ack(&running, true)).await.unwrap();
}

async fn a_purge_larger_than_one_chunk_takes_them_all(backend: Backend) {
    use nova::queue::backend::QueueBackend;
    use nova::queue::model::{DequeueSpec, NewTask, now_ms};
    let h = start(backend, None).await;
    let q = &h.queue;
    let n = 5_200u64; // more than one chunk on either backend
    let tasks: Vec<NewTask> = (0..n).map(|_| NewTask::new("bulk", "{}")).collect();
    q.enqueue(tasks, now_ms()).await.unwrap();
    q.enqueue(vec![NewTask::new("stays", "{}")], now_ms() + 1)
        .await
        .unwrap();
    let mut cancelled = 0;
    for t in q.list(None, None, 0, None).await.unwrap() {
        if t.r#type == "bulk" {
            q.cancel(t.id, now_ms()).await.unwrap();
            cancelled += 1;
        }
    }
    assert_eq!(cancelled, n);
    assert_eq!(q.purge(now_ms() + 1, None).await.unwrap(), n);
    let left = q.list(None, None, 0, None).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].r#type, "stays");
    let taken = q
        .dequeue(
            DequeueSpec {
                worker_id: "w".into(),
                queues: vec![],
                lease_ms: 1_000,
                max_tasks: 1,
                max_bytes: 0,
            },
            now_ms() + 2,
        )
        .await
        .unwrap();
    assert_eq!(taken.len(), 1, "the pending task is still handed out");
}

// `nova queue --server URL list` on a queue over 16 MiB failed (exit 1)
// instead of paging.
async fn a_queue_bigger_than_one_answer_is_listed_in_parts(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut r = req(&format!("big-{i}"));
        r.payload = format!("\"{}\"", "x".repeat(1_000_000));
        ids.push(enqueue(c, r).await.id);
    }
    let mut listed = Vec::new();
    let mut request = ListTasksRequest::default();
    let mut answers = 0;
    loop {
        let answer = c.list_tasks(request.clone()).await.unwrap().into_inner();
        answers += 1;
        listed.extend(answer.tasks.into_iter().map(|t| t.id));
        if answer.next.is_empty() {
            break;
        }
        request.after = answer.next;
    }
    assert!(answers > 1, "one answer of 20 MB");
    assert_eq!(listed, ids, "every task once, in order");
    let err = c
        .list_tasks(ListTasksRequest {
            after: "no-such-task".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("after: no task no-such-task"),
        "{}",
        err.message()
    );
    let limited = c
        .list_tasks(ListTasksRequest {
            limit: 3,
            after: ids[4].clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<String> = limited.tasks.into_iter().map(|t| t.id).collect();
    assert_eq!(got, ids[5..8].to_vec());
}

/// A poller waiting in a long poll is noted again while it waits, so it
/// stays listed through a wait longer than a listing lasts. (The service's
/// own, the same on every backend: run on one.)
#[tokio::test]
async fn a_poller_in_a_long_poll_is_noted_while_it_waits() {
    let mut h = start(Backend::Sqlite, None).await;
    let mut waiter = h.client.clone();
    let poll = tokio::spawn(async move {
        waiter
            .dequeue(DequeueRequest {
                worker_id: "patient".into(),
                wait_ms: 30_000,
                lease_ms: 60_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = workers(&mut h.client).await;
    assert_eq!(first.len(), 1, "{first:?}");
    tokio::time::sleep(Duration::from_millis(10_700)).await;
    let later = workers(&mut h.client).await;
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].connected_at, first[0].connected_at);
    assert!(
        later[0].last_seen_at >= first[0].last_seen_at + 10_000,
        "noted again while waiting: {later:?}"
    );
    let task = enqueue(&mut h.client, req("at last")).await;
    assert_eq!(poll.await.unwrap().task.unwrap().id, task.id);
}

/// A connection of the test's own to `redis`, for what the queue keeps there.
async fn redis_connection(redis: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A list by status and queue holds every such task, oldest first, paged by
/// `after` and `limit`, whatever else the history holds: the backends find
/// live tasks through what holds only them, and stop once the counts say
/// every finished task of a status was found.
async fn a_list_by_status_holds_every_such_task_in_order(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let mut ids = Vec::new();
    for i in 0..24 {
        let mut r = req(&format!("mix-{i}"));
        r.queue = if i % 2 == 0 { "a" } else { "b" }.into();
        r.max_attempts = 1;
        if i == 23 {
            r.delay_ms = 3_600_000;
        }
        ids.push(enqueue(c, r).await.id);
    }
    // Tasks 0 to 11 are taken in order; each is left as its number says.
    for (i, id) in ids.iter().enumerate().take(12) {
        let t = dequeue(c, "w", 60_000).await.unwrap();
        assert_eq!(&t.id, id);
        match i % 4 {
            0 => {
                c.ack(ack(&t, true)).await.unwrap();
            }
            1 => {
                c.ack(ack(&t, false)).await.unwrap();
            }
            2 => {
                c.cancel(CancelRequest {
                    task_id: t.id.clone(),
                })
                .await
                .unwrap();
            }
            _ => {} // still leased
        }
    }
    let c = &mut h.client;
    let mut tasks = Vec::new();
    for id in &ids {
        tasks.push(get(c, id.clone()).await);
    }
    let list = async |c: &mut Client, status: &str, queue: &str, limit: u32, after: &str| {
        c.list_tasks(ListTasksRequest {
            status: status.into(),
            queue: queue.into(),
            limit,
            after: after.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.id)
        .collect::<Vec<_>>()
    };
    for status in [
        "",
        "PENDING",
        "IN_PROGRESS",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
    ] {
        for queue in ["", "a", "b"] {
            let want: Vec<String> = tasks
                .iter()
                .filter(|t| {
                    (status.is_empty() || t.status == status)
                        && (queue.is_empty() || t.queue == queue)
                })
                .map(|t| t.id.clone())
                .collect();
            assert_eq!(
                list(c, status, queue, 0, "").await,
                want,
                "{status} {queue}"
            );
            let first_two: Vec<String> = want.iter().take(2).cloned().collect();
            assert_eq!(
                list(c, status, queue, 2, "").await,
                first_two,
                "{status} {queue}"
            );
            // After a task of another status (the first one enqueued).
            let after_first: Vec<String> =
                want.iter().filter(|id| **id != ids[0]).cloned().collect();
            assert_eq!(
                list(c, status, queue, 0, &ids[0]).await,
                after_first,
                "{status} {queue} after the first task"
            );
            if let Some(first) = want.first() {
                assert_eq!(list(c, status, queue, 0, first).await, want[1..].to_vec());
            }
        }
    }
    assert!(
        list(c, "CANCELLED", "no-such-queue", 0, "")
            .await
            .is_empty()
    );
    let failed: Vec<String> = tasks
        .iter()
        .filter(|t| t.status == "FAILED")
        .map(|t| t.id.clone())
        .collect();
    let cancelled: Vec<String> = tasks
        .iter()
        .filter(|t| t.status == "CANCELLED")
        .map(|t| t.id.clone())
        .collect();

    // A Redis store whose sets of failed and cancelled tasks lack some (an
    // older nova wrote them, or still shares the store) has them filed by
    // its next list of either.
    if let Some(redis) = &h._redis {
        let mut r = redis_connection(redis).await;
        let () = ::redis::cmd("DEL")
            .arg(&["nova:q:failed", "nova:q:cancelled"][..])
            .query_async(&mut r)
            .await
            .unwrap();
        let c = &mut h.client;
        assert_eq!(list(c, "FAILED", "", 0, "").await, failed);
        assert_eq!(list(c, "CANCELLED", "", 0, "").await, cancelled);
        let filed: usize = ::redis::cmd("ZCARD")
            .arg("nova:q:failed")
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(filed, failed.len(), "filed, for every later list");
    }

    // A retried task leaves its status's list; purged ones leave every list.
    let c = &mut h.client;
    for id in [&failed[0], &cancelled[0]] {
        c.retry(RetryRequest {
            task_id: id.clone(),
        })
        .await
        .unwrap();
    }
    assert_eq!(list(c, "FAILED", "", 0, "").await, failed[1..].to_vec());
    assert_eq!(
        list(c, "CANCELLED", "", 0, "").await,
        cancelled[1..].to_vec()
    );
    assert!(list(c, "PENDING", "", 0, "").await.contains(&failed[0]));
    if let Some(redis) = &h._redis {
        let mut r = redis_connection(redis).await;
        let n: usize = ::redis::cmd("ZCARD")
            .arg("nova:q:failed")
            .query_async(&mut r)
            .await
            .unwrap();
        assert_eq!(n, failed.len() - 1, "a retried task leaves the set");
    }
    {
        use nova::queue::backend::QueueBackend;
        let later = nova::queue::model::now_ms() + 1;
        assert!(h.queue.purge(later, None).await.unwrap() > 0);
    }
    let c = &mut h.client;
    for status in ["COMPLETED", "FAILED", "CANCELLED"] {
        assert!(list(c, status, "", 0, "").await.is_empty(), "{status}");
    }
    // What lists them is emptied as they go, not left to be read and skipped.
    if let Some(redis) = &h._redis {
        let mut r = redis_connection(redis).await;
        for set in ["nova:q:failed", "nova:q:cancelled"] {
            let n: u64 = ::redis::cmd("ZCARD")
                .arg(set)
                .query_async(&mut r)
                .await
                .unwrap();
            assert_eq!(n, 0, "{set}");
        }
    }
}

// 40 tasks of 1 MiB, then Dequeue(max_tasks=40): the client got OUT_OF_RANGE
// while all 40 were leased, each losing an attempt until its lease ran out.
async fn a_dequeue_leases_only_what_its_answer_can_carry(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    for i in 0..40 {
        let mut r = req(&format!("big-{i}"));
        r.payload = format!("\"{}\"", "x".repeat(1_000_000));
        enqueue(c, r).await;
    }
    let got = c
        .dequeue(DequeueRequest {
            worker_id: "w".into(),
            max_tasks: 40,
            lease_ms: 60_000,
            ..Default::default()
        })
        .await
        .expect("an answer within the message limit")
        .into_inner()
        .tasks;
    assert!(
        (1..40).contains(&got.len()),
        "{} tasks in one answer",
        got.len()
    );
    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    let count = |status: &str| -> u64 {
        stats
            .counts
            .iter()
            .filter(|q| q.status == status)
            .map(|q| q.count)
            .sum()
    };
    assert_eq!(
        count("IN_PROGRESS"),
        got.len() as u64,
        "only what was answered is leased"
    );
    assert_eq!(count("PENDING"), 40 - got.len() as u64);
}

async fn a_paused_queue_hands_out_nothing_until_resumed(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let job = enqueue(
        c,
        EnqueueRequest {
            queue: "jobs".into(),
            ..req("build")
        },
    )
    .await;
    let mail = enqueue(
        c,
        EnqueueRequest {
            queue: "mail".into(),
            ..req("send")
        },
    )
    .await;
    let paused = c
        .pause_queue(PauseQueueRequest {
            queue: "jobs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.changed);
    assert_eq!(paused.paused_queues, ["jobs"]);
    let again = c
        .pause_queue(PauseQueueRequest {
            queue: "jobs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed, "pausing twice changes nothing");

    // Asked for every queue, or for the paused one by name: only the other queue's task comes.
    assert_eq!(dequeue(c, "w", 0).await.map(|t| t.id), Some(mail.id));
    assert!(dequeue(c, "w", 0).await.is_none());
    let named = c
        .dequeue(DequeueRequest {
            worker_id: "w".into(),
            queues: vec!["jobs".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(named.task.is_none() && named.tasks.is_empty());
    // Enqueues into a paused queue are still taken.
    enqueue(
        c,
        EnqueueRequest {
            queue: "jobs".into(),
            ..req("build")
        },
    )
    .await;
    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.paused_queues, ["jobs"]);

    let resumed = c
        .resume_queue(ResumeQueueRequest {
            queue: "jobs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resumed.changed);
    assert!(resumed.paused_queues.is_empty());
    assert_eq!(dequeue(c, "w", 0).await.map(|t| t.id), Some(job.id));
    assert!(dequeue(c, "w", 0).await.is_some());

    let bad = c
        .pause_queue(PauseQueueRequest {
            queue: "no spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("queue"), "{}", bad.message());
}

/// An ack can lease the caller's next task in the same call (nova's
/// `AckRequest.next`); a bad `next` is refused before the ack is applied.
async fn an_ack_can_lease_the_next_task(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let a = enqueue(c, req("a")).await;
    let b = enqueue(c, req("b")).await;
    let leased = dequeue(c, "w", 60_000).await.unwrap();
    assert_eq!(leased.id, a.id);
    let next = |worker: &str| DequeueRequest {
        worker_id: worker.into(),
        lease_ms: 60_000,
        ..Default::default()
    };
    let mut first = ack(&leased, true);
    first.next = Some(next("w2"));
    let answer = c.ack(first).await.unwrap().into_inner();
    assert_eq!(answer.task.unwrap().status, "COMPLETED");
    assert_eq!(answer.next.len(), 1, "{:?}", answer.next);
    let got = &answer.next[0];
    assert_eq!(got.id, b.id);
    assert_eq!(got.status, "IN_PROGRESS");
    assert_eq!(got.worker_id, "w2");
    assert!(!got.lease_id.is_empty());
    // Nothing else is due: the ack is answered at once, with no next.
    let mut second = ack(got, true);
    second.next = Some(next("w2"));
    let answer = c.ack(second).await.unwrap().into_inner();
    assert_eq!(answer.task.unwrap().status, "COMPLETED");
    assert!(answer.next.is_empty());

    let d = enqueue(c, req("d")).await;
    let held = dequeue(c, "w", 60_000).await.unwrap();
    assert_eq!(held.id, d.id);
    let mut bad = ack(&held, true);
    bad.next = Some(DequeueRequest {
        queues: vec!["no spaces".into()],
        ..next("w")
    });
    let refused = c.ack(bad).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("next.queues[0]"),
        "{}",
        refused.message()
    );
    let still = get(c, d.id.clone()).await;
    assert_eq!(still.status, "IN_PROGRESS", "the refused ack was applied");
    let mut in_batch = ack(&held, true);
    in_batch.next = Some(next("w"));
    let refused = c
        .ack_batch(nova::queue::proto::AckBatchRequest {
            acks: vec![in_batch],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("acks[0].next"),
        "{}",
        refused.message()
    );

    // An ack that is refused (a lease that does not hold the task) leases
    // nothing: the next task stays for others.
    let e = enqueue(c, req("e")).await;
    let mut stale = ack(&held, true);
    stale.lease_id = "not-the-lease".into();
    stale.next = Some(next("w"));
    let refused = c.ack(stale).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let waiting = get(c, e.id.clone()).await;
    assert_eq!(
        waiting.status, "PENDING",
        "a refused ack leased the next task"
    );
}

/// A producer's stream enqueues as Enqueue does, answering each request in
/// order; a refused request is answered with its code and the stream goes
/// on; an idempotency key matches across the stream and unary calls; a
/// task sent on it reaches a waiting worker like any other.
async fn an_enqueue_stream_answers_each_task_in_order(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let mut stream = EnqueueStream::open(c).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let answered = stream
            .enqueue(EnqueueRequest {
                payload: format!("p{i}"),
                ..req("streamed")
            })
            .await
            .unwrap();
        let task = answered.task.unwrap();
        assert_eq!(task.payload, format!("p{i}"), "answers out of order");
        assert!(!answered.existing);
        ids.push(task.id);
    }

    let refused = stream.enqueue(req("")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("type"), "{}", refused.message());
    let huge = EnqueueRequest {
        payload: "x".repeat(2 << 20),
        ..req("big")
    };
    let refused = stream.enqueue(huge).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // The stream goes on after refusals; idempotency keys are the queue's.
    let keyed = EnqueueRequest {
        idempotency_key: "once".into(),
        ..req("keyed")
    };
    let first = stream.enqueue(keyed.clone()).await.unwrap();
    let again = c.enqueue(keyed).await.unwrap().into_inner();
    assert!(again.existing);
    assert_eq!(again.task.unwrap().id, first.task.unwrap().id);
    assert_eq!(list(c).await.len(), 6, "refused requests stored nothing");

    // In order of enqueue, to a worker.
    for id in &ids {
        assert_eq!(dequeue(c, "w", 0).await.map(|t| t.id).as_ref(), Some(id));
    }

    // A worker waiting on its Work stream is handed a streamed task.
    let mut work = waiting_worker(c, "later").await;
    let sent = stream
        .enqueue(EnqueueRequest {
            queue: "later".into(),
            ..req("handed")
        })
        .await
        .unwrap()
        .task
        .unwrap();
    let pushed = recv(&mut work).await;
    assert_eq!(pushed.tasks.len(), 1);
    assert_eq!(pushed.tasks[0].id, sent.id);
    assert_eq!(pushed.tasks[0].status, "IN_PROGRESS");
}

/// An enqueue that asks for a brief answer (unary, on a stream, in a batch,
/// handed to a waiting worker) gets the stored task without its payload and
/// metadata; the task is stored, and leased, whole.
async fn a_brief_enqueue_is_answered_without_the_contents(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let full = || EnqueueRequest {
        payload: "the payload".into(),
        metadata: vec![TaskMetadataEntry {
            key: "k".into(),
            value: "v".into(),
        }],
        brief: true,
        ..req("brief")
    };
    let stored_whole = |answered: &Task, stored: &Task| {
        assert!(
            answered.payload.is_empty() && answered.metadata.is_empty(),
            "{answered:?}"
        );
        assert_eq!(answered.id, stored.id);
        assert_eq!(answered.status, stored.status);
        assert_eq!(answered.r#type, "brief");
        assert_eq!(stored.payload, "the payload");
        assert_eq!(stored.metadata.len(), 1);
    };
    let unary = c.enqueue(full()).await.unwrap().into_inner().task.unwrap();
    stored_whole(&unary, &get(c, &unary.id).await);
    let mut stream = EnqueueStream::open(c).await.unwrap();
    let streamed = stream.enqueue(full()).await.unwrap().task.unwrap();
    stored_whole(&streamed, &get(c, &streamed.id).await);
    let batch = c
        .enqueue_batch(EnqueueBatchRequest {
            tasks: vec![
                full(),
                EnqueueRequest {
                    brief: false,
                    ..full()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    stored_whole(&batch[0], &get(c, &batch[0].id).await);
    assert_eq!(batch[1].payload, "the payload", "only the brief one is cut");

    // Handed to a worker waiting on its stream: the worker gets it whole.
    let mut work = waiting_worker(c, "handed").await;
    let handed = stream
        .enqueue(EnqueueRequest {
            queue: "handed".into(),
            ..full()
        })
        .await
        .unwrap()
        .task
        .unwrap();
    assert!(handed.payload.is_empty());
    let pushed = recv(&mut work).await;
    assert_eq!(pushed.tasks[0].id, handed.id);
    assert_eq!(pushed.tasks[0].payload, "the payload");
    assert_eq!(pushed.tasks[0].metadata.len(), 1);
}

/// A worker `waiting` with one credit on a Work stream for `queue`, given
/// time to be waiting.
async fn waiting_worker(c: &mut Client, queue: &str) -> WorkStream {
    let lease = DequeueRequest {
        worker_id: "waiting".into(),
        queues: vec![queue.into()],
        ..Default::default()
    };
    let work = WorkStream::open(c, lease, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    work
}

/// The server's next message on a work stream, within five seconds.
async fn recv(stream: &mut WorkStream) -> WorkResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a message within 5 s")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

/// A task enqueued while a stream waits is handed to it in the call that
/// stores it, and what the stream gets is the task as stored: every field,
/// the lease included (on Redis the server builds it from what it sent).
/// Which of two streams gets the next task: true for `a`, with the tasks.
async fn first_to_get(a: &mut RawStream, b: &mut RawStream) -> (bool, Vec<Task>) {
    tokio::select! {
        tasks = a.tasks() => (true, tasks),
        tasks = b.tasks() => (false, tasks),
    }
}

async fn a_worker_whose_task_failed_is_offered_new_tasks_after_the_others(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let open = |worker: &str| WorkRequest {
        lease: Some(DequeueRequest {
            worker_id: worker.into(),
            lease_ms: 60_000,
            ..Default::default()
        }),
        credit: 1,
        ..Default::default()
    };
    // Time for a stream's round to end (it then waits among the idle ones).
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    let mut one = RawStream::open(c, open("one")).await;
    settle().await;
    let mut two = RawStream::open(c, open("two")).await;
    settle().await;
    let once = |kind: &str| EnqueueRequest {
        max_attempts: 1,
        ..req(kind)
    };

    // Whichever stream takes the first task fails it and asks for more...
    let first = enqueue(c, once("first")).await;
    let (one_took_it, tasks) = first_to_get(&mut one, &mut two).await;
    assert_eq!(tasks[0].id, first.id);
    let failer = if one_took_it { &mut one } else { &mut two };
    let answer = failer.ack(1, vec![ack(&tasks[0], false)]).await;
    assert_eq!(answer.acks[0].code, 0, "{}", answer.acks[0].message);
    assert_eq!(answer.acks[0].task.as_ref().unwrap().status, "FAILED");
    settle().await;

    // ...and is idle again first, yet the next task goes to the other one.
    let next = enqueue(c, once("next")).await;
    let (one_took_next, tasks) = first_to_get(&mut one, &mut two).await;
    assert_eq!(tasks[0].id, next.id);
    assert_ne!(
        one_took_next, one_took_it,
        "the worker that just failed a task was handed the next one"
    );
}

async fn a_task_handed_to_a_waiting_stream_is_the_stored_task(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let lease = DequeueRequest {
        worker_id: "waiting".into(),
        lease_ms: 45_000,
        ..Default::default()
    };
    let mut stream = WorkStream::open(c, lease, 1).await.unwrap();
    // Nothing to lease yet: the stream goes idle.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err()
    );
    let sent = enqueue(
        c,
        EnqueueRequest {
            priority: 7,
            max_attempts: 3,
            retry_backoff_ms: 250,
            payload: r#"{"n": 1}"#.into(),
            metadata: vec![TaskMetadataEntry {
                key: "k".into(),
                value: "v".into(),
            }],
            ..req("handed")
        },
    )
    .await;
    let handed = recv(&mut stream).await.tasks;
    assert_eq!(handed.len(), 1);
    let handed = &handed[0];
    assert_eq!(handed.id, sent.id);
    assert_eq!(
        (
            handed.status.as_str(),
            handed.attempts,
            handed.worker_id.as_str()
        ),
        ("IN_PROGRESS", 1, "waiting")
    );
    assert!(!handed.lease_id.is_empty());
    assert!(handed.lease_expires_at >= sent.created_at + 45_000);
    assert_eq!(&get(c, sent.id.clone()).await, handed, "handed as stored");
    stream.send(0, vec![ack(handed, true)]).await.unwrap();
    let answer = recv(&mut stream).await;
    assert_eq!(answer.acks[0].code, 0, "{}", answer.acks[0].message);
}

async fn a_work_stream_leases_by_credit_and_answers_acks(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let a = enqueue(c, req("a")).await;
    let b = enqueue(c, req("b")).await;
    let third = enqueue(c, req("c")).await;
    let lease = DequeueRequest {
        worker_id: "s".into(),
        lease_ms: 60_000,
        ..Default::default()
    };
    let mut stream = WorkStream::open(c, lease.clone(), 2).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(recv(&mut stream).await.tasks);
    }
    let ids: Vec<&str> = got.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, [a.id.as_str(), b.id.as_str()], "oldest first");
    assert!(
        got.iter()
            .all(|t| t.status == "IN_PROGRESS" && t.worker_id == "s")
    );
    // Credit spent: the third task stays in the queue.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "a task came beyond the credit"
    );
    assert_eq!(get(c, third.id.clone()).await.status, "PENDING");

    // An ack with one more credit: applied, and the next task in the same answer.
    stream.send(1, vec![ack(&got[0], true)]).await.unwrap();
    let answer = recv(&mut stream).await;
    assert_eq!(answer.acks.len(), 1);
    assert_eq!(answer.acks[0].code, 0, "{}", answer.acks[0].message);
    assert_eq!(answer.acks[0].task.as_ref().unwrap().status, "COMPLETED");
    let mut tasks = answer.tasks;
    if tasks.is_empty() {
        tasks = recv(&mut stream).await.tasks;
    }
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].id, third.id);

    // A refused ack (a lease that does not hold the task) is answered and changes nothing.
    let mut stale = ack(&got[1], true);
    stale.lease_id = "not-the-lease".into();
    stream.send(0, vec![stale]).await.unwrap();
    let answer = recv(&mut stream).await;
    assert_eq!(answer.acks[0].code, Code::FailedPrecondition as i32);
    assert_eq!(answer.acks[0].task_id, got[1].id);
    assert_eq!(get(c, got[1].id.clone()).await.status, "IN_PROGRESS");

    // Both acked with credit left and nothing due: a new task is pushed when it comes.
    stream
        .send(1, vec![ack(&got[1], true), ack(&tasks[0], false)])
        .await
        .unwrap();
    let answer = recv(&mut stream).await;
    assert_eq!(answer.acks.len(), 2);
    assert!(answer.acks.iter().all(|o| o.code == 0));
    assert_eq!(answer.acks[1].task.as_ref().unwrap().status, "FAILED");
    assert!(answer.tasks.is_empty());
    let d = enqueue(c, req("d")).await;
    let pushed = recv(&mut stream).await.tasks;
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].id, d.id);
    // Handed over in the call that stored it, it is leased as any dequeue leases.
    let stored = get(c, d.id.clone()).await;
    assert_eq!(stored, pushed[0], "the pushed task is the stored one");
    assert_eq!(
        (stored.status.as_str(), stored.worker_id.as_str()),
        ("IN_PROGRESS", "s")
    );
    assert_eq!(stored.attempts, 1);
    assert!(!stored.lease_id.is_empty() && stored.lease_expires_at > stored.created_at);
    assert_eq!(
        (stored.r#type.as_str(), stored.payload.as_str()),
        ("d", "{}")
    );
    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.in_flight_leases, 1);
    let in_progress: Vec<(String, u64)> = stats
        .counts
        .iter()
        .filter(|n| n.status == "IN_PROGRESS" || n.status == "PENDING")
        .map(|n| (n.status.clone(), n.count))
        .collect();
    assert_eq!(in_progress, [("IN_PROGRESS".to_string(), 1)]);

    // A bad ack ends the stream with the field named and changes nothing.
    let mut bad = ack(&pushed[0], true);
    bad.next = Some(lease.clone());
    stream.send(0, vec![bad]).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("acks[0].next"),
        "{}",
        refused.message()
    );
    drop(stream);
    // A worker that goes keeps its lease until it expires.
    assert_eq!(get(c, d.id.clone()).await.status, "IN_PROGRESS");

    // A stream is handed only tasks of its queues, and only when they are due.
    let only = DequeueRequest {
        queues: vec!["only".into()],
        ..lease.clone()
    };
    let mut stream = WorkStream::open(c, only, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    enqueue(
        c,
        EnqueueRequest {
            queue: "other".into(),
            ..req("x")
        },
    )
    .await;
    let later = enqueue(
        c,
        EnqueueRequest {
            queue: "only".into(),
            delay_ms: 400,
            ..req("later")
        },
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err(),
        "a task of another queue, or not yet due, was handed over"
    );
    let pushed = recv(&mut stream).await.tasks;
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].id, later.id, "the delayed task, once due");
    drop(stream);

    // A stream must first say what to lease, with names that are names.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(WorkRequest {
        credit: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let refused = match c
        .work(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(_) => panic!("a stream without a lease was taken"),
        Err(e) => e,
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("lease:"),
        "{}",
        refused.message()
    );
    let bad_lease = DequeueRequest {
        queues: vec!["no spaces".into()],
        ..lease.clone()
    };
    refused_opening(c, bad_lease, None, "lease.queues[0]").await;
}

/// A raw Work stream (not nova's client): its first request as given.
struct RawStream {
    requests: tokio::sync::mpsc::Sender<WorkRequest>,
    responses: tonic::Streaming<WorkResponse>,
}

impl RawStream {
    async fn open(c: &mut Client, first: WorkRequest) -> RawStream {
        let (requests, rx) = tokio::sync::mpsc::channel(4);
        requests.send(first).await.unwrap();
        let responses = c
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        RawStream {
            requests,
            responses,
        }
    }

    async fn send(&self, request: WorkRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn recv(&mut self) -> Result<WorkResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a message within 5 s")
            .map(|m| m.expect("the stream is open"))
    }

    /// Send `acks` with `credit` more; the answer.
    async fn ack(&mut self, credit: u32, acks: Vec<AckRequest>) -> WorkResponse {
        self.send(WorkRequest {
            credit,
            acks,
            ..Default::default()
        })
        .await;
        self.recv().await.unwrap()
    }

    /// The tasks `answer` carried, or else those of the next message that does.
    async fn tasks_after(&mut self, answer: WorkResponse) -> Vec<Task> {
        if answer.tasks.is_empty() {
            self.tasks().await
        } else {
            answer.tasks
        }
    }

    /// The next message that carries tasks.
    async fn tasks(&mut self) -> Vec<Task> {
        loop {
            let m = self.recv().await.unwrap();
            if !m.tasks.is_empty() {
                return m.tasks;
            }
        }
    }
}

/// A stream that asks for brief acks gets each applied ack's task with its
/// id and status only (whatever path the ack took: with a lease, in a
/// batch, repeated, requeued for a retry); one that does not gets the whole
/// task. Either way the stored task is changed the same, payload kept.
async fn a_work_stream_answers_acks_briefly_when_asked(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let payload = r#"{"job": "a payload the worker has already"}"#;
    let with_payload = |kind: &str| EnqueueRequest {
        payload: payload.into(),
        max_attempts: 3,
        ..req(kind)
    };
    let lease = DequeueRequest {
        worker_id: "b".into(),
        lease_ms: 60_000,
        ..Default::default()
    };

    // Not asked: the whole task, as before.
    let whole = enqueue(c, with_payload("whole")).await;
    let mut stream = RawStream::open(
        c,
        WorkRequest {
            lease: Some(lease.clone()),
            credit: 1,
            ..Default::default()
        },
    )
    .await;
    let got = stream.tasks().await;
    assert_eq!(got[0].id, whole.id);
    let answer = stream.ack(0, vec![ack(&got[0], true)]).await;
    let task = answer.acks[0].task.clone().unwrap();
    assert_eq!(
        (
            task.status.as_str(),
            task.payload.as_str(),
            task.r#type.as_str()
        ),
        ("COMPLETED", payload, "whole")
    );
    drop(stream);

    // Asked: id and status only.
    let a = enqueue(c, with_payload("a")).await;
    let b = enqueue(c, with_payload("b")).await;
    let third = enqueue(c, with_payload("c")).await;
    let mut stream = RawStream::open(
        c,
        WorkRequest {
            lease: Some(lease.clone()),
            credit: 1,
            brief_acks: true,
            ..Default::default()
        },
    )
    .await;
    let first = stream.tasks().await;
    assert_eq!(first[0].id, a.id);
    assert_eq!(first[0].payload, payload, "leased tasks come whole");
    let brief = |id: &str, status: &str| Task {
        id: id.into(),
        status: status.into(),
        ..Task::default()
    };
    // With a lease in the same call, and the same final ack again.
    let answer = stream.ack(1, vec![ack(&first[0], true)]).await;
    assert_eq!(answer.acks[0].code, 0, "{}", answer.acks[0].message);
    assert_eq!(answer.acks[0].task, Some(brief(&a.id, "COMPLETED")));
    let second = stream.tasks_after(answer).await;
    assert_eq!(second[0].id, b.id);
    let answer = stream.ack(0, vec![ack(&first[0], true)]).await;
    assert_eq!(answer.acks[0].task, Some(brief(&a.id, "COMPLETED")));
    // A failure to retry is PENDING again; two acks in one message take the
    // batch path.
    let mut retry = ack(&second[0], false);
    retry.retry = true;
    retry.error = "try again".into();
    let answer = stream.ack(1, vec![retry]).await;
    assert_eq!(answer.acks[0].task, Some(brief(&b.id, "PENDING")));
    let third_leased = stream.tasks_after(answer).await;
    assert_eq!(third_leased[0].id, third.id);
    let stored_a = get(c, a.id.clone()).await;
    assert_eq!(
        (stored_a.status.as_str(), stored_a.payload.as_str()),
        ("COMPLETED", payload)
    );
    let stored_b = get(c, b.id.clone()).await;
    assert_eq!(
        (stored_b.status.as_str(), stored_b.last_error.as_str()),
        ("PENDING", "try again")
    );
    let extra = enqueue(c, with_payload("d")).await;
    stream
        .send(WorkRequest {
            credit: 1,
            ..Default::default()
        })
        .await;
    let fourth = stream.tasks().await;
    let mut both = vec![ack(&third_leased[0], false), ack(&fourth[0], true)];
    both[0].error = "no".into();
    let answer = stream.ack(0, both).await;
    let statuses: Vec<Option<Task>> = answer.acks.iter().map(|o| o.task.clone()).collect();
    let fourth_id = fourth[0].id.clone();
    assert!(
        fourth_id == b.id || fourth_id == extra.id,
        "{fourth_id} was leased"
    );
    assert_eq!(
        statuses,
        [
            Some(brief(&third.id, "FAILED")),
            Some(brief(&fourth_id, "COMPLETED"))
        ]
    );

    // Only the first request may ask.
    stream
        .send(WorkRequest {
            brief_acks: true,
            ..Default::default()
        })
        .await;
    let refused = loop {
        match stream.recv().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("brief_acks:"),
        "{}",
        refused.message()
    );
}

/// A stream opened with quiet acks answers no applied ack, whatever path it
/// took (with the next lease, in a batch), but still answers a refused one;
/// its clean end after the worker's says every ack before it was applied.
/// A later request may not ask for quiet acks.
async fn a_quiet_work_stream_answers_only_refused_acks(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let a = enqueue(c, req("a")).await;
    let b = enqueue(c, req("b")).await;
    let third = enqueue(c, req("c")).await;
    let lease = DequeueRequest {
        worker_id: "q".into(),
        lease_ms: 60_000,
        ..Default::default()
    };
    let mut stream = WorkStream::open_quiet(c, lease.clone(), 1).await.unwrap();
    let first = recv(&mut stream).await;
    assert_eq!(first.tasks[0].id, a.id);
    // Applied, with the next task leased in the same call: the task comes
    // alone.
    stream
        .send(1, vec![ack(&first.tasks[0], true)])
        .await
        .unwrap();
    let next = recv(&mut stream).await;
    assert!(
        next.acks.is_empty(),
        "an applied ack was answered: {:?}",
        next.acks
    );
    assert_eq!(next.tasks[0].id, b.id);
    // Refused (a lease that does not hold the task): answered, with its code.
    let mut wrong = ack(&next.tasks[0], true);
    wrong.lease_id = "not-the-lease".into();
    stream.send(1, vec![wrong]).await.unwrap();
    let mut refused = Vec::new();
    let mut leased = Vec::new();
    while refused.is_empty() || leased.is_empty() {
        let m = recv(&mut stream).await;
        refused.extend(m.acks);
        leased.extend(m.tasks);
    }
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].task_id.as_str(), refused[0].code),
        (b.id.as_str(), Code::FailedPrecondition as i32)
    );
    assert_eq!(leased[0].id, third.id);
    // Two acks in one message take the batch path; then the worker ends
    // its side, and the server's end comes after both were applied.
    stream
        .send(0, vec![ack(&next.tasks[0], true), ack(&leased[0], true)])
        .await
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), stream.finish())
        .await
        .expect("the server ends the stream within 5 s")
        .expect("a clean end");
    assert!(
        rest.iter().all(|m| m.acks.is_empty() && m.tasks.is_empty()),
        "{rest:?}"
    );
    for id in [&a.id, &b.id, &third.id] {
        assert_eq!(get(c, id.clone()).await.status, "COMPLETED", "{id}");
    }

    let mut raw = RawStream::open(
        c,
        WorkRequest {
            lease: Some(lease),
            credit: 1,
            ..Default::default()
        },
    )
    .await;
    raw.send(WorkRequest {
        quiet_acks: true,
        ..Default::default()
    })
    .await;
    let refused = raw.recv().await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("quiet_acks:"),
        "{}",
        refused.message()
    );
}

/// Serve `backend` through a service whose poller ticks every `poll` (and
/// no reaper), holding answered acks for `answered_hold` when given: what
/// the service alone does, at a pace the test sets.
async fn serve_polling(
    backend: AnyQueue,
    poll: Duration,
    answered_hold: Option<Duration>,
) -> (Client, tokio::sync::oneshot::Sender<()>) {
    use nova::queue::proto::task_queue_server::TaskQueueServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut service =
        nova::queue::service::QueueService::new(std::sync::Arc::new(backend)).with_poll(poll);
    if let Some(hold) = answered_hold {
        service = service.with_answered_hold(hold);
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TaskQueueServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (client::connect(&url, None).await.unwrap(), stop)
}

/// A Work stream (credit 1), quiet unless `answered_hold` is given, on a
/// service whose poller ticks every `poll`, holding a task handed to it
/// while it waited among the idle ones.
struct QuietWorker {
    client: Client,
    stream: WorkStream,
    task: Task,
    _stop: tokio::sync::oneshot::Sender<()>,
    _h: Harness,
}

impl QuietWorker {
    async fn start(backend: Backend, poll: Duration) -> QuietWorker {
        Self::start_with(backend, poll, None).await
    }

    async fn start_with(
        backend: Backend,
        poll: Duration,
        answered_hold: Option<Duration>,
    ) -> QuietWorker {
        let h = start(backend, None).await;
        let (mut client, stop) = serve_polling(h.queue.clone(), poll, answered_hold).await;
        let lease = DequeueRequest {
            worker_id: "q".into(),
            lease_ms: 60_000,
            ..Default::default()
        };
        let mut stream = match answered_hold {
            None => WorkStream::open_quiet(&mut client, lease, 1).await,
            Some(_) => WorkStream::open(&mut client, lease, 1).await,
        }
        .unwrap();
        // The stream looks, finds nothing and waits among the idle ones.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let a = enqueue(&mut client, req("a")).await;
        let task = recv(&mut stream).await.tasks.remove(0);
        assert_eq!(task.id, a.id);
        QuietWorker {
            client,
            stream,
            task,
            _stop: stop,
            _h: h,
        }
    }
}

/// A quiet ack sent while the queue holds nothing for its stream waits for
/// the enqueue that hands the stream its next task, and is applied in that
/// enqueue's call: the task reads IN_PROGRESS until then (the poller, which
/// would apply it on its next tick, is set to an hour here). A refused one
/// is answered with the next task; the stream's clean end comes after the
/// acks it still held were applied.
async fn a_quiet_ack_goes_with_the_next_enqueue(backend: Backend) {
    let mut q = QuietWorker::start(backend, Duration::from_secs(3600)).await;
    let (c, mut stream, a) = (&mut q.client, q.stream, q.task);
    stream.send(1, vec![ack(&a, true)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(c, a.id.clone()).await.status,
        "IN_PROGRESS",
        "the ack was applied before an enqueue came to carry it"
    );
    let b = enqueue(c, req("b")).await;
    let got = recv(&mut stream).await;
    assert!(got.acks.is_empty(), "{:?}", got.acks);
    assert_eq!(got.tasks[0].id, b.id);
    assert_eq!(get(c, a.id.clone()).await.status, "COMPLETED");

    // Refused (a lease that does not hold the task): answered with the next task.
    let mut wrong = ack(&got.tasks[0], true);
    wrong.lease_id = "not-the-lease".into();
    stream.send(1, vec![wrong]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = enqueue(c, req("c")).await;
    let got = recv(&mut stream).await;
    assert_eq!(got.tasks[0].id, third.id);
    assert_eq!(got.acks.len(), 1, "{:?}", got.acks);
    assert_eq!(
        (got.acks[0].task_id.as_str(), got.acks[0].code),
        (b.id.as_str(), Code::FailedPrecondition as i32)
    );
    assert_eq!(get(c, b.id.clone()).await.status, "IN_PROGRESS");

    // Held when the worker ends its side: applied before the clean end.
    stream
        .send(1, vec![ack(&got.tasks[0], true)])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rest = tokio::time::timeout(Duration::from_secs(5), stream.finish())
        .await
        .expect("the server ends the stream within 5 s")
        .expect("a clean end");
    assert!(rest.iter().all(|m| m.acks.is_empty()), "{rest:?}");
    assert_eq!(get(c, third.id.clone()).await.status, "COMPLETED");
}

/// With no enqueue to carry it, a held quiet ack is applied on the poller's
/// next tick.
async fn a_held_quiet_ack_is_applied_without_an_enqueue(backend: Backend) {
    let mut q = QuietWorker::start(backend, Duration::from_millis(50)).await;
    let (c, stream, a) = (&mut q.client, q.stream, q.task);
    stream.send(1, vec![ack(&a, true)]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(c, a.id.clone()).await.status != "COMPLETED" {
        assert!(
            std::time::Instant::now() < deadline,
            "the held ack was not applied within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An answered ack sent while the queue holds nothing for its stream waits
/// (up to the service's answered hold, an hour here) for the enqueue that
/// hands the stream its next task: applied in that enqueue's call, and
/// answered in the message that carries the task.
async fn an_answered_ack_goes_with_the_next_enqueue(backend: Backend) {
    let hour = Duration::from_secs(3600);
    let mut q = QuietWorker::start_with(backend, hour, Some(hour)).await;
    let (c, mut stream, a) = (&mut q.client, q.stream, q.task);
    stream.send(1, vec![ack(&a, true)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(c, a.id.clone()).await.status,
        "IN_PROGRESS",
        "the ack was applied before an enqueue came to carry it"
    );
    let b = enqueue(c, req("b")).await;
    let got = recv(&mut stream).await;
    assert_eq!(got.tasks.len(), 1, "{got:?}");
    assert_eq!(got.tasks[0].id, b.id);
    assert_eq!(got.acks.len(), 1, "{:?}", got.acks);
    assert_eq!(
        (got.acks[0].task_id.as_str(), got.acks[0].code),
        (a.id.as_str(), 0)
    );
    assert_eq!(get(c, a.id.clone()).await.status, "COMPLETED");
}

/// Of the streams waiting, the one holding its worker's acks takes the
/// next task before one that went idle after it with nothing held, so the
/// acks ride that enqueue's call instead of waiting out their hold.
async fn a_stream_holding_acks_takes_the_next_task_first(backend: Backend) {
    let hour = Duration::from_secs(3600);
    let mut q = QuietWorker::start_with(backend, hour, Some(hour)).await;
    let (c, mut holder, a) = (&mut q.client, q.stream, q.task);
    holder.send(1, vec![ack(&a, true)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A second stream goes idle after the first, holding nothing.
    let lease = DequeueRequest {
        worker_id: "newer".into(),
        lease_ms: 60_000,
        ..Default::default()
    };
    let mut newer = WorkStream::open(c, lease, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(c, a.id.clone()).await.status, "IN_PROGRESS");

    let b = enqueue(c, req("b")).await;
    let got = tokio::select! {
        got = recv(&mut holder) => got,
        got = recv(&mut newer) => panic!("the newer idle stream took the task: {got:?}"),
    };
    assert_eq!(got.tasks[0].id, b.id);
    assert_eq!(
        (got.acks[0].task_id.as_str(), got.acks[0].code),
        (a.id.as_str(), 0)
    );
    assert_eq!(get(c, a.id.clone()).await.status, "COMPLETED");
    // The holder, busy with that task, leaves the next one to the other.
    let c2 = enqueue(c, req("c")).await;
    let got = tokio::select! {
        got = recv(&mut newer) => got,
        got = recv(&mut holder) => panic!("the busy stream took the task: {got:?}"),
    };
    assert_eq!(got.tasks[0].id, c2.id);
}

/// With no enqueue to carry it, an answered ack is applied and answered
/// after the service's answered hold (the default, 1 ms), whatever the
/// poller's pace (an hour here).
async fn an_answered_ack_is_answered_without_an_enqueue(backend: Backend) {
    let hour = Duration::from_secs(3600);
    let mut q =
        QuietWorker::start_with(backend, hour, Some(nova::queue::service::HOLD_ANSWERED)).await;
    let (c, mut stream, a) = (&mut q.client, q.stream, q.task);
    stream.send(1, vec![ack(&a, true)]).await.unwrap();
    let got = recv(&mut stream).await;
    assert_eq!(
        (got.acks[0].task_id.as_str(), got.acks[0].code),
        (a.id.as_str(), 0)
    );
    assert_eq!(get(c, a.id.clone()).await.status, "COMPLETED");
}

/// The backend call an enqueue makes for a waiting stream: the stream's
/// acks first (each with its own outcome, in order), then the enqueue,
/// then the lease; with a new task that only this worker can take (the
/// one call's short path) and with one that has an idempotency key.
async fn an_enqueue_for_a_waiting_stream_applies_its_acks_first(backend: Backend) {
    use nova::queue::backend::QueueBackend;
    use nova::queue::model::{AckSpec, DequeueSpec, NewTask, now_ms};
    let h = start(backend, None).await;
    let q = &h.queue;
    let new = |kind: &str, key: Option<&str>| NewTask {
        queue: "default".into(),
        kind: kind.into(),
        payload: "{}".into(),
        metadata: Vec::new(),
        priority: 0,
        max_attempts: 3,
        delay_ms: 0,
        idempotency_key: key.map(String::from),
        retry_backoff_ms: 60_000,
    };
    q.enqueue(vec![new("done", None), new("again", None)], now_ms())
        .await
        .unwrap();
    let spec = DequeueSpec {
        worker_id: "w".into(),
        queues: Vec::new(),
        lease_ms: 60_000,
        max_tasks: 2,
        max_bytes: 0,
    };
    let held = q.dequeue(spec.clone(), now_ms()).await.unwrap();
    assert_eq!(held.len(), 2);
    let ack = |t: &Task, success: bool| AckSpec {
        task_id: t.id.clone(),
        success,
        result: "r".into(),
        lease_id: Some(t.lease_id.clone()),
        retry: !success,
        error: if success { String::new() } else { "e".into() },
        brief: false,
    };
    let missing = AckSpec {
        lease_id: None,
        ..ack(
            &Task {
                id: "missing".into(),
                ..Default::default()
            },
            true,
        )
    };
    let one = DequeueSpec {
        max_tasks: 1,
        ..spec.clone()
    };
    let handed = q
        .enqueue_and_lease(
            vec![ack(&held[0], true), missing, ack(&held[1], false)],
            vec![new("fresh", None)],
            one.clone(),
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(handed.acked.len(), 3);
    assert_eq!(handed.acked[0].as_ref().unwrap().status, "COMPLETED");
    assert!(
        matches!(handed.acked[1], Err(nova::queue::QueueError::NotFound(_))),
        "{:?}",
        handed.acked[1]
    );
    // Back in the queue, due after its backoff: the lease takes the new task.
    assert_eq!(handed.acked[2].as_ref().unwrap().status, "PENDING");
    let (fresh, existing) = &handed.stored[0];
    assert!(!existing);
    assert_eq!(handed.leased.len(), 1);
    assert_eq!(handed.leased[0].id, fresh.id);
    assert_eq!(get_direct(q, &held[0].id).await.status, "COMPLETED");
    assert_eq!(get_direct(q, &held[1].id).await.status, "PENDING");
    assert_eq!(get_direct(q, &fresh.id).await.status, "IN_PROGRESS");

    let handed = q
        .enqueue_and_lease(
            vec![ack(&handed.leased[0], true)],
            vec![new("keyed", Some("k1"))],
            one.clone(),
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(handed.acked.len(), 1);
    assert_eq!(handed.acked[0].as_ref().unwrap().status, "COMPLETED");
    let (keyed, _) = &handed.stored[0];
    assert_eq!(handed.leased.len(), 1);
    assert_eq!(handed.leased[0].id, keyed.id);
    assert_eq!(handed.leased[0].status, "IN_PROGRESS");
    assert_eq!(get_direct(q, &fresh.id).await.status, "COMPLETED");

    // Another task already due: the lease takes it, the oldest, and the
    // new one waits its turn.
    let older = q.enqueue(vec![new("older", None)], now_ms()).await.unwrap();
    let older = &older[0].0;
    let handed = q
        .enqueue_and_lease(Vec::new(), vec![new("newer", None)], one.clone(), now_ms())
        .await
        .unwrap();
    assert_eq!(handed.leased.len(), 1);
    assert_eq!(handed.leased[0].id, older.id);
    let newer = &handed.stored[0].0;
    assert_eq!(get_direct(q, &newer.id).await.status, "PENDING");
    q.dequeue(one.clone(), now_ms()).await.unwrap();

    // A paused queue: stored, not leased.
    q.set_paused("default".into(), true, now_ms())
        .await
        .unwrap();
    let handed = q
        .enqueue_and_lease(Vec::new(), vec![new("paused", None)], one, now_ms())
        .await
        .unwrap();
    assert!(handed.leased.is_empty(), "{:?}", handed.leased);
    let paused = &handed.stored[0].0;
    assert_eq!(get_direct(q, &paused.id).await.status, "PENDING");
}

async fn get_direct(q: &AnyQueue, id: &str) -> Task {
    use nova::queue::backend::QueueBackend;
    q.get(id.to_string()).await.unwrap()
}

/// A worker that ends its stream while an enqueue is handing it a task:
/// the task either reaches the worker (among what `finish` returns) or is
/// pending again at once, never left leased to a stream that is gone. The
/// two race; many rounds take both sides of it.
async fn a_task_handed_to_an_ending_stream_reaches_it_or_is_pending_again(backend: Backend) {
    let mut h = start(backend, None).await;
    let producer = h.client.clone();
    for round in 0..30 {
        let queue = format!("ending-{round}");
        let work = waiting_worker(&mut h.client, &queue).await;
        let task = EnqueueRequest {
            queue: queue.clone(),
            ..req("raced")
        };
        let mut p = producer.clone();
        let sent = tokio::spawn(async move { p.enqueue(task).await });
        // A later start each round, through the moments the enqueue takes
        // the stream, stores the task and hands it over.
        for _ in 0..round {
            tokio::task::yield_now().await;
        }
        let pushed = work.finish().await;
        let sent = sent.await.unwrap().unwrap().into_inner().task.unwrap();
        let pushed: Vec<String> = pushed
            .unwrap()
            .into_iter()
            .flat_map(|r| r.tasks)
            .map(|t| t.id)
            .collect();
        let stored = get(&mut h.client, &sent.id).await;
        if pushed.contains(&sent.id) {
            assert_eq!(stored.status, "IN_PROGRESS", "round {round}: {stored:?}");
        } else {
            assert_eq!(
                (stored.status.as_str(), stored.attempts),
                ("PENDING", 0),
                "round {round}: a task the worker never saw is not waiting for it: {stored:?}"
            );
        }
    }
}

async fn a_released_task_is_pending_again_without_spending_an_attempt(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let a = enqueue(
        c,
        EnqueueRequest {
            max_attempts: 1,
            ..req("a")
        },
    )
    .await;
    let held = dequeue(c, "stopping", 60_000).await.unwrap();
    assert_eq!((held.id.as_str(), held.attempts), (a.id.as_str(), 1));
    let release = |task: &Task, lease: &str| ReleaseRequest {
        task_id: task.id.clone(),
        lease_id: lease.into(),
    };
    let refused = c.release(release(&held, "")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("lease_id"),
        "{}",
        refused.message()
    );
    let refused = c
        .release(release(&held, "not-the-lease"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(get(c, a.id.clone()).await.status, "IN_PROGRESS");

    let back = c
        .release(release(&held, &held.lease_id))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(back.status, "PENDING");
    assert_eq!(back.attempts, 0, "a release spends no attempt");
    assert!(back.worker_id.is_empty() && back.lease_id.is_empty());
    assert_eq!(
        get(c, a.id.clone()).await,
        back,
        "the answer is the stored task"
    );
    let stats = c.stats(StatsRequest {}).await.unwrap().into_inner();
    let in_progress: u64 = stats
        .counts
        .iter()
        .filter(|q| q.status == "IN_PROGRESS")
        .map(|q| q.count)
        .sum();
    assert_eq!(in_progress, 0, "{stats:?}");

    // Another worker takes it at once, with its one attempt still to spend.
    let again = dequeue(c, "other", 60_000).await.unwrap();
    assert_eq!((again.id.as_str(), again.attempts), (a.id.as_str(), 1));
    c.ack(ack(&again, true)).await.unwrap();
    let refused = c
        .release(release(&again, &again.lease_id))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(get(c, a.id.clone()).await.status, "COMPLETED");
    let refused = c
        .release(ReleaseRequest {
            task_id: "no-such-task".into(),
            lease_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
}

async fn workers(c: &mut Client) -> Vec<WorkerEntry> {
    c.list_workers(ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner()
        .workers
}

async fn a_worker_that_says_who_it_is_is_listed_while_its_stream_lasts(backend: Backend) {
    let mut h = start(backend, None).await;
    let c = &mut h.client;
    let info = WorkerInfo {
        host: "build-7".into(),
        version: "9.9.9".into(),
        pid: 4242,
        concurrency: 3,
    };
    let lease = DequeueRequest {
        worker_id: "build-7-4242-0".into(),
        lease_ms: 60_000,
        queues: vec!["default".into()],
        ..Default::default()
    };
    let mut stream = WorkStream::open_as(c, lease.clone(), 1, Some(info.clone()))
        .await
        .unwrap();
    let task = enqueue(c, req("held")).await;
    let pushed = recv(&mut stream).await.tasks;
    assert_eq!(pushed[0].id, task.id);
    let listed = workers(c).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let w = &listed[0];
    assert_eq!(w.worker_id, "build-7-4242-0");
    assert_eq!(w.info.as_ref(), Some(&info));
    assert_eq!(w.queues, ["default"]);
    assert_eq!(
        w.task_ids,
        std::slice::from_ref(&task.id),
        "the task it holds"
    );
    assert!(w.connected_at > 0 && w.last_seen_at >= w.connected_at);

    // A stream that does not say who it is works, unlisted.
    let mut anonymous = WorkStream::open(
        c,
        DequeueRequest {
            worker_id: "quiet".into(),
            ..lease.clone()
        },
        1,
    )
    .await
    .unwrap();
    let other = enqueue(c, req("other")).await;
    assert_eq!(recv(&mut anonymous).await.tasks[0].id, other.id);
    let listed = workers(c).await;
    assert_eq!(listed.len(), 1);

    // Gone with its stream.
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = workers(c).await;
        if listed.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What it says is checked, and a refusal names the field.
    let bad = WorkerInfo {
        host: "two\nlines".into(),
        ..info
    };
    refused_opening(c, lease, Some(bad), "worker.host").await;
}

/// A client that polls (Dequeue, or an ack's `next`), as every client of the
/// original proto does, has no stream to watch: it is listed from its
/// first call, with what the call says, and one without an id is not.
async fn a_worker_that_polls_is_listed_from_its_first_call(backend: Backend) {
    let mut h = start(backend, None).await;
    let mut old = original::task_queue_client::TaskQueueClient::connect(h.url.clone())
        .await
        .unwrap();
    let c = &mut h.client;
    assert!(workers(c).await.is_empty());
    let task = enqueue(c, req("polled")).await;
    let leased = old
        .dequeue(original::DequeueRequest {
            worker_id: "old-client-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(leased.id, task.id);
    // A caller without an id takes tasks as before, unlisted.
    assert!(dequeue(c, "", 60_000).await.is_none());
    let listed = workers(c).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let w = &listed[0];
    assert_eq!(w.worker_id, "old-client-1");
    assert!(w.queues.is_empty(), "every queue: {:?}", w.queues);
    assert_eq!(w.task_ids, std::slice::from_ref(&task.id));
    let info = w.info.clone().unwrap_or_default();
    assert_eq!(info.host, "127.0.0.1", "the address it called from");
    assert_eq!((info.pid, info.concurrency), (0, 0), "not known");
    assert!(info.version.is_empty());
    assert!(w.connected_at > 0 && w.last_seen_at >= w.connected_at);

    // An ack that asks for the next task is a poll too.
    let next = c
        .ack(AckRequest {
            next: Some(DequeueRequest {
                worker_id: "new-client".into(),
                lease_ms: 60_000,
                queues: vec!["default".into()],
                ..Default::default()
            }),
            task_id: leased.id.clone(),
            success: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next.next.is_empty());
    let mut listed: Vec<(String, Vec<String>)> = workers(c)
        .await
        .into_iter()
        .map(|w| (w.worker_id, w.queues))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("new-client".to_string(), vec!["default".to_string()]),
            ("old-client-1".to_string(), vec![])
        ]
    );
}

/// Opening a Work stream as `lease` and `worker` say is refused as an
/// invalid argument naming `field` (when opened, or on its first message).
async fn refused_opening(
    c: &mut Client,
    lease: DequeueRequest,
    worker: Option<WorkerInfo>,
    field: &str,
) {
    let refused = match WorkStream::open_as(c, lease, 1, worker).await {
        Ok(mut s) => s.next().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains(field), "{}", refused.message());
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await
            })*
        }
        mod redis {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Redis).await
            })*
        }
        mod redis_scripts {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::RedisScripts).await
            })*
        }
    };
}

conformance!(
    a_task_handed_to_an_ending_stream_reaches_it_or_is_pending_again,
    a_brief_enqueue_is_answered_without_the_contents,
    a_quiet_work_stream_answers_only_refused_acks,
    a_quiet_ack_goes_with_the_next_enqueue,
    a_held_quiet_ack_is_applied_without_an_enqueue,
    an_answered_ack_goes_with_the_next_enqueue,
    an_answered_ack_is_answered_without_an_enqueue,
    a_stream_holding_acks_takes_the_next_task_first,
    an_enqueue_for_a_waiting_stream_applies_its_acks_first,
    a_work_stream_answers_acks_briefly_when_asked,
    a_worker_whose_task_failed_is_offered_new_tasks_after_the_others,
    an_enqueue_stream_answers_each_task_in_order,
    a_worker_that_says_who_it_is_is_listed_while_its_stream_lasts,
    a_worker_that_polls_is_listed_from_its_first_call,
    a_released_task_is_pending_again_without_spending_an_attempt,
    a_work_stream_leases_by_credit_and_answers_acks,
    a_task_handed_to_a_waiting_stream_is_the_stored_task,
    an_ack_can_lease_the_next_task,
    a_long_poll_sees_another_servers_enqueue,
    a_paused_queue_hands_out_nothing_until_resumed,
    a_queue_bigger_than_one_answer_is_listed_in_parts,
    a_list_by_status_holds_every_such_task_in_order,
    a_dequeue_leases_only_what_its_answer_can_carry,
    a_repeated_final_ack_is_answered_and_changes_nothing,
    finished_tasks_are_purged_and_the_rest_stay,
    a_purge_larger_than_one_chunk_takes_them_all,
    original_semantics_hold,
    priority_then_age_and_delay,
    an_expired_lease_moves_the_task_and_the_late_ack_is_refused,
    a_heartbeat_keeps_the_lease,
    failed_attempts_retry_with_backoff_then_park,
    idempotency_cancel_and_stats,
    batches_and_queue_selection,
    a_long_poll_wakes_on_enqueue,
    bad_requests_are_refused_and_change_nothing,
    a_token_is_required_when_set,
    a_client_of_the_original_proto_still_works
);
