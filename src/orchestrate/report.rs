//! The run report: Markdown in `$NOVA_HOME/reports/`, and the summary printed
//! at the end of a run.

use std::fmt::Write;
use std::path::Path;

use super::AgentRun;
use super::runs::{Message, RunRow, TaskRow};
use crate::clock::rfc3339;
use crate::kpi::Snapshot;
use crate::kpi::human_ns;
use crate::output::Output;

fn duration_ms(t: &TaskRow) -> String {
    match (t.started_at, t.finished_at) {
        (Some(a), Some(b)) => human_ns(((b - a).max(0) as u64) * 1_000_000),
        _ => "-".into(),
    }
}

fn memory(t: &TaskRow) -> String {
    match t.peak_rss {
        Some(0) | None => "-".into(),
        Some(b) => bytesize::ByteSize(b).to_string(),
    }
}

fn gpu(t: &TaskRow) -> String {
    match (t.gpu_memory, t.gpu_util) {
        (None, _) => "-".into(),
        (Some(m), Some(u)) => format!("{}, {u:.0}%", bytesize::ByteSize(m)),
        (Some(m), None) => bytesize::ByteSize(m).to_string(),
    }
}

/// One task's row of a phase's table.
fn task_line(md: &mut String, agent: &str, outcome: &str, t: &TaskRow) {
    let _ = writeln!(
        md,
        "| {agent} | {outcome} | {} | {} | {} | {} | {} | {} | {} |",
        t.task,
        t.status,
        t.attempts,
        duration_ms(t),
        memory(t),
        gpu(t),
        t.exit_code.map_or("-".into(), |c| c.to_string())
    );
}

/// Markdown table cells must not break the table.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(
    run: Option<&RunRow>,
    plan: &str,
    agents: &[AgentRun],
    tasks: &[TaskRow],
    messages: &[Message],
    kpis: &Snapshot,
) -> String {
    let mut md = String::new();
    let id = run.map_or("?", |r| r.id.as_str());
    let status = run.map_or("?", |r| r.status.as_str());
    let _ = writeln!(md, "# Run {id}: {status}\n");
    if let Some(r) = run {
        let _ = writeln!(
            md,
            "- plan: {plan}\n- mode: {}{}\n- started: {}\n- finished: {}\n",
            r.mode,
            if r.apply {
                ", with --apply"
            } else {
                ", checks only"
            },
            rfc3339(r.started_at),
            r.finished_at.map(rfc3339).unwrap_or_else(|| "-".into())
        );
    }
    let mut phases: Vec<&str> = Vec::new();
    for a in agents {
        if !phases.contains(&a.phase.as_str()) {
            phases.push(&a.phase);
        }
    }
    for phase in phases {
        let _ = writeln!(md, "## Phase {phase}\n");
        let _ = writeln!(
            md,
            "| agent | outcome | task | status | attempts | duration | peak memory | GPU memory, use | exit code |\n|---|---|---|---|---|---|---|---|---|"
        );
        for a in agents.iter().filter(|a| a.phase == phase) {
            let outcome = a.outcome.map_or("-", |o| o.as_str());
            let rows: Vec<&TaskRow> = tasks
                .iter()
                .filter(|t| t.agent.eq_ignore_ascii_case(&a.name))
                .collect();
            if rows.is_empty() && a.tasks.is_empty() {
                let _ = writeln!(md, "| {} | {outcome} | - | - | - | - | - | - | - |", a.name);
            }
            // In the agent's order, each task's row, or "not run" for one
            // that never started (after one that did not finish, or in an
            // agent that never started); then rows of tasks the blueprint no
            // longer has (a run resumed after it changed).
            let known = |t: &&TaskRow| a.tasks.iter().any(|spec| spec.id == t.task);
            for spec in &a.tasks {
                match rows.iter().find(|t| t.task == spec.id) {
                    Some(t) => task_line(&mut md, &a.name, outcome, t),
                    None => {
                        let _ = writeln!(
                            md,
                            "| {} | {outcome} | {} | not run | 0 | - | - | - | - |",
                            a.name, spec.id
                        );
                    }
                }
            }
            for t in rows.iter().filter(|t| !known(t)) {
                task_line(&mut md, &a.name, outcome, t);
            }
        }
        md.push('\n');
    }

    let failures: Vec<&TaskRow> = tasks
        .iter()
        .filter(|t| t.status == "failed" || t.status == "denied")
        .collect();
    let _ = writeln!(md, "## Failures\n");
    if failures.is_empty() {
        md.push_str("None.\n\n");
    }
    for t in failures {
        let _ = writeln!(
            md,
            "### {}/{}: {}\n\n{}\n",
            t.agent,
            t.task,
            t.status,
            cell(&t.detail)
        );
        if !t.log_tail.is_empty() {
            let _ = writeln!(md, "```\n{}\n```\n", t.log_tail.join("\n"));
        }
    }

    let denials: Vec<&TaskRow> = tasks.iter().filter(|t| t.status == "denied").collect();
    let _ = writeln!(md, "## Policy denials\n");
    if denials.is_empty() {
        md.push_str("None.\n\n");
    }
    for t in denials {
        let _ = writeln!(md, "- {}/{}: {}", t.agent, t.task, cell(&t.detail));
    }
    if !md.ends_with("\n\n") {
        md.push('\n');
    }

    let _ = writeln!(
        md,
        "## Messages\n\n| # | time | kind | from | body |\n|---|---|---|---|---|"
    );
    for m in messages {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            m.seq,
            rfc3339(m.at),
            m.kind,
            if m.agent.is_empty() { "-" } else { &m.agent },
            cell(&m.body.to_string())
        );
    }

    let _ = writeln!(
        md,
        "\n## KPIs\n\n| operation | count | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|"
    );
    for h in &kpis.histograms {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            h.name,
            h.count,
            human_ns(h.p50_ns),
            human_ns(h.p90_ns),
            human_ns(h.p99_ns),
            human_ns(h.max_ns)
        );
    }
    md
}

pub fn summary(
    out: &Output,
    id: &str,
    status: &str,
    agents: &[AgentRun],
    tasks: &[TaskRow],
    report: &Path,
) -> String {
    let mut table = out.table(&["phase", "agent", "outcome", "tasks done", "attempts"]);
    for a in agents {
        let rows: Vec<&TaskRow> = tasks
            .iter()
            .filter(|t| t.agent.eq_ignore_ascii_case(&a.name))
            .collect();
        // As the roadmap counts: a skipped task (not for this host) is not done.
        let count = |status: &str| rows.iter().filter(|t| t.status == status).count();
        let (done, skipped) = (count("done"), count("skipped"));
        let attempts: u32 = rows.iter().map(|t| t.attempts).sum();
        table.add_row(vec![
            a.phase.clone(),
            a.name.clone(),
            a.outcome.map_or("-", |o| o.as_str()).to_string(),
            match skipped {
                0 => format!("{done}/{}", a.tasks.len()),
                n => format!("{done}/{} ({n} skipped)", a.tasks.len()),
            },
            attempts.to_string(),
        ]);
    }
    format!(
        "{}\nrun {id}: {status}; report {}\n",
        table.trim_fmt(),
        report.display()
    )
}
