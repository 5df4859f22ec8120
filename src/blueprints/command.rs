//! `nova blueprints`: list, show, create and validate blueprints.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{BlueprintsAction, BlueprintsArgs};
use crate::error::{Error, Result};
use crate::output::{GREEN, Output};
use crate::phases::{GENERIC_PHASES_PLAN, WORKSPACE_PLAN};
use crate::workspace::{Workspace, ensure_dir};

use super::catalog::{Agent, Catalog};
use super::model::Blueprint;
use super::template::{self, TemplateInput};
use super::validate::name_problem;

pub fn run(ws: &Workspace, out: &Output, args: &BlueprintsArgs) -> Result<()> {
    match &args.action {
        None => list(ws, out, args.plan.as_deref()),
        Some(BlueprintsAction::List { plan }) => list(ws, out, plan.as_deref()),
        Some(BlueprintsAction::Show { name }) => show(ws, out, name),
        Some(BlueprintsAction::New {
            role,
            name,
            plan,
            phase,
        }) => new(ws, out, role, name, plan.as_deref(), phase.as_deref()),
        Some(BlueprintsAction::Validate { paths }) => validate(ws, out, paths),
        Some(BlueprintsAction::Assets { plan, dry_run }) => {
            assets(ws, out, plan.as_deref(), *dry_run)
        }
    }
}

fn assets(ws: &Workspace, out: &Output, plan: Option<&str>, dry_run: bool) -> Result<()> {
    if let Some(plan) = plan {
        Catalog::load(ws)?.plan(plan)?;
    }
    let outcomes = super::assets::write(ws, plan, dry_run)?;
    if out.json {
        return out.json(&outcomes);
    }
    if outcomes.is_empty() {
        return out.text("no assets: this plan's fixes use no files nova ships\n");
    }
    let mut table = out.table(&["plan", "file", "state"]);
    for o in &outcomes {
        table.add_row(vec![
            o.plan.to_string(),
            o.path.to_string(),
            o.state.to_string(),
        ]);
    }
    out.print_table(&table)
}

#[derive(Serialize)]
struct Listed<'a> {
    name: &'a str,
    role: &'a str,
    plan: &'a str,
    phase: &'a str,
    description: &'a str,
    skills: &'a [String],
    depends_on: &'a [String],
    tasks: usize,
    source: &'a str,
}

impl<'a> From<&'a Agent> for Listed<'a> {
    fn from(a: &'a Agent) -> Self {
        Listed {
            name: &a.spec.name,
            role: &a.spec.role,
            plan: &a.plan,
            phase: &a.spec.phase,
            description: a.spec.description.trim(),
            skills: &a.spec.skills,
            depends_on: &a.spec.depends_on,
            tasks: a.spec.tasks.len(),
            source: &a.source,
        }
    }
}

fn list(ws: &Workspace, out: &Output, plan: Option<&str>) -> Result<()> {
    let catalog = Catalog::load(ws)?;
    let agents: Vec<&Agent> = match plan {
        Some(name) => {
            let plan = catalog.plan(name)?;
            catalog.agents_in(&plan.name).collect()
        }
        None => catalog.agents.iter().collect(),
    };
    if out.json {
        let listed: Vec<Listed> = agents.iter().map(|a| Listed::from(*a)).collect();
        return out.json(&listed);
    }
    let mut table = out.table(&["name", "role", "plan", "phase", "skills", "tasks"]);
    for a in agents {
        table.add_row(vec![
            a.spec.name.clone(),
            a.spec.role.clone(),
            a.plan.clone(),
            a.spec.phase.clone(),
            a.spec.skills.join(", "),
            a.spec.tasks.len().to_string(),
        ]);
    }
    out.print_table(&table)
}

#[derive(Serialize)]
struct Shown<'a> {
    plan: &'a str,
    source: &'a str,
    blueprint: &'a Blueprint,
}

fn show(ws: &Workspace, out: &Output, name: &str) -> Result<()> {
    let catalog = Catalog::load(ws)?;
    let agent = catalog.find_agent(name, None)?;
    if out.json {
        return out.json(&Shown {
            plan: &agent.plan,
            source: &agent.source,
            blueprint: &agent.spec,
        });
    }
    let mut text = agent.text.clone();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    out.text(&text)
}

fn new(
    ws: &Workspace,
    out: &Output,
    role: &str,
    name: &str,
    plan: Option<&str>,
    phase: Option<&str>,
) -> Result<()> {
    if let Some(problem) = name_problem(name) {
        return Err(Error::usage(format!("--name: {problem}")));
    }
    if role.trim().is_empty() {
        return Err(Error::usage("ROLE must not be empty"));
    }
    let catalog = Catalog::load(ws)?;
    if let Ok(existing) = catalog.find_agent(name, None)
        && existing.name().eq_ignore_ascii_case(name)
        && existing.layer != super::Layer::Builtin
    {
        return Err(Error::usage(format!(
            "agent `{}` already exists in {}",
            existing.name(),
            existing.source
        )));
    }
    let (plan_name, phases) = match plan {
        Some(p) => {
            let plan = catalog.plan(p)?;
            (
                Some(plan.name.clone()),
                plan.phase_names()
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
            )
        }
        None if !ws.config.phases.is_empty() => (
            None,
            ws.config.phases.iter().map(|p| p.name.clone()).collect(),
        ),
        None => {
            let plan = catalog
                .plans
                .iter()
                .find(|p| p.name == WORKSPACE_PLAN)
                .or(catalog.plan(GENERIC_PHASES_PLAN).ok());
            (
                None,
                plan.map(|p| p.phase_names().into_iter().map(String::from).collect())
                    .unwrap_or_default(),
            )
        }
    };
    let phase = match phase {
        Some(ph) => phases
            .iter()
            .find(|p| p.eq_ignore_ascii_case(ph))
            .cloned()
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown phase `{ph}` for plan `{}`; valid phases: {}",
                    plan_name.as_deref().unwrap_or(WORKSPACE_PLAN),
                    phases.join(", ")
                ))
            })?,
        None => phases
            .first()
            .cloned()
            .ok_or_else(|| Error::usage("the plan has no phases"))?,
    };

    let text = template::render(
        &catalog,
        &TemplateInput {
            name,
            role,
            plan: plan_name.as_deref(),
            phase: &phase,
        },
    );
    let dir = ws.blueprint_dir();
    ensure_dir(&dir)?;
    let path = dir.join(format!("{name}.yaml"));
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::usage(format!(
                "{} already exists; nova does not overwrite blueprints",
                path.display()
            )));
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(&path, e))?;

    if out.json {
        #[derive(Serialize)]
        struct Written<'a> {
            path: &'a std::path::Path,
            name: &'a str,
            role: &'a str,
            phase: &'a str,
        }
        return out.json(&Written {
            path: &path,
            name,
            role,
            phase: &phase,
        });
    }
    out.text(&format!(
        "wrote {} (agent `{name}`, role {role}, phase {phase})\n",
        path.display()
    ))
}

#[derive(Serialize)]
struct Validated {
    valid: bool,
    plans: usize,
    agents: usize,
    tasks: usize,
    problems: Vec<crate::yaml::Diagnostic>,
}

fn validate(ws: &Workspace, out: &Output, paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        if !path.exists() {
            return Err(Error::usage(format!(
                "{}: no such file or folder",
                path.display()
            )));
        }
    }
    match Catalog::load_with(ws, paths) {
        Ok(catalog) => {
            let tasks = catalog.agents.iter().map(|a| a.spec.tasks.len()).sum();
            let report = Validated {
                valid: true,
                plans: catalog.plans.len(),
                agents: catalog.agents.len(),
                tasks,
                problems: vec![],
            };
            if out.json {
                return out.json(&report);
            }
            out.text(&format!(
                "{} {} plans, {} agents, {} tasks\n",
                out.paint(GREEN, "valid:"),
                report.plans,
                report.agents,
                report.tasks
            ))
        }
        Err(Error::Invalid(diags)) => {
            if out.json {
                out.json(&Validated {
                    valid: false,
                    plans: 0,
                    agents: 0,
                    tasks: 0,
                    problems: diags.0.clone(),
                })?;
            }
            Err(Error::Invalid(diags))
        }
        Err(e) => Err(e),
    }
}
