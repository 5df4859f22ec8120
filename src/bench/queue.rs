//! `nova bench queue`: the queue's throughput and latency, end to end.
//!
//! Producers enqueue `--tasks` tasks while workers dequeue and ack them, in
//! calls of `--batch` tasks. The run is made twice on fresh stores of the same
//! kind: once through a real gRPC server on loopback (each producer and worker
//! with its own connection), once against the backend directly, so the cost of
//! the network layer shows as the difference. The server runs on a runtime
//! and threads of its own, sized as `nova serve` sizes them, so it is
//! scheduled as a separate server process would be; the producers and
//! workers share a runtime with the CPUs it leaves. Each task carries the
//! time it was sent; its latency is from then until its ack returned.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex;

use crate::cli::BenchQueueArgs;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::queue::any::AnyQueue;
use crate::queue::backend::QueueBackend;
use crate::queue::client::{self, Client, EnqueueStream, WorkStream};
use crate::queue::model::{AckSpec, DequeueSpec, now_ms};
use crate::queue::proto::*;
use crate::queue::redis::RedisQueue;
use crate::queue::sqlite::SqliteQueue;
use crate::queue::{server, validate};
use crate::store_url::StoreUrl;
use crate::workspace::Workspace;

/// How long a worker's dequeue waits for work over gRPC (a long poll).
const WAIT_MS: u32 = 50;
/// Long enough that no lease expires during a run.
const LEASE_MS: u32 = 600_000;

#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub tasks: u32,
    pub producers: u32,
    pub workers: u32,
    pub batch: u32,
    /// How gRPC workers take tasks: `stream` (one Work stream each) or
    /// `unary` (Dequeue, then Ack with `next`, per call).
    pub grpc_workers: &'static str,
    /// Whether the gRPC workers' streams have quiet acks (applied acks not
    /// answered; the run ends when the streams do).
    pub quiet_acks: bool,
    /// How gRPC producers enqueue one task per call: `stream` (one
    /// EnqueueStream each) or `unary` (Enqueue); batches always use
    /// EnqueueBatch.
    pub grpc_producers: &'static str,
    /// Worker threads of the gRPC run's server runtime.
    pub server_threads: usize,
    /// Worker threads of the runtime the producers and workers run on.
    pub client_threads: usize,
    /// On SQLite: the median time of an fsync (a 4 KiB write, then
    /// `fdatasync`) in the store's folder, measured before the runs. Every
    /// durable commit waits for one, so it bounds what producers that wait
    /// for each answer can reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_p50_us: Option<f64>,
    pub runs: Vec<RunResult>,
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    /// `grpc` or `direct`.
    pub path: &'static str,
    /// Seconds until the last enqueue returned.
    pub enqueue_seconds: f64,
    /// Seconds until the last ack returned.
    pub total_seconds: f64,
    pub enqueue_per_second: f64,
    pub end_to_end_per_second: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

/// A fresh store for one run, removed afterwards.
enum Scratch {
    Sqlite(PathBuf),
    Redis(RedisQueue),
}

impl Scratch {
    async fn cleanup(self) {
        match self {
            Scratch::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Scratch::Redis(queue) => {
                let _ = queue.delete_all().await;
            }
        }
    }
}

async fn fresh_store(base: &StoreUrl, tmp: &Path, run: &str) -> Result<(AnyQueue, Scratch)> {
    match base {
        StoreUrl::Sqlite(path) => {
            let path = if path.as_os_str().is_empty() {
                tmp.join(format!("bench-{run}.db"))
            } else {
                let mut p = path.clone().into_os_string();
                p.push(format!(".{run}"));
                PathBuf::from(p)
            };
            if path.exists() {
                return Err(Error::usage(format!(
                    "--store: {} exists; the benchmark writes only to files it creates",
                    path.display()
                )));
            }
            let queue = SqliteQueue::open(&path).map_err(|e| Error::Failed(e.to_string()))?;
            Ok((AnyQueue::Sqlite(queue), Scratch::Sqlite(path)))
        }
        StoreUrl::Redis(url) => {
            let prefix = format!("nova:bench:{}:{run}:", crate::queue::model::new_id());
            let queue = RedisQueue::connect_with_prefix(url, &prefix)
                .await
                .map_err(|e| Error::Failed(e.to_string()))?;
            Ok((AnyQueue::Redis(queue.clone()), Scratch::Redis(queue)))
        }
    }
}

/// How producers and workers reach the queue.
#[derive(Clone)]
enum Endpoint {
    Grpc(Client),
    Direct(Arc<AnyQueue>),
}

type Failure = String;

impl Endpoint {
    async fn enqueue(&mut self, requests: Vec<EnqueueRequest>) -> std::result::Result<(), Failure> {
        match self {
            Endpoint::Grpc(c) if requests.len() == 1 => {
                let request = requests.into_iter().next().expect("one request");
                c.enqueue(request).await.map_err(|e| e.to_string())?;
            }
            Endpoint::Grpc(c) => {
                c.enqueue_batch(EnqueueBatchRequest { tasks: requests })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Endpoint::Direct(q) => {
                // The service validates every request; so does this path.
                let tasks = requests
                    .into_iter()
                    .map(|r| validate::enqueue("", r))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                q.enqueue(tasks, now_ms())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    async fn dequeue(&mut self, worker: &str, max: u32) -> std::result::Result<Vec<Task>, Failure> {
        match self {
            Endpoint::Grpc(c) => Ok(c
                .dequeue(DequeueRequest {
                    worker_id: worker.to_string(),
                    lease_ms: LEASE_MS,
                    wait_ms: WAIT_MS,
                    max_tasks: max,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .tasks),
            Endpoint::Direct(q) => {
                let spec = DequeueSpec {
                    worker_id: worker.to_string(),
                    queues: Vec::new(),
                    lease_ms: LEASE_MS,
                    max_tasks: max,
                    max_bytes: 0,
                };
                let tasks = q.dequeue(spec, now_ms()).await.map_err(|e| e.to_string())?;
                if tasks.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok(tasks)
            }
        }
    }

    /// Ack `tasks`; the tasks leased for `worker` in the same call, when
    /// one ack over gRPC can (an ack's `next`, as `nova worker` does).
    async fn ack(
        &mut self,
        tasks: &[Task],
        worker: &str,
    ) -> std::result::Result<Vec<Task>, Failure> {
        let request = |t: &Task| AckRequest {
            task_id: t.id.clone(),
            success: true,
            lease_id: t.lease_id.clone(),
            ..Default::default()
        };
        match self {
            Endpoint::Grpc(c) if tasks.len() == 1 => {
                let mut ack = request(&tasks[0]);
                ack.next = Some(DequeueRequest {
                    worker_id: worker.to_string(),
                    lease_ms: LEASE_MS,
                    max_tasks: 1,
                    ..Default::default()
                });
                let answer = c.ack(ack).await.map_err(|e| e.to_string())?;
                return Ok(answer.into_inner().next);
            }
            Endpoint::Grpc(c) => {
                let outcomes = c
                    .ack_batch(AckBatchRequest {
                        acks: tasks.iter().map(request).collect(),
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .outcomes;
                if let Some(bad) = outcomes.iter().find(|o| o.code != 0) {
                    return Err(format!("ack of {} refused: {}", bad.task_id, bad.message));
                }
            }
            Endpoint::Direct(q) => {
                let acks = tasks
                    .iter()
                    .map(|t| AckSpec {
                        task_id: t.id.clone(),
                        success: true,
                        result: String::new(),
                        lease_id: Some(t.lease_id.clone()),
                        retry: false,
                        error: String::new(),
                        brief: true,
                    })
                    .collect();
                for outcome in q.ack(acks, now_ms()).await.map_err(|e| e.to_string())? {
                    outcome.map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(Vec::new())
    }
}

struct Shared {
    start: Instant,
    acked: AtomicU64,
    /// True once every task counted: workers waiting for more stop waiting
    /// then, so the run ends with its last task, not a wait's time later.
    done: tokio::sync::watch::Sender<bool>,
    latencies_us: Mutex<Vec<u64>>,
}

impl Shared {
    /// Count `n` more tasks of `total` done.
    fn count(&self, n: u64, total: u64) {
        if self.acked.fetch_add(n, Ordering::Relaxed) + n >= total {
            self.done.send_replace(true);
        }
    }
}

async fn produce(
    mut endpoint: Endpoint,
    shared: Arc<Shared>,
    count: u32,
    batch: u32,
) -> std::result::Result<Duration, Failure> {
    let mut left = count;
    while left > 0 {
        let n = left.min(batch);
        let sent = shared.start.elapsed().as_micros() as u64;
        let requests = (0..n)
            .map(|_| EnqueueRequest {
                r#type: "bench".into(),
                payload: sent.to_string(),
                brief: true,
                ..Default::default()
            })
            .collect();
        endpoint.enqueue(requests).await?;
        left -= n;
    }
    Ok(shared.start.elapsed())
}

/// A producer of one task per call on an EnqueueStream of its own.
async fn produce_stream(
    mut client: Client,
    shared: Arc<Shared>,
    count: u32,
) -> std::result::Result<Duration, Failure> {
    let mut stream = EnqueueStream::open(&mut client)
        .await
        .map_err(|e| e.to_string())?;
    for _ in 0..count {
        let sent = shared.start.elapsed().as_micros() as u64;
        stream
            .enqueue(EnqueueRequest {
                r#type: "bench".into(),
                payload: sent.to_string(),
                brief: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(shared.start.elapsed())
}

async fn work(
    mut endpoint: Endpoint,
    shared: Arc<Shared>,
    name: String,
    total: u64,
    batch: u32,
) -> std::result::Result<(), Failure> {
    let mut latencies = Vec::new();
    let mut ready = Vec::new();
    let mut done = shared.done.subscribe();
    while shared.acked.load(Ordering::Relaxed) < total {
        let tasks = if ready.is_empty() {
            tokio::select! {
                tasks = endpoint.dequeue(&name, batch) => tasks?,
                _ = done.wait_for(|done| *done) => break,
            }
        } else {
            std::mem::take(&mut ready)
        };
        if tasks.is_empty() {
            continue;
        }
        ready = endpoint.ack(&tasks, &name).await?;
        record_latencies(&shared, &tasks, &mut latencies)?;
        shared.count(tasks.len() as u64, total);
    }
    shared.latencies_us.lock().await.extend(latencies);
    Ok(())
}

/// Each task's time from enqueue (its payload) to now, in microseconds.
fn record_latencies(
    shared: &Shared,
    tasks: &[Task],
    latencies: &mut Vec<u64>,
) -> std::result::Result<(), Failure> {
    let now = shared.start.elapsed().as_micros() as u64;
    for t in tasks {
        let sent: u64 = t
            .payload
            .parse()
            .map_err(|_| "a bench task lost its payload")?;
        latencies.push(now.saturating_sub(sent));
    }
    Ok(())
}

/// A gRPC worker on the Work stream: `batch` tasks of credit, each message's
/// tasks acked together with as much new credit. With `quiet` acks a task
/// counts when it arrives, and the worker's run ends when the server has
/// ended its stream (every ack applied); otherwise when each ack is answered.
async fn work_stream(
    mut client: Client,
    shared: Arc<Shared>,
    name: String,
    total: u64,
    batch: u32,
    quiet: bool,
) -> std::result::Result<(), Failure> {
    let lease = DequeueRequest {
        worker_id: name,
        lease_ms: LEASE_MS,
        ..Default::default()
    };
    let mut stream = if quiet {
        WorkStream::open_quiet(&mut client, lease, batch).await
    } else {
        WorkStream::open(&mut client, lease, batch).await
    }
    .map_err(|e| e.to_string())?;
    let mut latencies = Vec::new();
    let mut done = shared.done.subscribe();
    while shared.acked.load(Ordering::Relaxed) < total {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = done.wait_for(|done| *done) => break,
        };
        let message = message
            .map_err(|e| e.to_string())?
            .ok_or("the server ended the work stream")?;
        if let Some(bad) = message.acks.iter().find(|o| o.code != 0) {
            return Err(format!("ack of {} refused: {}", bad.task_id, bad.message));
        }
        // A task counts once the server answers that its ack was applied
        // (with quiet acks, when it arrives: the run then waits for the
        // stream's end, which comes after every ack was applied).
        shared.count(message.acks.len() as u64, total);
        let tasks = message.tasks;
        if tasks.is_empty() {
            continue;
        }
        if quiet {
            shared.count(tasks.len() as u64, total);
        }
        let acks = tasks
            .iter()
            .map(|t| AckRequest {
                task_id: t.id.clone(),
                success: true,
                lease_id: t.lease_id.clone(),
                ..Default::default()
            })
            .collect();
        stream
            .send(tasks.len() as u32, acks)
            .await
            .map_err(|e| e.to_string())?;
        record_latencies(&shared, &tasks, &mut latencies)?;
    }
    if quiet {
        for message in stream.finish().await.map_err(|e| e.to_string())? {
            if let Some(bad) = message.acks.iter().find(|o| o.code != 0) {
                return Err(format!("ack of {} refused: {}", bad.task_id, bad.message));
            }
        }
    }
    shared.latencies_us.lock().await.extend(latencies);
    Ok(())
}

/// What a run drives: a server's URL, or the backend itself.
enum Target {
    Grpc(String),
    Direct(AnyQueue),
}

/// Connect a client per producer and worker, or hand each the backend.
async fn endpoints(target: &Target, n: u32) -> Result<Vec<Endpoint>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match target {
            Target::Grpc(url) => Endpoint::Grpc(
                client::connect(url, None)
                    .await
                    .map_err(|e| Error::Failed(e.to_string()))?,
            ),
            Target::Direct(queue) => Endpoint::Direct(Arc::new(queue.clone())),
        });
    }
    Ok(out)
}

/// The gRPC run's server: a fresh store served on loopback by a thread with
/// a runtime of its own, as a `nova serve` process would serve it.
struct ServerThread {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<()>>,
}

impl ServerThread {
    async fn start(base: &StoreUrl, tmp: &Path, threads: Option<NonZeroUsize>) -> Result<Self> {
        let rt = crate::runtime::server_runtime(threads)?;
        let (base, tmp) = (base.clone(), tmp.to_path_buf());
        let (ready, started) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    let opened = async {
                        let (queue, scratch) = fresh_store(&base, &tmp, "grpc").await?;
                        let (listener, addr) = server::loopback_listener().await?;
                        Ok::<_, Error>((queue, scratch, listener, addr))
                    };
                    let (queue, scratch, listener, addr) = match opened.await {
                        Ok(opened) => opened,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = ready.send(Ok(addr));
                    let served = server::serve(queue, listener, None, async {
                        let _ = stopped.await;
                    })
                    .await;
                    scratch.cleanup().await;
                    served.map_err(|e| Error::Failed(format!("benchmark server: {e}")))
                })
            })
            .map_err(|e| Error::Failed(format!("cannot start the benchmark's server: {e}")))?;
        let addr = started.await.map_err(|_| {
            Error::Failed("the benchmark's server stopped before it started".into())
        })??;
        Ok(ServerThread {
            url: format!("http://{addr}"),
            stop,
            thread,
        })
    }

    /// Stop serving, remove the store, and wait for the thread.
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| Error::Failed(format!("benchmark server: {e}")))?
            .map_err(|_| Error::Failed("the benchmark's server panicked".into()))?
    }
}

/// Percentile `p` (0 to 100) of ascending microseconds, in milliseconds.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    super::pick(sorted, p / 100.0).map_or(0.0, |us| us as f64 / 1000.0)
}

async fn one_run(path: &'static str, target: Target, args: &BenchQueueArgs) -> Result<RunResult> {
    let producers = endpoints(&target, args.producers).await?;
    let workers = endpoints(&target, args.workers).await?;

    let shared = Arc::new(Shared {
        start: Instant::now(),
        acked: AtomicU64::new(0),
        done: tokio::sync::watch::channel(false).0,
        latencies_us: Mutex::new(Vec::with_capacity(args.tasks as usize)),
    });
    let total = args.tasks as u64;
    let worker_handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let name = format!("bench-worker-{i}");
            match e {
                Endpoint::Grpc(client) if !args.unary => tokio::spawn(work_stream(
                    client,
                    shared.clone(),
                    name,
                    total,
                    args.batch,
                    args.quiet_acks,
                )),
                e => tokio::spawn(work(e, shared.clone(), name, total, args.batch)),
            }
        })
        .collect();
    let producer_handles: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            // Spread the tasks; the first producers take the remainder.
            let share =
                args.tasks / args.producers + u32::from((i as u32) < args.tasks % args.producers);
            match e {
                Endpoint::Grpc(client) if !args.unary && args.batch == 1 => {
                    tokio::spawn(produce_stream(client, shared.clone(), share))
                }
                e => tokio::spawn(produce(e, shared.clone(), share, args.batch)),
            }
        })
        .collect();

    let failed = |e: Failure| Error::Failed(format!("benchmark ({path}): {e}"));
    let joined = |e: tokio::task::JoinError| Error::Failed(format!("benchmark ({path}): {e}"));
    let mut enqueue_done = Duration::ZERO;
    for h in producer_handles {
        enqueue_done = enqueue_done.max(h.await.map_err(joined)?.map_err(failed)?);
    }
    for h in worker_handles {
        h.await.map_err(joined)?.map_err(failed)?;
    }
    let total_time = shared.start.elapsed();

    let mut latencies = std::mem::take(&mut *shared.latencies_us.lock().await);
    latencies.sort_unstable();
    let n = args.tasks as f64;
    Ok(RunResult {
        path,
        enqueue_seconds: enqueue_done.as_secs_f64(),
        total_seconds: total_time.as_secs_f64(),
        enqueue_per_second: n / enqueue_done.as_secs_f64().max(1e-9),
        end_to_end_per_second: n / total_time.as_secs_f64().max(1e-9),
        latency_p50_ms: percentile(&latencies, 50.0),
        latency_p99_ms: percentile(&latencies, 99.0),
        latency_max_ms: latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
    })
}

pub fn run(ws: &Workspace, out: &Output, args: &BenchQueueArgs) -> Result<()> {
    let base = match &args.store {
        Some(url) => StoreUrl::parse(url, &ws.root)?,
        None => StoreUrl::Sqlite(PathBuf::new()),
    };
    let label = match (&base, &args.store) {
        (StoreUrl::Sqlite(_), None) => "sqlite (temporary file, durable)".to_string(),
        (_, Some(url)) | (StoreUrl::Redis(url), None) => crate::store_url::without_password(url),
    };
    let server_threads = args
        .server_threads
        .map_or_else(crate::runtime::server_threads, NonZeroUsize::get);
    let client_threads = args
        .client_threads
        .map_or_else(|| default_client_threads(server_threads), NonZeroUsize::get);
    let rt = crate::runtime::sized_runtime(client_threads, "nova-bench-client")?;
    let report = rt.block_on(async {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let fsync_p50_us = match &base {
            StoreUrl::Sqlite(path) => {
                let dir = match path.parent() {
                    Some(dir) if !path.as_os_str().is_empty() => dir.to_path_buf(),
                    _ => tmp.path().to_path_buf(),
                };
                Some(
                    tokio::task::spawn_blocking(move || fsync_median_us(&dir))
                        .await
                        .map_err(|e| Error::Failed(e.to_string()))??,
                )
            }
            StoreUrl::Redis(_) => None,
        };
        let mut runs = Vec::new();
        let paths: &[&'static str] = if args.grpc_only {
            &["grpc"]
        } else {
            &["grpc", "direct"]
        };
        for &path in paths {
            let result = if path == "grpc" {
                let server = ServerThread::start(&base, tmp.path(), args.server_threads).await?;
                let result = one_run(path, Target::Grpc(server.url.clone()), args).await;
                server.stop().await?;
                result
            } else {
                let (queue, scratch) = fresh_store(&base, tmp.path(), path).await?;
                let result = one_run(path, Target::Direct(queue), args).await;
                scratch.cleanup().await;
                result
            };
            runs.push(result?);
        }
        Ok::<_, Error>(Report {
            store: label,
            tasks: args.tasks,
            producers: args.producers,
            workers: args.workers,
            batch: args.batch,
            grpc_workers: if args.unary { "unary" } else { "stream" },
            quiet_acks: args.quiet_acks,
            grpc_producers: if args.unary || args.batch > 1 {
                "unary"
            } else {
                "stream"
            },
            server_threads,
            client_threads,
            fsync_p50_us,
            runs,
        })
    })?;
    print(out, &report)
}

/// The CPUs the server's threads leave, at least one: producers and
/// workers with more threads than that wake each other for every message
/// and take the CPU the server and its store need (on 2 cores, with Redis,
/// two client threads finished 10 to 15 % fewer tasks a second than one;
/// docs/performance.md). BullMQ's producers and workers share node's one.
fn default_client_threads(server_threads: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    cpus.saturating_sub(server_threads).max(1)
}

fn print(out: &Output, report: &Report) -> Result<()> {
    if out.json {
        return out.json(report);
    }
    out.text(&format!(
        "queue benchmark: {} tasks, {} producers ({} over gRPC), {} workers ({} over gRPC{}), \
         batch {}, server threads {}, client threads {}, store {}\n",
        report.tasks,
        report.producers,
        report.grpc_producers,
        report.workers,
        report.grpc_workers,
        if report.quiet_acks {
            ", quiet acks"
        } else {
            ""
        },
        report.batch,
        report.server_threads,
        report.client_threads,
        report.store
    ))?;
    if let Some(us) = report.fsync_p50_us {
        out.text(&format!(
            "this disk: an fsync takes {us:.0} µs at the median; every durable commit waits for one\n"
        ))?;
    }
    let mut table = out.table(&[
        "path",
        "enqueue/s",
        "end-to-end/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "seconds",
    ]);
    for r in &report.runs {
        table.add_row(vec![
            r.path.to_string(),
            format!("{:.0}", r.enqueue_per_second),
            format!("{:.0}", r.end_to_end_per_second),
            format!("{:.2}", r.latency_p50_ms),
            format!("{:.2}", r.latency_p99_ms),
            format!("{:.2}", r.latency_max_ms),
            format!("{:.2}", r.total_seconds),
        ]);
    }
    out.print_table(&table)
}

/// How many samples [`fsync_median_us`] takes.
const FSYNC_SAMPLES: usize = 50;

/// The median time, in microseconds, of writing 4 KiB to a scratch file in
/// `dir` and `fdatasync`ing it (the flush a durable SQLite commit waits for).
fn fsync_median_us(dir: &Path) -> Result<f64> {
    use std::io::{Seek, Write};
    let mut file = tempfile::tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    let page = [0x5a_u8; 4096];
    let mut times = Vec::with_capacity(FSYNC_SAMPLES);
    for _ in 0..FSYNC_SAMPLES {
        let start = Instant::now();
        file.seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.write_all(&page))
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::io(dir, e))?;
        times.push(start.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
