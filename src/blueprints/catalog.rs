//! The catalog: every plan and agent blueprint nova knows, checked as a whole.
//!
//! Inputs come in layers: the built-in files compiled into the binary, then the
//! workspace's blueprint folder and the plans of `nova.yaml`, then files named
//! on the command line (`blueprints validate PATH`). A later layer overrides an
//! earlier one by name (case-insensitive), in the plan of the one it replaces
//! unless it names its own; two definitions of one name in the same layer are
//! an error. A file named `plan.yaml` is a plan; any other YAML
//! file is a blueprint. The catalog is only handed out when every input is
//! valid, so the rest of nova can trust names, phases and dependencies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::phases::{DEFAULT_PLAN, GENERIC_PHASES_PLAN, Plan, PlanSpec, WORKSPACE_PLAN};
use crate::workspace::Workspace;
use crate::yaml::{self, Diagnostic, Diagnostics};

use super::model::Blueprint;
use super::validate;

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_blueprints.rs"));
}

/// The files built-in plans' fixes use: (plan, path, text); see [`super::assets`].
pub fn builtin_assets() -> &'static [(&'static str, &'static str, &'static str)] {
    builtin::ASSETS
}

/// Where an input comes from; later layers override earlier ones by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    Builtin,
    Workspace,
    CommandLine,
}

/// One YAML file to load.
#[derive(Debug, Clone)]
pub struct Input {
    /// How errors name the file: a path, or `<built-in>/plan/file.yaml`.
    pub label: String,
    pub text: String,
    pub layer: Layer,
}

impl Input {
    fn is_plan(&self) -> bool {
        self.label.rsplit(['/', '\\']).next() == Some("plan.yaml")
    }
}

/// An agent blueprint as loaded, with the plan it resolved to.
#[derive(Debug, Clone)]
pub struct Agent {
    pub spec: Blueprint,
    /// The plan this agent belongs to (its `plan:` key, or the workspace plan).
    pub plan: String,
    /// The file it came from.
    pub source: String,
    /// The YAML text as written.
    pub text: String,
    pub layer: Layer,
}

impl Agent {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn key(&self) -> String {
        self.spec.name.to_lowercase()
    }
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub plans: Vec<Plan>,
    /// Sorted by plan, then phase order, then name.
    pub agents: Vec<Agent>,
    default_plan: String,
}

impl Catalog {
    /// The built-in catalog alone.
    pub fn builtin() -> Result<Catalog> {
        Self::assemble(builtin_inputs(), &Config::default(), None)
    }

    /// The catalog of a workspace: built-ins, its blueprint folder and `nova.yaml`.
    pub fn load(ws: &Workspace) -> Result<Catalog> {
        Self::load_with(ws, &[])
    }

    /// The workspace's catalog with the files (or folders) in `extra` laid on top.
    pub fn load_with(ws: &Workspace, extra: &[PathBuf]) -> Result<Catalog> {
        let mut inputs = builtin_inputs();
        let dir = ws.blueprint_dir();
        if dir.is_dir() {
            inputs.extend(read_inputs(&dir, Layer::Workspace)?);
        }
        for path in extra {
            inputs.extend(read_inputs(path, Layer::CommandLine)?);
        }
        let config_label = ws
            .config_file
            .as_ref()
            .map(|p| (p.display().to_string(), read_text(p)));
        Self::assemble(inputs, &ws.config, config_label)
    }

    /// Build and check a catalog from inputs; `config_file` is `nova.yaml`'s
    /// label and text, for locating its errors.
    pub fn assemble(
        inputs: Vec<Input>,
        config: &Config,
        config_file: Option<(String, String)>,
    ) -> Result<Catalog> {
        let mut diags = Vec::new();
        let (config_label, config_text) =
            config_file.unwrap_or_else(|| ("nova.yaml".into(), String::new()));

        // Parse every input; a file that does not parse is reported and left out.
        let mut plan_inputs: Vec<(PlanSpec, String, String, Layer)> = Vec::new();
        let mut blueprints: Vec<(Blueprint, Input)> = Vec::new();
        for input in inputs {
            if input.is_plan() {
                match yaml::parse::<PlanSpec>(&input.label, &input.text) {
                    Ok(spec) => plan_inputs.push((spec, input.label, input.text, input.layer)),
                    Err(d) => diags.push(d),
                }
            } else {
                match yaml::parse::<Blueprint>(&input.label, &input.text) {
                    Ok(spec) => blueprints.push((spec, input)),
                    Err(d) => diags.push(d),
                }
            }
        }
        for spec in &config.plans {
            plan_inputs.push((
                spec.clone(),
                config_label.clone(),
                config_text.clone(),
                Layer::Workspace,
            ));
        }

        let mut plans = merge_plans(plan_inputs, &mut diags);
        let needs_workspace_plan =
            !config.phases.is_empty() || blueprints.iter().any(|(b, _)| b.plan.is_none());
        if needs_workspace_plan
            && !plans
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(WORKSPACE_PLAN))
        {
            let phases = if config.phases.is_empty() {
                plans
                    .iter()
                    .find(|p| p.name == GENERIC_PHASES_PLAN)
                    .map(|p| p.phases.clone())
                    .unwrap_or_default()
            } else {
                config.phases.clone()
            };
            let plan = Plan {
                name: WORKSPACE_PLAN.into(),
                description: "The workspace's own agents (blueprints without a `plan:` key)."
                    .into(),
                phases,
                source: config_label.clone(),
            };
            diags.extend(validate::plan(&plan, &config_text));
            plans.push(plan);
        }

        let agents = merge_agents(blueprints, &mut diags);
        let mut agents: Vec<Agent> = agents
            .into_iter()
            .map(|(spec, input)| Agent {
                plan: spec.plan.clone().unwrap_or_else(|| WORKSPACE_PLAN.into()),
                spec,
                source: input.label,
                text: input.text,
                layer: input.layer,
            })
            .collect();
        diags.extend(validate::agents(&agents, &plans));

        let default_plan = config.plan.clone().unwrap_or_else(|| DEFAULT_PLAN.into());
        if !plans
            .iter()
            .any(|p| p.name.eq_ignore_ascii_case(&default_plan))
        {
            diags.push(
                Diagnostic::new(
                    &config_label,
                    format!(
                        "unknown plan `{default_plan}`; known plans: {}",
                        plan_names(&plans)
                    ),
                )
                .at_line(yaml::key_line(&config_text, "plan"))
                .field("plan"),
            );
        }
        if !diags.is_empty() {
            return Err(Error::Invalid(Diagnostics(diags)));
        }

        let order = |a: &Agent| {
            let plan = plans
                .iter()
                .position(|p| p.name.eq_ignore_ascii_case(&a.plan))
                .unwrap_or(usize::MAX);
            let phase = plans
                .get(plan)
                .and_then(|p| p.phase_index(&a.spec.phase))
                .unwrap_or(usize::MAX);
            (plan, phase, a.key())
        };
        agents.sort_by_cached_key(order);
        Ok(Catalog {
            plans,
            agents,
            default_plan,
        })
    }

    /// The plan commands use when none is named.
    pub fn default_plan(&self) -> &str {
        &self.default_plan
    }

    /// A plan by name (case-insensitive); an unknown name lists the known ones.
    pub fn plan(&self, name: &str) -> Result<&Plan> {
        self.plans
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown plan `{name}`; known plans: {}",
                    plan_names(&self.plans)
                ))
            })
    }

    pub fn agents_in<'a>(&'a self, plan: &'a str) -> impl Iterator<Item = &'a Agent> + 'a {
        self.agents
            .iter()
            .filter(move |a| a.plan.eq_ignore_ascii_case(plan))
    }

    /// Find an agent by name or by role, case-insensitively, among `candidates`
    /// (all agents when `None`). An unknown name lists the known agents.
    pub fn find_agent<'a>(&'a self, query: &str, plan: Option<&'a str>) -> Result<&'a Agent> {
        let pool: Vec<&Agent> = match plan {
            Some(plan) => self.agents_in(plan).collect(),
            None => self.agents.iter().collect(),
        };
        if let Some(agent) = pool.iter().find(|a| a.name().eq_ignore_ascii_case(query)) {
            return Ok(agent);
        }
        let by_role: Vec<&&Agent> = pool
            .iter()
            .filter(|a| a.spec.role.eq_ignore_ascii_case(query))
            .collect();
        match by_role.as_slice() {
            [one] => Ok(one),
            [] => {
                let known: Vec<String> = pool
                    .iter()
                    .map(|a| format!("{} ({})", a.name(), a.spec.role))
                    .collect();
                let scope = plan.map(|p| format!(" in plan `{p}`")).unwrap_or_default();
                Err(Error::usage(format!(
                    "unknown agent `{query}`{scope}; known agents: {}",
                    known.join(", ")
                )))
            }
            many => {
                let names: Vec<&str> = many.iter().map(|a| a.name()).collect();
                Err(Error::usage(format!(
                    "role `{query}` matches several agents ({}); name one",
                    names.join(", ")
                )))
            }
        }
    }
}

pub fn plan_names(plans: &[Plan]) -> String {
    plans
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn builtin_inputs() -> Vec<Input> {
    builtin::FILES
        .iter()
        .map(|(path, text)| Input {
            label: format!("<built-in>/{path}"),
            text: (*text).to_string(),
            layer: Layer::Builtin,
        })
        .collect()
}

/// nova.yaml's text, only to place its errors (it was read and checked before).
fn read_text(path: &Path) -> String {
    crate::files::read_text(path, crate::files::limits::CONFIG).unwrap_or_default()
}

/// Read one YAML file, or every `*.yaml`/`*.yml` file under a folder (sorted).
pub fn read_inputs(path: &Path, layer: Layer) -> Result<Vec<Input>> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect_yaml(path, &mut files)?;
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    files
        .into_iter()
        .map(|file| {
            let text = crate::files::read_text(&file, crate::files::limits::BLUEPRINT)?;
            Ok(Input {
                label: file.display().to_string(),
                text,
                layer,
            })
        })
        .collect()
}

fn collect_yaml(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            collect_yaml(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    Ok(())
}

/// Keep one plan per name: a later layer replaces an earlier one in place.
fn merge_plans(
    inputs: Vec<(PlanSpec, String, String, Layer)>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Plan> {
    let mut plans: Vec<(Plan, Layer)> = Vec::new();
    for (spec, label, text, layer) in inputs {
        let plan = Plan {
            name: spec.name,
            description: spec.description,
            phases: spec.phases,
            source: label.clone(),
        };
        diags.extend(validate::plan(&plan, &text));
        match plans
            .iter_mut()
            .find(|(p, _)| p.name.eq_ignore_ascii_case(&plan.name))
        {
            Some((existing, l)) if *l == layer => diags.push(
                Diagnostic::new(
                    &label,
                    format!(
                        "plan `{}` is already declared in {}",
                        plan.name, existing.source
                    ),
                )
                .at_line(yaml::key_value_line(&text, "name", &plan.name, 0))
                .field("name"),
            ),
            Some(slot) => *slot = (plan, layer),
            None => plans.push((plan, layer)),
        }
    }
    plans.into_iter().map(|(p, _)| p).collect()
}

/// Keep one blueprint per name: a later layer overrides, the same layer clashes.
fn merge_agents(
    blueprints: Vec<(Blueprint, Input)>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Blueprint, Input)> {
    let mut kept: Vec<(Blueprint, Input)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (spec, input) in blueprints {
        let key = spec.name.to_lowercase();
        match index.get(&key) {
            Some(&i) if kept[i].1.layer == input.layer => diags.push(
                Diagnostic::new(
                    &input.label,
                    format!(
                        "agent `{}` is already defined in {}",
                        spec.name, kept[i].1.label
                    ),
                )
                .at_line(yaml::key_line(&input.text, "name"))
                .field("name"),
            ),
            Some(&i) => {
                // An override without `plan:` takes the place of the one it
                // replaces, so the agents that depend on it still find it.
                let mut spec = spec;
                if spec.plan.is_none() {
                    spec.plan = kept[i].0.plan.clone();
                }
                kept[i] = (spec, input);
            }
            None => {
                index.insert(key, kept.len());
                kept.push((spec, input));
            }
        }
    }
    kept
}
