//! `nova backup`, `nova backup list`, `nova backup verify` and `nova restore`.

use serde_json::json;

use super::create::create;
use super::restore::{self, list, manifest, verify};
use super::target::Target;
use crate::audit::open::{operator, workspace_log};
use crate::audit::record::Event;
use crate::cli::{BackupAction, BackupArgs, RestoreArgs};
use crate::error::{Error, Result};
use crate::output::Output;
use crate::workspace::Workspace;

fn target_url(ws: &Workspace, flag: Option<&str>, name: &str) -> Result<String> {
    flag.map(str::to_string)
        .or_else(|| ws.config.backup.to.clone())
        .ok_or_else(|| {
            Error::usage(format!(
                "{name}: no backup target; give {name} FOLDER or set backup.to in nova.yaml"
            ))
        })
}

/// Record `event` in the workspace's audit log, when it has one.
async fn audit(ws: &Workspace, event: Event) -> Result<()> {
    if let Some(log) = workspace_log(ws, &crate::store_url::StoreChoice::default(), true).await? {
        crate::audit::record(&log, event).await;
    }
    Ok(())
}

pub fn run(ws: &Workspace, out: &Output, args: &BackupArgs) -> Result<()> {
    let url = target_url(ws, args.to.as_deref(), "--to")?;
    // Only taking a backup may make the folder.
    let target = Target::open(&url, &ws.root, args.action.is_none())?;
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        match &args.action {
            None => {
                let done = create(ws, &target, args.with_runs).await?;
                let m = &done.manifest;
                audit(
                    ws,
                    Event::new(operator(), "backup.create", m.id.clone(), "done").details(json!({
                        "target": target.label,
                        "files": m.files.len(),
                        "bytes": m.total_bytes(),
                        "uploaded_bytes": done.uploaded_bytes,
                        "audit_head": m.audit_head,
                    })),
                )
                .await?;
                if out.json {
                    return out.json(&done);
                }
                out.text(&format!(
                    "backup {} in {}: {} files, {} bytes; wrote {} objects, {} bytes in {:.2} s\n",
                    m.id,
                    target.label,
                    m.files.len(),
                    m.total_bytes(),
                    done.uploaded_objects,
                    done.uploaded_bytes,
                    done.seconds
                ))
            }
            Some(BackupAction::List) => {
                let all = list(&target).await?;
                if out.json {
                    return out.json(&all);
                }
                if all.is_empty() {
                    return out.text(&format!("no backups in {}\n", target.label));
                }
                let mut table = out.table(&["id", "files", "bytes", "audit head", "runs"]);
                for m in &all {
                    table.add_row(vec![
                        m.id.clone(),
                        m.files.len().to_string(),
                        m.total_bytes().to_string(),
                        m.audit_head.as_ref().map_or("-".into(), |h| {
                            format!("{} {}", h.seq, &h.hash[..12.min(h.hash.len())])
                        }),
                        if m.with_runs { "yes" } else { "no" }.into(),
                    ]);
                }
                out.print_table(&table)
            }
            Some(BackupAction::Verify { id }) => {
                let m = manifest(&target, id.as_deref()).await?;
                let problems = verify(&target, &m).await?;
                let outcome = if problems.is_empty() {
                    "verified"
                } else {
                    "damaged"
                };
                audit(
                    ws,
                    Event::new(operator(), "backup.verify", m.id.clone(), outcome).details(json!({
                        "target": target.label,
                        "problems": problems,
                    })),
                )
                .await?;
                if out.json {
                    out.json(&json!({"id": m.id, "files": m.files.len(), "problems": problems}))?;
                } else if problems.is_empty() {
                    out.text(&format!(
                        "backup {} in {}: all {} objects match their hashes\n",
                        m.id,
                        target.label,
                        m.files.len()
                    ))?;
                }
                if problems.is_empty() {
                    return Ok(());
                }
                let list: Vec<String> = problems
                    .iter()
                    .map(|p| format!("  {} ({}): {}", p.path, p.object, p.reason))
                    .collect();
                Err(Error::Failed(format!(
                    "backup {} in {} is damaged:\n{}",
                    m.id,
                    target.label,
                    list.join("\n")
                )))
            }
        }
    })
}

pub fn restore_command(ws: &Workspace, out: &Output, args: &RestoreArgs) -> Result<()> {
    let url = target_url(ws, args.from.as_deref(), "--from")?;
    let target = Target::open(&url, &ws.root, false)?;
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        let m = manifest(&target, Some(&args.id)).await?;
        // Components, so that `./restored` is not shown as `ws/./restored`.
        let folder: std::path::PathBuf = ws.root.join(&args.to).components().collect();
        let done = restore::restore(&target, &m, &folder).await?;
        // The restore is the first record of the restored workspace's own history.
        let restored = Workspace::at(folder.clone(), None)?;
        audit(
            &restored,
            Event::new(operator(), "backup.restore", m.id.clone(), "done").details(json!({
                "from": target.label,
                "files": done.files,
                "bytes": done.bytes,
            })),
        )
        .await?;
        if out.json {
            return out.json(&done);
        }
        out.text(&format!(
            "restored backup {} into {}: {} files, {} bytes; audit chain of {} verified\n",
            done.id,
            folder.display(),
            done.files,
            done.bytes,
            match done.audit_records {
                1 => "1 record".to_string(),
                n => format!("{n} records"),
            }
        ))
    })
}
