//! `nova setup`: prepare the workspace, check the host, and plan (or, with
//! `--apply`, carry out) package installs, firewall ports and service users.
//!
//! Without `--apply` nothing on the host changes and the output says the
//! commands are a plan. With it, each privileged step asks the policy engine
//! first (`install`, `configure-firewall`, `create-user`), streams the tool's
//! output, and is recorded in the audit log. Every step is idempotent: what
//! is already there is left alone, so a second run changes nothing.

pub mod catalog;
pub mod checks;
pub mod host;
pub mod packages;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Serialize;
use serde_json::json;

use crate::audit::Event;
use crate::audit::{operator, workspace_log};
use crate::cli::SetupArgs;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::workspace::{Workspace, ensure_dir};
use checks::{Check, Status};
use packages::{Manager, State, Wanted};

const NOVA_YAML_TEMPLATE: &str = r#"# nova.yaml: this workspace's settings. Every key is optional.
#
# plan: spark-sophia          # the plan commands use when none is named
# execution_mode: sequential  # or parallel, for nova orchestrate
# store: sqlite:.nova/nova.db # or redis://HOST:PORT/DB
# opa_url: http://127.0.0.1:8181
# service_user: nova-agent    # who agents' tasks run as when nova runs as root
# packages:                   # minimum versions of what nova setup installs
#   docker: ">=24"
#
# setup:                      # what nova setup checks and prepares
#   min_disk_free: 5GiB
#   min_memory: 2GiB
#   min_gpus: 0
#   min_driver: "535"
#   resolve: [github.com]
#   endpoints: [registry.example.com:443]
#   open_ports: [22/tcp, 6682/tcp]
#   users: [nova-agent]
#
# monitor:                    # nova monitor's alert thresholds
#   cpu_percent: 90
#   cpu_for: 1m
#   memory_percent: 95
#   disk_free_percent: 10
#   gpu_temperature: 85
#   webhook: https://hooks.example.com/nova
"#;

#[derive(Debug, Serialize)]
struct Step {
    what: String,
    command: Vec<String>,
    /// `planned`, `done`, `failed`, `denied` or `already` (nothing to do).
    outcome: String,
}

#[derive(Debug, Serialize)]
struct Report {
    workspace: PathBuf,
    created: Vec<String>,
    checks: Vec<Check>,
    package_manager: Option<&'static str>,
    packages: Vec<Wanted>,
    steps: Vec<Step>,
    applied: bool,
    report: PathBuf,
}

/// Create what is missing of the workspace; what was created.
fn prepare_workspace(ws: &Workspace) -> Result<Vec<String>> {
    let mut created = Vec::new();
    if !ws.home.exists() {
        ws.ensure_home()?;
        created.push(ws.home.display().to_string());
    }
    for dir in [
        ws.home.join("logs"),
        ws.home.join("runs"),
        ws.home.join("reports"),
    ] {
        if !dir.exists() {
            ensure_dir(&dir)?;
            created.push(dir.display().to_string());
        }
    }
    let db = ws.db_path();
    let existed = db.exists();
    crate::store::Store::open(&db)?;
    if !existed {
        created.push(db.display().to_string());
    }
    let yaml = ws.root.join(crate::config::FILE_NAME);
    if !yaml.exists() {
        std::fs::write(&yaml, NOVA_YAML_TEMPLATE).map_err(|e| Error::io(&yaml, e))?;
        created.push(yaml.display().to_string());
    }
    Ok(created)
}

/// Run `argv`, its output going to stderr line for line; whether it succeeded.
fn stream(argv: &[String]) -> std::result::Result<(), String> {
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| e.to_string())?,
        ))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} exited with {status}", argv.join(" ")))
    }
}

use std::os::fd::AsFd;

pub fn run(ws: &Workspace, out: &Output, args: &SetupArgs) -> Result<()> {
    let created = prepare_workspace(ws)?;
    let checks = if args.packages_only {
        Vec::new()
    } else {
        checks::run_all(&ws.config.setup, &ws.home)
    };

    let manager = Manager::detect();
    let catalog = catalog::Catalog::new(&ws.config.setup.catalog);
    let resolve = |m: Manager| packages::resolve(m, &args.packages, &catalog, &ws.config.packages);
    let wanted = if args.packages.is_empty() {
        Vec::new()
    } else {
        let Some(m) = manager else {
            return Err(Error::Failed(format!(
                "no supported package manager found (looked for {})",
                Manager::ALL
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        resolve(m)?
    };
    let policy = crate::policy::open(ws)?;
    let rt = crate::runtime::runtime()?;
    let audit = rt.block_on(workspace_log(ws, &args.store.choice(), true))?;
    let user = operator();
    let (agent, role) = acting_for(&user);
    let authorize = |action: &str, resource: &str| -> Result<()> {
        rt.block_on(policy.authorize(
            audit.as_ref(),
            &crate::policy::input(&agent, &role, action, resource, json!({"apply": true})),
        ))
        .map(|_| ())
    };
    let record = |event: Event| {
        if let Some(log) = &audit {
            rt.block_on(crate::audit::record(log, event));
        }
    };

    let mut steps = Vec::new();
    let mut failures = Vec::new();
    // Packages that cannot be had as asked: nothing is proposed for them.
    for w in &wanted {
        match w.state {
            State::Conflict => failures.push(format!("{}: {}", w.requested, w.detail)),
            State::TooOld => failures.push(format!("{} is too old: {}", w.requested, w.detail)),
            _ => {}
        }
    }
    let missing = packages::missing(&wanted);
    if let Some(m) = manager
        && !missing.is_empty()
    {
        let commands = m.install_commands(&missing);
        if args.apply && failures.is_empty() {
            authorize("install", &missing.join(" "))?;
            let mut outcome = "done".to_string();
            for c in &commands {
                if let Err(e) = stream(c) {
                    failures.push(e.clone());
                    outcome = "failed".into();
                    break;
                }
            }
            record(
                Event::new(&user, "package.install", missing.join(" "), outcome.clone())
                    .details(json!({"manager": m.name(), "commands": commands})),
            );
            for c in commands {
                steps.push(Step {
                    what: format!("install {}", missing.join(" ")),
                    command: c,
                    outcome: outcome.clone(),
                });
            }
        } else {
            // With --apply and a conflict or an old install among the
            // requests, nothing is installed: the plan is shown, not run.
            let outcome = if args.apply {
                "not run: a requested package conflicts or is too old"
            } else {
                "planned"
            };
            for c in commands {
                steps.push(Step {
                    what: format!("install {}", missing.join(" ")),
                    command: c,
                    outcome: outcome.into(),
                });
            }
        }
    }
    // Firewall ports and service users.
    let (ports, users) = if args.packages_only {
        (&[][..], &[][..])
    } else {
        (&ws.config.setup.open_ports[..], &ws.config.setup.users[..])
    };
    for step in host::firewall_steps(ports)? {
        steps.push(apply_step(
            step,
            args.apply,
            "configure-firewall",
            "firewall.configure",
            &authorize,
            &record,
            &user,
            &mut failures,
        )?);
    }
    let service_user = (!args.packages_only)
        .then(|| {
            std::env::var(crate::orchestrate::privilege::SERVICE_USER_VAR)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| ws.config.service_user.clone())
        })
        .flatten();
    for step in host::user_steps(users, service_user.as_deref())? {
        steps.push(apply_step(
            step,
            args.apply,
            "create-user",
            "user.create",
            &authorize,
            &record,
            &user,
            &mut failures,
        )?);
    }
    // What is installed now (after --apply).
    let wanted = match manager {
        Some(m) if args.apply && !args.packages.is_empty() => resolve(m)?,
        _ => wanted,
    };

    let failed_checks: Vec<String> = checks
        .iter()
        .filter(|c| c.required && c.status == Status::Fail)
        .map(|c| format!("{} ({})", c.name, c.detail))
        .collect();
    record(
        Event::new(&user, "setup.check", "host", if failed_checks.is_empty() { "ok" } else { "failed" }).details(json!({
            "checks": checks.iter().map(|c| json!({"name": c.name, "status": c.status.as_str()})).collect::<Vec<_>>(),
            "packages": args.packages,
            "apply": args.apply,
        })),
    );

    let report_path = ws.home.join("reports").join("host.md");
    let report = Report {
        workspace: ws.home.clone(),
        created,
        checks,
        package_manager: manager.map(|m| m.name()),
        packages: wanted,
        steps,
        applied: args.apply,
        report: report_path.clone(),
    };
    std::fs::write(&report_path, markdown(&report)).map_err(|e| Error::io(&report_path, e))?;
    print(out, &report)?;
    if !failures.is_empty() {
        return Err(Error::Failed(failures.join("; ")));
    }
    if !failed_checks.is_empty() {
        return Err(Error::Failed(format!(
            "required checks failed: {}",
            failed_checks.join("; ")
        )));
    }
    Ok(())
}

/// Who asks the policy engine: the agent whose task runs `nova setup`
/// (a blueprint's fix, through `NOVA_AGENT` and `NOVA_ROLE`), else the
/// operator at the terminal.
fn acting_for(operator: &str) -> (String, String) {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("NOVA_AGENT"), var("NOVA_ROLE")) {
        (Some(agent), Some(role)) => (agent, role),
        _ => (
            operator.trim_start_matches("operator:").to_string(),
            "operator".to_string(),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn apply_step(
    step: host::HostStep,
    apply: bool,
    action: &str,
    audit_action: &str,
    authorize: &dyn Fn(&str, &str) -> Result<()>,
    record: &dyn Fn(Event),
    user: &str,
    failures: &mut Vec<String>,
) -> Result<Step> {
    if step.already {
        return Ok(Step {
            what: step.what,
            command: step.command,
            outcome: "already".into(),
        });
    }
    if step.command.is_empty() {
        return Ok(Step {
            what: step.what,
            command: step.command,
            outcome: "cannot: no tool for it on this host".into(),
        });
    }
    if !apply {
        return Ok(Step {
            what: step.what,
            command: step.command,
            outcome: "planned".into(),
        });
    }
    authorize(action, &step.resource)?;
    let outcome = match stream(&step.command) {
        Ok(()) => "done".to_string(),
        Err(e) => {
            failures.push(e);
            "failed".to_string()
        }
    };
    record(
        Event::new(user, audit_action, step.resource.clone(), outcome.clone())
            .details(json!({"command": step.command})),
    );
    Ok(Step {
        what: step.what,
        command: step.command,
        outcome,
    })
}

fn markdown(r: &Report) -> String {
    let mut md = format!(
        "# Host report\n\n- workspace: {}\n- generated: {}\n- package manager: {}\n\n## Checks\n\n| check | status | detail |\n|---|---|---|\n",
        r.workspace.display(),
        crate::clock::rfc3339(crate::clock::now_ms()),
        r.package_manager.unwrap_or("none found")
    );
    for c in &r.checks {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            c.name,
            c.status.as_str(),
            c.detail.replace('|', "\\|")
        ));
    }
    md.push_str("\n## Packages\n\n| requested | state | detail |\n|---|---|---|\n");
    for w in &r.packages {
        md.push_str(&format!(
            "| {} | {} | {} |\n",
            w.requested,
            w.state.as_str(),
            w.detail.replace('|', "\\|")
        ));
    }
    md.push_str(&format!(
        "\n## {}\n\n",
        if r.applied {
            "Changes"
        } else {
            "Plan (nothing was changed; --apply runs it)"
        }
    ));
    if r.steps.is_empty() {
        md.push_str("Nothing to do.\n");
    }
    for s in &r.steps {
        md.push_str(&format!(
            "- {}: `{}` ({})\n",
            s.what,
            s.command.join(" "),
            s.outcome
        ));
    }
    md
}

fn print(out: &Output, r: &Report) -> Result<()> {
    if out.json {
        return out.json(r);
    }
    let mut text = String::new();
    if !r.created.is_empty() {
        text.push_str(&format!("created: {}\n\n", r.created.join(", ")));
    }
    let mut table = out.table(&["check", "status", "detail"]);
    if !r.checks.is_empty() {
        for c in &r.checks {
            let status = if c.required && c.status == Status::Fail {
                "FAIL".to_string()
            } else {
                c.status.as_str().to_string()
            };
            table.add_row(vec![c.name.clone(), status, c.detail.clone()]);
        }
        text.push_str(&table.trim_fmt());
        text.push('\n');
    }
    if !r.packages.is_empty() {
        let mut t = out.table(&["requested", "state", "detail"]);
        for w in &r.packages {
            t.add_row(vec![
                w.requested.clone(),
                w.state.as_str().to_string(),
                w.detail.clone(),
            ]);
        }
        text.push_str(&format!(
            "\npackages ({}):\n{}\n",
            r.package_manager.unwrap_or("?"),
            t.trim_fmt()
        ));
    }
    let pending: Vec<&Step> = r.steps.iter().filter(|s| s.outcome != "already").collect();
    if pending.is_empty() {
        text.push_str("\nnothing to install or change\n");
    } else if r.applied {
        text.push_str("\nchanges:\n");
        for s in pending {
            text.push_str(&format!("  {} ({})\n", s.command.join(" "), s.outcome));
        }
    } else {
        text.push_str("\nplan (nothing was changed; --apply runs these):\n");
        for s in pending {
            text.push_str(&format!("  {}\n", s.command.join(" ")));
        }
    }
    text.push_str(&format!("\nreport: {}\n", r.report.display()));
    out.text(&text)
}
