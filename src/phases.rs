//! Plans as declared: a plan's name, description and ordered phases, as
//! `plan.yaml` files and nova.yaml write them. Data only, a leaf; ordering
//! agents into a run is `plan`'s work.

use serde::{Deserialize, Serialize};

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
