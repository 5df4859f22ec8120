//! The JSON API's read routes: runs, queues and tasks, the host, governance.
//!
//! Each handler reads the same stored state the CLI's read commands do (the
//! workspace database, the queue backend, the audit log), so the API and
//! `nova runs`, `nova queue`, `nova audit` always agree. The types here are
//! the API's contract: `openapi.rs` generates the document from them.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult, QueryArgs};
use crate::orchestrate::runs::{self, RunRow, TaskRow};
use crate::queue::backend::QueueBackend;
use crate::queue::model::{Status, now_ms};
use crate::queue::proto::Task;

/// A `limit` parameter: `default` when absent, else 1 to `most`.
fn limit(given: Option<u32>, default: u32, most: u32) -> ApiResult<u32> {
    match given.unwrap_or(default) {
        n if n == 0 || n > most => Err(ApiError::bad(
            "limit",
            format!("limit: between 1 and {most}"),
        )),
        n => Ok(n),
    }
}

/// Run a read of the workspace database off the async threads; `None` when
/// the workspace has no database yet.
pub async fn read_db<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
) -> ApiResult<Option<T>> {
    let ws = state.ws.clone();
    tokio::task::spawn_blocking(move || {
        let Some(store) = ws
            .open_store_read()
            .map_err(|e| ApiError::internal(e.to_string()))?
        else {
            return Ok(None);
        };
        f(store.connection())
            .map(Some)
            .map_err(|e| ApiError::internal(format!("cannot read the workspace database: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

// ---- runs ----

/// A run, as `nova runs` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub plan: String,
    /// `sequential` or `parallel`.
    pub mode: String,
    /// Whether fixes were applied.
    pub apply: bool,
    /// `running`, `done`, `failed`, `unfinished` (work left, nothing
    /// failed: checks that say a task is not done), `denied` or
    /// `interrupted`.
    pub status: String,
    /// Milliseconds since the Unix epoch.
    pub started_at: i64,
    pub finished_at: Option<i64>,
    /// How long it ran (so far, while running), in milliseconds.
    pub duration_ms: i64,
    /// Tasks by status.
    pub tasks: HashMap<String, u64>,
    /// The agents it was asked for (empty: the whole plan).
    pub agents: Vec<String>,
    /// Whether a process of it runs on this host now (it can be cancelled).
    pub live: bool,
    /// Whether it is recorded as running on this host while its process is
    /// gone (killed, or the machine restarted): only a resume ends it.
    pub abandoned: bool,
}

impl RunSummary {
    fn of(run: &RunRow, tasks: HashMap<String, u64>) -> RunSummary {
        let end = run.finished_at.unwrap_or_else(now_ms);
        RunSummary {
            id: run.id.clone(),
            plan: run.plan.clone(),
            mode: run.mode.clone(),
            apply: run.apply,
            status: run.status.clone(),
            started_at: run.started_at,
            finished_at: run.finished_at,
            duration_ms: (end - run.started_at).max(0),
            tasks,
            agents: run.selection("agents"),
            live: crate::orchestrate::control::process(run).is_some(),
            abandoned: crate::orchestrate::control::abandoned(run),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// At most this many, newest first (default 200, at most 5000).
    pub limit: Option<u32>,
}

/// How many of the run's tasks are in each status (read along the run's
/// range of the table's key, not the whole table).
fn task_counts(conn: &Connection, run: &str) -> rusqlite::Result<HashMap<String, u64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT status, COUNT(*) FROM run_tasks WHERE run_id = ?1 GROUP BY status",
    )?;
    let rows = stmt.query_map([run], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// Runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = [RunSummary]), (status = 400, body = ApiError)))]
pub async fn list_runs(
    State(state): State<AppState>,
    QueryArgs(q): QueryArgs<RunsQuery>,
) -> ApiResult<Json<Vec<RunSummary>>> {
    let limit = limit(q.limit, 200, 5000)?;
    let found = read_db(&state, move |conn| {
        if !has_table(conn, "runs")? {
            return Ok(Vec::new());
        }
        runs::newest_runs(conn, limit as usize)?
            .iter()
            .map(|r| Ok(RunSummary::of(r, task_counts(conn, &r.id)?)))
            .collect()
    })
    .await?;
    Ok(Json(found.unwrap_or_default()))
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// One task of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunTask {
    pub agent: String,
    pub task: String,
    pub phase: String,
    /// `waiting` (planned, not started yet), `running`, `done`, `pending`
    /// (checked, not done), `failed`, `skipped`, `denied`, `not run` (the
    /// run ended before it started), `interrupted` (it was running when the
    /// run ended)
    pub status: String,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub peak_rss: Option<u64>,
    pub mean_cpu: Option<f32>,
    /// GPU memory the task's processes held at their peak (bytes), where
    /// NVML saw a GPU
    pub gpu_memory: Option<u64>,
    /// Mean use (percent) of the GPUs the task ran on
    pub gpu_util: Option<f32>,
    pub worker: String,
    pub detail: String,
}

impl From<TaskRow> for RunTask {
    fn from(t: TaskRow) -> RunTask {
        RunTask {
            agent: t.agent,
            task: t.task,
            phase: t.phase,
            status: t.status,
            attempts: t.attempts,
            exit_code: t.exit_code,
            started_at: t.started_at,
            finished_at: t.finished_at,
            peak_rss: t.peak_rss,
            mean_cpu: t.mean_cpu,
            gpu_memory: t.gpu_memory,
            gpu_util: t.gpu_util,
            worker: t.worker,
            detail: t.detail,
        }
    }
}

/// An agent of the run's plan, for the dependency graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentNode {
    pub name: String,
    pub role: String,
    pub phase: String,
    pub depends_on: Vec<String>,
}

/// One run in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub run: RunSummary,
    pub tasks: Vec<RunTask>,
    /// The plan's agents the run selected, with their dependencies (empty
    /// when the blueprints changed so that the run's selection no longer
    /// resolves).
    pub agents: Vec<AgentNode>,
    /// The Markdown report, once the run has ended.
    pub report: Option<String>,
    /// The report as HTML (raw HTML in it is shown as text).
    pub report_html: Option<String>,
}

async fn find_run(state: &AppState, id: String) -> ApiResult<RunRow> {
    let key = id.clone();
    let found = read_db(state, move |conn| {
        if !has_table(conn, "runs")? {
            return Ok(Err(format!("no run {key:?} (see nova runs)")));
        }
        Ok(match runs::find_run(conn, &key)? {
            Some(run) => Ok(run),
            None => Err(runs::not_found(conn, &key)),
        })
    })
    .await?;
    match found {
        Some(Ok(run)) => Ok(run),
        Some(Err(why)) => Err(ApiError::not_found(why).field("id")),
        None => Err(ApiError::not_found(format!("no run {id:?}: no runs yet")).field("id")),
    }
}

/// The run `id` (a unique prefix will do) and its tasks.
async fn run_and_tasks(state: &AppState, id: String) -> ApiResult<(RunRow, Vec<TaskRow>)> {
    let run = find_run(state, id).await?;
    let rid = run.id.clone();
    let tasks = read_db(state, move |conn| runs::tasks(conn, &rid))
        .await?
        .unwrap_or_default();
    Ok((run, tasks))
}

/// One run: its tasks (for the timeline), agents (for the graph) and report.
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run's id (a unique prefix will do)")),
    responses((status = 200, body = RunView), (status = 404, body = ApiError)))]
pub async fn get_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunView>> {
    let (run, tasks) = run_and_tasks(&state, id).await?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for t in &tasks {
        *counts.entry(t.status.clone()).or_default() += 1;
    }
    let agents = agents_of(&state, &run);
    let report_html = run.report.as_deref().map(markdown_html);
    Ok(Json(RunView {
        run: RunSummary::of(&run, counts),
        tasks: tasks.into_iter().map(RunTask::from).collect(),
        agents,
        report: run.report.clone(),
        report_html,
    }))
}

/// The agents a run selected and their dependencies, from the blueprints as
/// they were when a page first asked (kept per run: loading the blueprints
/// on every refresh of a live run would cost more than the rest of it).
fn agents_of(state: &AppState, run: &RunRow) -> Vec<AgentNode> {
    let mut cache = state.graphs.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = cache.get(&run.id) {
        return found.clone();
    }
    let graph = resolve_agents(state, run);
    if cache.len() >= 64 {
        cache.clear();
    }
    cache.insert(run.id.clone(), graph.clone());
    graph
}

fn resolve_agents(state: &AppState, run: &RunRow) -> Vec<AgentNode> {
    let (agents, phases) = (run.selection("agents"), run.selection("phases"));
    let only = run.args["only"].as_bool().unwrap_or(false);
    let Ok(catalog) = crate::blueprints::Catalog::load(&state.ws) else {
        return Vec::new();
    };
    let Ok(plan) = catalog.plan(&run.plan) else {
        return Vec::new();
    };
    let Ok(schedule) = crate::plan::dag::Schedule::build(&catalog, plan, &agents, !only) else {
        return Vec::new();
    };
    schedule
        .phases
        .iter()
        .filter(|p| phases.is_empty() || phases.iter().any(|w| w.eq_ignore_ascii_case(&p.name)))
        .flat_map(|p| {
            p.agents.iter().map(|a| AgentNode {
                name: a.name.clone(),
                role: a.role.clone(),
                phase: p.name.clone(),
                depends_on: a.depends_on.clone(),
            })
        })
        .collect()
}

/// Markdown to HTML with any raw HTML in it turned into text, so a report
/// (which quotes what tasks printed) cannot put markup or script in the page.
pub fn markdown_html(text: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser, html};
    let parser = Parser::new_ext(text, Options::ENABLE_TABLES).map(|event| match event {
        Event::Html(raw) | Event::InlineHtml(raw) => Event::Text(raw),
        other => other,
    });
    let mut out = String::new();
    html::push_html(&mut out, parser);
    out
}

/// A message of a run's hub.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubMessage {
    pub seq: u64,
    pub at: i64,
    /// `phase-start`, `agent-start`, `agent-done`, `run-resumed` or `agent`.
    pub kind: String,
    pub agent: String,
    #[schema(value_type = Object)]
    pub body: Value,
}

/// The hub's messages of a run, in order.
#[utoipa::path(get, path = "/api/v1/runs/{id}/messages", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 200, body = [HubMessage]), (status = 404, body = ApiError)))]
pub async fn run_messages(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<HubMessage>>> {
    let run = find_run(&state, id).await?;
    let messages = read_db(&state, move |conn| runs::messages(conn, &run.id))
        .await?
        .unwrap_or_default();
    Ok(Json(
        messages
            .into_iter()
            .map(|m| HubMessage {
                seq: m.seq,
                at: m.at,
                kind: m.kind,
                agent: m.agent,
                body: m.body,
            })
            .collect(),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// The agent.
    pub agent: String,
    /// The agent's task id.
    pub task: String,
}

/// A task's output.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskLog {
    pub agent: String,
    pub task: String,
    /// The last lines of its log file (or, when the file is gone, of what the run stored).
    pub text: String,
    /// Whether the task is still running (the log still grows).
    pub running: bool,
    /// Whether the text starts part-way through the log.
    pub truncated: bool,
}

/// The most of a log the API returns.
const LOG_TAIL: u64 = 256 * 1024;

/// A task's log: the tail of its file, live while it runs.
#[utoipa::path(get, path = "/api/v1/runs/{id}/log", tag = "runs",
    params(("id" = String, Path, description = "The run's id"), LogQuery),
    responses((status = 200, body = TaskLog), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn task_log(
    State(state): State<AppState>,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<LogQuery>,
) -> ApiResult<Json<TaskLog>> {
    let (run, tasks) = run_and_tasks(&state, id).await?;
    let Some(row) = tasks
        .into_iter()
        .find(|t| t.agent.eq_ignore_ascii_case(&q.agent) && t.task == q.task)
    else {
        return Err(ApiError::not_found(format!(
            "run {} has no task {}/{}",
            run.id, q.agent, q.task
        ))
        .field("task"));
    };
    let path = state
        .ws
        .home
        .join("runs")
        .join(&run.id)
        .join(&row.agent)
        .join(format!("{}.log", row.task));
    let running = row.status == "running";
    let (text, truncated) = match tokio::task::spawn_blocking(move || tail(&path, LOG_TAIL)).await {
        Ok(Some(found)) => found,
        _ => (row.log_tail.join("\n"), false),
    };
    Ok(Json(TaskLog {
        agent: row.agent,
        task: row.task,
        text,
        running,
        truncated,
    }))
}

/// The last `most` bytes of a file, from a line start, as text.
fn tail(path: &std::path::Path, most: u64) -> Option<(String, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.saturating_sub(most);
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut bytes = Vec::new();
    file.take(most).read_to_end(&mut bytes).ok()?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0
        && let Some(nl) = text.find('\n')
    {
        text.drain(..=nl);
    }
    Some((text, start > 0))
}

/// A plan and what can be chosen in it, for the form that starts a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlanChoice {
    pub name: String,
    pub description: String,
    pub default: bool,
    pub phases: Vec<String>,
    pub agents: Vec<String>,
}

/// The plans a run can be started with.
#[utoipa::path(get, path = "/api/v1/plans", tag = "runs",
    responses((status = 200, body = [PlanChoice]), (status = 500, body = ApiError)))]
pub async fn plans(State(state): State<AppState>) -> ApiResult<Json<Vec<PlanChoice>>> {
    let ws = state.ws.clone();
    let catalog = tokio::task::spawn_blocking(move || crate::blueprints::Catalog::load(&ws))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot load the blueprints: {e}")))?;
    let default = catalog.default_plan().to_string();
    Ok(Json(
        catalog
            .plans
            .iter()
            .map(|p| PlanChoice {
                name: p.name.clone(),
                description: p.description.clone(),
                default: p.name == default,
                phases: p.phases.iter().map(|ph| ph.name.clone()).collect(),
                agents: catalog
                    .agents_in(&p.name)
                    .map(|a| a.name().to_string())
                    .collect(),
            })
            .collect(),
    ))
}

// ---- queues ----

/// A queue's tasks by status.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct QueueDepth {
    pub name: String,
    /// Counts by status (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED).
    pub counts: HashMap<String, u64>,
    pub paused: bool,
}

/// Queue throughput and latency over one interval. Throughput counts every
/// process on the store (the higher of this server's counters and the
/// store's movement); latency is this server's own calls.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KpiPoint {
    pub at: i64,
    /// Tasks enqueued per second (any process on the store).
    pub enqueued_per_s: f64,
    /// Tasks finished per second (any process on the store).
    pub acked_per_s: f64,
    /// Mean time of this server's Dequeue calls in the interval, in microseconds (0: none).
    pub dequeue_us: f64,
    /// Mean time of this server's Ack calls in the interval, in microseconds (0: none).
    pub ack_us: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueOverview {
    pub queues: Vec<QueueDepth>,
    pub oldest_pending_age_ms: i64,
    pub in_flight_leases: u64,
    /// Where the queue lives (a SQLite file or a Redis server).
    pub store: String,
    /// Throughput and latency, oldest first, one point per interval.
    pub series: Vec<KpiPoint>,
}

pub fn depths(stats: &crate::queue::model::Stats) -> Vec<QueueDepth> {
    let mut by_queue: std::collections::BTreeMap<String, QueueDepth> = Default::default();
    for (queue, status, n) in &stats.counts {
        by_queue
            .entry(queue.clone())
            .or_insert_with(|| QueueDepth {
                name: queue.clone(),
                counts: HashMap::new(),
                paused: false,
            })
            .counts
            .insert(status.clone(), *n);
    }
    for queue in &stats.paused {
        by_queue
            .entry(queue.clone())
            .or_insert_with(|| QueueDepth {
                name: queue.clone(),
                counts: HashMap::new(),
                paused: true,
            })
            .paused = true;
    }
    by_queue.into_values().collect()
}

/// Every queue's depth by status, paused queues, and the throughput series.
#[utoipa::path(get, path = "/api/v1/queues", tag = "queues",
    responses((status = 200, body = QueueOverview), (status = 503, body = ApiError)))]
pub async fn queues(State(state): State<AppState>) -> ApiResult<Json<QueueOverview>> {
    let stats = state.queue.stats(now_ms()).await?;
    Ok(Json(QueueOverview {
        queues: depths(&stats),
        oldest_pending_age_ms: stats.oldest_pending_age_ms,
        in_flight_leases: stats.in_flight_leases,
        store: state.queue_label.clone(),
        series: state.live.kpi_series(),
    }))
}

/// A worker connected to the queue: one `nova worker` slot's Work stream,
/// or a client that polls with Dequeue (listed for 30 s after its last
/// call; its version, pid and concurrency are not known: empty and 0).
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerView {
    pub id: String,
    /// The host it names, or the address a polling worker calls from.
    pub host: String,
    pub version: String,
    /// 0 when not known.
    pub pid: u32,
    /// Tasks its process runs at once (0 when not known).
    pub concurrency: u32,
    /// The queues it takes from (none: all).
    pub queues: Vec<String>,
    pub connected_at: i64,
    pub last_seen_at: i64,
    /// The tasks it holds (IN_PROGRESS).
    pub tasks: Vec<String>,
}

/// Workers connected now, with the tasks each holds.
#[utoipa::path(get, path = "/api/v1/workers", tag = "queues",
    responses((status = 200, body = [WorkerView]), (status = 503, body = ApiError)))]
pub async fn workers(State(state): State<AppState>) -> ApiResult<Json<Vec<WorkerView>>> {
    let workers = crate::queue::service::connected_workers(&state.queue, now_ms()).await?;
    Ok(Json(
        workers
            .into_iter()
            .map(|(w, tasks)| WorkerView {
                id: w.id,
                host: w.host,
                version: w.version,
                pid: w.pid,
                concurrency: w.concurrency,
                queues: w.queues,
                connected_at: w.connected_at,
                last_seen_at: w.last_seen_at,
                tasks,
            })
            .collect(),
    ))
}

/// A queue task.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueTask {
    pub id: String,
    pub queue: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// PENDING, IN_PROGRESS, COMPLETED, FAILED or CANCELLED.
    pub status: String,
    pub priority: i32,
    pub attempts: u32,
    pub max_attempts: u32,
    /// The payload as sent (JSON text by convention).
    pub payload: String,
    pub metadata: HashMap<String, String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Not handed out before this time.
    pub run_at: i64,
    pub result: String,
    pub last_error: String,
    /// The worker holding it, while IN_PROGRESS.
    pub worker_id: String,
    pub lease_expires_at: i64,
    pub idempotency_key: String,
}

impl From<Task> for QueueTask {
    fn from(t: Task) -> QueueTask {
        QueueTask {
            id: t.id,
            queue: t.queue,
            kind: t.r#type,
            status: t.status,
            priority: t.priority,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            payload: t.payload,
            metadata: t.metadata.into_iter().map(|m| (m.key, m.value)).collect(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            run_at: t.run_at,
            result: t.result,
            last_error: t.last_error,
            worker_id: t.worker_id,
            lease_expires_at: t.lease_expires_at,
            idempotency_key: t.idempotency_key,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TasksQuery {
    /// Only tasks of this status.
    pub status: Option<String>,
    /// Only tasks of this type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<QueueTask>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

/// A queue's tasks, oldest first, filtered by status and type, in pages.
#[utoipa::path(get, path = "/api/v1/queues/{queue}/tasks", tag = "queues",
    params(("queue" = String, Path, description = "The queue"), TasksQuery),
    responses((status = 200, body = TaskPage), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn queue_tasks(
    State(state): State<AppState>,
    Path(queue): Path<String>,
    QueryArgs(q): QueryArgs<TasksQuery>,
) -> ApiResult<Json<TaskPage>> {
    let queue = crate::queue::validate::queue_name("queue", &queue)
        .map_err(|e| ApiError::bad("queue", e))?;
    let status = match &q.status {
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            let valid: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::bad(
                "status",
                format!("status {s:?}: one of {}", valid.join(", ")),
            )
        })?),
        None => None,
    };
    let limit = limit(q.limit, 100, 1000)?;
    if let Some(after) = &q.after {
        crate::queue::validate::task_id("after", after).map_err(|e| ApiError::bad("after", e))?;
    }
    // Filtering by type happens here, so read in pages until the page is full.
    let mut tasks = Vec::new();
    let mut after = q.after.clone();
    let mut next = None;
    loop {
        let chunk = state
            .queue
            .list(status, Some(queue.clone()), 500, after.clone())
            .await
            .map_err(|e| match e {
                crate::queue::backend::QueueError::NotFound(_) => {
                    ApiError::bad("after", "after: no such task")
                }
                other => other.into(),
            })?;
        let done = chunk.len() < 500;
        after = chunk.last().map(|t| t.id.clone());
        for t in chunk {
            if q.kind.as_ref().is_some_and(|k| &t.r#type != k) {
                continue;
            }
            if tasks.len() == limit as usize {
                next = tasks.last().map(|t: &QueueTask| t.id.clone());
                break;
            }
            tasks.push(QueueTask::from(t));
        }
        if next.is_some() || done {
            break;
        }
    }
    Ok(Json(TaskPage { tasks, next }))
}

/// One queue task: its attempts, payload, result and lease.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "queues",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, body = QueueTask), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<QueueTask>> {
    crate::queue::validate::task_id("id", &id).map_err(|e| ApiError::bad("id", e))?;
    Ok(Json(state.queue.get(id).await?.into()))
}

// ---- host ----

#[derive(Debug, Serialize, ToSchema)]
pub struct HostView {
    /// Samples this server took while the dashboard watched, oldest first
    /// (as `nova monitor --json` prints them).
    #[schema(value_type = Vec<Object>)]
    pub live: Vec<Value>,
    /// The samples `nova monitor` stored, oldest first (at most `limit`).
    #[schema(value_type = Vec<Object>)]
    pub history: Vec<Value>,
    /// Alerts that fired and cleared, newest first.
    pub alerts: Vec<AuditEntry>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HostQuery {
    /// At most this many stored samples, the newest (default 720, at most 10000).
    pub limit: Option<u32>,
}

/// The host's figures: live samples and the monitor's stored history, and alerts.
#[utoipa::path(get, path = "/api/v1/host", tag = "host", params(HostQuery),
    responses((status = 200, body = HostView), (status = 400, body = ApiError)))]
pub async fn host(
    State(state): State<AppState>,
    QueryArgs(q): QueryArgs<HostQuery>,
) -> ApiResult<Json<HostView>> {
    let limit = limit(q.limit, 720, 10_000)?;
    state.live.ensure_host_sample().await;
    let history = read_db(&state, move |conn| {
        if !has_table(conn, "monitor_samples")? {
            return Ok(Vec::new());
        }
        let mut rows: Vec<Value> = conn
            .prepare("SELECT sample FROM monitor_samples ORDER BY seq DESC LIMIT ?1")?
            .query_map([limit], |r| r.get::<_, String>(0))?
            .filter_map(|r| r.ok().and_then(|s| serde_json::from_str(&s).ok()))
            .collect();
        rows.reverse();
        Ok(rows)
    })
    .await?
    .unwrap_or_default();
    let alerts = audit_entries(&state, crate::audit::Filter::action("monitor.alert"), 200).await?;
    Ok(Json(HostView {
        live: state.live.host_samples(),
        history,
        alerts,
    }))
}

// ---- governance ----

/// An audit record.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    #[schema(value_type = Object)]
    pub details: Value,
    /// ISO/IEC 27001:2022 Annex A control ids the record evidences.
    pub controls: Vec<String>,
    pub hash: String,
}

impl From<crate::audit::Record> for AuditEntry {
    fn from(r: crate::audit::Record) -> AuditEntry {
        AuditEntry {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            action: r.action,
            target: r.target,
            outcome: r.outcome,
            details: r.details,
            controls: r.controls,
            hash: r.hash,
        }
    }
}

/// The newest `limit` records `filter` accepts, newest first: the log is
/// read back from its end only as far as they are found.
async fn audit_entries(
    state: &AppState,
    filter: crate::audit::Filter,
    limit: usize,
) -> ApiResult<Vec<AuditEntry>> {
    let Some(log) = &state.audit else {
        return Ok(Vec::new());
    };
    Ok(log
        .newest(filter, limit)
        .await
        .map_err(|e| ApiError::internal(format!("cannot read the audit log: {e}")))?
        .into_iter()
        .map(AuditEntry::from)
        .collect())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this action (a trailing `*` matches a prefix, as `queue.*`).
    pub action: Option<String>,
    /// Only records whose actor contains this.
    pub actor: Option<String>,
    /// Only records of this run (its id in the target or details).
    pub run: Option<String>,
    /// At most this many, newest first (default 200, at most 5000).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChainState {
    /// Records in the log.
    pub records: u64,
    /// The last record's hash, when the chain holds.
    pub head: Option<String>,
    /// Whether every record chains to the one before it.
    pub ok: bool,
    /// The first record that does not chain, and why.
    pub broken_at: Option<u64>,
    pub reason: Option<String>,
    /// When the whole chain was last walked (ms since the Unix epoch):
    /// between whole walks only the records appended since the last
    /// verified one are checked, and that one again (a whole walk comes
    /// at least every 5 minutes; `nova audit verify` always walks it all).
    pub whole_walk_at: Option<i64>,
}

/// The chain's state and each control's evidence, as the dashboard's
/// watch of the chain has them now.
async fn checked(state: &AppState) -> ApiResult<Option<crate::audit::watch::Checked>> {
    match &state.audit {
        Some(log) => state
            .chain
            .check(log)
            .await
            .map(Some)
            .map_err(|e| ApiError::internal(format!("cannot verify the audit log: {e}"))),
        None => Ok(None),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub records: Vec<AuditEntry>,
    /// `nova audit verify` over the whole log.
    pub chain: ChainState,
}

/// The audit log, filtered, with the chain's verification.
#[utoipa::path(get, path = "/api/v1/audit", tag = "governance", params(AuditQuery),
    responses((status = 200, body = AuditView), (status = 400, body = ApiError)))]
pub async fn audit(
    State(state): State<AppState>,
    QueryArgs(q): QueryArgs<AuditQuery>,
) -> ApiResult<Json<AuditView>> {
    let limit = limit(q.limit, 200, 5000)?;
    let checked = checked(&state).await?;
    let whole_walk_at = checked.as_ref().map(|c| c.whole_at);
    let verification = checked.map_or_else(|| crate::audit::verify(Vec::new()), |c| c.verification);
    let AuditQuery {
        action, actor, run, ..
    } = q;
    let filter = crate::audit::Filter {
        action,
        actor,
        mentions: run,
        ..Default::default()
    };
    let entries = audit_entries(&state, filter, limit as usize).await?;
    Ok(Json(AuditView {
        records: entries,
        chain: ChainState {
            records: verification.records,
            ok: verification.broken.is_none(),
            head: verification.head,
            broken_at: verification.broken.as_ref().map(|b| b.seq),
            reason: verification.broken.map(|b| b.reason),
            whole_walk_at,
        },
    }))
}

/// A decision of the policy engine.
#[derive(Debug, Serialize, ToSchema)]
pub struct DecisionView {
    pub seq: u64,
    pub at: i64,
    /// role:agent that asked.
    pub subject: String,
    /// The action and resource asked about.
    pub request: String,
    pub allowed: bool,
    pub reasons: Vec<String>,
    /// `embedded` or `opa`.
    pub evaluator: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DecisionsQuery {
    /// Only denials.
    pub denied: Option<bool>,
    /// At most this many, newest first (default 200, at most 5000).
    pub limit: Option<u32>,
}

/// The policy engine's decisions (from the audit log), with their reasons.
#[utoipa::path(get, path = "/api/v1/policy/decisions", tag = "governance", params(DecisionsQuery),
    responses((status = 200, body = [DecisionView]), (status = 400, body = ApiError)))]
pub async fn decisions(
    State(state): State<AppState>,
    QueryArgs(q): QueryArgs<DecisionsQuery>,
) -> ApiResult<Json<Vec<DecisionView>>> {
    let limit = limit(q.limit, 200, 5000)?;
    let only_denied = q.denied.unwrap_or(false);
    let filter = crate::audit::Filter {
        outcome: only_denied.then(|| "denied".to_string()),
        ..crate::audit::Filter::action("policy.decision")
    };
    let found = audit_entries(&state, filter, limit as usize).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|e| DecisionView {
                seq: e.seq,
                at: e.at,
                subject: e.actor,
                request: e.target,
                allowed: e.outcome == "allowed",
                reasons: e.details["reasons"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                evaluator: e.details["evaluator"].as_str().unwrap_or("").to_string(),
            })
            .collect(),
    ))
}

/// An ISO 27001 control and the audit records that evidence it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ControlView {
    pub id: String,
    pub title: String,
    /// Actions that evidence it.
    pub actions: Vec<String>,
    /// Records in the log that evidence it.
    pub evidence: u64,
}

/// ISO/IEC 27001:2022 controls with their evidence counts.
#[utoipa::path(get, path = "/api/v1/controls", tag = "governance",
    responses((status = 200, body = [ControlView]), (status = 500, body = ApiError)))]
pub async fn controls(State(state): State<AppState>) -> ApiResult<Json<Vec<ControlView>>> {
    let evidence = checked(&state)
        .await?
        .map(|c| c.evidence)
        .unwrap_or_default();
    Ok(Json(
        crate::audit::controls::CONTROLS
            .iter()
            .map(|c| ControlView {
                id: c.id.to_string(),
                title: c.title.to_string(),
                actions: c.actions.iter().map(|a| a.to_string()).collect(),
                evidence: evidence.get(c.id).copied().unwrap_or(0),
            })
            .collect(),
    ))
}
