//! The API's control routes: start, cancel and resume runs; retry and
//! cancel queue tasks; pause and resume queues.
//!
//! Each action is asked of the policy engine as the signed-in operator
//! (role `operator`, `context.via = "dashboard"`), its decision is recorded,
//! a denial answers 403 with the policy's reasons, and what was done is
//! written to the audit log. Runs start through the run engine's own
//! checks (`orchestrate::run::check`) and run as `nova orchestrate`
//! processes of their own (`orchestrate::control`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::api::{QueueTask, RunSummary};
use super::auth::{Caller, operator};
use super::error::{ApiError, ApiResult, JsonBody};
use crate::audit::Event;
use crate::config::ExecutionMode;
use crate::orchestrate::run::RunRequest;
use crate::queue::backend::QueueBackend;
use crate::queue::model::now_ms;

/// Who is acting, as the routes see it.
pub struct Acting {
    pub operator: String,
    pub peer: String,
}

fn acting(caller: &Caller, peer: SocketAddr) -> Acting {
    Acting {
        operator: operator(caller, peer),
        peer: peer.ip().to_string(),
    }
}

/// Ask the policy engine whether the operator may `action` `resource`; the
/// decision is recorded; a denial is a 403 carrying the reasons.
async fn authorize(
    state: &AppState,
    who: &Acting,
    action: &str,
    resource: &str,
    mut context: Value,
) -> ApiResult<()> {
    context["via"] = json!("dashboard");
    context["peer"] = json!(who.peer);
    let input = crate::policy::input(&who.operator, "operator", action, resource, context);
    let decision = state
        .policy
        .decide_recorded(state.audit.as_ref(), &input)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if decision.allow {
        return Ok(());
    }
    let mut err = ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "{action} {resource}: denied by policy: {}",
            if decision.reasons.is_empty() {
                "no rule allows it".to_string()
            } else {
                decision.reasons.join("; ")
            }
        ),
    );
    err.reasons = decision.reasons;
    Err(err)
}

async fn record(
    state: &AppState,
    who: &Acting,
    action: &str,
    target: String,
    outcome: &str,
    details: Value,
) {
    if let Some(log) = &state.audit {
        crate::audit::record(
            log,
            Event::new(
                format!("operator:{}", who.operator),
                action,
                target,
                outcome,
            )
            .details(details),
        )
        .await;
    }
}

/// What starting a run asks for (as `nova orchestrate`'s flags).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The plan (default: the catalog's default plan).
    pub plan: Option<String>,
    /// These agents and, unless `only`, the agents they depend on (default: the whole plan).
    #[serde(default)]
    pub agents: Vec<String>,
    #[serde(default)]
    pub only: bool,
    /// Only these phases.
    #[serde(default)]
    pub phases: Vec<String>,
    /// `sequential` or `parallel` (default: the workspace's).
    pub mode: Option<String>,
    /// Most tasks at once, 1 to 1024 (default: the number of cores).
    pub jobs: Option<u32>,
    /// Run the fix of every task whose check fails.
    #[serde(default)]
    pub apply: bool,
    /// After a failure, still run the agents that do not depend on it.
    #[serde(default)]
    pub keep_going: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunStarted {
    /// The run's id: follow it at /api/v1/runs/{id}.
    pub id: String,
    /// The `nova orchestrate` process running it.
    pub pid: u32,
}

fn short(items: &[String], field: &str) -> ApiResult<()> {
    if items.len() > 1000 {
        return Err(ApiError::bad(field, format!("{field}: at most 1000")));
    }
    for (i, item) in items.iter().enumerate() {
        if item.is_empty() || item.len() > 200 || item.chars().any(char::is_control) {
            return Err(ApiError::bad(
                &format!("{field}[{i}]"),
                format!("{field}[{i}]: a name of 1 to 200 printable characters"),
            ));
        }
    }
    Ok(())
}

/// Start a run (202: it runs on as its own process).
#[utoipa::path(post, path = "/api/v1/runs", tag = "runs", request_body = StartRun,
    responses((status = 202, body = RunStarted), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 415, body = ApiError), (status = 422, body = ApiError)),
    security(("session" = []), ("bearer" = [])))]
pub async fn start_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    JsonBody(body): JsonBody<StartRun>,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let who = acting(&caller, peer);
    let mode = match body.mode.as_deref() {
        None => None,
        Some("sequential") => Some(ExecutionMode::Sequential),
        Some("parallel") => Some(ExecutionMode::Parallel),
        Some(other) => {
            return Err(ApiError::bad(
                "mode",
                format!("mode {other:?}: sequential or parallel"),
            ));
        }
    };
    if body.jobs.is_some_and(|j| j == 0 || j > 1024) {
        return Err(ApiError::bad("jobs", "jobs: between 1 and 1024"));
    }
    if let Some(plan) = &body.plan {
        short(std::slice::from_ref(plan), "plan").map_err(|e| e.field("plan"))?;
    }
    short(&body.agents, "agents")?;
    short(&body.phases, "phases")?;
    let id = crate::orchestrate::run::new_run_id();
    let request = RunRequest {
        plan: body.plan.clone(),
        agents: body.agents.clone(),
        only: body.only,
        phases: body.phases.clone(),
        mode,
        jobs: body.jobs,
        apply: body.apply,
        keep_going: body.keep_going,
        store: state.store.clone(),
        run_id: Some(id.clone()),
        ..RunRequest::default()
    };
    let plan = body.plan.clone().unwrap_or_default();
    authorize(
        &state,
        &who,
        "run",
        &plan,
        json!({"apply": body.apply, "agents": body.agents, "phases": body.phases, "mode": body.mode}),
    )
    .await?;
    spawn(&state, &who, request, id, "run.start.request").await
}

async fn spawn(
    state: &AppState,
    who: &Acting,
    request: RunRequest,
    id: String,
    action: &str,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let ws = state.ws.clone();
    let operator = who.operator.clone();
    let spawned = tokio::task::spawn_blocking(move || {
        let child = crate::orchestrate::control::spawn(&ws, &request, &operator);
        (child, request)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let (child, request) = spawned;
    let mut child = child.map_err(|e| {
        ApiError::from_nova(e, &["plan", "agents", "phases", "mode", "jobs", "run-id"])
    })?;
    let pid = child.id().unwrap_or(0);
    // Reap it when it ends; the run's own record says how it went.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    record(
        state,
        who,
        action,
        format!("run {id}"),
        "started",
        json!({"pid": pid, "args": request.to_args()}),
    )
    .await;
    state.live.nudge();
    Ok((StatusCode::ACCEPTED, Json(RunStarted { id, pid })))
}

/// Stop a running run, as Ctrl-C would: it ends `interrupted`, resumable.
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 202, body = RunSummary), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)),
    security(("session" = []), ("bearer" = [])))]
pub async fn cancel_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RunSummary>)> {
    let who = acting(&caller, peer);
    let run = state_run(&state, &id).await?;
    authorize(
        &state,
        &who,
        "cancel-run",
        &run.id,
        json!({"status": run.status}),
    )
    .await?;
    let ws = state.ws.clone();
    let rid = run.id.clone();
    let cancelled =
        tokio::task::spawn_blocking(move || crate::orchestrate::control::cancel(&ws, &rid))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| match e {
                crate::error::Error::Usage(m) | crate::error::Error::Failed(m) => {
                    ApiError::conflict(m)
                }
                other => ApiError::internal(other.to_string()),
            })?;
    record(
        &state,
        &who,
        "run.cancel",
        format!("run {}", cancelled.id),
        "signalled",
        json!({}),
    )
    .await;
    state.live.nudge();
    Ok((
        StatusCode::ACCEPTED,
        Json(
            super::api::get_run(State(state.clone()), Path(cancelled.id))
                .await?
                .0
                .run,
        ),
    ))
}

async fn state_run(state: &AppState, id: &str) -> ApiResult<crate::orchestrate::runs::RunRow> {
    let ws = state.ws.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || crate::orchestrate::control::find(&ws, &id))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::not_found(e.to_string()).field("id"))
}

/// Finish an interrupted run without redoing its finished tasks (202).
#[utoipa::path(post, path = "/api/v1/runs/{id}/resume", tag = "runs",
    params(("id" = String, Path, description = "The run's id")),
    responses((status = 202, body = RunStarted), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, body = ApiError)),
    security(("session" = []), ("bearer" = [])))]
pub async fn resume_run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RunStarted>)> {
    let who = acting(&caller, peer);
    let run = state_run(&state, &id).await?;
    let resumable = run.status == "interrupted"
        || (run.status == "running" && crate::orchestrate::control::process(&run).is_none());
    if !resumable {
        return Err(ApiError::conflict(format!(
            "run {} is {}{}: only an interrupted run can be resumed",
            run.id,
            run.status,
            if run.status == "running" {
                " (its process is alive)"
            } else {
                ""
            }
        )));
    }
    authorize(
        &state,
        &who,
        "resume-run",
        &run.id,
        json!({"apply": run.apply}),
    )
    .await?;
    let request = RunRequest {
        resume: Some(Some(run.id.clone())),
        store: state.store.clone(),
        ..RunRequest::default()
    };
    spawn(&state, &who, request, run.id.clone(), "run.resume.request").await
}

/// Put a failed or cancelled queue task back in its queue.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", tag = "queues",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, body = QueueTask), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError)),
    security(("session" = []), ("bearer" = [])))]
pub async fn retry_task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> ApiResult<Json<QueueTask>> {
    task_action(state, caller, peer, id, true).await
}

/// Cancel a pending or running queue task.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "queues",
    params(("id" = String, Path, description = "The task's id")),
    responses((status = 200, body = QueueTask), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError), (status = 409, body = ApiError)),
    security(("session" = []), ("bearer" = [])))]
pub async fn cancel_task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> ApiResult<Json<QueueTask>> {
    task_action(state, caller, peer, id, false).await
}

async fn task_action(
    state: AppState,
    caller: Caller,
    peer: SocketAddr,
    id: String,
    retry: bool,
) -> ApiResult<Json<QueueTask>> {
    crate::queue::validate::task_id("id", &id).map_err(|e| ApiError::bad("id", e))?;
    let who = acting(&caller, peer);
    let task = state.queue.get(id.clone()).await?;
    let (action, audited) = if retry {
        ("retry-task", "queue.retry")
    } else {
        ("cancel-task", "queue.cancel")
    };
    authorize(
        &state,
        &who,
        action,
        &id,
        json!({"queue": task.queue, "type": task.r#type, "status": task.status}),
    )
    .await?;
    let done = if retry {
        state.queue.retry(id.clone(), now_ms()).await
    } else {
        state.queue.cancel(id.clone(), now_ms()).await
    };
    let outcome = if done.is_ok() { "ok" } else { "refused" };
    record(
        &state,
        &who,
        audited,
        format!("task {id}"),
        outcome,
        json!({"queue": task.queue, "from": task.status, "error": done.as_ref().err().map(|e| e.to_string())}),
    )
    .await;
    state.live.nudge();
    Ok(Json(done?.into()))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueState {
    pub queue: String,
    pub paused: bool,
    /// Whether this request changed it (false: it already was).
    pub changed: bool,
}

/// Stop handing out a queue's tasks (running ones finish; enqueues are still taken).
#[utoipa::path(post, path = "/api/v1/queues/{queue}/pause", tag = "queues",
    params(("queue" = String, Path, description = "The queue")),
    responses((status = 200, body = QueueState), (status = 400, body = ApiError), (status = 403, body = ApiError)),
    security(("session" = []), ("bearer" = [])))]
pub async fn pause_queue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(queue): Path<String>,
) -> ApiResult<Json<QueueState>> {
    set_paused(state, caller, peer, queue, true).await
}

/// Hand out a paused queue's tasks again.
#[utoipa::path(post, path = "/api/v1/queues/{queue}/resume", tag = "queues",
    params(("queue" = String, Path, description = "The queue")),
    responses((status = 200, body = QueueState), (status = 400, body = ApiError), (status = 403, body = ApiError)),
    security(("session" = []), ("bearer" = [])))]
pub async fn resume_queue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(queue): Path<String>,
) -> ApiResult<Json<QueueState>> {
    set_paused(state, caller, peer, queue, false).await
}

async fn set_paused(
    state: AppState,
    caller: Caller,
    peer: SocketAddr,
    queue: String,
    paused: bool,
) -> ApiResult<Json<QueueState>> {
    let queue = crate::queue::validate::queue_name("queue", &queue)
        .map_err(|e| ApiError::bad("queue", e))?;
    let who = acting(&caller, peer);
    let (action, audited) = if paused {
        ("pause-queue", "queue.pause")
    } else {
        ("resume-queue", "queue.resume")
    };
    authorize(&state, &who, action, &queue, json!({})).await?;
    let changed = state
        .queue
        .set_paused(queue.clone(), paused, now_ms())
        .await?;
    record(
        &state,
        &who,
        audited,
        format!("queue {queue}"),
        "ok",
        json!({"changed": changed}),
    )
    .await;
    state.live.nudge();
    Ok(Json(QueueState {
        queue,
        paused,
        changed,
    }))
}
