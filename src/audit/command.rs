//! `nova audit log|verify|export|controls`, and [`workspace_log`], the audit
//! log every other command writes to.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::controls::CONTROLS;
use super::{AuditLog, Event, Filter, Record};
use super::{operator, workspace_log};
use crate::cli::{AuditAction, AuditArgs, ExportFormat};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::output::Output;
use crate::workspace::Workspace;

fn failed(e: super::AuditError) -> Error {
    Error::Failed(e.to_string())
}

/// `--since`: an RFC 3339 time, or a duration back from now (`2h`, `7d`).
fn parse_since(text: &str) -> Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0));
    }
    if let Ok(d) = humantime::parse_duration(text) {
        return Ok(crate::clock::now_ms() - d.as_millis() as i64);
    }
    Err(Error::usage(format!(
        "--since {text:?}: expected a time (2026-11-24T09:00:00Z) or a duration back from now (2h, 7d)"
    )))
}

pub fn run(ws: &Workspace, out: &Output, args: &AuditArgs) -> Result<()> {
    let since = match &args.action {
        AuditAction::Log { since: Some(s), .. } => Some(parse_since(s)?),
        _ => None,
    };
    // On SQLite the chain is the workspace's, wherever the queue's store is.
    if let crate::store_url::StoreUrl::Sqlite(path) =
        crate::store_url::StoreUrl::resolve(ws, &args.store.choice())?
        && path != ws.db_path()
    {
        eprintln!(
            "note: the audit log is kept in the workspace's database, {}, not in the queue's store {}; --home names another workspace",
            ws.db_path().display(),
            path.display()
        );
    }
    crate::runtime::runtime()?.block_on(async {
        let log = workspace_log(ws, &args.store.choice(), false).await?;
        match &args.action {
            AuditAction::Log { action, limit, .. } => {
                let filter = Filter {
                    action: action.clone(),
                    since,
                    ..Filter::default()
                };
                // The newest that match, read back only as far as they go.
                let mut shown = match &log {
                    Some(log) => log
                        .newest(filter, limit.unwrap_or(usize::MAX))
                        .await
                        .map_err(failed)?,
                    None => Vec::new(),
                };
                shown.reverse();
                print_log(out, &shown)
            }
            AuditAction::Verify { .. } => verify(ws, out, log.as_ref()).await,
            AuditAction::Export { format, output } => {
                let records = match &log {
                    Some(log) => log.records().await.map_err(failed)?,
                    None => Vec::new(),
                };
                export(&records, *format, output.as_deref())?;
                if let Some(log) = &log {
                    super::record(
                        log,
                        Event::new(operator(), "audit.export", "audit log", "ok").details(json!({
                            "records": records.len(),
                            "format": format!("{format:?}").to_lowercase(),
                        })),
                    )
                    .await;
                }
                Ok(())
            }
            AuditAction::Controls => {
                let records = match &log {
                    Some(log) => log.records().await.map_err(failed)?,
                    None => Vec::new(),
                };
                print_controls(out, &records)
            }
        }
    })
}

fn print_log(out: &Output, records: &[Record]) -> Result<()> {
    if out.json {
        return out.json(records);
    }
    if records.is_empty() {
        return out.text("no audit records\n");
    }
    let mut table = out.table(&[
        "seq", "time", "actor", "action", "target", "outcome", "controls",
    ]);
    for r in records {
        table.add_row(vec![
            r.seq.to_string(),
            rfc3339(r.at),
            r.actor.clone(),
            r.action.clone(),
            r.target.clone(),
            r.outcome.clone(),
            r.controls.join(" "),
        ]);
    }
    out.print_table(&table)
}

async fn verify(ws: &Workspace, out: &Output, log: Option<&AuditLog>) -> Result<()> {
    let Some(log) = log else {
        if out.json {
            return out.json(&json!({"records": 0, "holds": true}));
        }
        return out.text(&format!(
            "audit chain holds: no records yet (there is no {})\n",
            ws.db_path().display()
        ));
    };
    let v = log.verify().await.map_err(failed)?;
    let outcome = if v.broken.is_some() { "broken" } else { "ok" };
    super::record(
        log,
        Event::new(operator(), "audit.verify", "audit log", outcome).details(json!({
            "records": v.records,
            "broken_at": v.broken.as_ref().map(|b| b.seq),
            "workspace": ws.home.display().to_string(),
        })),
    )
    .await;
    if out.json {
        out.json(&json!({
            "records": v.records,
            "holds": v.broken.is_none(),
            "head": v.head,
            "broken": v.broken,
        }))?;
    }
    match v.broken {
        None => {
            if !out.json {
                out.text(&format!(
                    "audit chain holds: {} records, head {}\n",
                    v.records,
                    v.head.unwrap_or_default()
                ))?;
            }
            Ok(())
        }
        Some(b) => Err(Error::Failed(format!(
            "audit chain broken at record {}: {}",
            b.seq, b.reason
        ))),
    }
}

fn export(records: &[Record], format: ExportFormat, output: Option<&Path>) -> Result<()> {
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let io = |e: std::io::Error| match output {
        Some(path) => Error::io(path, e),
        None => Error::Io {
            path: "stdout".into(),
            source: e,
        },
    };
    match format {
        ExportFormat::Jsonl => {
            for r in records {
                let line = serde_json::to_string(r).expect("a record serializes");
                writeln!(sink, "{line}").map_err(io)?;
            }
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut sink);
            w.write_record([
                "seq",
                "time",
                "at_ms",
                "actor",
                "action",
                "target",
                "outcome",
                "details",
                "controls",
                "prev_hash",
                "hash",
            ])
            .map_err(|e| io(e.into()))?;
            for r in records {
                w.write_record([
                    r.seq.to_string(),
                    rfc3339(r.at),
                    r.at.to_string(),
                    r.actor.clone(),
                    r.action.clone(),
                    r.target.clone(),
                    r.outcome.clone(),
                    r.details.to_string(),
                    r.controls.join(" "),
                    r.prev_hash.clone(),
                    r.hash.clone(),
                ])
                .map_err(|e| io(e.into()))?;
            }
            w.flush().map_err(io)?;
        }
    }
    sink.flush().map_err(io)
}

fn print_controls(out: &Output, records: &[Record]) -> Result<()> {
    let rows: Vec<_> = CONTROLS
        .iter()
        .map(|c| {
            let evidence: Vec<&Record> = records
                .iter()
                .filter(|r| r.controls.iter().any(|id| id == c.id))
                .collect();
            (c, evidence.len(), evidence.iter().map(|r| r.at).max())
        })
        .collect();
    if out.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(c, n, last)| {
                json!({
                    "id": c.id,
                    "title": c.title,
                    "actions": c.actions,
                    "events": n,
                    "last_event": last.map(rfc3339),
                })
            })
            .collect();
        return out.json(&list);
    }
    let mut table = out.table(&["control", "title", "events", "last event", "evidenced by"]);
    for (c, n, last) in rows {
        table.add_row(vec![
            c.id.to_string(),
            c.title.to_string(),
            n.to_string(),
            last.map(rfc3339).unwrap_or_else(|| "-".into()),
            c.actions.join(", "),
        ]);
    }
    out.print_table(&table)
}
