//! `nova plan`: print a plan's phases, their agents and each agent's dependencies.

use crate::blueprints::Catalog;
use crate::cli::PlanArgs;
use crate::error::Result;
use crate::output::{BOLD, DIM, Output};
use crate::workspace::Workspace;

use super::Schedule;

pub fn run(ws: &Workspace, out: &Output, args: &PlanArgs) -> Result<()> {
    let catalog = Catalog::load(ws)?;
    let select = &args.select;
    let plan = super::resolve(&catalog, select.plan.as_deref(), &select.agents, &[])?;
    let schedule = Schedule::build(&catalog, plan, &select.agents, !select.only)?;
    if out.json {
        return out.json(&schedule);
    }
    let mut text = format!(
        "{} {}\n",
        out.paint(BOLD, &format!("Plan {}:", schedule.plan)),
        schedule.description.trim()
    );
    for (i, phase) in schedule.phases.iter().enumerate() {
        text.push_str(&format!(
            "  {}. {}: {}\n",
            i + 1,
            phase.name,
            out.paint(DIM, phase.goal.trim())
        ));
    }
    text.push('\n');
    out.text(&text)?;
    let mut table = out.table(&["phase", "agent", "role", "depends on", "tasks"]);
    for (i, phase) in schedule.phases.iter().enumerate() {
        for agent in &phase.agents {
            let name = if agent.requested {
                agent.name.clone()
            } else {
                format!("{} (dependency)", agent.name)
            };
            let deps = if agent.depends_on.is_empty() {
                "-".to_string()
            } else {
                agent.depends_on.join(", ")
            };
            table.add_row(vec![
                format!("{} {}", i + 1, phase.name),
                name,
                agent.role.clone(),
                deps,
                agent.tasks.to_string(),
            ]);
        }
    }
    out.print_table(&table)
}
