//! The last verified state of each agent task, as `tasks` and `roadmap` show it.
//!
//! One row per (agent, task), overwritten by each run that checks the task, so
//! the table always says what was true the last time nova looked. Agent names
//! are stored in lower case, as they are matched.

use std::collections::HashMap;

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Done,
    Failed,
    Skipped,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
            TaskStatus::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => TaskStatus::Pending,
            "done" => TaskStatus::Done,
            "failed" => TaskStatus::Failed,
            "skipped" => TaskStatus::Skipped,
            _ => return None,
        })
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskState {
    pub agent: String,
    pub task: String,
    pub status: TaskStatus,
    pub run_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub updated_at: i64,
    pub detail: Option<String>,
}

impl Store {
    /// Every recorded task state, keyed by (lower-case agent, task id).
    pub fn task_states(&self) -> StoreResult<HashMap<(String, String), TaskState>> {
        if self.version() < 1 {
            return Ok(HashMap::new());
        }
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT agent, task, status, run_id, updated_at, detail FROM task_states",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                let status: String = r.get(2)?;
                Ok(TaskState {
                    agent: r.get(0)?,
                    task: r.get(1)?,
                    status: TaskStatus::parse(&status).unwrap_or(TaskStatus::Pending),
                    run_id: r.get(3)?,
                    updated_at: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .map_err(self.err())?;
        let mut states = HashMap::new();
        for row in rows {
            let state = row.map_err(self.err())?;
            states.insert((state.agent.clone(), state.task.clone()), state);
        }
        Ok(states)
    }

    /// Record the latest state of one task, replacing what was there.
    pub fn record_task_state(&self, state: &TaskState) -> StoreResult<()> {
        record_task_state(self.conn(), state).map_err(self.err())
    }
}

/// [`Store::record_task_state`] on any connection (the file's writer uses it
/// inside its own transaction).
pub fn record_task_state(conn: &Connection, state: &TaskState) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO task_states (agent, task, status, run_id, updated_at, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (agent, task) DO UPDATE SET
           status = excluded.status, run_id = excluded.run_id,
           updated_at = excluded.updated_at, detail = excluded.detail",
    )?
    .execute(params![
        state.agent.to_lowercase(),
        state.task,
        state.status.as_str(),
        state.run_id,
        state.updated_at,
        state.detail
    ])?;
    Ok(())
}
