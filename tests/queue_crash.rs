//! Crash safety: `nova serve` killed with SIGKILL in the middle of a run
//! loses nothing.
//!
//! A producer enqueues 10,000 tasks (each with an idempotency key, so a batch
//! it resends after the crash is not stored twice) while four workers
//! dequeue and ack them. Part-way through, the server process is killed with
//! SIGKILL and started again on the same store and port, after the leases
//! the workers held have run out. The clients retry across the gap as real
//! clients do; acks of expired leases are refused and those tasks run again. At the end every task is `COMPLETED`,
//! none is missing or duplicated, and a task ran twice only if its first
//! lease was handed out before the kill and its ack never took effect.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use nova::queue::client::{self, Client};
use nova::queue::proto::*;
use tonic::Code;

const TASKS: usize = 10_000;
const PRODUCER_BATCH: usize = 100;
const WORKERS: usize = 4;
const WORKER_BATCH: u32 = 16;
// Long enough that an ack slowed by a loaded machine (Redis fsyncing every
// write) still lands within its lease; a shorter one made a late ack look
// like a task run twice without cause.
const LEASE_MS: u32 = 5_000;

/// A running `nova serve`, ended when dropped (a failed assertion must not
/// leave it running).
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(store: &str, home: &std::path::Path, listen: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nova"))
        .args([
            "--json", "serve", "--listen", listen, "--store", store, "--create",
        ])
        .env("NOVA_HOME", home)
        .env("NOVA_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let announced: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("nova serve announced {line:?}: {e}"));
    Server {
        child,
        url: announced["listening"].as_str().unwrap().to_string(),
    }
}

/// One lease a worker was given, and whether its ack took effect.
#[derive(Debug, Clone)]
struct Delivery {
    /// When the worker asked for it: the lease cannot be older. (When the
    /// answer was read is no bound: a busy machine may run the worker only
    /// after the kill, for a lease the server gave before it.)
    dequeued_at: Instant,
    acked: bool,
}

#[derive(Default)]
struct Ledger {
    deliveries: Mutex<HashMap<String, Vec<Delivery>>>,
    completed: AtomicUsize,
}

async fn connect(url: &str) -> Client {
    loop {
        match client::connect(url, None).await {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Is this a failure of the transport (the server is gone) rather than an answer?
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

async fn produce(url: String) {
    let mut c = connect(&url).await;
    for start in (0..TASKS).step_by(PRODUCER_BATCH) {
        let batch = EnqueueBatchRequest {
            tasks: (start..start + PRODUCER_BATCH)
                .map(|i| EnqueueRequest {
                    r#type: "crash".into(),
                    payload: format!("{{\"n\":{i}}}"),
                    idempotency_key: format!("crash-{i}"),
                    ..Default::default()
                })
                .collect(),
        };
        loop {
            match c.enqueue_batch(batch.clone()).await {
                Ok(_) => break,
                Err(e) if transient(&e) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("enqueue refused: {e:?}"),
            }
        }
    }
}

async fn work(url: String, name: String, ledger: Arc<Ledger>) {
    let mut c = connect(&url).await;
    while ledger.completed.load(Ordering::SeqCst) < TASKS {
        let asked_at = Instant::now();
        let tasks = match c
            .dequeue(DequeueRequest {
                worker_id: name.clone(),
                lease_ms: LEASE_MS,
                wait_ms: 200,
                max_tasks: WORKER_BATCH,
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner().tasks,
            Err(e) if transient(&e) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => panic!("dequeue refused: {e:?}"),
        };
        if tasks.is_empty() {
            continue;
        }
        {
            let mut d = ledger.deliveries.lock().unwrap();
            for t in &tasks {
                d.entry(t.id.clone()).or_default().push(Delivery {
                    dequeued_at: asked_at,
                    acked: false,
                });
            }
        }
        let acks = AckBatchRequest {
            acks: tasks
                .iter()
                .map(|t| AckRequest {
                    task_id: t.id.clone(),
                    success: true,
                    lease_id: t.lease_id.clone(),
                    ..Default::default()
                })
                .collect(),
        };
        // A worker keeps trying to deliver its acks; once the server answers,
        // each ack either took effect or was refused because the lease is gone.
        let outcomes = loop {
            match c.ack_batch(acks.clone()).await {
                Ok(r) => break r.into_inner().outcomes,
                Err(e) if transient(&e) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("ack batch refused: {e:?}"),
            }
        };
        let mut d = ledger.deliveries.lock().unwrap();
        for o in outcomes {
            match o.code {
                0 => {
                    d.get_mut(&o.task_id).unwrap().last_mut().unwrap().acked = true;
                    ledger.completed.fetch_add(1, Ordering::SeqCst);
                }
                c if c == Code::FailedPrecondition as i32 => {}
                other => panic!("ack of {} answered {other}: {}", o.task_id, o.message),
            }
        }
    }
}

async fn crash_and_recover(store: &str) {
    let home = tempfile::tempdir().unwrap();
    let mut server = start_server(store, home.path(), "127.0.0.1:0");
    let url = server.url.clone();
    let ledger = Arc::new(Ledger::default());

    let producer = tokio::spawn(produce(url.clone()));
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(work(url.clone(), format!("w{i}"), ledger.clone())))
        .collect();

    // Kill the server once a good part of the work is done.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ledger.completed.load(Ordering::SeqCst) < TASKS / 3 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let killed_at = Instant::now();
    let done_at_kill = ledger.completed.load(Ordering::SeqCst);
    assert!(
        done_at_kill < TASKS,
        "the kill came after the run had finished"
    );

    // Stay down past the lease length, so the leases held at the kill expire.
    tokio::time::sleep(Duration::from_millis(LEASE_MS as u64 + 500)).await;
    let listen = url.trim_start_matches("http://").to_string();
    let mut server = start_server(store, home.path(), &listen);
    producer.await.unwrap();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(180), w)
            .await
            .expect("the workers finish after the restart")
            .unwrap();
    }

    let mut c = connect(&url).await;
    let tasks = c
        .list_tasks(ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), TASKS, "one stored task per enqueued task");
    let mut keys: Vec<&str> = tasks.iter().map(|t| t.idempotency_key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), TASKS, "no task is missing or stored twice");
    let not_done: Vec<_> = tasks.iter().filter(|t| t.status != "COMPLETED").collect();
    assert!(not_done.is_empty(), "not completed: {not_done:?}");

    let deliveries = ledger.deliveries.lock().unwrap();
    assert_eq!(deliveries.len(), TASKS, "every task was delivered");
    let mut twice = 0;
    for (id, runs) in deliveries.iter() {
        assert_eq!(
            runs.iter().filter(|d| d.acked).count(),
            1,
            "task {id} was completed exactly once: {runs:?}"
        );
        assert!(runs.last().unwrap().acked, "task {id}: {runs:?}");
        if runs.len() > 1 {
            twice += 1;
            for earlier in &runs[..runs.len() - 1] {
                assert!(
                    earlier.dequeued_at < killed_at && !earlier.acked,
                    "task {id} ran again although its earlier lease was not cut by the kill: {runs:?}"
                );
            }
        }
    }
    // At most every lease the workers held at the kill.
    assert!(
        twice <= WORKERS * WORKER_BATCH as usize,
        "{twice} tasks ran twice"
    );
    eprintln!("{store}: killed after {done_at_kill} of {TASKS} acks; {twice} tasks ran twice");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_sigkill_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("queue.db").display());
    crash_and_recover(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_survives_sigkill_of_the_server() {
    let redis = RedisServer::start_durable();
    crash_and_recover(&redis.url()).await;
}
