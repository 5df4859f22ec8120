//! Plans: named, ordered phases that agents belong to, and the DAG of a run.
//!
//! A plan's phases run in order; the agents of one phase may run side by side.
//! Built-in plans are `plan.yaml` files beside the built-in blueprints;
//! `nova.yaml` may declare more. [`dag::Schedule`] orders the chosen agents
//! deterministically: by phase, then dependencies, then name.

pub mod command;
pub mod dag;

use serde::{Deserialize, Serialize};

pub use dag::{Schedule, ScheduledAgent, ScheduledPhase};

/// The plan that blueprints without a `plan:` key belong to.
pub const WORKSPACE_PLAN: &str = "workspace";
/// The plan commands use when neither the command line nor `nova.yaml` picks one.
pub const DEFAULT_PLAN: &str = "spark-sophia";
/// The built-in plan whose phases the workspace plan borrows when `nova.yaml` declares none.
pub const GENERIC_PHASES_PLAN: &str = "delivery";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    /// What the phase is for; carried by the `phase-start` broadcast.
    #[serde(default)]
    pub goal: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub phases: Vec<PhaseSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub name: String,
    pub description: String,
    pub phases: Vec<PhaseSpec>,
    /// Where the plan was declared.
    pub source: String,
}

impl Plan {
    /// Index of `phase` in this plan's order (case-insensitive).
    pub fn phase_index(&self, phase: &str) -> Option<usize> {
        self.phases
            .iter()
            .position(|p| p.name.eq_ignore_ascii_case(phase))
    }

    pub fn phase_names(&self) -> Vec<&str> {
        self.phases.iter().map(|p| p.name.as_str()).collect()
    }
}

use crate::blueprints::Catalog;
use crate::error::{Error, Result};

/// Pick the plan a command works on: `--plan`, else the plan of the agents
/// named, else the plan holding the phases named, else the catalog's default.
pub fn resolve<'c>(
    catalog: &'c Catalog,
    plan: Option<&str>,
    agents: &[String],
    phases: &[String],
) -> Result<&'c Plan> {
    if let Some(name) = plan {
        return catalog.plan(name);
    }
    if let Some(first) = agents.first() {
        let first = catalog.find_agent(first, None)?;
        for other in &agents[1..] {
            let agent = catalog.find_agent(other, None)?;
            if !agent.plan.eq_ignore_ascii_case(&first.plan) {
                return Err(Error::usage(format!(
                    "agents `{}` (plan `{}`) and `{}` (plan `{}`) belong to different plans; a run takes one plan",
                    first.name(),
                    first.plan,
                    agent.name(),
                    agent.plan
                )));
            }
        }
        return catalog.plan(&first.plan);
    }
    let default = catalog.plan(catalog.default_plan())?;
    if phases.is_empty() {
        return Ok(default);
    }
    let holds_all = |p: &Plan| phases.iter().all(|ph| p.phase_index(ph).is_some());
    if holds_all(default) {
        return Ok(default);
    }
    let candidates: Vec<&Plan> = catalog.plans.iter().filter(|p| holds_all(p)).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => {
            let unknown = phases
                .iter()
                .find(|ph| catalog.plans.iter().all(|p| p.phase_index(ph).is_none()));
            let listing: Vec<String> = catalog
                .plans
                .iter()
                .map(|p| format!("{} ({})", p.phase_names().join(", "), p.name))
                .collect();
            Err(Error::usage(match unknown {
                Some(ph) => format!("unknown phase `{ph}`; valid phases: {}", listing.join("; ")),
                None => format!(
                    "no plan has all of the phases {}; valid phases: {}",
                    phases.join(", "),
                    listing.join("; ")
                ),
            }))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|p| p.name.as_str()).collect();
            Err(Error::usage(format!(
                "phases {} exist in several plans ({}); pick one with --plan",
                phases.join(", "),
                names.join(", ")
            )))
        }
    }
}

/// Check that every phase named belongs to `plan`; an unknown one lists the valid ones.
pub fn check_phases(plan: &Plan, phases: &[String]) -> Result<()> {
    for phase in phases {
        if plan.phase_index(phase).is_none() {
            return Err(Error::usage(format!(
                "unknown phase `{phase}` in plan `{}`; valid phases: {}",
                plan.name,
                plan.phase_names().join(", ")
            )));
        }
    }
    Ok(())
}
