//! `nova runs prune`: remove old runs from the workspace.
//!
//! Nothing in a workspace shrinks by itself: every run leaves its records
//! (`runs`, `run_tasks`, `run_messages`), the queue tasks of its own queue
//! (each with its whole job; in Redis when that is the store), its folder of logs and inboxes under
//! `runs/<id>/`, and its Markdown report. Prune removes all of that for the
//! runs it picks, the database part in one transaction, and records what it
//! removed in the audit log. The audit log itself and the tasks' last known
//! states (`nova tasks`) are kept. Runs still marked `running` are never
//! picked: one may be in progress, and `--resume` finishes the others.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::json;

use super::runs::local_queue;
use super::runs::{self, RunRow};
use crate::audit::Event;
use crate::audit::{operator, workspace_log};
use crate::cli::RunsPruneArgs;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::queue::backend::QueueBackend;
use crate::queue::model::{Status, ms_ago};
use crate::queue::open::open_queue;
use crate::store_url::StoreUrl;
use crate::workspace::Workspace;

#[derive(Debug, Serialize)]
struct Pruned {
    run: String,
    plan: String,
    status: String,
    started_at: i64,
    task_records: u64,
    messages: u64,
    queue_tasks: u64,
    /// Bytes of logs, inboxes and report on disk.
    file_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    dry_run: bool,
    pruned: Vec<Pruned>,
    kept: usize,
    /// Runs left alone because they are marked running.
    running: usize,
}

/// The runs to remove, oldest first: outside the newest `keep` and finished
/// before `finished_before` (ms; both must hold when both are given).
fn pick(all: &[RunRow], keep: Option<u32>, finished_before: Option<i64>) -> Vec<&RunRow> {
    let newest_kept = keep.map_or(0, |k| all.len().saturating_sub(k as usize));
    all.iter()
        .enumerate()
        .filter(|(i, r)| {
            let outside_keep = keep.is_none() || *i < newest_kept;
            let old_enough =
                finished_before.is_none_or(|t| r.finished_at.unwrap_or(r.started_at) <= t);
            r.status != "running" && outside_keep && old_enough
        })
        .map(|(_, r)| r)
        .collect()
}

fn count(conn: &Connection, sql: &str, key: &str) -> Result<u64> {
    conn.query_row(sql, [key], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|e| Error::Failed(format!("cannot read runs: {e}")))
}

fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
        .unwrap_or(0)
}

/// What a run leaves on disk: its folder and its report.
fn files_of(ws: &Workspace, run: &RunRow) -> Vec<PathBuf> {
    let mut files = vec![ws.home.join("runs").join(&run.id)];
    if let Some(report) = &run.report {
        files.push(PathBuf::from(report));
    }
    files
}

fn delete_rows(conn: &Connection, ids: &[String]) -> rusqlite::Result<()> {
    for id in ids {
        conn.execute("DELETE FROM run_tasks WHERE run_id = ?1", [id])?;
        conn.execute("DELETE FROM run_messages WHERE run_id = ?1", [id])?;
        conn.execute(
            "DELETE FROM queue_tasks WHERE queue = ?1",
            params![local_queue(id)],
        )?;
        conn.execute("DELETE FROM runs WHERE id = ?1", [id])?;
    }
    Ok(())
}

pub fn prune(ws: &Workspace, out: &Output, args: &RunsPruneArgs) -> Result<()> {
    if args.keep.is_none() && args.older_than.is_none() {
        return Err(Error::usage(
            "nova runs prune: say which runs go, with --keep N (the newest N stay) and/or --older-than DURATION",
        ));
    }
    let Some(store) = ws.open_store_read()?.filter(|s| s.version() >= 4) else {
        return out.text("no runs yet\n");
    };
    let conn = store.connection();
    let all = runs::runs(conn).map_err(|e| Error::Failed(format!("cannot read runs: {e}")))?;
    let chosen = pick(&all, args.keep, args.older_than.map(ms_ago));
    let mut pruned = Vec::new();
    for r in &chosen {
        pruned.push(Pruned {
            run: r.id.clone(),
            plan: r.plan.clone(),
            status: r.status.clone(),
            started_at: r.started_at,
            task_records: count(
                conn,
                "SELECT COUNT(*) FROM run_tasks WHERE run_id = ?1",
                &r.id,
            )?,
            messages: count(
                conn,
                "SELECT COUNT(*) FROM run_messages WHERE run_id = ?1",
                &r.id,
            )?,
            queue_tasks: count(
                conn,
                "SELECT COUNT(*) FROM queue_tasks WHERE queue = ?1",
                &local_queue(&r.id),
            )?,
            file_bytes: files_of(ws, r).iter().map(|p| size_of(p)).sum(),
        });
    }
    let mut report = Report {
        dry_run: args.dry_run,
        kept: all.len() - chosen.len(),
        running: all.iter().filter(|r| r.status == "running").count(),
        pruned,
    };
    drop(store);
    let rt = crate::runtime::runtime()?;
    if let StoreUrl::Redis(_) = StoreUrl::resolve(ws, &args.store.choice())?
        && !chosen.is_empty()
    {
        rt.block_on(redis_queue_tasks(&args.store, ws, &mut report))?;
    }

    if !args.dry_run && !chosen.is_empty() {
        let ids: Vec<String> = chosen.iter().map(|r| r.id.clone()).collect();
        let writer = crate::store::writer::Writer::shared(&ws.db_path())?;
        let rows = ids.clone();
        writer
            .write_blocking(
                move |conn| delete_rows(conn, &rows).map_err(|e| e.to_string()),
                |e: String| e,
            )
            .map_err(|e| Error::Failed(format!("cannot prune runs (nothing was removed): {e}")))?;
        for r in &chosen {
            for path in files_of(ws, r) {
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match gone {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove")
                    }
                }
            }
        }
        rt.block_on(async {
            if let Some(log) = workspace_log(ws, &args.store.choice(), true).await? {
                crate::audit::record(
                    &log,
                    Event::new(operator(), "runs.prune", runs_word(ids.len()), "done").details(
                        json!({
                            "runs": ids,
                            "queue_tasks": report.pruned.iter().map(|p| p.queue_tasks).sum::<u64>(),
                            "file_bytes": report.pruned.iter().map(|p| p.file_bytes).sum::<u64>(),
                        }),
                    ),
                )
                .await;
            }
            Ok::<_, Error>(())
        })?;
    }
    print(out, &report)
}

/// With a Redis store the runs' queues live in Redis: count their finished
/// tasks (a dry run) or purge them. Unfinished ones (of an interrupted run)
/// stay, as the queue never deletes a task that has not finished.
async fn redis_queue_tasks(
    store: &crate::cli::StoreArg,
    ws: &Workspace,
    report: &mut Report,
) -> Result<()> {
    let (backend, label) = open_queue(&StoreUrl::resolve(ws, &store.choice())?).await?;
    let failed = |e: crate::queue::backend::QueueError| Error::Failed(format!("{label}: {e}"));
    for p in &mut report.pruned {
        let queue = local_queue(&p.run);
        p.queue_tasks = if report.dry_run {
            backend
                .list(None, Some(queue), 0, None)
                .await
                .map_err(failed)?
                .iter()
                .filter(|t| Status::parse(&t.status).is_some_and(Status::is_final))
                .count() as u64
        } else {
            backend.purge(i64::MAX, Some(queue)).await.map_err(failed)?
        };
    }
    Ok(())
}

fn print(out: &Output, report: &Report) -> Result<()> {
    if out.json {
        return out.json(report);
    }
    if report.pruned.is_empty() {
        return out.text(&format!(
            "nothing to prune ({} kept{})\n",
            runs_word(report.kept),
            running_note(report.running)
        ));
    }
    let mut table = out.table(&[
        "run",
        "plan",
        "status",
        "started",
        "tasks",
        "messages",
        "queue tasks",
        "files",
    ]);
    for p in &report.pruned {
        table.add_row(vec![
            p.run.clone(),
            p.plan.clone(),
            p.status.clone(),
            crate::clock::rfc3339(p.started_at),
            p.task_records.to_string(),
            p.messages.to_string(),
            p.queue_tasks.to_string(),
            bytesize::ByteSize(p.file_bytes).to_string(),
        ]);
    }
    out.print_table(&table)?;
    let bytes: u64 = report.pruned.iter().map(|p| p.file_bytes).sum();
    out.text(&format!(
        "{} {} ({} of files); {} kept{}\n",
        if report.dry_run {
            "dry run, nothing was removed: would prune"
        } else {
            "pruned"
        },
        runs_word(report.pruned.len()),
        bytesize::ByteSize(bytes),
        report.kept,
        running_note(report.running)
    ))
}

fn runs_word(n: usize) -> String {
    format!("{n} run{}", if n == 1 { "" } else { "s" })
}

fn running_note(running: usize) -> String {
    if running == 0 {
        String::new()
    } else {
        format!(", {running} of them marked running and left alone")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, status: &str, started_at: i64) -> RunRow {
        RunRow {
            id: id.into(),
            plan: "p".into(),
            mode: "sequential".into(),
            apply: true,
            status: status.into(),
            started_at,
            finished_at: Some(started_at + 10),
            args: serde_json::Value::Null,
            report: None,
        }
    }

    #[test]
    fn keep_and_age_both_hold_and_running_runs_stay() {
        let all = vec![
            run("a", "done", 1_000),
            run("b", "running", 2_000),
            run("c", "failed", 3_000),
            run("d", "done", 4_000),
        ];
        let ids = |v: Vec<&RunRow>| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(pick(&all, Some(1), None)), ["a", "c"]);
        assert_eq!(ids(pick(&all, Some(0), None)), ["a", "c", "d"]);
        // At 5,000: finished 2,500 ms ago or more, then 1 ms ago or more.
        assert_eq!(ids(pick(&all, None, Some(2_500))), ["a"]);
        assert_eq!(ids(pick(&all, Some(3), Some(4_999))), ["a"]);
        assert!(pick(&all, Some(10), None).is_empty());
    }
}
