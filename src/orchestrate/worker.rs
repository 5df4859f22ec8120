//! A worker: takes agents' tasks from the queue and runs them.
//!
//! The same loop serves the local workers of `nova orchestrate` and
//! `nova worker --server URL` on other machines. A queue task carries a whole
//! [`Job`] (the blueprint task, the agent, the run, its messages), so a
//! worker needs nothing but the queue; a local run's jobs leave the
//! messages to its own workers ([`Inboxes`]). For each job it checks `when`, asks
//! the policy engine for `run`, then runs the check (and, with `--apply`, the
//! run step and the check again), holding its lease by heartbeat, and acks
//! with a [`JobResult`]. A failed attempt is acked for retry; the queue brings
//! it back after a backoff until the task's retries are spent.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::supervisor::{self, Outcome};
use crate::audit::{AuditLog, Durability, Event};
use crate::blueprints::{CommandSpec, TaskSpec};
use crate::clock::now_ms;
use crate::policy::Policy;
use crate::queue::handle::QueueHandle;
use crate::queue::proto::{AckRequest, DequeueRequest, HeartbeatRequest, Task};

/// The queue task type of an agent's task.
pub const JOB_TYPE: &str = "nova.task";
/// The queue runs on a shared server (`nova orchestrate --server`) put their
/// tasks in, and where `nova worker` takes them from by default. Other
/// queues' tasks are never touched by a worker that was not told to.
pub const JOBS_QUEUE: &str = "nova-jobs";

/// Where a shared server's run puts a task that needs `gpus` GPUs: a queue
/// of its own for each count (`nova-jobs-gpus-2`), so that only workers on
/// hosts with that many take it.
pub fn jobs_queue(gpus: Option<u32>) -> String {
    match gpus {
        Some(n) if n > 0 => format!("{JOBS_QUEUE}-gpus-{n}"),
        _ => JOBS_QUEUE.to_string(),
    }
}

/// The queues a worker on a host with `gpus` GPUs takes from by default:
/// [`JOBS_QUEUE`], and those of tasks that need 1 to `gpus` GPUs.
pub fn jobs_queues(gpus: usize) -> Vec<String> {
    (0..=gpus as u32).map(|n| jobs_queue(Some(n))).collect()
}

/// The queues slot `slot` of a worker process takes from by default on a
/// host with `gpus` GPUs: the first `gpus` slots take GPU tasks too, the
/// rest [`JOBS_QUEUE`] only. A task needs at least one GPU, so no more
/// than `gpus` of them can run here at once: a slot beyond that would hold
/// a GPU task waiting for one (its lease kept alive) while a worker on
/// another GPU host could run it.
pub fn slot_queues(slot: u32, gpus: usize) -> Vec<String> {
    if (slot as usize) < gpus {
        jobs_queues(gpus)
    } else {
        jobs_queues(0)
    }
}
pub const LEASE_MS: u32 = 30_000;
/// A remote worker's first wait before trying a lost server again, and its longest.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// Everything a worker needs to run one blueprint task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub run: String,
    pub agent: String,
    pub role: String,
    pub phase: String,
    pub task: TaskSpec,
    pub apply: bool,
    /// The folder tasks run in (the workspace root), unless the task says otherwise.
    pub workdir: PathBuf,
    pub memory_limit: Option<u64>,
    pub wall_time: Option<Duration>,
    /// Whole GPUs the task holds while it runs ([`super::gpus`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Messages addressed to this agent so far (broadcasts included), as
    /// the JSON lines of its inbox: carried, never taken apart. Empty in a
    /// local run's jobs, whose workers find them in [`Inboxes`].
    pub messages: Vec<Box<serde_json::value::RawValue>>,
}

/// The inbox messages of a local run's jobs, by agent and task. Its queue is
/// in the same process and no other worker takes its jobs, so the jobs leave
/// their messages out (in a run of 100 agents the phase's start alone is 6
/// KB, which every task's payload would carry into the store and back and
/// be parsed for) and the run's workers take them from here.
pub type Inboxes = Arc<Mutex<HashMap<(String, String), Arc<[Box<serde_json::value::RawValue>]>>>>;

/// What a worker reports in its ack.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct JobResult {
    /// `done`, `pending` (its check fails and `--apply` was not given),
    /// `skipped` (its `when` does not hold here), `failed` or `denied`.
    pub status: String,
    pub attempt: u32,
    pub exit_code: Option<i32>,
    pub started_at: i64,
    pub finished_at: i64,
    pub peak_rss: u64,
    pub mean_rss: u64,
    pub mean_cpu: f32,
    #[serde(default)]
    pub gpu_peak_memory: Option<u64>,
    #[serde(default)]
    pub gpu_mean_utilization: Option<f32>,
    pub detail: String,
    pub tail: Vec<String>,
    pub messages: Vec<Value>,
    pub worker: String,
}

/// What a worker tells a local run's scheduler about a task, by its id.
#[derive(Debug, Clone)]
pub enum Change {
    Started(String),
    /// Acked: finished, or put back for another attempt; with the task as
    /// the ack left it, when the ack's answer had it.
    Acked(String, Option<Box<Task>>),
}

pub struct WorkerConfig {
    pub name: String,
    /// Tasks the whole process runs at once (`nova worker --concurrency`),
    /// as it tells the server.
    pub concurrency: u32,
    pub home: PathBuf,
    pub policy: Policy,
    pub audit: Option<AuditLog>,
    /// Echo task output to stderr (`-v`).
    pub echo: bool,
    pub queues: Vec<String>,
    /// How long a lease lasts; heartbeats renew it every third of that.
    pub lease_ms: u32,
    /// Told of each task this worker starts or acks (the scheduler of a
    /// local run looks at those tasks instead of polling every one).
    pub on_change: Option<tokio::sync::mpsc::UnboundedSender<Change>>,
    /// Audit appends in flight; [`work`] waits for them before it returns.
    pub pending_audit: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Who tasks run as (see [`super::privilege`]).
    pub privileges: super::privilege::Privileges,
    /// What a worker told to stop does with what it holds. `None` (a local
    /// run): running tasks stop at once and stay leased, so `--resume` runs
    /// them again. `Some(grace)` (`nova worker`): it takes nothing more,
    /// lets running tasks finish for up to `grace`, then stops them, and
    /// hands back (Release) every task it holds but did not finish.
    pub stop_grace: Option<Duration>,
    /// A local run's workers: where its jobs' messages are.
    pub inboxes: Option<Inboxes>,
}

/// Take and run jobs until `stop` turns true. Transport errors (a server
/// restarting) are waited out; a refusal that asking again cannot change
/// (a bad request, a wrong token) ends the worker with it.
pub async fn work(
    mut client: QueueHandle,
    cfg: Arc<WorkerConfig>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::Status> {
    // What stops running tasks: the stop itself, or the end of the grace.
    let abort = match cfg.stop_grace {
        None => stop.clone(),
        Some(grace) => {
            let (abort_tx, abort_rx) = tokio::sync::watch::channel(false);
            let mut stopped = stop.clone();
            tokio::spawn(async move {
                if stopped.wait_for(|s| *s).await.is_ok() {
                    tokio::select! {
                        _ = tokio::time::sleep(grace) => {}
                        _ = abort_tx.closed() => return,
                    }
                }
                let _ = abort_tx.send(true);
            });
            abort_rx
        }
    };
    if let QueueHandle::Remote(remote) = &client {
        match streamed(
            remote.clone(),
            client.clone(),
            &cfg,
            stop.clone(),
            abort.clone(),
        )
        .await
        {
            Err(e) if e.code() == tonic::Code::Unimplemented => {
                tracing::info!("the server has no Work stream; taking tasks with Dequeue and Ack");
            }
            other => {
                finish_audit(&cfg).await;
                return other;
            }
        }
    }
    let mut stop_wait = stop.clone();
    // Tasks leased by the last ack, to run before asking the queue again.
    // A worker told to stop with one here leaves it to its lease (it is
    // handed out again when the lease ends), as it would had it died.
    let mut ready: Vec<Task> = Vec::new();
    while !*stop.borrow() {
        let tasks = if ready.is_empty() {
            let request = next_request(&cfg, 1_000);
            tokio::select! {
                r = client.dequeue(request) => match r {
                    Ok(r) => r.tasks,
                    Err(e) if matches!(
                        e.code(),
                        tonic::Code::InvalidArgument
                            | tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                    ) => {
                        finish_audit(&cfg).await;
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "dequeue failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
                _ = stop_wait.changed() => break,
            }
        } else {
            std::mem::take(&mut ready)
        };
        for task in tasks {
            if *stop.borrow() {
                hand_back(&mut client, &cfg, &task).await;
                continue;
            }
            ready.extend(handle(&mut client, &cfg, task, stop.clone(), abort.clone()).await);
        }
        // Let go of the audit appends that are done (a long-lived worker would pile them up).
        let mut pending = cfg.pending_audit.lock().unwrap_or_else(|p| p.into_inner());
        while pending.try_join_next().is_some() {}
    }
    for task in ready {
        hand_back(&mut client, &cfg, &task).await;
    }
    finish_audit(&cfg).await;
    Ok(())
}

/// Hand `task` back to the queue (a worker that stops before running it,
/// or stopped it half-way), when this worker does that (see
/// [`WorkerConfig::stop_grace`]); otherwise it waits for its lease to end.
async fn hand_back(client: &mut QueueHandle, cfg: &WorkerConfig, task: &Task) {
    if cfg.stop_grace.is_none() {
        return;
    }
    let release = crate::queue::proto::ReleaseRequest {
        task_id: task.id.clone(),
        lease_id: task.lease_id.clone(),
    };
    match client.release(release).await {
        Ok(_) => tracing::info!(task = %task.id, "handed back"),
        Err(e) => {
            tracing::warn!(task = %task.id, error = %e, "handing back failed; the task waits for its lease to end")
        }
    }
}

/// Whether asking again cannot change a refusal (a bad request, a wrong
/// token, a denial, a server without the call): the worker ends with it.
fn final_refusal(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::Unimplemented
    )
}

/// What this worker says of itself on its stream.
fn who(cfg: &WorkerConfig) -> crate::queue::proto::WorkerInfo {
    crate::queue::proto::WorkerInfo {
        host: super::run::hostname(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        concurrency: cfg.concurrency,
    }
}

/// Take and run jobs on one Work stream to a remote server (a task out and
/// its ack back as one message each, instead of a call each), reopening it
/// when the connection breaks. One task at a time: credit 1, renewed with
/// each ack; a stopping worker's last ack grants none, so it is handed
/// nothing it would not run. Acks whose answer a broken stream lost are
/// delivered again by plain Ack calls (a repeated final ack changes nothing).
async fn streamed(
    mut remote: crate::queue::client::Client,
    mut client: QueueHandle,
    cfg: &WorkerConfig,
    stop: tokio::sync::watch::Receiver<bool>,
    abort: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::Status> {
    use crate::queue::client::WorkStream;
    let mut stop_wait = stop.clone();
    let mut unanswered: Vec<AckRequest> = Vec::new();
    // Waits between tries while the server (or its Redis) is away: doubled
    // each time up to RETRY_MOST, back to RETRY_FIRST once a message comes.
    let mut backoff = RETRY_FIRST;
    while !*stop.borrow() {
        for ack in std::mem::take(&mut unanswered) {
            deliver(&mut client, cfg, ack).await;
        }
        let opened = tokio::select! {
            opened = WorkStream::open_as(&mut remote, next_request(cfg, 0), 1, Some(who(cfg))) => opened,
            _ = stop_wait.changed() => break,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) if final_refusal(&e) => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, ?backoff, "opening the work stream failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_wait.changed() => {}
                }
                backoff = (backoff * 2).min(RETRY_MOST);
                continue;
            }
        };
        loop {
            // A stopping worker still waits for its last ack's answer.
            let message = if *stop.borrow() && unanswered.is_empty() {
                return Ok(());
            } else if *stop.borrow() {
                tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")))
            } else {
                tokio::select! {
                    message = stream.next() => message,
                    _ = stop_wait.changed() => continue,
                }
            };
            let message = match message {
                Ok(Some(message)) => message,
                Err(e) if final_refusal(&e) => return Err(e),
                Ok(None) | Err(_) => {
                    tracing::debug!(?backoff, "the work stream broke; reopening it");
                    if !*stop.borrow() {
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop_wait.changed() => {}
                        }
                        backoff = (backoff * 2).min(RETRY_MOST);
                    }
                    break;
                }
            };
            backoff = RETRY_FIRST;
            for outcome in &message.acks {
                unanswered.retain(|a| a.task_id != outcome.task_id);
                if outcome.code != 0 {
                    tracing::warn!(task = %outcome.task_id, error = %outcome.message, "ack refused");
                }
                changed(cfg, || Change::Acked(outcome.task_id.clone(), None));
            }
            for task in message.tasks {
                if *stop.borrow() {
                    hand_back(&mut client, cfg, &task).await;
                    continue;
                }
                let Some(ack) = run_task(&client, cfg, &task, abort.clone()).await else {
                    hand_back(&mut client, cfg, &task).await;
                    continue;
                };
                let credit = u32::from(!*stop.borrow());
                unanswered.push(ack.clone());
                if stream.send(credit, vec![ack]).await.is_err() {
                    break;
                }
            }
            let mut pending = cfg.pending_audit.lock().unwrap_or_else(|p| p.into_inner());
            while pending.try_join_next().is_some() {}
        }
    }
    for ack in unanswered {
        deliver(&mut client, cfg, ack).await;
    }
    Ok(())
}

/// Tell whoever listens (a local run's scheduler) that a task changed state.
fn changed(cfg: &WorkerConfig, change: impl FnOnce() -> Change) {
    if let Some(tx) = &cfg.on_change {
        let _ = tx.send(change());
    }
}

/// Wait for the audit appends still in flight.
async fn finish_audit(cfg: &WorkerConfig) {
    let pending = std::mem::take(&mut *cfg.pending_audit.lock().unwrap_or_else(|p| p.into_inner()));
    pending.join_all().await;
}

/// What this worker asks the queue for: one task from its queues.
fn next_request(cfg: &WorkerConfig, wait_ms: u32) -> DequeueRequest {
    DequeueRequest {
        worker_id: cfg.name.clone(),
        queues: cfg.queues.clone(),
        lease_ms: cfg.lease_ms,
        wait_ms,
        max_tasks: 1,
    }
}

/// Run one task and ack it; the tasks the ack leased next (none when the
/// queue had none due, the worker is stopping, or the server is older).
async fn handle(
    client: &mut QueueHandle,
    cfg: &WorkerConfig,
    task: Task,
    stop: tokio::sync::watch::Receiver<bool>,
    abort: tokio::sync::watch::Receiver<bool>,
) -> Vec<Task> {
    let Some(mut ack) = run_task(client, cfg, &task, abort).await else {
        hand_back(client, cfg, &task).await;
        return Vec::new();
    };
    // The next task comes back with the ack (one call, not two); only
    // one already due, so the ack is never held up waiting.
    ack.next = (!*stop.borrow()).then(|| next_request(cfg, 0));
    deliver(client, cfg, ack).await
}

/// Deliver `ack` even across a server restart; give up once the lease is
/// gone (the task runs again elsewhere). The tasks its `next` leased.
async fn deliver(client: &mut QueueHandle, cfg: &WorkerConfig, mut ack: AckRequest) -> Vec<Task> {
    for _ in 0..50 {
        match client.ack(ack.clone()).await {
            Ok(answer) => {
                changed(cfg, || {
                    Change::Acked(ack.task_id.clone(), answer.task.map(Box::new))
                });
                return answer.next;
            }
            Err(e)
                if e.code() == tonic::Code::FailedPrecondition
                    || e.code() == tonic::Code::NotFound =>
            {
                tracing::warn!(task = %ack.task_id, error = %e, "ack refused");
                return Vec::new();
            }
            Err(_) => {
                // The lost answer may have leased a task this worker never
                // saw (it goes back when its lease ends); ask for none again.
                ack.next = None;
                tokio::time::sleep(Duration::from_millis(200)).await
            }
        }
    }
    Vec::new()
}

/// Run one task; the ack to send, or `None` when the run was stopped and
/// the task is left to its lease (so a resume runs it again).
async fn run_task(
    client: &QueueHandle,
    cfg: &WorkerConfig,
    task: &Task,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Option<AckRequest> {
    let job: Job = match serde_json::from_str(&task.payload) {
        Ok(job) if task.r#type == JOB_TYPE => job,
        other => {
            let why = match other {
                Err(e) => format!("not a nova job: {e}"),
                Ok(_) => format!("unknown task type {:?}", task.r#type),
            };
            return Some(AckRequest {
                task_id: task.id.clone(),
                success: false,
                lease_id: task.lease_id.clone(),
                error: why,
                ..Default::default()
            });
        }
    };

    changed(cfg, || Change::Started(task.id.clone()));
    // Keep the lease while the job runs.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let mut hb_client = client.clone();
    let (hb_id, hb_lease, lease_ms) = (task.id.clone(), task.lease_id.clone(), cfg.lease_ms);
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(lease_ms as u64 / 3));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = hb_client.heartbeat(HeartbeatRequest {
                        task_id: hb_id.clone(),
                        lease_id: hb_lease.clone(),
                        lease_ms,
                    }).await;
                }
                _ = &mut done_rx => break,
            }
        }
    });

    let mut result = execute(cfg, &job, task.attempts, stop.clone()).await;
    result.worker = cfg.name.clone();
    let _ = done_tx.send(());
    let _ = heartbeat.await;
    if *stop.borrow() && result.detail.contains("interrupted") {
        // The run was stopped: leave the task to its lease, so a resume runs it again.
        return None;
    }
    if result.status == "failed"
        && task.attempts < task.max_attempts
        && let Some(log) = &cfg.audit
    {
        crate::audit::record(
            log,
            task_event(
                &job,
                "task.retry",
                "will retry",
                json!({"run": job.run, "attempt": task.attempts, "of": task.max_attempts, "detail": result.detail}),
            ),
        )
        .await;
    }
    let success = matches!(result.status.as_str(), "done" | "pending" | "skipped");
    Some(AckRequest {
        task_id: task.id.clone(),
        success,
        result: serde_json::to_string(&result).expect("a result serializes"),
        lease_id: task.lease_id.clone(),
        retry: result.status == "failed",
        error: if success {
            String::new()
        } else {
            result.detail.clone()
        },
        next: None,
    })
}

fn log_path(home: &std::path::Path, job: &Job) -> PathBuf {
    home.join("runs")
        .join(&job.run)
        .join(&job.agent)
        .join(format!("{}.log", job.task.id))
}

fn task_event(job: &Job, action: &str, outcome: &str, details: Value) -> Event {
    Event::new(
        format!("agent:{}", job.agent),
        action,
        format!("{}/{}", job.agent, job.task.id),
        outcome,
    )
    .details(details)
}

/// Run one attempt of `job`.
pub async fn execute(
    cfg: &WorkerConfig,
    job: &Job,
    attempt: u32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> JobResult {
    let started_at = now_ms();
    let mut result = JobResult {
        attempt,
        started_at,
        ..Default::default()
    };
    let finish = |mut r: JobResult, status: &str, detail: String| {
        r.status = status.to_string();
        r.detail = detail;
        r.finished_at = now_ms();
        r
    };
    let workdir = match &job.task.cwd {
        Some(cwd) => job.workdir.join(cwd),
        None => job.workdir.clone(),
    };
    if let Some(why) = job.task.when.unmet(&workdir) {
        return finish(result, "skipped", format!("does not apply: {why}"));
    }
    let gpus = super::gpus::Pool::host;
    // Too few GPUs here is one more thing the task's run lacks, as its
    // `requires` say: its check still runs, and may find it done.
    let gpu_shortfall = job
        .gpus
        .filter(|&n| n > 0)
        .and_then(|n| gpus().shortfall(n));
    let gpus_wanted = match gpu_shortfall {
        Some(_) => 0,
        None => job.gpus.unwrap_or(0),
    };

    let identity = cfg.privileges.identity(job.task.run_as_root);
    let mut context = json!({"run": job.run, "phase": job.phase, "apply": job.apply});
    if let (Some(c), Value::Object(who)) = (
        context.as_object_mut(),
        cfg.privileges.context(&identity, job.task.run_as_root),
    ) {
        c.extend(who);
    }
    let input = crate::policy::input(&job.agent, &job.role, "run", &job.task.id, context);
    // The decision and the start go to the audit log together (one commit)
    // before the task starts: a store that cannot take them keeps it from
    // starting. The task starts once they are committed; the fsync that
    // puts them on disk follows within milliseconds (a power cut in that
    // moment loses them with everything after, the task's ack included, so
    // the task runs again and is recorded again).
    let decision = cfg.policy.decide(&input).await;
    // An allowed task that needs GPUs starts once it holds them.
    let lease = if decision.allow && gpus_wanted > 0 {
        let mut stop = stop.clone();
        let interrupted = async move {
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            lease = gpus().lend(gpus_wanted) => {
                // The task starts now; its wait shows in the audit record.
                result.started_at = now_ms();
                Some(lease)
            }
            () = interrupted => {
                return finish(result, "failed", "interrupted while waiting for a GPU".into());
            }
        }
    } else {
        None
    };
    if let Some(log) = &cfg.audit {
        let mut events = vec![crate::policy::decision_event(&input, &decision)];
        if decision.allow {
            let mut details = json!({"run": job.run, "attempt": attempt, "worker": cfg.name,
                                     "user": identity.user, "as_root": identity.as_root});
            if let Some(lease) = &lease {
                details["gpus"] = json!(lease.indices());
                details["gpu_wait_ms"] = json!(result.started_at - started_at);
            }
            events.push(task_event(job, "task.start", "started", details));
        }
        if let Err(e) = log.append_all_with(events, Durability::Background).await {
            // Fail closed: a task whose start cannot be audited does not start.
            return finish(
                result,
                "failed",
                format!("not run: its start could not be recorded in the audit log ({e})"),
            );
        }
    }
    if !decision.allow {
        let reasons = if decision.reasons.is_empty() {
            "no rule allows it".to_string()
        } else {
            decision.reasons.join("; ")
        };
        return finish(
            result,
            "denied",
            format!("run {} denied by policy: {reasons}", job.task.id),
        );
    }

    let inbox = home_inbox(&cfg.home, job);
    let mut env: BTreeMap<String, String> = job.task.env.clone();
    env.extend([
        ("NOVA_RUN_ID".to_string(), job.run.clone()),
        ("NOVA_AGENT".to_string(), job.agent.clone()),
        ("NOVA_TASK".to_string(), job.task.id.clone()),
        ("NOVA_PHASE".to_string(), job.phase.clone()),
        ("NOVA_ROLE".to_string(), job.role.clone()),
        ("NOVA_HOME".to_string(), cfg.home.display().to_string()),
        ("NOVA_INBOX".to_string(), inbox.display().to_string()),
    ]);
    if let Some(lease) = &lease {
        env.extend(lease.env());
    }
    // Test results in JUnit XML go here; the run's report summarizes them.
    let run_dir = cfg.home.join("runs").join(&job.run);
    let results = super::results::lend(&run_dir, identity.account.as_ref().map(|a| a.uid));
    env.insert("NOVA_RESULTS".into(), results.path().display().to_string());
    if let Some(account) = &identity.account {
        env.insert("HOME".into(), account.home.display().to_string());
        env.insert("USER".into(), account.name.clone());
        env.insert("LOGNAME".into(), account.name.clone());
    }
    // A fix installs packages through this same binary (`"$NOVA_BIN" setup`),
    // so one set of package rules holds everywhere.
    if let Some(exe) = own_executable() {
        env.insert("NOVA_BIN".into(), exe.to_string());
    }
    match cfg.inboxes.as_ref().filter(|_| job.messages.is_empty()) {
        Some(inboxes) => {
            let key = (job.agent.clone(), job.task.id.clone());
            let messages = inboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            // A job the run did not enqueue itself (one left from before a
            // resume) leaves the inbox as it is.
            if let Some(messages) = messages {
                write_inbox(&inbox, &messages);
            }
        }
        None => write_inbox(&inbox, &job.messages),
    }
    if let Some(account) = &identity.account {
        super::privilege::hand_over(&inbox, account);
        super::privilege::hand_over(results.path(), account);
    }

    let log = log_path(&cfg.home, job);
    let timeout = match (job.task.timeout.map(|t| t.0), job.wall_time) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let step = |command: &CommandSpec| supervisor::Spec {
        command: command.clone(),
        env: env.clone(),
        cwd: Some(workdir.clone()),
        timeout,
        memory_limit: job.memory_limit,
        echo: cfg.echo.then(|| format!("[{}/{}]", job.agent, job.task.id)),
        account: identity.account.clone(),
    };
    let run_step = async |name: &str,
                          command: &CommandSpec,
                          result: &mut JobResult|
           -> Result<Outcome, String> {
        let header = format!("== attempt {attempt}: {name}: {}", command.display());
        let outcome = match supervisor::run(&step(command), &log, &header, stop.clone()).await {
            Ok(o) => o,
            // A check whose program is not installed fails as a shell's
            // would (127): the task is not done, nova did not break.
            Err(e) if name == "check" && e.kind() == std::io::ErrorKind::NotFound => Outcome {
                exit_code: Some(127),
                tail: vec![format!("{}: {e}", command.display())],
                ..Outcome::default()
            },
            Err(e) => return Err(format!("cannot start {}: {e}", command.display())),
        };
        result.exit_code = outcome.exit_code;
        result.peak_rss = result.peak_rss.max(outcome.peak_rss);
        result.mean_cpu = outcome.mean_cpu;
        result.mean_rss = outcome.mean_rss;
        if let Some(g) = outcome.gpu_peak_memory {
            result.gpu_peak_memory = Some(result.gpu_peak_memory.unwrap_or(0).max(g));
        }
        if outcome.gpu_mean_utilization.is_some() {
            result.gpu_mean_utilization = outcome.gpu_mean_utilization;
        }
        result.tail = outcome.tail.clone();
        result.messages.extend(outcome.messages.iter().cloned());
        if let (Some(stopped), Some(log)) = (&outcome.stopped, &cfg.audit) {
            crate::audit::record(
                log,
                task_event(
                    job,
                    "task.kill",
                    "killed",
                    json!({"run": job.run, "attempt": attempt, "step": name, "reason": stopped.to_string()}),
                ),
            )
            .await;
        }
        // A step that was stopped (timeout, memory, interrupt) failed, whatever its exit code.
        match &outcome.stopped {
            Some(supervisor::Stopped::Cancelled) => Err(format!("{name} interrupted")),
            Some(why) => Err(format!("{name} {why}")),
            None => Ok(outcome),
        }
    };
    // Run a step, or leave the steps with `failed` and why.
    macro_rules! step {
        ($label:lifetime, $name:expr, $command:expr) => {
            match run_step($name, $command, &mut result).await {
                Ok(o) => o,
                Err(e) => break $label("failed", e),
            }
        };
    }
    // Without --apply nova's own files need not be there yet: --apply
    // writes them before any fix runs.
    let mut requires = job.task.requires.clone();
    if !job.apply {
        requires
            .file
            .0
            .retain(|f| !crate::blueprints::assets::is_shipped(f));
    }
    let missing = || match (&gpu_shortfall, requires.missing(&workdir)) {
        (Some(gpus), Some(rest)) => Some(format!("{gpus}, {rest}")),
        (gpus, rest) => gpus.clone().or(rest),
    };
    let outcome = 'steps: {
        if let Some(check) = &job.task.check {
            let o = step!('steps, "check", check);
            if o.success() {
                break 'steps ("done", "check passes".to_string());
            }
            // What the host lacks comes first: no --apply would help.
            if let Some(needs) = missing() {
                break 'steps (
                    "pending",
                    format!("check fails (exit {}); not done: needs {needs}", code(&o)),
                );
            }
            let Some(run) = &job.task.run else {
                break 'steps (
                    "pending",
                    format!(
                        "check fails (exit {}); no fix available (the task has no run step)",
                        code(&o)
                    ),
                );
            };
            if !job.apply {
                break 'steps (
                    "pending",
                    format!("check fails (exit {}); --apply runs the fix", code(&o)),
                );
            }
            let o = step!('steps, "run", run);
            if !o.success() {
                break 'steps ("failed", format!("run failed (exit {})", code(&o)));
            }
            let o = step!('steps, "check", check);
            if o.success() {
                ("done", "run, then check passes".to_string())
            } else {
                (
                    "failed",
                    format!("check still fails after run (exit {})", code(&o)),
                )
            }
        } else if let Some(run) = &job.task.run {
            if let Some(needs) = missing() {
                break 'steps ("pending", format!("not done: needs {needs}"));
            }
            if !job.apply {
                break 'steps (
                    "pending",
                    "no check to verify it; --apply runs it".to_string(),
                );
            }
            let o = step!('steps, "run", run);
            if o.success() {
                ("done", "run succeeded".to_string())
            } else {
                ("failed", format!("run failed (exit {})", code(&o)))
            }
        } else {
            ("skipped", "the task has neither check nor run".to_string())
        }
    };
    results.file(&super::results::filed(&run_dir, &job.agent, &job.task.id));
    let (status, detail) = outcome;
    let r = finish(result, status, detail);
    if let Some(log) = &cfg.audit {
        // Not waited for: the writer keeps records in order, and the ack need
        // not wait for this one's commit. `work` waits for it before it ends.
        // Fsynced in the background, like the start.
        let event = task_event(
            job,
            "task.finish",
            &r.status,
            json!({"run": job.run, "attempt": attempt, "exit_code": r.exit_code, "detail": r.detail}),
        );
        // Queued now, so that it shares the ack's commit.
        let recorded = crate::audit::record_with(log, event, Durability::Background);
        cfg.pending_audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(recorded);
    }
    r
}

/// This binary's path for `$NOVA_BIN`, found once: the path stays the
/// same for the life of the process, even when the file is replaced.
fn own_executable() -> Option<&'static str> {
    static EXE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        crate::files::own_executable()
            .ok()
            .map(|p| p.display().to_string())
    })
    .as_deref()
}

fn code(o: &Outcome) -> String {
    o.exit_code
        .map_or_else(|| "by signal".to_string(), |c| c.to_string())
}

fn home_inbox(home: &std::path::Path, job: &Job) -> PathBuf {
    home.join("runs")
        .join(&job.run)
        .join(&job.agent)
        .join("inbox.jsonl")
}

/// Write the agent's inbox: the messages addressed to it so far, a JSON line
/// each. An inbox already on disk with the same lines (the usual case: most
/// tasks of an agent see the messages the one before saw) is left as it is
/// rather than truncated and written again for every task.
fn write_inbox(inbox: &std::path::Path, messages: &[Box<serde_json::value::RawValue>]) {
    let mut lines = String::with_capacity(messages.iter().map(|m| m.get().len() + 1).sum());
    for m in messages {
        lines.push_str(m.get());
        lines.push('\n');
    }
    let same = std::fs::metadata(inbox).is_ok_and(|m| m.is_file() && m.len() == lines.len() as u64)
        && std::fs::read(inbox).is_ok_and(|on_disk| on_disk == lines.as_bytes());
    if same {
        return;
    }
    if let Err(e) = std::fs::write(inbox, &lines)
        && e.kind() == std::io::ErrorKind::NotFound
        && let Some(dir) = inbox.parent()
    {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(inbox, &lines);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_worker_takes_the_queues_of_tasks_its_host_has_gpus_for() {
        assert_eq!(super::jobs_queues(0), ["nova-jobs"]);
        assert_eq!(
            super::jobs_queues(2),
            ["nova-jobs", "nova-jobs-gpus-1", "nova-jobs-gpus-2"]
        );
        assert_eq!(super::jobs_queue(Some(0)), "nova-jobs");
        assert_eq!(super::jobs_queue(None), "nova-jobs");
    }

    #[test]
    fn only_as_many_slots_as_gpus_take_gpu_tasks() {
        let slots: Vec<Vec<String>> = (0..4).map(|i| super::slot_queues(i, 2)).collect();
        assert_eq!(slots[0], super::jobs_queues(2));
        assert_eq!(slots[1], super::jobs_queues(2));
        assert_eq!(slots[2], ["nova-jobs"]);
        assert_eq!(slots[3], ["nova-jobs"]);
        assert_eq!(super::slot_queues(0, 0), ["nova-jobs"]);
    }
}
