//! `nova roadmap`: a phase-oriented progress report for one plan.
//!
//! For each phase, the share of its tasks that nova last verified as done; for
//! each specialist, the steps that remain and the role's definition of done.
//! It reads the same rows as `nova tasks` and writes nothing; the Markdown form
//! is a document meant to be shared (`nova roadmap --format markdown > ROADMAP.md`).

use serde::Serialize;

use crate::blueprints::{Agent, Catalog};
use crate::cli::{RoadmapArgs, RoadmapFormat};
use crate::error::Result;
use crate::output::{BOLD, DIM, Output};
use crate::plan::{self, Plan};
use crate::store::TaskStatus;
use crate::tasks::{self, States, TaskRow};
use crate::workspace::Workspace;

#[derive(Debug, Serialize)]
pub struct Roadmap {
    pub plan: String,
    pub description: String,
    pub progress: Progress,
    pub phases: Vec<PhaseReport>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    /// Whole percent of tasks done (0 when there are no tasks).
    pub percent: u32,
}

impl Progress {
    fn of<'a>(rows: impl IntoIterator<Item = &'a TaskRow>) -> Self {
        let (mut done, mut total) = (0, 0);
        for r in rows {
            total += 1;
            done += usize::from(r.status == TaskStatus::Done);
        }
        let percent = (done * 100).checked_div(total).unwrap_or(0) as u32;
        Progress {
            done,
            total,
            percent,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub goal: String,
    pub progress: Progress,
    pub agents: Vec<AgentReport>,
}

#[derive(Debug, Serialize)]
pub struct AgentReport {
    pub name: String,
    pub role: String,
    pub progress: Progress,
    pub remaining: Vec<Step>,
    pub definition_of_done: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub task: String,
    pub title: String,
    pub status: TaskStatus,
}

/// Build the roadmap of `plan`, limited to `phases` when any are given.
pub fn build(catalog: &Catalog, plan: &Plan, phases: &[String], states: &States) -> Roadmap {
    let mut reports = Vec::new();
    let mut all_rows = Vec::new();
    for phase in &plan.phases {
        if !phases.is_empty() && !phases.iter().any(|p| p.eq_ignore_ascii_case(&phase.name)) {
            continue;
        }
        let agents: Vec<&Agent> = catalog
            .agents_in(&plan.name)
            .filter(|a| a.spec.phase.eq_ignore_ascii_case(&phase.name))
            .collect();
        let mut agent_reports = Vec::new();
        let mut phase_rows = Vec::new();
        for agent in agents {
            let rows = tasks::rows([agent], states);
            agent_reports.push(AgentReport {
                name: agent.spec.name.clone(),
                role: agent.spec.role.clone(),
                progress: Progress::of(&rows),
                remaining: rows
                    .iter()
                    .filter(|r| r.status != TaskStatus::Done)
                    .map(|r| Step {
                        task: r.task.clone(),
                        title: r.title.clone(),
                        status: r.status,
                    })
                    .collect(),
                definition_of_done: agent.spec.definition_of_done.clone(),
            });
            phase_rows.extend(rows);
        }
        reports.push(PhaseReport {
            name: phase.name.clone(),
            goal: phase.goal.trim().to_string(),
            progress: Progress::of(&phase_rows),
            agents: agent_reports,
        });
        all_rows.extend(phase_rows);
    }
    Roadmap {
        plan: plan.name.clone(),
        description: plan.description.trim().to_string(),
        progress: Progress::of(&all_rows),
        phases: reports,
    }
}

pub fn run(ws: &Workspace, out: &Output, args: &RoadmapArgs) -> Result<()> {
    let catalog = Catalog::load(ws)?;
    let plan = plan::resolve(&catalog, args.plan.as_deref(), &[], &args.phase)?;
    plan::check_phases(plan, &args.phase)?;
    let states = tasks::load_states(ws)?;
    let roadmap = build(&catalog, plan, &args.phase, &states);
    let format = if out.json {
        RoadmapFormat::Json
    } else {
        args.format
    };
    match format {
        RoadmapFormat::Json => out.json(&roadmap),
        RoadmapFormat::Markdown => out.text(&markdown(&roadmap)),
        RoadmapFormat::Table => text(out, &roadmap),
    }
}

fn text(out: &Output, roadmap: &Roadmap) -> Result<()> {
    let p = roadmap.progress;
    out.text(&format!(
        "{} {} of {} tasks done ({}%)\n\n",
        out.paint(BOLD, &format!("Roadmap {}:", roadmap.plan)),
        p.done,
        p.total,
        p.percent
    ))?;
    let mut table = out.table(&["phase", "done", "progress", "goal"]);
    for (i, phase) in roadmap.phases.iter().enumerate() {
        table.add_row(vec![
            format!("{}. {}", i + 1, phase.name),
            format!("{}/{}", phase.progress.done, phase.progress.total),
            format!(
                "{} {:>3}%",
                bar(phase.progress.percent),
                phase.progress.percent
            ),
            phase.goal.clone(),
        ]);
    }
    out.print_table(&table)?;
    let mut details = String::new();
    for phase in &roadmap.phases {
        details.push_str(&format!("\n{}\n", out.paint(BOLD, &phase.name)));
        for agent in &phase.agents {
            details.push_str(&format!(
                "  {} ({}): {}/{} done\n",
                agent.name, agent.role, agent.progress.done, agent.progress.total
            ));
            for step in &agent.remaining {
                details.push_str(&format!(
                    "    - {} {} [{}]\n",
                    step.task,
                    out.paint(DIM, &step.title),
                    tasks::paint_status(out, step.status)
                ));
            }
            if !agent.definition_of_done.is_empty() {
                details.push_str("    definition of done:\n");
                for item in &agent.definition_of_done {
                    details.push_str(&format!("      * {item}\n"));
                }
            }
        }
    }
    out.text(&details)
}

fn bar(percent: u32) -> String {
    let filled = (percent as usize).div_ceil(10).min(10);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(10 - filled))
}

/// The roadmap as a Markdown document.
pub fn markdown(roadmap: &Roadmap) -> String {
    let p = roadmap.progress;
    let mut md = format!("# Roadmap: {}\n\n", roadmap.plan);
    if !roadmap.description.is_empty() {
        md.push_str(&format!("{}\n\n", roadmap.description));
    }
    md.push_str(&format!(
        "**Progress: {} of {} tasks done ({}%).** A task counts as done when nova last verified it on this host; a task never checked is pending.\n\n",
        p.done, p.total, p.percent
    ));
    md.push_str("| Phase | Done | Progress | Goal |\n|---|---|---|---|\n");
    for (i, phase) in roadmap.phases.iter().enumerate() {
        md.push_str(&format!(
            "| {}. {} | {}/{} | {}% | {} |\n",
            i + 1,
            phase.name,
            phase.progress.done,
            phase.progress.total,
            phase.progress.percent,
            phase.goal.replace('|', "\\|").replace('\n', " ")
        ));
    }
    for (i, phase) in roadmap.phases.iter().enumerate() {
        md.push_str(&format!(
            "\n## {}. {} ({}/{} done, {}%)\n\n",
            i + 1,
            phase.name,
            phase.progress.done,
            phase.progress.total,
            phase.progress.percent
        ));
        if !phase.goal.is_empty() {
            md.push_str(&format!("Goal: {}\n", phase.goal));
        }
        for agent in &phase.agents {
            md.push_str(&format!(
                "\n### {} ({}): {}/{} done\n\n",
                agent.name, agent.role, agent.progress.done, agent.progress.total
            ));
            if agent.remaining.is_empty() {
                md.push_str("All steps done.\n");
            } else {
                md.push_str("Remaining steps:\n\n");
                for step in &agent.remaining {
                    let note = if step.status == TaskStatus::Pending {
                        String::new()
                    } else {
                        format!(" ({})", step.status)
                    };
                    md.push_str(&format!("- [ ] `{}` {}{note}\n", step.task, step.title));
                }
            }
            if !agent.definition_of_done.is_empty() {
                md.push_str("\nDefinition of done:\n\n");
                for item in &agent.definition_of_done {
                    md.push_str(&format!("- {item}\n"));
                }
            }
        }
    }
    md
}
