//! `nova orchestrate`, `nova runs` and `nova worker`: flags in, the run
//! engine ([`super::run`]) and the stored runs out. A leaf: nothing imports it.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::privilege::Privileges;
use super::run::{RunRequest, hostname, start};
use super::runs;
use super::worker::{self, WorkerConfig};
use crate::audit::workspace_log;
use crate::cli::OrchestrateArgs;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::queue::client;
use crate::workspace::Workspace;

/// `nova orchestrate`.
pub fn run(ws: &Workspace, out: &Output, args: &OrchestrateArgs, verbose: u8) -> Result<()> {
    let mut request = request(args, verbose);
    request.tls = args.tls.load()?;
    start(ws, out, &request)
}

/// What the flags ask the run engine for.
fn request(args: &OrchestrateArgs, verbose: u8) -> RunRequest {
    RunRequest {
        plan: args.select.plan.clone(),
        agents: args.select.agents.clone(),
        only: args.select.only,
        phases: args.phase.clone(),
        mode: args.mode,
        jobs: args.jobs,
        apply: args.apply,
        dry_run: args.dry_run,
        resume: args.resume.clone(),
        keep_going: args.keep_going,
        server: args.server.clone(),
        token_file: args.token_file.clone(),
        tls: Default::default(),
        report: args.report.clone(),
        store: args.store.choice(),
        verbose,
        run_id: args.run_id.clone(),
    }
}

/// `nova runs show RUN --tests`: the QA summary of the run's test results.
fn show_tests(ws: &Workspace, out: &Output, run: &str) -> Result<()> {
    let Some((text, summary)) =
        crate::testreport::run_section(&ws.home.join("runs").join(run), "#")
    else {
        return Err(Error::Failed(format!(
            "run {run} has no test results (its tasks wrote no JUnit XML into $NOVA_RESULTS)"
        )));
    };
    if out.json {
        out.json(&summary)
    } else {
        out.text(&text)
    }
}

/// `nova worker --server URL`: take agents' tasks and run them until stopped.
pub fn worker_command(
    ws: &Workspace,
    out: &Output,
    args: &crate::cli::WorkerArgs,
    verbose: u8,
) -> Result<()> {
    for queue in &args.queues {
        crate::queue::validate::queue_name("--queues", queue).map_err(Error::usage)?;
    }
    let most = Duration::from_millis(crate::queue::service::MAX_LEASE_MS.into());
    if args.lease > most {
        return Err(Error::usage(format!(
            "--lease: {} is longer than the server allows ({})",
            humantime::format_duration(args.lease),
            humantime::format_duration(most)
        )));
    }
    let token = crate::files::read_token(args.token_file.as_deref())?;
    let tls = args.tls.load()?;
    let policy = crate::policy::open(ws)?;
    let privileges = Privileges::resolve(ws.config.service_user.as_deref())?;
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        let audit = workspace_log(ws, &args.store.choice(), true).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut workers = tokio::task::JoinSet::new();
        let gpus = super::gpus::Pool::host().count();
        let queues = if args.queues.is_empty() {
            worker::jobs_queues(gpus)
        } else {
            args.queues.clone()
        };
        for i in 0..args.concurrency {
            // By default only as many slots as GPUs take GPU tasks.
            let slot_queues = if args.queues.is_empty() {
                worker::slot_queues(i, gpus)
            } else {
                queues.clone()
            };
            let client = client::connect_with(&args.server, token.as_deref(), &tls)
                .await
                .map_err(Error::from)?;
            let cfg = Arc::new(WorkerConfig {
                name: format!("{}-{}-{i}", hostname(), std::process::id()),
                home: ws.home.clone(),
                policy: policy.clone(),
                audit: audit.clone(),
                echo: verbose > 0 && !out.quiet,
                queues: slot_queues,
                lease_ms: args.lease.as_millis().clamp(100, u32::MAX as u128) as u32,
                on_change: None,
                pending_audit: Default::default(),
                privileges: privileges.clone(),
                stop_grace: Some(args.grace),
                inboxes: None,
                concurrency: args.concurrency,
            });
            workers.spawn(worker::work(
                crate::queue::handle::QueueHandle::Remote(client),
                cfg,
                stop_rx.clone(),
            ));
        }
        if !out.quiet {
            let gpu_slots = if args.queues.is_empty() && gpus > 0 {
                format!(
                    "; GPU tasks on {} of them",
                    gpus.min(args.concurrency as usize)
                )
            } else {
                String::new()
            };
            eprintln!(
                "nova worker: {} at once from {} (queues {}{gpu_slots})",
                args.concurrency,
                args.server,
                queues.join(", ")
            );
        }
        // Until a signal, or until the server refuses a worker for good.
        let refused = async {
            while let Some(ended) = workers.join_next().await {
                if let Ok(Err(status)) = ended {
                    return status;
                }
            }
            std::future::pending().await
        };
        let refused = tokio::select! {
            _ = crate::runtime::signal() => None,
            status = refused => Some(status),
        };
        let _ = stop_tx.send(true);
        // The grace for running tasks, then time to hand back and ack.
        let drained =
            tokio::time::timeout(args.grace + Duration::from_secs(10), workers.join_all())
                .await
                .is_ok();
        match refused {
            Some(status) => Err(crate::queue::client::grpc_error(status)),
            // Told to stop (systemd, Kubernetes, Ctrl-C): a clean exit once drained.
            None if drained => {
                if !out.quiet {
                    eprintln!("nova worker: stopped");
                }
                Ok(())
            }
            None => Err(Error::Interrupted(
                "nova worker stopped before its tasks were handed back".into(),
            )),
        }
    })
}

/// `nova runs` and `nova runs show RUN`.
/// `nova runs show [RUN]` in a workspace without runs.
fn no_run_to_show(run: Option<&String>) -> Error {
    match run {
        Some(run) => Error::usage(format!("no run {run:?}: there are no runs yet")),
        None => Error::Failed("no runs yet: nova orchestrate starts one".into()),
    }
}

pub fn runs_command(ws: &Workspace, out: &Output, args: &crate::cli::RunsArgs) -> Result<()> {
    let show = match &args.action {
        Some(crate::cli::RunsAction::Prune(prune)) => return super::prune::prune(ws, out, prune),
        Some(crate::cli::RunsAction::Cancel { run }) => {
            let run = super::control::cancel(ws, run)?;
            return if out.json {
                out.json(&json!({"run": run.id, "signalled": true}))
            } else {
                out.text(&format!(
                    "run {} asked to stop; it ends interrupted (nova orchestrate --resume {} finishes it)\n",
                    run.id, run.id
                ))
            };
        }
        Some(crate::cli::RunsAction::Show {
            run,
            messages,
            tests,
        }) => Some((run, *messages, *tests)),
        None => None,
    };
    let Some(store) = ws.open_store_read()?.filter(|s| s.version() >= 4) else {
        if let Some((run, _, _)) = show {
            return Err(no_run_to_show(run.as_ref()));
        }
        return if out.json {
            out.json(&json!([]))
        } else {
            out.text("no runs yet\n")
        };
    };
    let conn = store.connection();
    let failed = |e: rusqlite::Error| Error::Failed(format!("cannot read runs: {e}"));
    match show {
        None => {
            let limit = if args.limit == 0 {
                usize::MAX
            } else {
                args.limit
            };
            let list = runs::newest_runs(conn, limit).map_err(failed)?;
            if out.json {
                return out.json(&list);
            }
            if list.is_empty() {
                return out.text("no runs yet\n");
            }
            let all = runs::count(conn).map_err(failed)?;
            let mut table = out.table(&["run", "plan", "mode", "status", "started", "finished"]);
            for r in &list {
                table.add_row(vec![
                    r.id.clone(),
                    r.plan.clone(),
                    format!("{}{}", r.mode, if r.apply { ", apply" } else { "" }),
                    if super::control::abandoned(r) {
                        format!("{}, process gone", r.status)
                    } else {
                        r.status.clone()
                    },
                    crate::clock::rfc3339(r.started_at),
                    r.finished_at
                        .map(crate::clock::rfc3339)
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            out.print_table(&table)?;
            if all > list.len() {
                out.text(&format!(
                    "the newest {} of {all} runs; --limit 0 lists them all\n",
                    list.len()
                ))?;
            }
            Ok(())
        }
        Some((run, messages, tests)) => {
            let row = match run {
                Some(run) => runs::find_run(conn, run).map_err(failed)?,
                None => runs::newest_runs(conn, 1).map_err(failed)?.pop(),
            };
            let Some(row) = row else {
                return Err(match run {
                    Some(run) => Error::usage(runs::not_found(conn, run)),
                    None => no_run_to_show(None),
                });
            };
            if tests {
                return show_tests(ws, out, &row.id);
            }
            let tasks = runs::tasks(conn, &row.id).map_err(failed)?;
            let hub = runs::messages(conn, &row.id).map_err(failed)?;
            if out.json {
                return out.json(&json!({"run": row, "tasks": tasks, "messages": hub}));
            }
            let abandoned = super::control::abandoned(&row);
            let mut text = format!(
                "run {}: {}{} (plan {}, {}{}), started {}\nreport: {}\n{}\n",
                row.id,
                row.status,
                if abandoned { ", process gone" } else { "" },
                row.plan,
                row.mode,
                if row.apply { ", apply" } else { "" },
                crate::clock::rfc3339(row.started_at),
                row.report.clone().unwrap_or_else(|| "-".into()),
                if abandoned {
                    format!(
                        "its process is gone (killed, or the machine restarted): \
                         nova orchestrate --resume {} finishes it\n",
                        row.id
                    )
                } else {
                    String::new()
                }
            );
            let mut table = out.table(&[
                "phase", "agent", "task", "status", "attempts", "exit", "detail",
            ]);
            for t in &tasks {
                table.add_row(vec![
                    t.phase.clone(),
                    t.agent.clone(),
                    t.task.clone(),
                    t.status.clone(),
                    t.attempts.to_string(),
                    t.exit_code.map_or("-".into(), |c| c.to_string()),
                    t.detail.clone(),
                ]);
            }
            text.push_str(&table.trim_fmt());
            text.push('\n');
            if messages {
                text.push_str("\nmessages:\n");
                for m in &hub {
                    text.push_str(&format!(
                        "  {} {} {}{} {}\n",
                        m.seq,
                        crate::clock::rfc3339(m.at),
                        m.kind,
                        if m.agent.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", m.agent)
                        },
                        m.body
                    ));
                }
            }
            out.text(&text)
        }
    }
}
