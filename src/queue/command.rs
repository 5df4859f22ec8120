//! `nova queue`: the queue's command-line client.
//!
//! Without `--server`, `nova queue` starts the same gRPC server in process on
//! a loopback port over the workspace's store and talks to it like any remote
//! client would, so both paths run the same code.

use serde_json::{Value, json};

use super::backend::QueueBackend;
use super::client::{self, Client, grpc_error};
use super::model::Status;
use super::open::open_queue;
use super::proto::*;
use super::server;
use crate::audit::Event;
use crate::audit::operator;
use crate::cli::{QueueAction, QueueArgs};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::files::read_token;
use crate::output::Output;
use crate::store_url::StoreUrl;
use crate::workspace::Workspace;

/// The login name of the person running nova, as the policy subject's agent.
fn operator_name() -> String {
    operator()
        .strip_prefix("operator:")
        .unwrap_or("unknown")
        .to_string()
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
                let tls = args.tls.load()?;
                let mut client = client::connect_with(url, token.as_deref(), &tls)
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

/// A queue action with its arguments checked before any connection is made.
enum Action {
    Enqueue(EnqueueRequest),
    List(ListTasksRequest),
    Get(String),
    Cancel(String),
    Retry(String),
    Stats,
    Workers,
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
                // The task is printed as stored, payload included.
                brief: false,
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
        QueueAction::Workers => Action::Workers,
        QueueAction::Pause { queue } => Action::Pause(queue.clone(), true),
        QueueAction::Resume { queue } => Action::Pause(queue.clone(), false),
        QueueAction::Purge { .. } => unreachable!("purge runs on the store, before this"),
    })
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
        Action::Workers => {
            let workers = client
                .list_workers(ListWorkersRequest {})
                .await
                .map_err(grpc_error)?
                .into_inner()
                .workers;
            show_workers(out, &workers)
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

/// Connected workers: JSON, one entry per Work stream or polling worker;
/// text, one row per process (host and pid), its streams' tasks together,
/// and one per polling worker (whose pid is not known: 0).
fn show_workers(out: &Output, workers: &[WorkerEntry]) -> Result<()> {
    if out.json {
        return out.json(
            &workers
                .iter()
                .map(|w| {
                    let info = w.info.clone().unwrap_or_default();
                    json!({
                        "worker_id": w.worker_id, "host": info.host, "version": info.version,
                        "pid": info.pid, "concurrency": info.concurrency, "queues": w.queues,
                        "connected_at": w.connected_at, "last_seen_at": w.last_seen_at,
                        "tasks": w.task_ids,
                    })
                })
                .collect::<Vec<_>>(),
        );
    }
    if workers.is_empty() {
        return out.text("no workers connected\n");
    }
    let mut processes: Vec<(WorkerInfo, Vec<&WorkerEntry>)> = Vec::new();
    for w in workers {
        let info = w.info.clone().unwrap_or_default();
        match processes.iter_mut().find(|(i, streams)| {
            i.host == info.host
                && i.pid == info.pid
                && (info.pid != 0 || streams[0].worker_id == w.worker_id)
        }) {
            Some((_, streams)) => streams.push(w),
            None => processes.push((info, vec![w])),
        }
    }
    let mut table = out.table(&[
        "host",
        "pid",
        "version",
        "busy",
        "queues",
        "connected",
        "tasks",
    ]);
    let now = crate::clock::now_ms();
    for (info, streams) in &processes {
        let tasks: Vec<&str> = streams
            .iter()
            .flat_map(|w| w.task_ids.iter().map(String::as_str))
            .collect();
        let since = streams.iter().map(|w| w.connected_at).min().unwrap_or(now);
        let queues = if streams[0].queues.is_empty() {
            "all".to_string()
        } else {
            streams[0].queues.join(", ")
        };
        let unknown = |said: bool, what: String| if said { what } else { "-".into() };
        table.add_row(vec![
            info.host.clone(),
            unknown(info.pid != 0, info.pid.to_string()),
            unknown(!info.version.is_empty(), info.version.clone()),
            format!(
                "{}/{}",
                tasks.len(),
                unknown(info.concurrency != 0, info.concurrency.to_string())
            ),
            queues,
            format!("{} ago", ago(now - since)),
            tasks.join(" "),
        ]);
    }
    out.print_table(&table)
}

/// `ms` as a short duration: 45s, 12m, 3h, 2d.
fn ago(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::ago;

    #[test]
    fn ages_are_short_and_round_down() {
        assert_eq!(ago(-5), "0s");
        assert_eq!(ago(59_999), "59s");
        assert_eq!(ago(60_000), "1m");
        assert_eq!(ago(3_600_000 * 5 + 1), "5h");
        assert_eq!(ago(86_400_000 * 3), "3d");
    }
}
