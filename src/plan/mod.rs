//! Plans: named, ordered phases that agents belong to, and the DAG of a run.
//!
//! A plan's phases run in order; the agents of one phase may run side by side.
//! Built-in plans are `plan.yaml` files beside the built-in blueprints;
//! `nova.yaml` may declare more. [`dag::Schedule`] orders the chosen agents
//! deterministically: by phase, then dependencies, then name.

pub mod command;
pub mod dag;

pub use dag::{Schedule, ScheduledAgent, ScheduledPhase};

pub use crate::phases::{
    DEFAULT_PLAN, GENERIC_PHASES_PLAN, PhaseSpec, Plan, PlanSpec, WORKSPACE_PLAN,
};

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
