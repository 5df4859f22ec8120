//! `nova serve` and `nova queue`: the queue's server and its command-line client.
//!
//! Without `--server`, `nova queue` starts the same gRPC server in process on
//! a loopback port over the workspace's store and talks to it like any remote
//! client would, so both paths run the same code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tonic::Code;

use super::any::AnyQueue;
use super::backend::QueueBackend;
use super::client::{self, Client};
use super::model::Status;
use super::open::open_queue;
use super::proto::*;
use super::server;
use crate::audit::Event;
use crate::audit::operator;
use crate::cli::{QueueAction, QueueArgs, ServeArgs};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::files::read_token;
use crate::output::Output;
use crate::store_url::StoreUrl;
use crate::workspace::{Workspace, ensure_dir};

/// The login name of the person running nova, as the policy subject's agent.
fn operator_name() -> String {
    operator()
        .strip_prefix("operator:")
        .unwrap_or("unknown")
        .to_string()
}

pub fn serve(ws: &Workspace, out: &Output, args: &ServeArgs) -> Result<()> {
    let token = read_token(args.token_file.as_deref())?;
    if !args.listen.ip().is_loopback() && token.is_none() && !args.insecure {
        return Err(Error::usage(format!(
            "--listen {}: a non-loopback address needs --token-file FILE (or --insecure to serve without one)",
            args.listen
        )));
    }
    let store = StoreUrl::resolve(ws, &args.store.choice())?;
    let policy = crate::policy::open(ws)?;
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        let input = crate::policy::input(
            &operator_name(),
            "operator",
            "serve",
            &args.listen.to_string(),
            json!({
                "loopback": args.listen.ip().is_loopback(),
                "auth": token.is_some(),
                "insecure": args.insecure,
            }),
        );
        let decision_log = crate::audit::workspace_log(ws, &args.store.choice(), true).await?;
        policy.authorize(decision_log.as_ref(), &input).await?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Error::Failed(format!("cannot listen on {}: {e}", args.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Failed(e.to_string()))?;
        let metrics =
            match args.metrics {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    Error::Failed(format!("--metrics: cannot listen on {addr}: {e}"))
                })?),
                None => None,
            };
        let metrics_url = match &metrics {
            Some(l) => Some(format!(
                "http://{}/metrics",
                l.local_addr().map_err(|e| Error::Failed(e.to_string()))?
            )),
            None => None,
        };
        let (backend, label) = open_queue(&store).await?;
        announce(out, addr, &label, token.is_some(), metrics_url.as_deref())?;

        let (stopped, stop) = tokio::sync::watch::channel(false);
        let metrics_server = metrics.map(|listener| {
            let mut stop = stop.clone();
            tokio::spawn(crate::kpi::prometheus::serve(
                listener,
                metrics_page(backend.clone()),
                async move {
                    let _ = stop.changed().await;
                },
            ))
        });
        let db = ws.db_path();
        let saver = tokio::spawn(save_kpis_every(db.clone()));
        let purger = args
            .keep_finished
            .map(|keep| tokio::spawn(purge_every(backend.clone(), keep)));
        let audit = crate::audit::workspace_log(ws, &args.store.choice(), true).await?;
        let details = json!({
            "listen": addr.to_string(),
            "store": label,
            "auth": token.is_some(),
            "metrics": metrics_url,
        });
        if let Some(log) = &audit {
            crate::audit::record(
                log,
                Event::new(operator(), "serve.start", format!("http://{addr}"), "ok")
                    .details(details.clone()),
            )
            .await;
        }

        let served =
            server::serve_audited(backend, listener, token, audit.clone(), server::signal()).await;
        if let Some(log) = &audit {
            let outcome = if served.is_ok() { "ok" } else { "failed" };
            crate::audit::record(
                log,
                Event::new(operator(), "serve.stop", format!("http://{addr}"), outcome)
                    .details(details),
            )
            .await;
        }
        let _ = stopped.send(true);
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        saver.abort();
        if let Some(p) = purger {
            p.abort();
        }
        let _ = tokio::task::spawn_blocking(move || save_kpis(&db)).await;
        served.map_err(|e| Error::Failed(format!("server error: {e}")))?;
        tracing::info!("server stopped");
        Ok(())
    })
}

/// How often `nova serve` writes its KPI snapshot to the workspace database.
const KPI_SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

fn save_kpis(db: &Path) {
    let saved = db
        .parent()
        .map_or(Ok(()), ensure_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::store::Store::open(db).map_err(|e| e.to_string()))
        .and_then(|store| {
            crate::kpi::store::save(store.connection(), "serve", &crate::kpi::snapshot())
                .map_err(|e| e.to_string())
        });
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not save the KPI snapshot");
    }
}

async fn save_kpis_every(db: PathBuf) {
    let mut tick = tokio::time::interval(KPI_SNAPSHOT_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let db = db.clone();
        let _ = tokio::task::spawn_blocking(move || save_kpis(&db)).await;
    }
}

/// The host figures of `nova monitor`, as gauges.
fn host_gauges(text: &mut String, s: &crate::monitor::Sample) {
    use crate::kpi::prometheus::gauge;
    gauge(
        text,
        "host.cpu_percent",
        "CPU use since the last scrape.",
        &[(vec![], s.cpu_percent as f64)],
    );
    gauge(
        text,
        "host.load1",
        "Load average over a minute.",
        &[(vec![], s.load[0])],
    );
    gauge(
        text,
        "host.memory_used_bytes",
        "Memory in use.",
        &[(vec![], s.memory_used as f64)],
    );
    gauge(
        text,
        "host.memory_total_bytes",
        "Memory installed.",
        &[(vec![], s.memory_total as f64)],
    );
    let disks: Vec<_> = s
        .disks
        .iter()
        .map(|d| (vec![("mount", d.mount.as_str())], d.free as f64))
        .collect();
    gauge(
        text,
        "host.disk_free_bytes",
        "Free space per mounted file system.",
        &disks,
    );
    gauge(
        text,
        "host.net_rx_bytes_per_second",
        "Bytes received per second.",
        &[(vec![], s.net_rx_bytes_per_second)],
    );
    gauge(
        text,
        "host.net_tx_bytes_per_second",
        "Bytes sent per second.",
        &[(vec![], s.net_tx_bytes_per_second)],
    );
    if s.gpus.is_empty() {
        return;
    }
    let idx: Vec<String> = s.gpus.iter().map(|g| g.index.to_string()).collect();
    let per =
        |f: &dyn Fn(&crate::monitor::GpuSample) -> Option<f64>| -> Vec<(Vec<(&str, &str)>, f64)> {
            s.gpus
                .iter()
                .zip(&idx)
                .filter_map(|(g, i)| f(g).map(|v| (vec![("gpu", i.as_str())], v)))
                .collect()
        };
    gauge(
        text,
        "gpu.utilization_percent",
        "GPU busy time.",
        &per(&|g| g.utilization.map(f64::from)),
    );
    gauge(
        text,
        "gpu.memory_used_bytes",
        "GPU memory in use.",
        &per(&|g| Some(g.memory_used as f64)),
    );
    gauge(
        text,
        "gpu.temperature_celsius",
        "GPU temperature.",
        &per(&|g| g.temperature.map(f64::from)),
    );
    gauge(
        text,
        "gpu.power_watts",
        "GPU power draw.",
        &per(&|g| g.power),
    );
}

/// The `/metrics` page: this process's KPIs and the queue's depth now.
fn metrics_page(
    backend: AnyQueue,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    use crate::kpi::prometheus;
    let sampler = std::sync::Arc::new(tokio::sync::Mutex::new(crate::monitor::Sampler::new().ok()));
    move || {
        let backend = backend.clone();
        let sampler = sampler.clone();
        Box::pin(async move {
            let mut text = prometheus::render(&crate::kpi::snapshot());
            if let Some(s) = sampler.lock().await.as_mut() {
                host_gauges(&mut text, &s.sample());
            }
            match crate::queue::backend::QueueBackend::stats(&backend, super::model::now_ms()).await
            {
                Ok(stats) => {
                    let samples: Vec<_> = stats
                        .counts
                        .iter()
                        .map(|(q, st, n)| {
                            (
                                vec![("queue", q.as_str()), ("status", st.as_str())],
                                *n as f64,
                            )
                        })
                        .collect();
                    prometheus::gauge(
                        &mut text,
                        "queue.tasks",
                        "Tasks by queue and status.",
                        &samples,
                    );
                    prometheus::gauge(
                        &mut text,
                        "queue.oldest_pending_age_seconds",
                        "Age of the oldest due pending task.",
                        &[(vec![], stats.oldest_pending_age_ms as f64 / 1000.0)],
                    );
                    prometheus::gauge(
                        &mut text,
                        "queue.leases_in_flight",
                        "Tasks held by a live lease.",
                        &[(vec![], stats.in_flight_leases as f64)],
                    );
                }
                Err(e) => tracing::warn!(error = %e, "queue stats for /metrics failed"),
            }
            text
        })
    }
}

fn announce(
    out: &Output,
    addr: SocketAddr,
    store: &str,
    auth: bool,
    metrics: Option<&str>,
) -> Result<()> {
    if out.json {
        return out.json_line(&json!({
            "listening": format!("http://{addr}"),
            "store": store,
            "auth": auth,
            "metrics": metrics,
        }));
    }
    out.text(&format!(
        "nova queue server listening on http://{addr} (store {store}{}){}\n",
        if auth { ", bearer token required" } else { "" },
        metrics
            .map(|m| format!("; metrics at {m}"))
            .unwrap_or_default()
    ))
}

pub fn run(ws: &Workspace, out: &Output, args: &QueueArgs) -> Result<()> {
    if let QueueAction::Purge { older_than, queue } = &args.action {
        return purge(ws, out, args, *older_than, queue.clone());
    }
    let action = parse_action(&args.action)?;
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        if let Action::Enqueue(req) = &action {
            let policy = crate::policy::open(ws)?;
            let audit = crate::audit::workspace_log(ws, &args.store.choice(), true).await?;
            let queue = if req.queue.is_empty() {
                "default"
            } else {
                req.queue.as_str()
            };
            let input = crate::policy::input(
                &operator_name(),
                "operator",
                "enqueue",
                &req.r#type,
                json!({"queue": queue, "server": args.server}),
            );
            policy.authorize(audit.as_ref(), &input).await?;
        }
        match &args.server {
            Some(url) => {
                let token = read_token(args.token_file.as_deref())?;
                let mut client = client::connect(url, token.as_deref())
                    .await
                    .map_err(Error::from)?;
                execute(&mut client, out, action).await
            }
            None => {
                let (backend, _) =
                    open_queue(&StoreUrl::resolve(ws, &args.store.choice())?).await?;
                let audit = crate::audit::workspace_log(ws, &args.store.choice(), true).await?;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|e| Error::Failed(e.to_string()))?;
                let addr = listener
                    .local_addr()
                    .map_err(|e| Error::Failed(e.to_string()))?;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::spawn(server::serve_audited(
                    backend,
                    listener,
                    None,
                    audit,
                    async {
                        let _ = stopped.await;
                    },
                ));
                let mut client = client::connect(&format!("http://{addr}"), None)
                    .await
                    .map_err(Error::from)?;
                let result = execute(&mut client, out, action).await;
                let _ = stop.send(());
                let _ = server.await;
                result
            }
        }
    })
}

/// `nova queue purge`: on the store itself, since the gRPC API has no purge.
fn purge(
    ws: &Workspace,
    out: &Output,
    args: &QueueArgs,
    older_than: std::time::Duration,
    queue: Option<String>,
) -> Result<()> {
    if let Some(url) = &args.server {
        return Err(Error::usage(format!(
            "nova queue purge works on the store, not through a server ({url}): run it with --store naming the server's store"
        )));
    }
    if queue.as_deref().is_some_and(str::is_empty) {
        return Err(Error::usage("--queue: the name is empty"));
    }
    let store = StoreUrl::resolve(ws, &args.store.choice())?;
    let before = crate::clock::ms_ago(older_than);
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        let (backend, label) = open_queue(&store).await?;
        let deleted = backend
            .purge(before, queue.clone())
            .await
            .map_err(|e| Error::Failed(format!("cannot purge {label}: {e}")))?;
        if let Some(log) = crate::audit::workspace_log(ws, &args.store.choice(), true).await? {
            crate::audit::record(
                &log,
                Event::new(
                    operator(),
                    "queue.purge",
                    queue.clone().unwrap_or_else(|| "every queue".into()),
                    "done",
                )
                .details(json!({
                    "deleted": deleted,
                    "finished_before": before,
                    "store": label,
                })),
            )
            .await;
        }
        if out.json {
            return out.json(&json!({"deleted": deleted, "finished_before": before}));
        }
        out.text(&format!(
            "deleted {deleted} finished task{} from {} (finished before {})\n",
            if deleted == 1 { "" } else { "s" },
            queue
                .as_deref()
                .map_or_else(|| "every queue".to_string(), |q| format!("queue {q}")),
            crate::clock::rfc3339(before)
        ))
    })
}

/// Every minute, delete the tasks that finished longer ago than `keep`.
async fn purge_every(backend: AnyQueue, keep: std::time::Duration) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        match backend.purge(crate::clock::ms_ago(keep), None).await {
            Ok(0) => {}
            Ok(n) => {
                crate::counter!("queue.purged").add(n);
                tracing::info!(deleted = n, "purged finished tasks");
            }
            Err(e) => tracing::warn!(error = %e, "could not purge finished tasks"),
        }
    }
}

/// A queue action with its arguments checked before any connection is made.
enum Action {
    Enqueue(EnqueueRequest),
    List(ListTasksRequest),
    Get(String),
    Cancel(String),
    Retry(String),
    Stats,
    Pause(String, bool),
}

fn parse_action(action: &QueueAction) -> Result<Action> {
    Ok(match action {
        QueueAction::Enqueue {
            kind,
            payload,
            meta,
            queue,
            priority,
            delay,
            max_attempts,
            idempotency_key,
        } => {
            serde_json::from_str::<Value>(payload)
                .map_err(|e| Error::usage(format!("--payload: not valid JSON: {e}")))?;
            let metadata = meta
                .iter()
                .map(|m| {
                    m.split_once('=')
                        .map(|(k, v)| TaskMetadataEntry {
                            key: k.to_string(),
                            value: v.to_string(),
                        })
                        .ok_or_else(|| Error::usage(format!("--meta {m:?}: expected KEY=VALUE")))
                })
                .collect::<Result<_>>()?;
            Action::Enqueue(EnqueueRequest {
                r#type: kind.clone(),
                payload: payload.clone(),
                metadata,
                queue: queue.clone(),
                priority: *priority,
                max_attempts: *max_attempts,
                delay_ms: delay.map(|d| d.as_millis() as u64).unwrap_or(0),
                idempotency_key: idempotency_key.clone().unwrap_or_default(),
                retry_backoff_ms: 0,
            })
        }
        QueueAction::List {
            status,
            queue,
            limit,
        } => {
            let status = match status {
                Some(s) => Status::parse(s)
                    .ok_or_else(|| {
                        let valid: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
                        Error::usage(format!(
                            "--status {s:?}: valid statuses: {}",
                            valid.join(", ")
                        ))
                    })?
                    .as_str()
                    .to_string(),
                None => String::new(),
            };
            Action::List(ListTasksRequest {
                status,
                queue: queue.clone().unwrap_or_default(),
                limit: *limit,
                after: String::new(),
            })
        }
        QueueAction::Get { id } => Action::Get(id.clone()),
        QueueAction::Cancel { id } => Action::Cancel(id.clone()),
        QueueAction::Retry { id } => Action::Retry(id.clone()),
        QueueAction::Stats => Action::Stats,
        QueueAction::Pause { queue } => Action::Pause(queue.clone(), true),
        QueueAction::Resume { queue } => Action::Pause(queue.clone(), false),
        QueueAction::Purge { .. } => unreachable!("purge runs on the store, before this"),
    })
}

fn grpc_error(status: tonic::Status) -> Error {
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted => Error::usage(message),
        Code::Unauthenticated => Error::Denied(message),
        _ => Error::Failed(format!("{:?}: {message}", status.code())),
    }
}

async fn execute(client: &mut Client, out: &Output, action: Action) -> Result<()> {
    match action {
        Action::Enqueue(req) => {
            let resp = client.enqueue(req).await.map_err(grpc_error)?.into_inner();
            let task = resp.task.unwrap_or_default();
            if out.json {
                let mut v = task_json(&task);
                v["existing"] = json!(resp.existing);
                return out.json(&v);
            }
            let note = if resp.existing {
                " (existing task with this idempotency key)"
            } else {
                ""
            };
            out.text(&format!(
                "{} {} {}{note}\n",
                task.id, task.queue, task.status
            ))
        }
        Action::List(mut req) => {
            // A queue bigger than one answer comes in parts.
            let limit = req.limit;
            let mut tasks = Vec::new();
            loop {
                let answer = client
                    .list_tasks(req.clone())
                    .await
                    .map_err(grpc_error)?
                    .into_inner();
                tasks.extend(answer.tasks);
                if answer.next.is_empty() || (limit > 0 && tasks.len() as u32 >= limit) {
                    break;
                }
                req.after = answer.next;
                if limit > 0 {
                    req.limit = limit - tasks.len() as u32;
                }
            }
            if out.json {
                return out.json(&tasks.iter().map(task_json).collect::<Vec<_>>());
            }
            let mut table = out.table(&[
                "id", "queue", "type", "status", "priority", "attempts", "created",
            ]);
            for t in &tasks {
                table.add_row(vec![
                    t.id.clone(),
                    t.queue.clone(),
                    t.r#type.clone(),
                    t.status.clone(),
                    t.priority.to_string(),
                    format!("{}/{}", t.attempts, t.max_attempts),
                    rfc3339(t.created_at),
                ]);
            }
            out.print_table(&table)
        }
        Action::Get(id) => {
            let task = client
                .get_task(GetTaskRequest { task_id: id })
                .await
                .map_err(grpc_error)?
                .into_inner()
                .task;
            show_task(out, &task.unwrap_or_default())
        }
        Action::Cancel(id) => {
            let task = client
                .cancel(CancelRequest { task_id: id })
                .await
                .map_err(grpc_error)?
                .into_inner()
                .task;
            show_task(out, &task.unwrap_or_default())
        }
        Action::Retry(id) => {
            let task = client
                .retry(RetryRequest { task_id: id })
                .await
                .map_err(grpc_error)?
                .into_inner()
                .task;
            show_task(out, &task.unwrap_or_default())
        }
        Action::Stats => {
            let stats = client
                .stats(StatsRequest {})
                .await
                .map_err(grpc_error)?
                .into_inner();
            if out.json {
                return out.json(&json!({
                    "counts": stats.counts.iter().map(|c| json!({"queue": c.queue, "status": c.status, "count": c.count})).collect::<Vec<_>>(),
                    "oldest_pending_age_ms": stats.oldest_pending_age_ms,
                    "in_flight_leases": stats.in_flight_leases,
                    "paused_queues": stats.paused_queues,
                }));
            }
            let mut table = out.table(&["queue", "status", "count"]);
            for c in &stats.counts {
                table.add_row(vec![c.queue.clone(), c.status.clone(), c.count.to_string()]);
            }
            out.print_table(&table)?;
            out.text(&format!(
                "\noldest pending: {} ms, leases in flight: {}\n",
                stats.oldest_pending_age_ms, stats.in_flight_leases
            ))?;
            if !stats.paused_queues.is_empty() {
                out.text(&format!("paused: {}\n", stats.paused_queues.join(", ")))?;
            }
            Ok(())
        }
        Action::Pause(queue, pause) => {
            let (changed, paused) = if pause {
                let r = client
                    .pause_queue(PauseQueueRequest {
                        queue: queue.clone(),
                    })
                    .await
                    .map_err(grpc_error)?
                    .into_inner();
                (r.changed, r.paused_queues)
            } else {
                let r = client
                    .resume_queue(ResumeQueueRequest {
                        queue: queue.clone(),
                    })
                    .await
                    .map_err(grpc_error)?
                    .into_inner();
                (r.changed, r.paused_queues)
            };
            if out.json {
                return out
                    .json(&json!({"queue": queue, "changed": changed, "paused_queues": paused}));
            }
            let state = if pause { "paused" } else { "resumed" };
            let already = if changed { "" } else { " (it already was)" };
            out.text(&format!("queue {queue} {state}{already}\n"))
        }
    }
}

fn show_task(out: &Output, task: &Task) -> Result<()> {
    let v = task_json(task);
    if out.json {
        return out.json(&v);
    }
    let mut text = String::new();
    for (k, val) in v.as_object().expect("an object") {
        let shown = match val {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        text.push_str(&format!("{k:<18} {shown}\n"));
    }
    out.text(&text)
}

/// A task as JSON, with times as RFC 3339 beside the raw milliseconds.
pub fn task_json(t: &Task) -> Value {
    json!({
        "id": t.id,
        "queue": t.queue,
        "type": t.r#type,
        "status": t.status,
        "priority": t.priority,
        "attempts": t.attempts,
        "max_attempts": t.max_attempts,
        "payload": t.payload,
        "metadata": t.metadata.iter().map(|m| (m.key.clone(), Value::String(m.value.clone()))).collect::<serde_json::Map<_, _>>(),
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "run_at": t.run_at,
        "created": rfc3339(t.created_at),
        "worker_id": t.worker_id,
        "lease_expires_at": t.lease_expires_at,
        "result": t.result,
        "last_error": t.last_error,
        "idempotency_key": t.idempotency_key,
    })
}
