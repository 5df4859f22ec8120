//! `nova orchestrate`: run a plan's agents as supervised processes, phase by
//! phase, through the task queue.
//!
//! The run starts the queue server in process on the workspace's store (or
//! uses `--server`), starts `--jobs` local workers as gRPC clients of it
//! ([`worker`], the same code as `nova worker`), and drives the schedule: an
//! agent starts when its phase has come and the agents it depends on are
//! finished; its tasks are enqueued one after another (each carries all a
//! worker needs); the outcome of each is read back from the queue, recorded
//! (run tables, task states, audit, KPIs) and announced on the hub. Ctrl-C
//! stops the workers' processes, marks the run interrupted, and
//! `--resume` picks it up without redoing finished tasks.

pub mod command;
pub mod control;
pub mod gpus;
pub mod guard;
pub mod privilege;
pub mod progress;
pub mod prune;
pub mod report;
pub mod results;
pub mod run;
pub mod runs;
pub mod supervisor;
pub mod takers;
pub mod worker;

use std::time::Duration;

use serde::Serialize;

use crate::blueprints::TaskSpec;

/// How one agent of a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentOutcome {
    /// Every task done (or not applicable here).
    Done,
    /// Some check fails and `--apply` was not given.
    Pending,
    Failed,
    Denied,
    /// Not started: an agent it depends on failed or was denied.
    Skipped,
    Interrupted,
}

impl AgentOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentOutcome::Done => "done",
            AgentOutcome::Pending => "pending",
            AgentOutcome::Failed => "failed",
            AgentOutcome::Denied => "denied",
            AgentOutcome::Skipped => "skipped",
            AgentOutcome::Interrupted => "interrupted",
        }
    }
}

/// One agent of the run as the scheduler tracks it.
pub struct AgentRun {
    pub key: String,
    pub name: String,
    pub role: String,
    pub phase: String,
    pub deps: Vec<String>,
    pub tasks: Vec<TaskSpec>,
    pub memory_limit: Option<u64>,
    pub gpus: Option<u32>,
    pub wall_time: Option<Duration>,
    pub next: usize,
    /// The queue task running now, and its blueprint task's index.
    pub in_flight: Option<(String, usize)>,
    pub saw_pending: bool,
    pub outcome: Option<AgentOutcome>,
}
