//! Checks that need more than one field: names, phases, task ids, dependencies
//! and cycles. Each problem becomes a [`Diagnostic`] naming the file, the line of
//! the key concerned (when the text shows it plainly) and the field path.

use std::collections::{HashMap, HashSet};

use crate::phases::Plan;
use crate::yaml::{self, Diagnostic};

use super::catalog::Agent;

const MAX_NAME: usize = 64;

/// Why `name` is not a usable identifier, if it is not.
/// The most tasks one agent may hold.
pub const MAX_TASKS: usize = 1_000;

pub fn name_problem(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > MAX_NAME {
        return Some(format!("`{name}` is longer than {MAX_NAME} characters"));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some(format!(
            "`{name}` is not a valid name: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
        ));
    }
    None
}

pub fn plan(plan: &Plan, text: &str) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let at = |key: &str| yaml::key_line(text, key);
    if let Some(problem) = name_problem(&plan.name) {
        diags.push(
            Diagnostic::new(&plan.source, problem)
                .at_line(at("name"))
                .field("name"),
        );
    }
    if plan.phases.is_empty() {
        diags.push(
            Diagnostic::new(&plan.source, format!("plan `{}` has no phases", plan.name))
                .at_line(at("phases"))
                .field("phases"),
        );
    }
    let mut seen = HashSet::new();
    for (i, phase) in plan.phases.iter().enumerate() {
        let line = yaml::key_value_line(text, "name", &phase.name, 0).or(at("phases"));
        if let Some(problem) = name_problem(&phase.name) {
            diags.push(
                Diagnostic::new(&plan.source, problem)
                    .at_line(line)
                    .field(format!("phases[{i}].name")),
            );
        } else if !seen.insert(phase.name.to_lowercase()) {
            diags.push(
                Diagnostic::new(
                    &plan.source,
                    format!(
                        "phase `{}` appears twice in plan `{}`",
                        phase.name, plan.name
                    ),
                )
                .at_line(yaml::key_value_line(text, "name", &phase.name, 1).or(line))
                .field(format!("phases[{i}].name")),
            );
        }
    }
    diags
}

pub fn agents(agents: &[Agent], plans: &[Plan]) -> Vec<Diagnostic> {
    let by_key: HashMap<String, &Agent> = agents.iter().map(|a| (a.key(), a)).collect();
    let mut diags = Vec::new();
    for agent in agents {
        diags.extend(agent_fields(agent, plans, &by_key));
    }
    diags.extend(cycles(agents, &by_key));
    diags
}

fn agent_fields(
    agent: &Agent,
    plans: &[Plan],
    by_key: &HashMap<String, &Agent>,
) -> Vec<Diagnostic> {
    let spec = &agent.spec;
    let text = &agent.text;
    let file = agent.source.as_str();
    let mut diags = Vec::new();
    let mut push = |message: String, line: Option<usize>, field: String| {
        diags.push(Diagnostic::new(file, message).at_line(line).field(field));
    };

    if let Some(problem) = name_problem(&spec.name) {
        push(problem, yaml::key_line(text, "name"), "name".into());
    }
    if spec.role.trim().is_empty() {
        push(
            "must not be empty".into(),
            yaml::key_line(text, "role"),
            "role".into(),
        );
    }
    for (i, skill) in spec.skills.iter().enumerate() {
        if skill.trim().is_empty() {
            push(
                "a skill must not be empty".into(),
                yaml::key_line(text, "skills"),
                format!("skills[{i}]"),
            );
        }
    }

    let plan = plans
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(&agent.plan));
    let phase_index = match plan {
        None => {
            let known: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
            push(
                format!(
                    "unknown plan `{}`; known plans: {}",
                    agent.plan,
                    known.join(", ")
                ),
                yaml::key_line(text, "plan"),
                "plan".into(),
            );
            None
        }
        Some(plan) => {
            let index = plan.phase_index(&spec.phase);
            if index.is_none() {
                push(
                    format!(
                        "unknown phase `{}` for plan `{}`; its phases are: {}",
                        spec.phase,
                        plan.name,
                        plan.phase_names().join(", ")
                    ),
                    yaml::key_line(text, "phase"),
                    "phase".into(),
                );
            }
            index
        }
    };

    let mut deps_seen = HashSet::new();
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let line = || yaml::list_item_line(text, "depends_on", dep);
        let field = format!("depends_on[{i}]");
        if !deps_seen.insert(dep.to_lowercase()) {
            push(format!("`{dep}` is listed twice"), line(), field);
            continue;
        }
        let (dep_agent, dep_task) = super::model::split_dependency(dep);
        if dep_agent.eq_ignore_ascii_case(&spec.name) {
            push(
                format!("agent `{}` cannot depend on itself", spec.name),
                line(),
                field,
            );
            continue;
        }
        let Some(target) = by_key.get(&dep_agent.to_lowercase()) else {
            let mut same_plan: Vec<&str> = by_key
                .values()
                .filter(|a| a.plan.eq_ignore_ascii_case(&agent.plan))
                .map(|a| a.name())
                .collect();
            same_plan.sort();
            push(
                format!(
                    "unknown agent `{dep_agent}`; agents of plan `{}`: {}",
                    agent.plan,
                    same_plan.join(", ")
                ),
                line(),
                field,
            );
            continue;
        };
        if !target.plan.eq_ignore_ascii_case(&agent.plan) {
            push(
                format!(
                    "`{dep}` belongs to plan `{}`, not `{}`; dependencies stay within one plan",
                    target.plan, agent.plan
                ),
                line(),
                field,
            );
            continue;
        }
        if let Some(task) = dep_task
            && !target.spec.tasks.iter().any(|t| t.id == task)
        {
            let ids: Vec<&str> = target.spec.tasks.iter().map(|t| t.id.as_str()).collect();
            push(
                format!(
                    "agent `{}` has no task `{task}`; its tasks: {}",
                    target.name(),
                    ids.join(", ")
                ),
                line(),
                field,
            );
            continue;
        }
        let target_phase = plan.and_then(|p| p.phase_index(&target.spec.phase));
        if let (Some(own), Some(theirs)) = (phase_index, target_phase)
            && theirs > own
        {
            push(
                format!(
                    "`{dep}` runs in phase `{}`, after this agent's phase `{}`; an agent can only depend on agents of its own or earlier phases",
                    target.spec.phase, spec.phase
                ),
                line(),
                field,
            );
        }
    }

    if spec.tasks.len() > MAX_TASKS {
        push(
            format!(
                "{} tasks: an agent holds at most {MAX_TASKS} (split it into several agents)",
                spec.tasks.len()
            ),
            yaml::key_line(text, "tasks"),
            "tasks".into(),
        );
        return diags;
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, task) in spec.tasks.iter().enumerate() {
        let counter = ids.entry(task.id.to_lowercase()).or_insert(0);
        let occurrence = *counter;
        *counter += 1;
        // Looked up only for a task with a problem: finding a line scans the
        // text, and doing it for every task made checking quadratic.
        let line = || {
            yaml::key_value_line(text, "id", &task.id, occurrence).or(yaml::key_line(text, "tasks"))
        };
        if let Some(problem) = name_problem(&task.id) {
            push(problem, line(), format!("tasks[{i}].id"));
        } else if occurrence > 0 {
            push(
                format!(
                    "task id `{}` is used twice in agent `{}`",
                    task.id, spec.name
                ),
                line(),
                format!("tasks[{i}].id"),
            );
        }
        if task.title.trim().is_empty() {
            push(
                "must not be empty".into(),
                line(),
                format!("tasks[{i}].title"),
            );
        }
        if task.run.is_none() && task.check.is_none() {
            push(
                format!(
                    "task `{}` has neither `run` nor `check`: give it at least one",
                    task.id
                ),
                line(),
                format!("tasks[{i}]"),
            );
        }
        for (j, addr) in task.requires.tcp.iter().enumerate() {
            let port = addr
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
                push(
                    format!("`{addr}` is not HOST:PORT (127.0.0.1:3000, localhost:5432)"),
                    line(),
                    format!("tasks[{i}].requires.tcp[{j}]"),
                );
            }
        }
    }
    diags
}

/// Report each dependency cycle once, at the first agent (by name) on it.
fn cycles(agents: &[Agent], by_key: &HashMap<String, &Agent>) -> Vec<Diagnostic> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        key: &str,
        by_key: &HashMap<String, &Agent>,
        marks: &mut HashMap<String, Mark>,
        stack: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        match marks.get(key) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|k| k == key).unwrap_or(0);
                found.push(stack[start..].to_vec());
                return;
            }
            None => {}
        }
        let Some(agent) = by_key.get(key) else { return };
        marks.insert(key.to_string(), Mark::Visiting);
        stack.push(key.to_string());
        let mut deps = agent.spec.dependency_agents();
        deps.sort();
        for dep in deps {
            if dep != key {
                visit(&dep, by_key, marks, stack, found);
            }
        }
        stack.pop();
        marks.insert(key.to_string(), Mark::Done);
    }

    let mut keys: Vec<String> = agents.iter().map(|a| a.key()).collect();
    keys.sort();
    let mut marks = HashMap::new();
    let mut found = Vec::new();
    for key in &keys {
        visit(key, by_key, &mut marks, &mut Vec::new(), &mut found);
    }
    found
        .into_iter()
        .map(|cycle| {
            let agent = by_key[&cycle[0]];
            let next = &cycle[1 % cycle.len()];
            let mut names: Vec<&str> = cycle.iter().map(|k| by_key[k].name()).collect();
            names.push(agent.name());
            let dep_as_written = agent
                .spec
                .depends_on
                .iter()
                .find(|d| {
                    super::model::split_dependency(d)
                        .0
                        .eq_ignore_ascii_case(next)
                })
                .cloned()
                .unwrap_or_default();
            let index = agent
                .spec
                .depends_on
                .iter()
                .position(|d| {
                    super::model::split_dependency(d)
                        .0
                        .eq_ignore_ascii_case(next)
                })
                .unwrap_or(0);
            Diagnostic::new(
                &agent.source,
                format!("dependency cycle: {}", names.join(" -> ")),
            )
            .at_line(yaml::list_item_line(
                &agent.text,
                "depends_on",
                &dep_as_written,
            ))
            .field(format!("depends_on[{index}]"))
        })
        .collect()
}
