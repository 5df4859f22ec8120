//! `nova tasks`: every agent's tasks with the status nova last verified.
//!
//! A view only: it joins the catalog with the `task_states` table and never
//! writes. A task no run has checked yet is `pending`. The rows built here are
//! also what `roadmap` counts.

use std::collections::HashMap;

use serde::Serialize;

use crate::blueprints::{Agent, Catalog};
use crate::cli::TasksArgs;
use crate::error::{Error, Result};
use crate::output::{BOLD, GREEN, Output, RED, YELLOW};
use crate::store::{TaskState, TaskStatus};
use crate::workspace::Workspace;

#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub plan: String,
    pub phase: String,
    pub agent: String,
    pub role: String,
    pub task: String,
    pub title: String,
    pub status: TaskStatus,
    /// When the status was last verified (RFC 3339), if ever.
    pub checked_at: Option<String>,
    pub run_id: Option<String>,
    pub detail: Option<String>,
}

pub type States = HashMap<(String, String), TaskState>;

/// The recorded task states of the workspace; empty when no database exists.
pub fn load_states(ws: &Workspace) -> Result<States> {
    match ws.open_store_read()? {
        Some(store) => Ok(store.task_states()?),
        None => Ok(HashMap::new()),
    }
}

/// One row per task of each agent, with its last known state.
pub fn rows<'a>(agents: impl IntoIterator<Item = &'a Agent>, states: &States) -> Vec<TaskRow> {
    let mut rows = Vec::new();
    for agent in agents {
        for task in &agent.spec.tasks {
            let state = states.get(&(agent.key(), task.id.clone()));
            rows.push(TaskRow {
                plan: agent.plan.clone(),
                phase: agent.spec.phase.clone(),
                agent: agent.spec.name.clone(),
                role: agent.spec.role.clone(),
                task: task.id.clone(),
                title: task.title.clone(),
                status: state.map(|s| s.status).unwrap_or(TaskStatus::Pending),
                checked_at: state.map(|s| rfc3339(s.updated_at)),
                run_id: state.and_then(|s| s.run_id.clone()),
                detail: state.and_then(|s| s.detail.clone()),
            });
        }
    }
    rows
}

pub use crate::clock::rfc3339;

pub fn paint_status(out: &Output, status: TaskStatus) -> String {
    let style = match status {
        TaskStatus::Done => GREEN,
        TaskStatus::Failed => RED,
        TaskStatus::Skipped | TaskStatus::Pending => YELLOW,
    };
    out.paint(style, status.as_str())
}

pub fn run(ws: &Workspace, out: &Output, args: &TasksArgs) -> Result<()> {
    let catalog = Catalog::load(ws)?;
    let plan = match &args.plan {
        Some(name) => Some(catalog.plan(name)?.name.clone()),
        None => None,
    };
    let mut agents: Vec<&Agent> = match &plan {
        Some(p) => catalog.agents_in(p).collect(),
        None => catalog.agents.iter().collect(),
    };
    if let Some(query) = &args.agent {
        let agent = catalog.find_agent(query, plan.as_deref())?;
        agents.retain(|a| a.key() == agent.key());
    }
    if let Some(phase) = &args.phase {
        let plans: Vec<_> = match &plan {
            Some(p) => vec![catalog.plan(p)?],
            None => catalog.plans.iter().collect(),
        };
        if !plans.iter().any(|p| p.phase_index(phase).is_some()) {
            let valid: Vec<String> = plans
                .iter()
                .map(|p| format!("{} ({})", p.phase_names().join(", "), p.name))
                .collect();
            return Err(Error::usage(format!(
                "unknown phase `{phase}`; valid phases: {}",
                valid.join("; ")
            )));
        }
        agents.retain(|a| a.spec.phase.eq_ignore_ascii_case(phase));
    }

    let states = load_states(ws)?;
    let mut rows = rows(agents, &states);
    if let Some(status) = args.status {
        rows.retain(|r| r.status == status);
    }

    if out.json {
        return out.json(&rows);
    }
    if args.checklist {
        return out.text(&checklist(&rows));
    }
    let mut table = out.table(&["agent", "phase", "task", "title", "status", "checked"]);
    for r in &rows {
        table.add_row(vec![
            r.agent.clone(),
            r.phase.clone(),
            r.task.clone(),
            r.title.clone(),
            paint_status(out, r.status),
            r.checked_at.clone().unwrap_or_else(|| "never".into()),
        ]);
    }
    out.print_table(&table)?;
    let done = rows.iter().filter(|r| r.status == TaskStatus::Done).count();
    out.text(&format!(
        "\n{} {done} of {} tasks done\n",
        out.paint(BOLD, "Total:"),
        rows.len()
    ))
}

/// A Markdown checklist of the rows, grouped by agent in catalog order.
pub fn checklist(rows: &[TaskRow]) -> String {
    let mut text = String::from("# Tasks\n");
    let mut current: Option<&str> = None;
    for r in rows {
        if current != Some(r.agent.as_str()) {
            text.push_str(&format!(
                "\n## {} ({}): {} / {}\n\n",
                r.agent, r.role, r.plan, r.phase
            ));
            current = Some(&r.agent);
        }
        let mark = if r.status == TaskStatus::Done {
            "x"
        } else {
            " "
        };
        let note = match r.status {
            TaskStatus::Done | TaskStatus::Pending => String::new(),
            other => format!(" ({other})"),
        };
        text.push_str(&format!("- [{mark}] `{}` {}{note}\n", r.task, r.title));
    }
    if rows.is_empty() {
        text.push_str("\nNo tasks match.\n");
    }
    text
}
