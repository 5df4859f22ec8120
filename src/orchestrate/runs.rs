//! Runs in the workspace database: the run, each task's last outcome, and the
//! hub's messages (`runs`, `run_tasks`, `run_messages`).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub id: String,
    pub plan: String,
    pub mode: String,
    pub apply: bool,
    pub status: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub args: Value,
    pub report: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskRow {
    pub agent: String,
    pub task: String,
    pub phase: String,
    pub status: String,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub peak_rss: Option<u64>,
    pub mean_rss: Option<u64>,
    pub mean_cpu: Option<f32>,
    pub gpu_memory: Option<u64>,
    pub gpu_util: Option<f32>,
    pub worker: String,
    pub detail: String,
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub seq: u64,
    pub at: i64,
    /// `phase-start`, `agent-start`, `agent-done` or `agent` (an agent's own `::nova::` line).
    pub kind: String,
    pub agent: String,
    pub body: Value,
}

impl RunRow {
    /// A list the run was started with (`agents`, `phases`), from its args.
    pub fn selection(&self, key: &str) -> Vec<String> {
        self.args[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn insert_run(conn: &Connection, run: &RunRow) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO runs (id, plan, mode, apply, status, started_at, args) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![run.id, run.plan, run.mode, run.apply, run.status, run.started_at, run.args.to_string()],
    )?;
    Ok(())
}

pub fn set_status(
    conn: &Connection,
    id: &str,
    status: &str,
    finished_at: Option<i64>,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET status = ?2, finished_at = ?3 WHERE id = ?1",
        params![id, status, finished_at],
    )?;
    Ok(())
}

/// Record which process drives the run now (a resumed run has a new one).
pub fn set_process(conn: &Connection, id: &str, pid: u32, host: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET args = json_set(args, '$.pid', ?2, '$.host', ?3) WHERE id = ?1",
        params![id, pid, host],
    )?;
    Ok(())
}

pub fn set_report(conn: &Connection, id: &str, report: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET report = ?2 WHERE id = ?1",
        params![id, report],
    )?;
    Ok(())
}

fn run_from_row(r: &rusqlite::Row) -> rusqlite::Result<RunRow> {
    let args: String = r.get(7)?;
    Ok(RunRow {
        id: r.get(0)?,
        plan: r.get(1)?,
        mode: r.get(2)?,
        apply: r.get(3)?,
        status: r.get(4)?,
        started_at: r.get(5)?,
        finished_at: r.get(6)?,
        args: serde_json::from_str(&args).unwrap_or(Value::Null),
        report: r.get(8)?,
    })
}

const RUN_COLUMNS: &str = "id, plan, mode, apply, status, started_at, finished_at, args, report";

pub fn runs(conn: &Connection) -> rusqlite::Result<Vec<RunRow>> {
    conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at, rowid"
    ))?
    .query_map([], run_from_row)?
    .collect()
}

/// How many runs the store holds.
pub fn count(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row("SELECT count(*) FROM runs", [], |r| r.get::<_, i64>(0))
        .map(|n| usize::try_from(n).unwrap_or(0))
}

/// The newest `limit` runs, newest first.
pub fn newest_runs(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<RunRow>> {
    conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?1"
    ))?
    .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], run_from_row)?
    .collect()
}

/// The run `id`, or (with a prefix) the one run whose id starts with it.
pub fn find_run(conn: &Connection, id: &str) -> rusqlite::Result<Option<RunRow>> {
    let exact = conn
        .query_row(
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
            [id],
            run_from_row,
        )
        .optional()?;
    if exact.is_some() {
        return Ok(exact);
    }
    let mut matches: Vec<RunRow> = conn
        .prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ?1 || '%'"
        ))?
        .query_map([id], run_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(if matches.len() == 1 {
        matches.pop()
    } else {
        None
    })
}

/// Why [`find_run`] found no run for `id`: none starts so, or several do
/// (they are listed, newest first, so the user can give more of the id).
pub fn not_found(conn: &Connection, id: &str) -> String {
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM runs WHERE id LIKE ?1 || '%' ORDER BY started_at DESC, rowid DESC")
        .and_then(|mut st| {
            st.query_map([id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap_or_default();
    match ids.len() {
        0 | 1 => format!("no run {id:?} (see nova runs)"),
        n => format!(
            "{id:?} matches {n} runs: {}{}; give more of the id",
            ids.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if n > 10 { ", ..." } else { "" }
        ),
    }
}

pub fn last_interrupted(conn: &Connection) -> rusqlite::Result<Option<RunRow>> {
    conn.query_row(
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('interrupted', 'running') ORDER BY started_at DESC LIMIT 1"),
        [],
        run_from_row,
    )
    .optional()
}

pub fn upsert_task(conn: &Connection, run: &str, t: &TaskRow) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO run_tasks (run_id, agent, task, phase, status, attempts, exit_code, started_at, finished_at,
             peak_rss, mean_rss, mean_cpu, worker, detail, log_tail, gpu_memory, gpu_util)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT (run_id, agent, task) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
             exit_code = excluded.exit_code, started_at = excluded.started_at, finished_at = excluded.finished_at,
             peak_rss = excluded.peak_rss, mean_rss = excluded.mean_rss, mean_cpu = excluded.mean_cpu, worker = excluded.worker,
             detail = excluded.detail, log_tail = excluded.log_tail, gpu_memory = excluded.gpu_memory,
             gpu_util = excluded.gpu_util",
    )?
    .execute(params![
            run,
            t.agent,
            t.task,
            t.phase,
            t.status,
            t.attempts,
            t.exit_code,
            t.started_at,
            t.finished_at,
            t.peak_rss.map(|v| v as i64),
            t.mean_rss.map(|v| v as i64),
            t.mean_cpu,
            t.worker,
            t.detail,
            serde_json::to_string(&t.log_tail).expect("lines serialize"),
            t.gpu_memory.map(|v| v as i64),
            t.gpu_util,
        ])?;
    Ok(())
}

/// Record the tasks a run plans, in the plan's order, before it starts any:
/// a new one as `waiting`; a resumed run's task that was `not run` or
/// `interrupted` waits again, and one that finished keeps its outcome.
pub fn plan_tasks(
    conn: &mut Connection,
    run: &str,
    planned: &[(String, String, String)],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO run_tasks (run_id, agent, task, phase, status, attempts, planned)
             VALUES (?1, ?2, ?3, ?4, 'waiting', 0, ?5)
             ON CONFLICT (run_id, agent, task) DO UPDATE SET planned = excluded.planned,
                 status = CASE WHEN status IN ('not run', 'interrupted') THEN 'waiting' ELSE status END",
        )?;
        for (i, (agent, task, phase)) in planned.iter().enumerate() {
            insert.execute(params![run, agent, task, phase, i as i64])?;
        }
    }
    tx.commit()
}

/// At a run's end (at `now`): the tasks still waiting never started, and
/// those still running were stopped with it (their processes are gone; a
/// stopped task's outcome is not recorded, so that a resumed run runs it
/// again).
pub fn close_tasks(conn: &Connection, run: &str, now: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE run_tasks SET status = 'not run' WHERE run_id = ?1 AND status = 'waiting'",
        [run],
    )?;
    conn.execute(
        "UPDATE run_tasks SET status = 'interrupted', finished_at = ?2,
             detail = 'stopped before it finished, when the run ended'
         WHERE run_id = ?1 AND status = 'running'",
        params![run, now],
    )?;
    Ok(())
}

/// A run's tasks in the plan's order (tasks of runs recorded before plans
/// were, in the order they started).
pub fn tasks(conn: &Connection, run: &str) -> rusqlite::Result<Vec<TaskRow>> {
    conn.prepare(
        "SELECT agent, task, phase, status, attempts, exit_code, started_at, finished_at, peak_rss, mean_cpu,
             worker, detail, log_tail, mean_rss, gpu_memory, gpu_util FROM run_tasks WHERE run_id = ?1
             ORDER BY planned IS NULL, planned, COALESCE(started_at, 0), agent, task",
    )?
    .query_map([run], |r| {
        let tail: String = r.get(12)?;
        Ok(TaskRow {
            agent: r.get(0)?,
            task: r.get(1)?,
            phase: r.get(2)?,
            status: r.get(3)?,
            attempts: r.get(4)?,
            exit_code: r.get(5)?,
            started_at: r.get(6)?,
            finished_at: r.get(7)?,
            peak_rss: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            mean_cpu: r.get(9)?,
            worker: r.get(10)?,
            detail: r.get(11)?,
            log_tail: serde_json::from_str(&tail).unwrap_or_default(),
            mean_rss: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
            gpu_memory: r.get::<_, Option<i64>>(14)?.map(|v| v as u64),
            gpu_util: r.get(15)?,
        })
    })?
    .collect()
}

pub fn add_message(conn: &Connection, run: &str, m: &Message) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO run_messages (run_id, seq, at, kind, agent, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![run, m.seq as i64, m.at, m.kind, m.agent, m.body.to_string()])?;
    Ok(())
}

pub fn messages(conn: &Connection, run: &str) -> rusqlite::Result<Vec<Message>> {
    conn.prepare(
        "SELECT seq, at, kind, agent, body FROM run_messages WHERE run_id = ?1 ORDER BY seq",
    )?
    .query_map([run], |r| {
        let body: String = r.get(4)?;
        Ok(Message {
            seq: r.get::<_, i64>(0)? as u64,
            at: r.get(1)?,
            kind: r.get(2)?,
            agent: r.get(3)?,
            body: serde_json::from_str(&body).unwrap_or(Value::Null),
        })
    })?
    .collect()
}

/// The queue a run on its own in-process server keeps its tasks in.
pub fn local_queue(run: &str) -> String {
    format!(
        "run-{}",
        run.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
    )
}
