//! The schedule of a run: the chosen agents in phase order, each phase's agents
//! in dependency order.
//!
//! The order is deterministic: among agents whose dependencies are placed, the
//! one of the earliest phase goes first, then the one whose name sorts first.
//! The catalog has already rejected cycles and dependencies on later phases, so
//! every agent is placed.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::blueprints::{Agent, Catalog};
use crate::error::Result;

use super::Plan;

#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub plan: String,
    pub description: String,
    pub phases: Vec<ScheduledPhase>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduledPhase {
    pub name: String,
    pub goal: String,
    pub agents: Vec<ScheduledAgent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScheduledAgent {
    pub name: String,
    pub role: String,
    /// Dependencies as declared (names as written in their blueprints).
    pub depends_on: Vec<String>,
    /// True when the agent was asked for; false when it was pulled in as a dependency.
    pub requested: bool,
    pub tasks: usize,
}

impl Schedule {
    /// Schedule `wanted` agents of `plan` (every agent of the plan when empty);
    /// with `with_dependencies`, the agents they depend on, transitively, too.
    pub fn build(
        catalog: &Catalog,
        plan: &Plan,
        wanted: &[String],
        with_dependencies: bool,
    ) -> Result<Schedule> {
        let members: Vec<&Agent> = catalog.agents_in(&plan.name).collect();
        let by_key: HashMap<String, &Agent> = members.iter().map(|a| (a.key(), *a)).collect();

        let requested: HashSet<String> = if wanted.is_empty() {
            by_key.keys().cloned().collect()
        } else {
            wanted
                .iter()
                .map(|w| catalog.find_agent(w, Some(&plan.name)).map(|a| a.key()))
                .collect::<Result<_>>()?
        };
        let mut chosen = requested.clone();
        if with_dependencies {
            let mut stack: Vec<String> = chosen.iter().cloned().collect();
            while let Some(key) = stack.pop() {
                for dep in by_key[&key].spec.dependency_agents() {
                    if chosen.insert(dep.clone()) {
                        stack.push(dep);
                    }
                }
            }
        }

        let phase_of = |a: &Agent| plan.phase_index(&a.spec.phase).unwrap_or(usize::MAX);
        let mut waiting: HashMap<String, usize> = HashMap::new();
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        let mut ready = BTreeSet::new();
        for key in &chosen {
            let agent = by_key[key];
            let deps: Vec<String> = agent
                .spec
                .dependency_agents()
                .into_iter()
                .filter(|d| chosen.contains(d))
                .collect();
            for dep in &deps {
                dependents.entry(dep.clone()).or_default().push(key.clone());
            }
            if deps.is_empty() {
                ready.insert((phase_of(agent), key.clone()));
            }
            waiting.insert(key.clone(), deps.len());
        }

        let mut phases: Vec<ScheduledPhase> = plan
            .phases
            .iter()
            .map(|p| ScheduledPhase {
                name: p.name.clone(),
                goal: p.goal.clone(),
                agents: Vec::new(),
            })
            .collect();
        while let Some((phase, key)) = ready.pop_first() {
            let agent = by_key[&key];
            phases[phase].agents.push(ScheduledAgent {
                name: agent.spec.name.clone(),
                role: agent.spec.role.clone(),
                depends_on: agent.spec.depends_on.clone(),
                requested: requested.contains(&key),
                tasks: agent.spec.tasks.len(),
            });
            for next in dependents.get(&key).into_iter().flatten() {
                let count = waiting
                    .get_mut(next)
                    .expect("every chosen agent is counted");
                *count -= 1;
                if *count == 0 {
                    ready.insert((phase_of(by_key[next]), next.clone()));
                }
            }
        }
        phases.retain(|p| !p.agents.is_empty());
        Ok(Schedule {
            plan: plan.name.clone(),
            description: plan.description.clone(),
            phases,
        })
    }

    pub fn agent_count(&self) -> usize {
        self.phases.iter().map(|p| p.agents.len()).sum()
    }
}
