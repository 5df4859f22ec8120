//! The run engine: choose, schedule, run, record, report. [`start`] is how
//! every front-end starts a run (`nova orchestrate`, and the HTTP API next).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::privilege::Privileges;
use super::runs::{self, Message, RunRow, TaskRow, local_queue};
use super::worker::{self, JOB_TYPE, Job, JobResult, WorkerConfig};
use super::{AgentOutcome, AgentRun, report};
use crate::audit::{AuditLog, Event};
use crate::audit::{operator, workspace_log};
use crate::blueprints::model::split_dependency;
use crate::blueprints::{Catalog, TaskSpec};
use crate::clock::now_ms;
use crate::config::ExecutionMode;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::plan::dag::Schedule;
use crate::queue::client;
use crate::queue::handle::QueueHandle;
use crate::queue::open::open_queue;
use crate::queue::proto::{EnqueueRequest, GetTaskRequest};
use crate::store::writer::Durability;
use crate::store::{Store, TaskState, TaskStatus};
use crate::store_url::StoreUrl;
use crate::workspace::Workspace;

/// How often the queue is asked about tasks when no local worker said it acked.
/// What a run is asked to do: the plan and agents, how to run them, where
/// the queue is. Front-ends build it from what the user gave (flags, a form).
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub plan: Option<String>,
    /// These agents and, unless `only`, the agents they depend on.
    pub agents: Vec<String>,
    pub only: bool,
    pub phases: Vec<String>,
    pub mode: Option<ExecutionMode>,
    /// Most tasks at once (and local workers); the number of cores when unset.
    pub jobs: Option<u32>,
    pub apply: bool,
    /// Print the schedule and run nothing.
    pub dry_run: bool,
    /// Resume an interrupted run: the last one (`Some(None)`) or this one.
    pub resume: Option<Option<String>>,
    pub keep_going: bool,
    /// A shared queue server, instead of one in process.
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    /// TLS for an `https://` server.
    pub tls: crate::tls::ClientTls,
    /// Also write the Markdown report here.
    pub report: Option<PathBuf>,
    pub store: crate::store_url::StoreChoice,
    /// Echo task output (`-v`).
    pub verbose: u8,
    /// The new run's id, chosen by the front-end (the dashboard answers
    /// with it before the run starts); a fresh one when unset.
    pub run_id: Option<String>,
}

impl RunRequest {
    /// The `nova orchestrate` arguments that ask for this run: how a
    /// front-end that is not a terminal starts one as a process of its own
    /// (which outlives the front-end and is stopped like any run, by SIGTERM).
    pub fn to_args(&self) -> Vec<String> {
        let mut argv = vec!["orchestrate".to_string()];
        let mut flag = |name: &str, values: &[String]| {
            argv.push(format!("--{name}"));
            argv.extend(values.iter().cloned());
        };
        if let Some(plan) = &self.plan {
            flag("plan", std::slice::from_ref(plan));
        }
        if !self.agents.is_empty() {
            flag("agents", &self.agents);
        }
        if self.only {
            flag("only", &[]);
        }
        if !self.phases.is_empty() {
            flag("phase", &self.phases);
        }
        if let Some(mode) = self.mode {
            flag("mode", &[format!("{mode:?}").to_lowercase()]);
        }
        if let Some(jobs) = self.jobs {
            flag("jobs", &[jobs.to_string()]);
        }
        if self.apply {
            flag("apply", &[]);
        }
        match &self.resume {
            Some(Some(id)) => flag("resume", std::slice::from_ref(id)),
            Some(None) => flag("resume", &[]),
            None => {}
        }
        if self.keep_going {
            flag("keep-going", &[]);
        }
        if let Some(server) = &self.server {
            flag("server", std::slice::from_ref(server));
        }
        if let Some(file) = &self.token_file {
            flag("token-file", &[file.display().to_string()]);
        }
        if let Some(store) = &self.store.store {
            flag("store", std::slice::from_ref(store));
        }
        if let Some(id) = &self.run_id {
            flag("run-id", std::slice::from_ref(id));
        }
        argv
    }
}

/// Whether `id` can name a run: what nova's own ids are made of.
pub fn valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Check what a run needs before it is started (plan, agents, phases, the
/// resumed run): the errors `start` would give, without starting anything.
pub fn check(ws: &Workspace, args: &RunRequest) -> Result<()> {
    let args = with_resumed(ws, args)?;
    let args = args.as_ref();
    if let Some(id) = &args.run_id {
        check_new_id(ws, id)?;
    }
    schedule(ws, args).map(|_| ())
}

/// The request itself, or for `--resume` the interrupted run's own selection.
fn with_resumed<'a>(
    ws: &Workspace,
    args: &'a RunRequest,
) -> Result<std::borrow::Cow<'a, RunRequest>> {
    Ok(match &args.resume {
        Some(which) => std::borrow::Cow::Owned(resumed_args(ws, args, which.as_deref())?),
        None => std::borrow::Cow::Borrowed(args),
    })
}

fn check_new_id(ws: &Workspace, id: &str) -> Result<()> {
    if !valid_run_id(id) {
        return Err(Error::usage(format!(
            "--run-id {id:?}: letters, digits, - and _ only, at most 64"
        )));
    }
    if let Some(store) = ws.open_store_read()?
        && runs::find_run(store.connection(), id)
            .map_err(|e| Error::Failed(e.to_string()))?
            .is_some()
    {
        return Err(Error::usage(format!(
            "--run-id {id}: a run with this id exists"
        )));
    }
    Ok(())
}

/// The catalog and the schedule a request selects.
fn schedule(ws: &Workspace, args: &RunRequest) -> Result<(Catalog, Schedule)> {
    let catalog = Catalog::load(ws)?;
    let plan = crate::plan::resolve(&catalog, args.plan.as_deref(), &args.agents, &args.phases)?;
    crate::plan::check_phases(plan, &args.phases)?;
    let mut schedule = Schedule::build(&catalog, plan, &args.agents, !args.only)?;
    if !args.phases.is_empty() {
        schedule
            .phases
            .retain(|p| args.phases.iter().any(|w| w.eq_ignore_ascii_case(&p.name)));
    }
    Ok((catalog, schedule))
}

const POLL: Duration = Duration::from_millis(50);
/// How long a task has run before the run's records show it running: most
/// tasks of a busy run end before, and are then recorded once, not twice.
const RUNNING_AFTER: Duration = Duration::from_millis(100);
/// Base of the backoff between attempts of a failing task.
const RETRY_BACKOFF_MS: u32 = 200;

/// A message of the run's hub, with the line an agent's inbox holds for
/// it, written once (the phase's start lists every agent of the phase and
/// goes into every job of the phase).
struct HubMessage {
    message: Message,
    line: Option<Box<RawValue>>,
}

impl HubMessage {
    fn new(message: Message) -> HubMessage {
        /// An inbox line; fields in the order a JSON object's keys sort.
        #[derive(Serialize)]
        struct Line<'a> {
            body: &'a Value,
            from: &'a str,
            kind: &'a str,
            seq: u64,
        }
        let line = serde_json::value::to_raw_value(&Line {
            body: &message.body,
            from: &message.agent,
            kind: &message.kind,
            seq: message.seq,
        })
        .ok();
        HubMessage { message, line }
    }
}

struct Run {
    id: String,
    writer: Arc<crate::store::writer::Writer>,
    apply: bool,
    workdir: PathBuf,
    db: Mutex<Connection>,
    audit: Option<AuditLog>,
    messages: Mutex<Vec<HubMessage>>,
    /// Tasks a resumed run already finished: (agent key, task id).
    finished: HashSet<(String, String)>,
    /// Queue tasks (id, attempt) already recorded as running.
    running: Mutex<HashSet<(String, u32)>>,
    progress: super::progress::Progress,
    /// The messages of jobs in flight, for a run whose queue is in this
    /// process (its jobs leave them out); `None` for a run on a server,
    /// whose jobs carry them to workers elsewhere.
    inboxes: Option<worker::Inboxes>,
}

impl Run {
    fn say(&self, text: &str) {
        self.progress.say(text);
    }

    async fn hub(&self, kind: &str, agent: &str, body: Value) {
        let m = {
            let mut messages = self.messages.lock().unwrap_or_else(|p| p.into_inner());
            let m = Message {
                seq: messages.len() as u64 + 1,
                at: now_ms(),
                kind: kind.to_string(),
                agent: agent.to_string(),
                body,
            };
            messages.push(HubMessage::new(m.clone()));
            m
        };
        let id = self.id.clone();
        // Answered once committed; on disk a moment later (the run's
        // closing record is durable, and follows every write before it).
        let stored = self
            .writer
            .write_with(
                Durability::Background,
                move |conn| runs::add_message(conn, &id, &m).map_err(|e| e.to_string()),
                |e| e,
            )
            .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, "could not store a hub message");
        }
    }

    /// The messages addressed to `agent`: the `phase-start` of its phase, the
    /// `agent-start` and `agent-done` of itself and the agents it depends on,
    /// and agents' messages whose `to` is its name or `*`. (Not every
    /// broadcast: in a run of many agents that would grow without bound.)
    ///
    /// Each as the JSON line the agent's inbox file holds, written once per
    /// message ([`HubMessage`]).
    fn inbox(&self, agent: &AgentRun) -> Vec<Box<RawValue>> {
        let concerns = |name: &str| {
            name.eq_ignore_ascii_case(&agent.name)
                || agent
                    .deps
                    .iter()
                    .any(|d| split_dependency(d).0 == name.to_lowercase())
        };
        self.messages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|h| {
                let m = &h.message;
                match m.kind.as_str() {
                    "phase-start" => m.body["phase"].as_str() == Some(agent.phase.as_str()),
                    "agent-start" | "agent-done" => concerns(&m.agent),
                    "agent" => m.body["to"]
                        .as_str()
                        .is_some_and(|to| to == "*" || to.eq_ignore_ascii_case(&agent.name)),
                    _ => false,
                }
            })
            .filter_map(|h| h.line.clone())
            .collect()
    }

    /// Let go of a finished task's messages (see [`Run::inboxes`]).
    fn forget_inbox(&self, agent: &AgentRun, task: &str) {
        if let Some(inboxes) = &self.inboxes {
            inboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(agent.name.clone(), task.to_string()));
        }
    }

    /// Record, once per attempt, that a worker has taken the task: `nova runs
    /// show` and the dashboard see it running before it ends. Not waited
    /// for: the write is queued now, so the task's outcome, queued later,
    /// commits after it.
    fn mark_running(&self, agent: &AgentRun, spec: &TaskSpec, task: &crate::queue::proto::Task) {
        let first = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((task.id.clone(), task.attempts));
        if !first {
            return;
        }
        let row = TaskRow {
            agent: agent.name.clone(),
            task: spec.id.clone(),
            phase: agent.phase.clone(),
            status: "running".into(),
            attempts: task.attempts,
            exit_code: None,
            started_at: Some(task.updated_at),
            finished_at: None,
            peak_rss: None,
            mean_rss: None,
            mean_cpu: None,
            gpu_memory: None,
            gpu_util: None,
            worker: task.worker_id.clone(),
            detail: String::new(),
            log_tail: Vec::new(),
        };
        let id = self.id.clone();
        // Relaxed: lost in a power cut, the task shows as queued, not running,
        // until its outcome is recorded.
        let queued = self.writer.submit(
            Durability::Relaxed,
            move |conn| runs::upsert_task(conn, &id, &row).map_err(|e| e.to_string()),
            |e: String| e,
            |stored| {
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "could not record a task as running");
                }
            },
        );
        if !queued {
            tracing::warn!("could not record a task as running: the database writer has stopped");
        }
    }

    /// Record a task's outcome. What it stores is taken now; the returned
    /// future writes it, so the caller can have it committed together with
    /// the agent's next task.
    fn record(
        &self,
        agent: &AgentRun,
        task: &TaskSpec,
        result: &JobResult,
        attempts: u32,
    ) -> impl std::future::Future<Output = ()> + '_ {
        let row = TaskRow {
            agent: agent.name.clone(),
            task: task.id.clone(),
            phase: agent.phase.clone(),
            status: result.status.clone(),
            attempts,
            exit_code: result.exit_code,
            started_at: Some(result.started_at),
            finished_at: Some(result.finished_at),
            peak_rss: Some(result.peak_rss),
            mean_rss: Some(result.mean_rss),
            mean_cpu: Some(result.mean_cpu),
            gpu_memory: result.gpu_peak_memory,
            gpu_util: result.gpu_mean_utilization,
            worker: result.worker.clone(),
            detail: result.detail.clone(),
            log_tail: result.tail.clone(),
        };
        let status = match result.status.as_str() {
            "done" => TaskStatus::Done,
            "skipped" => TaskStatus::Skipped,
            "pending" => TaskStatus::Pending,
            _ => TaskStatus::Failed,
        };
        let state = TaskState {
            agent: agent.key.clone(),
            task: task.id.clone(),
            status,
            run_id: Some(self.id.clone()),
            updated_at: result.finished_at,
            detail: Some(result.detail.clone()),
        };
        let id = self.id.clone();
        async move {
            // The run's record and the task state that `nova tasks` shows, in
            // one commit, fsynced in the background like the run's enqueues.
            let stored = self
                .writer
                .write_with(
                    Durability::Background,
                    move |conn| {
                        runs::upsert_task(conn, &id, &row)
                            .and_then(|()| crate::store::record_task_state(conn, &state))
                            .map_err(|e| e.to_string())
                    },
                    |e: String| e,
                )
                .await;
            if let Err(e) = stored {
                tracing::warn!(error = %e, "could not record a task outcome");
            }
        }
    }
}

/// The arguments of `--resume`: the interrupted run's own selection (plan,
/// agents, `--only`, phases, mode, `--apply`, `--keep-going`), with the
/// run's id. A flag that says otherwise is refused: resuming runs what the
/// run was started to run, never more.
fn resumed_args(ws: &Workspace, args: &RunRequest, which: Option<&str>) -> Result<RunRequest> {
    let Some(store) = ws.open_store_read()? else {
        return Err(Error::usage(
            "--resume: no run to resume in this workspace".to_string(),
        ));
    };
    let found = match which {
        Some(id) => runs::find_run(store.connection(), id),
        None => runs::last_interrupted(store.connection()),
    }
    .map_err(|e| Error::Failed(e.to_string()))?;
    let Some(run) = found else {
        return Err(Error::usage(match which {
            Some(id) => format!("--resume: {}", runs::not_found(store.connection(), id)),
            None => "--resume: no interrupted run to resume".to_string(),
        }));
    };
    let same = |a: &[String], b: &[String]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
    };
    let (agents, phases) = (run.selection("agents"), run.selection("phases"));
    let only = run.args["only"].as_bool().unwrap_or(false);
    let mode = match run.mode.as_str() {
        "parallel" => ExecutionMode::Parallel,
        _ => ExecutionMode::Sequential,
    };
    let mut contradictions = Vec::new();
    if let Some(plan) = &args.plan
        && !plan.eq_ignore_ascii_case(&run.plan)
    {
        contradictions.push(format!("--plan {plan} (the run's plan is {})", run.plan));
    }
    if !args.agents.is_empty() && !same(&args.agents, &agents) {
        contradictions.push(format!(
            "--agents {} (the run's: {})",
            args.agents.join(" "),
            if agents.is_empty() {
                "the whole plan".to_string()
            } else {
                agents.join(" ")
            }
        ));
    }
    if args.only && !only {
        contradictions.push("--only (the run included the agents' dependencies)".into());
    }
    if !args.phases.is_empty() && !same(&args.phases, &phases) {
        contradictions.push(format!(
            "--phase {} (the run's: {})",
            args.phases.join(" "),
            if phases.is_empty() {
                "every phase".to_string()
            } else {
                phases.join(" ")
            }
        ));
    }
    if let Some(m) = args.mode
        && m != mode
    {
        contradictions.push(format!(
            "--mode {} (the run's mode is {})",
            format!("{m:?}").to_lowercase(),
            run.mode
        ));
    }
    if args.apply && !run.apply {
        contradictions.push("--apply (the run ran checks only)".into());
    }
    if !contradictions.is_empty() {
        return Err(Error::usage(format!(
            "--resume {}: a resumed run runs what it was started with; these say otherwise: {}",
            run.id,
            contradictions.join("; ")
        )));
    }
    let mut resumed = args.clone();
    resumed.plan = Some(run.plan.clone());
    resumed.agents = agents;
    resumed.only = only;
    resumed.phases = phases;
    resumed.mode = Some(mode);
    resumed.apply = run.apply;
    resumed.keep_going = args.keep_going || run.args["keep_going"].as_bool().unwrap_or(false);
    resumed.resume = Some(Some(run.id));
    Ok(resumed)
}

fn mode_of(ws: &Workspace, args: &RunRequest) -> Result<ExecutionMode> {
    if let Some(m) = args.mode {
        return Ok(m);
    }
    if let Ok(v) = std::env::var("NOVA_EXECUTION_MODE")
        && !v.is_empty()
    {
        return match v.to_lowercase().as_str() {
            "sequential" => Ok(ExecutionMode::Sequential),
            "parallel" => Ok(ExecutionMode::Parallel),
            other => Err(Error::usage(format!(
                "NOVA_EXECUTION_MODE={other:?}: expected sequential or parallel"
            ))),
        };
    }
    Ok(ws
        .config
        .execution_mode
        .unwrap_or(ExecutionMode::Sequential))
}

pub fn new_run_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(14)
        .collect();
    let tail = crate::queue::model::new_id();
    format!("{stamp}-{}", &tail[tail.len() - 6..])
}

/// Start a run and drive it to its end: what `nova orchestrate` does, and
/// what any other front-end calls to start one.
pub fn start(ws: &Workspace, out: &Output, args: &RunRequest) -> Result<()> {
    let verbose = args.verbose;
    let args = with_resumed(ws, args)?;
    let args = args.as_ref();
    if let Some(report) = &args.report {
        let folder = report
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !folder.is_dir() {
            return Err(Error::usage(format!(
                "--report {}: the folder {} does not exist",
                report.display(),
                folder.display()
            )));
        }
    }
    let (catalog, schedule) = schedule(ws, args)?;
    let mode = mode_of(ws, args)?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    if args.dry_run {
        return dry_run(out, &catalog, &schedule, args.apply, mode, jobs);
    }

    let policy = crate::policy::open(ws)?;
    let privileges = Privileges::resolve(ws.config.service_user.as_deref())?;
    ws.ensure_home()?;
    // The files this plan's fixes use, where they look for them (never over
    // a copy someone edited): fixes run only with --apply.
    if args.apply {
        for o in crate::blueprints::assets::write(ws, Some(&schedule.plan), false)? {
            if matches!(
                o.state,
                "written" | "updated" | "kept: edited" | "kept: not nova's"
            ) {
                tracing::info!(file = o.path, state = o.state, "plan asset");
                if !out.quiet && !out.json {
                    eprintln!("{}: {}", o.path, o.state);
                }
            }
        }
    }
    let store = Store::open(&ws.db_path())?;
    let conn = store.into_connection();

    let (id, finished) = match &args.resume {
        None => match &args.run_id {
            Some(id) => {
                check_new_id(ws, id)?;
                (id.clone(), HashSet::new())
            }
            None => (new_run_id(), HashSet::new()),
        },
        Some(which) => {
            let found = match which {
                Some(id) => runs::find_run(&conn, id),
                None => runs::last_interrupted(&conn),
            }
            .map_err(|e| Error::Failed(e.to_string()))?;
            let Some(run) = found else {
                return Err(Error::usage(match which {
                    Some(id) => format!("--resume {id}: no such run (see nova runs)"),
                    None => "--resume: no interrupted run to resume".to_string(),
                }));
            };
            let done: HashSet<(String, String)> = runs::tasks(&conn, &run.id)
                .map_err(|e| Error::Failed(e.to_string()))?
                .into_iter()
                .filter(|t| t.status == "done" || t.status == "skipped")
                .map(|t| (t.agent.to_lowercase(), t.task))
                .collect();
            (run.id, done)
        }
    };

    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        // What can be checked before the run is recorded is: a run that
        // could never start must not sit in `nova runs` as running.
        let shared_server = match &args.server {
            Some(url) => {
                let token = crate::files::read_token(args.token_file.as_deref())?;
                let client = client::connect_with(url, token.as_deref(), &args.tls)
                    .await
                    .map_err(Error::from)?;
                Some((url.clone(), token, client))
            }
            None => None,
        };
        let audit = workspace_log(ws, &args.store, true).await?;
        let run = Arc::new(Run {
            id: id.clone(),
            writer: crate::store::writer::Writer::shared(&ws.db_path())?,
            apply: args.apply,
            workdir: ws.root.clone(),
            db: Mutex::new(conn),
            audit: audit.clone(),
            messages: Mutex::new(Vec::new()),
            finished,
            running: Mutex::new(HashSet::new()),
            progress: super::progress::Progress::new(out.is_terminal(), out.quiet || out.json),
            inboxes: shared_server.is_none().then(Default::default),
        });
        {
            let mut db = run.db.lock().unwrap_or_else(|p| p.into_inner());
            let row = RunRow {
                id: id.clone(),
                plan: schedule.plan.clone(),
                mode: format!("{mode:?}").to_lowercase(),
                apply: args.apply,
                status: "running".into(),
                started_at: now_ms(),
                finished_at: None,
                args: json!({
                    "agents": args.agents, "only": args.only, "phases": args.phases,
                    "jobs": jobs, "keep_going": args.keep_going, "server": args.server,
                    "pid": std::process::id(), "host": hostname(),
                }),
                report: None,
            };
            if args.resume.is_some() {
                runs::set_status(&db, &id, "running", None)
                    .and_then(|()| runs::set_process(&db, &id, std::process::id(), &hostname()))
            } else {
                runs::insert_run(&db, &row)
            }
            .map_err(|e| Error::Failed(format!("cannot record the run: {e}")))?;
            runs::plan_tasks(&mut db, &id, &planned_tasks(&catalog, &schedule))
                .map_err(|e| Error::Failed(format!("cannot record the run's tasks: {e}")))?;
            if args.resume.is_some() {
                // The hub's history continues where it stopped.
                let old = runs::messages(&db, &id).unwrap_or_default();
                *run.messages.lock().unwrap_or_else(|p| p.into_inner()) =
                    old.into_iter().map(HubMessage::new).collect();
            }
        }
        if args.resume.is_some() {
            run.hub(
                "run-resumed",
                "",
                json!({"finished_tasks": run.finished.len()}),
            )
            .await;
        }
        if let Some(log) = &audit {
            crate::audit::record(
                log,
                Event::new(operator(), "run.start", format!("run {id}"), "started").details(
                    json!({
                        "plan": schedule.plan, "mode": format!("{mode:?}").to_lowercase(),
                        "apply": args.apply, "resume": args.resume.is_some(),
                    }),
                ),
            )
            .await;
        }
        run.say(&format!(
            "run {id}: plan {}, {} mode, {} {}",
            schedule.plan,
            format!("{mode:?}").to_lowercase(),
            if args.apply {
                "applying fixes"
            } else {
                "checks only (--apply runs fixes)"
            },
            if args.resume.is_some() {
                "(resumed)"
            } else {
                ""
            }
        ));

        let proceed = async {
            // The queue: in this process on the workspace's store, called
            // without gRPC, or the given server.
            let mut reaper = None;
            let (url, token, mut client) = match shared_server {
                Some((url, token, client)) => (Some(url), token, QueueHandle::Remote(client)),
                None => {
                    let (backend, _) = open_queue(&StoreUrl::resolve(ws, &args.store)?).await?;
                    let (handle, guard) =
                        QueueHandle::in_process(backend.for_local_run(), audit.clone());
                    reaper = Some(guard);
                    (None, None, handle)
                }
            };
            let connect = || async {
                match &url {
                    Some(url) => client::connect_with(url, token.as_deref(), &args.tls)
                        .await
                        .map(QueueHandle::Remote)
                        .map_err(Error::from),
                    None => Ok(client.clone()),
                }
            };
            // A run on its own in-process server keeps its tasks in a queue of its
            // own; on a shared server they go where `nova worker`s look.
            let queue_name = if args.server.is_some() {
                worker::JOBS_QUEUE.to_string()
            } else {
                local_queue(&id)
            };
            let local_workers = if args.server.is_some() {
                args.jobs.unwrap_or(0)
            } else {
                jobs.max(1)
            };
            if local_workers == 0 {
                let mut queues = vec![queue_name.clone()];
                if args.server.is_some() {
                    queues.extend(gpu_queues(&catalog, &schedule));
                }
                run.say(&format!(
                    "no local workers: waiting for remote workers on {} (queue {})",
                    url.as_deref().unwrap_or_default(),
                    queues.join(", ")
                ));
            }
            let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
            let cfg = Arc::new(WorkerConfig {
                name: format!("{}-local", hostname()),
                home: ws.home.clone(),
                policy: policy.clone(),
                audit: audit.clone(),
                echo: verbose > 0 && !out.quiet,
                queues: if args.server.is_some() {
                    worker::jobs_queues(super::gpus::Pool::host().count())
                } else {
                    vec![queue_name.clone()]
                },
                lease_ms: worker::LEASE_MS,
                on_change: Some(changes_tx),
                pending_audit: Default::default(),
                privileges: privileges.clone(),
                stop_grace: None,
                concurrency: 1,
                inboxes: run.inboxes.clone(),
            });
            let (work_stop_tx, work_stop_rx) = tokio::sync::watch::channel(false);
            let mut workers = Vec::new();
            for i in 0..local_workers {
                let cfg = Arc::new(WorkerConfig {
                    name: format!("{}-{i}", cfg.name),
                    home: cfg.home.clone(),
                    policy: cfg.policy.clone(),
                    audit: cfg.audit.clone(),
                    echo: cfg.echo,
                    // On a shared server, as `nova worker`: only as many
                    // slots as GPUs take GPU tasks.
                    queues: if args.server.is_some() {
                        worker::slot_queues(i, super::gpus::Pool::host().count())
                    } else {
                        cfg.queues.clone()
                    },
                    lease_ms: cfg.lease_ms,
                    on_change: cfg.on_change.clone(),
                    pending_audit: Default::default(),
                    privileges: cfg.privileges.clone(),
                    stop_grace: None,
                    concurrency: 1,
                    inboxes: cfg.inboxes.clone(),
                });
                workers.push(tokio::spawn(worker::work(
                    connect().await?,
                    cfg,
                    work_stop_rx.clone(),
                )));
            }

            // Ctrl-C and SIGTERM stop the run; its processes are killed by the workers.
            let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let on_signal = {
                let interrupted = interrupted.clone();
                let work_stop_tx = work_stop_tx.clone();
                tokio::spawn(async move {
                    crate::runtime::signal().await;
                    interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = work_stop_tx.send(true);
                })
            };

            // In parallel mode the workers bound how many tasks run at once
            // (`--jobs` of them); the scheduler keeps twice that many agents'
            // tasks queued, so a worker that finishes finds the next task waiting
            // instead of waiting for the scheduler's round trip.
            // On a shared server the fleet's workers bound it instead (their
            // --concurrency): every agent that is ready has its next task queued.
            let concurrency = match mode {
                ExecutionMode::Sequential => 1,
                ExecutionMode::Parallel if args.server.is_some() => usize::MAX,
                ExecutionMode::Parallel => 2 * jobs.max(1) as usize,
            };
            // On a shared server, tasks may wait in a queue no worker takes.
            let watched = match &client {
                QueueHandle::Remote(remote) if args.server.is_some() => {
                    let mut queues = vec![queue_name.clone()];
                    queues.extend(gpu_queues(&catalog, &schedule));
                    Some((remote.clone(), queues))
                }
                _ => None,
            };
            let watch = async {
                match watched {
                    // A JSON run says it as a warning on stderr, its stdout
                    // being the report.
                    Some((remote, queues)) => {
                        let url = url.as_deref().unwrap_or_default();
                        super::takers::watch(remote, url, queues, |line| {
                            if out.json {
                                tracing::warn!("{line}");
                            } else {
                                tracing::info!("{line}");
                                run.say(line);
                            }
                        })
                        .await
                    }
                    None => std::future::pending().await,
                }
            };
            let outcome = tokio::select! {
                outcome = schedule_run(
                    &run,
                    &catalog,
                    &schedule,
                    &mut client,
                    &queue_name,
                    concurrency,
                    args.keep_going,
                    &interrupted,
                    &mut changes,
                ) => outcome,
                never = watch => match never {},
            };

            run.progress.finish();
            on_signal.abort();
            let _ = work_stop_tx.send(true);
            for w in workers {
                let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
            }
            drop(reaper);

            outcome.map(|agents| {
                (
                    agents,
                    interrupted.load(std::sync::atomic::Ordering::SeqCst),
                )
            })
        };
        let (agents, interrupted) = match proceed.await {
            Ok(ended) => ended,
            Err(e) => {
                // A database that can no longer be written is the reason,
                // whichever step (an enqueue, a record) came upon it first.
                let e = store_failure(&run).unwrap_or(e);
                end_failed(&run, &e).await;
                return Err(e);
            }
        };
        // Tasks' records went to disk in the background; one durable commit
        // puts them there, or finds that it cannot (the WAL removed or the
        // disk failing), before the run says how it ended.
        let _ = run.writer.write(|_| Ok::<_, String>(()), |why| why).await;
        if let Some(e) = store_failure(&run) {
            end_failed(&run, &e).await;
            return Err(e);
        }
        finish(
            ws,
            out,
            &run,
            &schedule.plan,
            &agents,
            interrupted,
            args.report.as_deref(),
        )
        .await
    })
}

/// What a run stops with once its database can no longer be written (its
/// WAL could not be synced: the disk failed, or the workspace was deleted),
/// whichever step came upon it first.
fn store_failure(run: &Run) -> Option<Error> {
    run.writer
        .failed()
        .map(|why| Error::Failed(format!("the run stops: {why}")))
}

/// A run that could not go on (its queue unreachable, a store failing) ends
/// as failed, with the reason, in its record and the audit log, instead of
/// staying `running` for ever.
async fn end_failed(run: &Run, error: &Error) {
    {
        let db = run.db.lock().unwrap_or_else(|p| p.into_inner());
        let _ = runs::close_tasks(&db, &run.id, now_ms());
        let _ = runs::set_status(&db, &run.id, "failed", Some(now_ms()));
    }
    if let Some(log) = &run.audit {
        crate::audit::record(
            log,
            Event::new(
                operator(),
                "run.finish",
                format!("run {}", run.id),
                "failed",
            )
            .details(json!({"error": error.to_string()})),
        )
        .await;
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "nova".into())
}

/// How many GPUs this host lends a run's own workers, when an agent of
/// `agents` needs some and the run's tasks stay on this host (not on a
/// shared server's queue); NVML is asked only then.
fn local_gpus(queue: &str, agents: &[AgentRun]) -> Option<usize> {
    (queue != worker::JOBS_QUEUE && agents.iter().any(|a| a.gpus.is_some_and(|n| n > 0)))
        .then(|| super::gpus::Pool::host().count())
}

/// Whether an agent needing `needs` GPUs may start with `free` of the
/// host's `total` not held: always when it needs none, or more than the
/// host has (its tasks then say so and end at once).
fn gpus_to_start(needs: usize, total: usize, free: usize) -> bool {
    needs == 0 || needs > total || needs <= free
}

/// The shared server's queues the tasks of `schedule`'s agents that need
/// GPUs go to, one per GPU count ([`worker::jobs_queue`]).
fn gpu_queues(catalog: &Catalog, schedule: &Schedule) -> Vec<String> {
    let counts: std::collections::BTreeSet<u32> = schedule
        .phases
        .iter()
        .flat_map(|p| &p.agents)
        .filter_map(|a| catalog.find_agent(&a.name, Some(&schedule.plan)).ok())
        .filter_map(|agent| agent.spec.resources.gpus.filter(|&n| n > 0))
        .collect();
    counts
        .into_iter()
        .map(|n| worker::jobs_queue(Some(n)))
        .collect()
}

/// Every task `schedule` plans, as (agent, task, phase), in the plan's order.
fn planned_tasks(catalog: &Catalog, schedule: &Schedule) -> Vec<(String, String, String)> {
    let mut planned = Vec::new();
    for phase in &schedule.phases {
        for a in &phase.agents {
            if let Ok(agent) = catalog.find_agent(&a.name, Some(&schedule.plan)) {
                for t in &agent.spec.tasks {
                    planned.push((agent.spec.name.clone(), t.id.clone(), phase.name.clone()));
                }
            }
        }
    }
    planned
}

/// Drive every phase of `schedule` to its end; the agents as they finished.
#[allow(clippy::too_many_arguments)]
async fn schedule_run(
    run: &Arc<Run>,
    catalog: &Catalog,
    schedule: &Schedule,
    client: &mut QueueHandle,
    queue: &str,
    concurrency: usize,
    keep_going: bool,
    interrupted: &std::sync::atomic::AtomicBool,
    changes: &mut tokio::sync::mpsc::UnboundedReceiver<worker::Change>,
) -> Result<Vec<AgentRun>> {
    // Tasks local workers said they acked since the last look, and those
    // they started, looked at once they have run for RUNNING_AFTER; every
    // task in flight is looked at when none said anything for POLL (remote
    // workers say nothing).
    let mut changed = Changed::default();
    let mut look_at_all = true;
    let mut finished: Vec<AgentRun> = Vec::new();
    let mut outcomes: HashMap<String, AgentOutcome> = HashMap::new();
    // How each task ended, for agents that depend on one task of another.
    let mut task_status: HashMap<(String, String), String> = HashMap::new();
    let mut stop_starting = false;
    for phase in &schedule.phases {
        let mut agents: Vec<AgentRun> = phase
            .agents
            .iter()
            .map(|a| {
                let agent = catalog
                    .find_agent(&a.name, Some(&schedule.plan))
                    .expect("scheduled agents exist");
                AgentRun {
                    key: agent.key(),
                    name: agent.spec.name.clone(),
                    role: agent.spec.role.clone(),
                    phase: phase.name.clone(),
                    // Agent names match in any case; task ids as written.
                    deps: agent
                        .spec
                        .depends_on
                        .iter()
                        .map(|d| match split_dependency(d) {
                            (agent, Some(task)) => format!("{}/{task}", agent.to_lowercase()),
                            (agent, None) => agent.to_lowercase(),
                        })
                        .collect(),
                    tasks: agent.spec.tasks.clone(),
                    memory_limit: agent.spec.resources.memory.map(|m| m.as_u64()),
                    gpus: agent.spec.resources.gpus.filter(|&n| n > 0),
                    wall_time: agent.spec.resources.wall_time.map(|w| w.0),
                    next: 0,
                    in_flight: None,
                    saw_pending: false,
                    outcome: None,
                }
            })
            .collect();
        run.hub(
            "phase-start",
            "",
            json!({
                "phase": phase.name, "goal": phase.goal,
                "agents": phase.agents.iter().map(|a| json!({"name": a.name, "role": a.role, "depends_on": a.depends_on})).collect::<Vec<_>>(),
            }),
        ).await;
        run.say(&format!("phase {}: {}", phase.name, phase.goal.trim()));
        let phase_tasks: usize = agents.iter().map(|a| a.tasks.len()).sum();
        run.progress.phase(&phase.name, phase_tasks as u64);

        loop {
            // A database that can no longer be written (its WAL could not
            // be synced: the disk failed, or the workspace was deleted)
            // ends the run; going on, every task would fail to be recorded.
            if let Some(e) = store_failure(run) {
                return Err(e);
            }
            if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
                for a in agents.iter_mut().filter(|a| a.outcome.is_none()) {
                    a.outcome = Some(AgentOutcome::Interrupted);
                }
            }
            // Start what may start.
            let active = agents
                .iter()
                .filter(|a| a.outcome.is_none() && a.in_flight.is_some())
                .count();
            let mut slots = concurrency.saturating_sub(active);
            // A run's own workers share this host's GPUs: an agent that
            // needs some starts when they are free, so that no worker sits
            // waiting for one while other agents could run. GPUs another
            // nova process on this host holds are not free either (looked
            // at again on every round, at least every POLL).
            let mut gpus_free = local_gpus(queue, &agents).map(|total| {
                let held = agents
                    .iter()
                    .filter(|a| a.outcome.is_none() && a.in_flight.is_some())
                    .map(|a| a.gpus.unwrap_or(0) as usize)
                    .sum::<usize>();
                let elsewhere = super::gpus::Pool::host().claimed_elsewhere();
                (total, total.saturating_sub(held + elsewhere))
            });
            for a in agents.iter_mut() {
                if a.outcome.is_some() || a.in_flight.is_some() {
                    continue;
                }
                let blocked = a.deps.iter().find(|d| {
                    let (agent, task) = split_dependency(d);
                    match (outcomes.get(agent), task) {
                        (Some(AgentOutcome::Skipped | AgentOutcome::Interrupted), _) => true,
                        (Some(AgentOutcome::Failed | AgentOutcome::Denied), None) => true,
                        // The agent stopped; the one task named may have ended well first.
                        (Some(AgentOutcome::Failed | AgentOutcome::Denied), Some(task)) => {
                            let key = (agent.to_string(), task.to_string());
                            !run.finished.contains(&key)
                                && !task_status.get(&key).is_some_and(|s| {
                                    matches!(s.as_str(), "done" | "skipped" | "pending")
                                })
                        }
                        _ => false,
                    }
                });
                if let Some(dep) = blocked {
                    let dep = dep.clone();
                    a.outcome = Some(AgentOutcome::Skipped);
                    outcomes.insert(a.key.clone(), AgentOutcome::Skipped);
                    run.hub("agent-done", &a.name, json!({"agent": a.name, "outcome": "skipped", "reason": format!("{dep} did not finish")})).await;
                    run.say(&format!("  {}: skipped ({dep} did not finish)", a.name));
                    continue;
                }
                if stop_starting {
                    a.outcome = Some(AgentOutcome::Skipped);
                    outcomes.insert(a.key.clone(), AgentOutcome::Skipped);
                    run.hub("agent-done", &a.name, json!({"agent": a.name, "outcome": "skipped", "reason": "the run stops after a failure (--keep-going runs on)"})).await;
                    continue;
                }
                let ready = a.deps.iter().all(|d| {
                    let agent = split_dependency(d).0;
                    outcomes.contains_key(agent) || !schedule_has(schedule, agent)
                });
                if !ready || slots == 0 {
                    continue;
                }
                if let Some((total, free)) = gpus_free.as_mut() {
                    let needs = a.gpus.unwrap_or(0) as usize;
                    if !gpus_to_start(needs, *total, *free) {
                        continue;
                    }
                    *free = free.saturating_sub(needs);
                }
                slots -= 1;
                run.hub("agent-start", &a.name, json!({"agent": a.name, "role": a.role, "phase": a.phase, "depends_on": a.deps})).await;
                run.progress.agent_started(&a.name);
                if !advance(run, a, client, queue).await? {
                    finish_agent(run, a, &mut outcomes).await;
                }
            }

            // Collect what finished.
            let mut progressed = false;
            while let Ok(change) = changes.try_recv() {
                changed.note(change);
            }
            let running_long = changed.running_long();
            for a in agents.iter_mut().filter(|a| a.outcome.is_none()) {
                let Some((task_id, idx)) = a.in_flight.clone() else {
                    continue;
                };
                let task = match changed.acked.remove(&task_id) {
                    // What the worker's ack left, as its answer said.
                    Some(Some(task)) => *task,
                    Some(None) => get_task(client, &task_id).await?,
                    None if look_at_all || running_long.contains(&task_id) => {
                        get_task(client, &task_id).await?
                    }
                    None => continue,
                };
                if task.status == "IN_PROGRESS" {
                    run.mark_running(a, &a.tasks[idx], &task);
                }
                if task.status != "COMPLETED"
                    && task.status != "FAILED"
                    && task.status != "CANCELLED"
                {
                    continue;
                }
                progressed = true;
                let mut result: JobResult =
                    serde_json::from_str(&task.result).unwrap_or_else(|_| JobResult {
                        status: "failed".into(),
                        detail: if task.last_error.is_empty() {
                            format!("the task ended {}", task.status)
                        } else {
                            task.last_error.clone()
                        },
                        started_at: task.created_at,
                        finished_at: task.updated_at,
                        ..Default::default()
                    });
                if task.status == "CANCELLED" {
                    result.status = "failed".into();
                    result.detail = "cancelled".into();
                }
                let spec = a.tasks[idx].clone();
                task_status.insert((a.key.clone(), spec.id.clone()), result.status.clone());
                let recorded = run.record(a, &spec, &result, task.attempts);
                for m in &result.messages {
                    run.hub("agent", &a.name, m.clone()).await;
                }
                crate::counter!("orchestrate.tasks").inc();
                match result.status.as_str() {
                    "done" => crate::counter!("orchestrate.tasks.done").inc(),
                    "pending" => crate::counter!("orchestrate.tasks.pending").inc(),
                    "skipped" => crate::counter!("orchestrate.tasks.skipped").inc(),
                    "denied" => crate::counter!("orchestrate.tasks.denied").inc(),
                    _ => crate::counter!("orchestrate.tasks.failed").inc(),
                }
                crate::kpi::histogram("orchestrate.task")
                    .record(((result.finished_at - result.started_at).max(0) as u64) * 1_000_000);
                run.progress
                    .task_finished(&a.name, &spec.id, &result.status);
                run.say(&format!(
                    "  {}/{}: {}{}{}",
                    a.name,
                    spec.id,
                    result.status,
                    if task.attempts > 1 {
                        format!(" after {} attempts", task.attempts)
                    } else {
                        String::new()
                    },
                    if result.detail.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", result.detail)
                    }
                ));
                a.in_flight = None;
                run.forget_inbox(a, &spec.id);
                match result.status.as_str() {
                    "done" | "skipped" => {}
                    "pending" => a.saw_pending = true,
                    "denied" => a.outcome = Some(AgentOutcome::Denied),
                    _ => a.outcome = Some(AgentOutcome::Failed),
                }
                // The outcome and the agent's next task go to the store
                // together (one commit, not two in a row).
                let (_, advanced) = tokio::join!(recorded, async {
                    if a.outcome.is_some() {
                        Ok(false)
                    } else {
                        advance(run, a, client, queue).await
                    }
                });
                if !advanced? {
                    finish_agent(run, a, &mut outcomes).await;
                    if matches!(a.outcome, Some(AgentOutcome::Failed | AgentOutcome::Denied))
                        && !keep_going
                    {
                        stop_starting = true;
                    }
                }
            }
            if agents.iter().all(|a| a.outcome.is_some()) {
                break;
            }
            if look_at_all {
                // What was said about tasks no longer in flight.
                changed.acked.clear();
                look_at_all = false;
            }
            if !progressed {
                // Local workers say what changed; remote ones are polled for.
                let wait = changed.wait();
                match tokio::time::timeout(wait, changes.recv()).await {
                    Ok(Some(change)) => changed.note(change),
                    Ok(None) => {
                        tokio::time::sleep(POLL).await;
                        look_at_all = true;
                    }
                    // A started task's time came, or silence.
                    Err(_) => look_at_all = wait == POLL,
                }
            }
        }
        finished.extend(agents);
    }
    Ok(finished)
}

/// What local workers said about tasks since the scheduler last looked.
#[derive(Default)]
struct Changed {
    /// Acked tasks, with the task as the ack left it when the worker had it.
    acked: HashMap<String, Option<Box<crate::queue::proto::Task>>>,
    /// Started tasks, looked at once they have run for RUNNING_AFTER.
    started: std::collections::VecDeque<(std::time::Instant, String)>,
}

impl Changed {
    fn note(&mut self, change: worker::Change) {
        match change {
            worker::Change::Acked(id, task) => {
                self.acked.insert(id, task);
            }
            worker::Change::Started(id) => {
                self.started.push_back((std::time::Instant::now(), id));
            }
        }
    }

    /// The started tasks whose time to be looked at has come.
    fn running_long(&mut self) -> HashSet<String> {
        let mut due = HashSet::new();
        while let Some((at, _)) = self.started.front()
            && at.elapsed() >= RUNNING_AFTER
        {
            due.extend(self.started.pop_front().map(|(_, id)| id));
        }
        due
    }

    /// How long to wait for news before looking again.
    fn wait(&self) -> Duration {
        self.started.front().map_or(POLL, |(at, _)| {
            (*at + RUNNING_AFTER)
                .saturating_duration_since(std::time::Instant::now())
                .min(POLL)
        })
    }
}

async fn get_task(client: &mut QueueHandle, task_id: &str) -> Result<crate::queue::proto::Task> {
    Ok(client
        .get_task(GetTaskRequest {
            task_id: task_id.to_string(),
        })
        .await
        .map_err(|e| Error::Failed(format!("the queue did not answer: {}", e.message())))?
        .task
        .unwrap_or_default())
}

fn schedule_has(schedule: &Schedule, key: &str) -> bool {
    schedule
        .phases
        .iter()
        .any(|p| p.agents.iter().any(|a| a.name.eq_ignore_ascii_case(key)))
}

async fn finish_agent(run: &Run, a: &mut AgentRun, outcomes: &mut HashMap<String, AgentOutcome>) {
    let outcome = a.outcome.unwrap_or(if a.saw_pending {
        AgentOutcome::Pending
    } else {
        AgentOutcome::Done
    });
    a.outcome = Some(outcome);
    outcomes.insert(a.key.clone(), outcome);
    run.hub(
        "agent-done",
        &a.name,
        json!({"agent": a.name, "outcome": outcome.as_str()}),
    )
    .await;
}

/// Enqueue the agent's next task that still needs running; false when none is left.
async fn advance(
    run: &Run,
    a: &mut AgentRun,
    client: &mut QueueHandle,
    queue: &str,
) -> Result<bool> {
    while a.next < a.tasks.len() {
        let idx = a.next;
        a.next += 1;
        let spec = &a.tasks[idx];
        if run.finished.contains(&(a.key.clone(), spec.id.clone())) {
            continue;
        }
        let messages = run.inbox(a);
        let messages = match &run.inboxes {
            Some(inboxes) => {
                inboxes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((a.name.clone(), spec.id.clone()), messages.into());
                Vec::new()
            }
            None => messages,
        };
        let job = Job {
            run: run.id.clone(),
            agent: a.name.clone(),
            role: a.role.clone(),
            phase: a.phase.clone(),
            task: spec.clone(),
            apply: run.apply,
            workdir: run.workdir.clone(),
            memory_limit: a.memory_limit,
            wall_time: a.wall_time,
            gpus: a.gpus,
            messages,
        };
        let request = EnqueueRequest {
            r#type: JOB_TYPE.into(),
            payload: serde_json::to_string(&job).expect("a job serializes"),
            // On a shared server a task that needs GPUs waits in the queue
            // of its count, for workers on hosts that have them; a run's
            // own queue has only its local workers, on one host.
            queue: if queue == worker::JOBS_QUEUE {
                worker::jobs_queue(a.gpus)
            } else {
                queue.to_string()
            },
            max_attempts: spec.retries + 1,
            retry_backoff_ms: RETRY_BACKOFF_MS,
            // One queue task per run, agent and task, whatever restarts in between.
            idempotency_key: format!("{}/{}/{}/{}", run.id, a.key, spec.id, resume_round(run)),
            // The scheduler keeps the task's id; its job (messages
            // included) need not come back.
            brief: true,
            ..Default::default()
        };
        let task = client
            .enqueue(request)
            .await
            .map_err(|e| {
                Error::Failed(format!(
                    "cannot enqueue {}/{}: {}",
                    a.name,
                    spec.id,
                    e.message()
                ))
            })?
            .task
            .unwrap_or_default();
        a.in_flight = Some((task.id, idx));
        return Ok(true);
    }
    Ok(false)
}

/// A resumed run enqueues its unfinished tasks afresh (their old queue tasks
/// may have been left to expired leases), so each round gets its own keys.
fn resume_round(run: &Run) -> usize {
    run.messages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|h| h.message.kind == "run-resumed")
        .count()
}

async fn finish(
    ws: &Workspace,
    out: &Output,
    run: &Arc<Run>,
    plan: &str,
    agents: &[AgentRun],
    interrupted: bool,
    report_file: Option<&std::path::Path>,
) -> Result<()> {
    let count = |o: AgentOutcome| agents.iter().filter(|a| a.outcome == Some(o)).count();
    let (tasks, messages) = {
        let db = run.db.lock().unwrap_or_else(|p| p.into_inner());
        let _ = runs::close_tasks(&db, &run.id, now_ms());
        (
            runs::tasks(&db, &run.id).unwrap_or_default(),
            runs::messages(&db, &run.id).unwrap_or_default(),
        )
    };
    let denied = tasks.iter().filter(|t| t.status == "denied").count();
    let failed = tasks.iter().filter(|t| t.status == "failed").count();
    let pending = tasks.iter().filter(|t| t.status == "pending").count();
    let status = if interrupted {
        "interrupted"
    } else if denied > 0 {
        "denied"
    } else if failed > 0 {
        "failed"
    } else if pending > 0 || count(AgentOutcome::Skipped) > 0 {
        // Work left and nothing failed: checks that say a task is not done
        // (a run without --apply, a fix lacking what it requires).
        "unfinished"
    } else {
        "done"
    };
    let finished_at = now_ms();
    let row = {
        let db = run.db.lock().unwrap_or_else(|p| p.into_inner());
        let _ = runs::set_status(&db, &run.id, status, Some(finished_at));
        runs::find_run(&db, &run.id).ok().flatten()
    };
    let snapshot = crate::kpi::snapshot();
    let mut text = report::markdown(row.as_ref(), plan, agents, &tasks, &messages, &snapshot);
    let run_dir = ws.home.join("runs").join(&run.id);
    super::results::tidy(&run_dir);
    let tests = crate::testreport::run_section(&run_dir, "##");
    if let Some((section, _)) = &tests {
        text.push('\n');
        text.push_str(section);
    }
    let reports = ws.home.join("reports");
    crate::workspace::ensure_dir(&reports)?;
    let path = reports.join(format!("run-{}.md", run.id));
    std::fs::write(&path, &text).map_err(|e| Error::io(&path, e))?;
    if let Some(extra) = report_file {
        std::fs::write(extra, &text).map_err(|e| Error::io(extra, e))?;
    }
    {
        let db = run.db.lock().unwrap_or_else(|p| p.into_inner());
        let _ = runs::set_report(&db, &run.id, &path.display().to_string());
        if let Ok(store) = Store::open(&ws.db_path()) {
            let _ = crate::kpi::store::save(store.connection(), "orchestrate", &snapshot);
        }
    }
    if let Some(log) = &run.audit {
        crate::audit::record(
            log,
            Event::new(operator(), "run.finish", format!("run {}", run.id), status).details(
                json!({
                    "tasks": tasks.len(), "failed": failed, "denied": denied, "pending": pending,
                    "report": path.display().to_string(),
                }),
            ),
        )
        .await;
    }
    if out.json {
        out.json(&json!({
            "run": run.id, "status": status, "report": path.display().to_string(),
            "tests": tests.as_ref().and_then(|(_, s)| s.as_ref()),
            "agents": agents.iter().map(|a| json!({"agent": a.name, "phase": a.phase, "outcome": a.outcome.map(|o| o.as_str())})).collect::<Vec<_>>(),
            "tasks": tasks,
        }))?;
    } else {
        out.text(&report::summary(
            out, &run.id, status, agents, &tasks, &path,
        ))?;
    }
    let summary = ending(
        &run.id,
        &tasks,
        agents.iter().map(|a| a.tasks.len()).sum(),
        agents
            .iter()
            .filter(|a| a.outcome == Some(AgentOutcome::Skipped))
            .count(),
    );
    match status {
        "done" => Ok(()),
        "interrupted" => Err(Error::Interrupted(format!(
            "run {} interrupted; nova orchestrate --resume {} finishes it",
            run.id, run.id
        ))),
        "denied" => Err(Error::Denied(summary)),
        _ => Err(Error::Unfinished(summary)),
    }
}

/// The plain last words of a run that left work: what each of the run's
/// `planned` tasks came to and what to do next. A run finding work left is
/// its result, not nova failing.
fn ending(run: &str, tasks: &[runs::TaskRow], planned: usize, agents_not_started: usize) -> String {
    let count = |s: &str| tasks.iter().filter(|t| t.status == s).count();
    let fixable = tasks
        .iter()
        .filter(|t| t.status == "pending" && t.detail.contains("--apply runs"))
        .count();
    let mut text = format!(
        "run {run}: {}: {} done, {} not done, {} failed, {} skipped, {} denied by policy",
        crate::output::count(planned.max(tasks.len()) as u64, "task"),
        count("done"),
        count("pending"),
        count("failed"),
        count("skipped"),
        count("denied"),
    );
    // Tasks after one that did not finish in their agent, and the tasks
    // of agents that never started (a run from before plans were recorded
    // has no row for them).
    let not_run = count("not run") + planned.saturating_sub(tasks.len());
    if not_run > 0 {
        text.push_str(&format!(", {not_run} not run"));
    }
    if count("interrupted") > 0 {
        text.push_str(&format!(
            ", {} stopped before finishing",
            count("interrupted")
        ));
    }
    if agents_not_started > 0 {
        text.push_str(&format!(
            "; {} not started (an agent they depend on did not finish)",
            crate::output::count(agents_not_started as u64, "agent")
        ));
    }
    for t in tasks.iter().filter(|t| t.status == "denied").take(3) {
        text.push_str(&format!("\ndenied: {}/{}: {}", t.agent, t.task, t.detail));
    }
    text.push_str("\nnext: ");
    let mut steps = Vec::new();
    if fixable > 0 {
        steps.push(match fixable {
            1 => "nova orchestrate --apply runs the fix of the 1 task that has one".to_string(),
            n => format!("nova orchestrate --apply runs the fixes of the {n} tasks that have one"),
        });
    }
    steps.push(format!("nova runs show {run} has each task's details"));
    text.push_str(&steps.join("; "));
    text
}

fn dry_run(
    out: &Output,
    catalog: &Catalog,
    schedule: &Schedule,
    apply: bool,
    mode: ExecutionMode,
    jobs: u32,
) -> Result<()> {
    let mut plan = Vec::new();
    for phase in &schedule.phases {
        let mut agents = Vec::new();
        for a in &phase.agents {
            let agent = catalog.find_agent(&a.name, Some(&schedule.plan))?;
            let tasks: Vec<Value> = agent
                .spec
                .tasks
                .iter()
                .map(|t| {
                    let steps = match (&t.check, &t.run, apply) {
                        (Some(c), Some(r), true) => format!("check {}; if it fails: run {}, check again", c.display(), r.display()),
                        (Some(c), _, _) => format!("check {}", c.display()),
                        (None, Some(r), true) => format!("run {}", r.display()),
                        (None, Some(_), false) => "nothing (no check; --apply runs it)".to_string(),
                        (None, None, _) => "nothing".to_string(),
                    };
                    json!({"task": t.id, "title": t.title, "steps": steps, "retries": t.retries,
                           "timeout": t.timeout.map(|d| humantime::format_duration(d.0).to_string())})
                })
                .collect();
            let r = &agent.spec.resources;
            // What each task of the agent holds or may use, as `1 GPU, memory 2.0 GiB`.
            let limits: Vec<String> = [
                r.gpus.filter(|&n| n > 0).map(|n| {
                    if n == 1 {
                        "1 GPU".into()
                    } else {
                        format!("{n} GPUs")
                    }
                }),
                r.memory.map(|m| format!("memory {m}")),
                r.wall_time
                    .map(|w| format!("wall time {}", humantime::format_duration(w.0))),
            ]
            .into_iter()
            .flatten()
            .collect();
            agents.push(
                json!({"agent": a.name, "role": a.role, "depends_on": a.depends_on,
                               "resources": r, "each_task": limits.join(", "), "tasks": tasks}),
            );
        }
        plan.push(json!({"phase": phase.name, "agents": agents}));
    }
    if out.json {
        return out.json(&json!({
            "dry_run": true, "plan": schedule.plan, "mode": format!("{mode:?}").to_lowercase(),
            "jobs": jobs, "apply": apply, "phases": plan,
        }));
    }
    let mut text = format!(
        "dry run: nothing will be run. Plan {}, {} mode, {} jobs, {}\n",
        schedule.plan,
        format!("{mode:?}").to_lowercase(),
        jobs,
        if apply { "with --apply" } else { "checks only" }
    );
    for p in &plan {
        text.push_str(&format!("\nphase {}\n", p["phase"].as_str().unwrap_or("")));
        for a in p["agents"].as_array().into_iter().flatten() {
            let deps: Vec<&str> = a["depends_on"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d.as_str())
                .collect();
            let each = a["each_task"].as_str().unwrap_or("");
            text.push_str(&format!(
                "  {} ({}){}{}\n",
                a["agent"].as_str().unwrap_or(""),
                a["role"].as_str().unwrap_or(""),
                if deps.is_empty() {
                    String::new()
                } else {
                    format!(", after {}", deps.join(", "))
                },
                if each.is_empty() {
                    String::new()
                } else {
                    format!("; each task: {each}")
                }
            ));
            for t in a["tasks"].as_array().into_iter().flatten() {
                text.push_str(&format!(
                    "    {}: {}\n",
                    t["task"].as_str().unwrap_or(""),
                    t["steps"].as_str().unwrap_or("")
                ));
            }
        }
    }
    out.text(&text)
}

#[cfg(test)]
mod tests {
    use super::gpus_to_start;

    #[test]
    fn an_agent_needing_gpus_starts_when_enough_are_free() {
        // Two of four free: one that needs two starts, one that needs three waits.
        assert!(gpus_to_start(2, 4, 2));
        assert!(!gpus_to_start(3, 4, 2));
        // Needing none, or more than the host has (it will say so), it starts.
        assert!(gpus_to_start(0, 4, 0));
        assert!(gpus_to_start(1, 0, 0));
        assert!(gpus_to_start(8, 4, 0));
    }
}
