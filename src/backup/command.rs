//! `nova backup` (take, list, verify, prune, unlock, keygen), `nova restore`, and
//! `nova audit verify --checkpoints`.

use serde_json::json;

use super::key::Key;
use super::lock;
use super::ops;
use super::repo::Repo;
use super::restore;
use crate::audit::open::operator;
use crate::audit::record::Event;
use crate::cli::{BackupAction, BackupArgs, RestoreArgs};
use crate::error::{Error, Result};
use crate::output::{Output, count};
use crate::store_url::StoreChoice;
use crate::workspace::Workspace;

pub fn run(ws: &Workspace, out: &Output, args: &BackupArgs) -> Result<()> {
    if let Some(BackupAction::Keygen { file }) = &args.action {
        let file = ws.root.join(file);
        let key = Key::generate(&file)?;
        return out.text(&format!(
            "wrote a new backup key to {} (public key {}); keep a copy away from the backups: \
             without it no encrypted backup can be read\n",
            file.display(),
            key.recipient()
        ));
    }
    let taking = args.action.is_none();
    // Only taking a backup may make the folder.
    let key = if taking {
        args.encrypt.as_deref().or(args.key.as_deref())
    } else {
        args.key.as_deref()
    };
    let store = args.store_choice();
    // A bad store is named before the target's folder is made.
    crate::store_url::StoreUrl::resolve(ws, &store)?;
    let repo = Repo::open(ws, args.to.as_deref(), "--to", key, taking)?;
    let rt = crate::runtime::runtime()?;
    let done = rt.block_on(async {
        match &args.action {
            None => take(ws, &store, out, &repo, args.with_runs).await,
            Some(BackupAction::List) => list(out, &repo).await,
            Some(BackupAction::Verify { id }) => {
                verify(ws, &store, out, &repo, id.as_deref()).await
            }
            Some(BackupAction::Prune { keep }) => {
                let keep = keep.or(ws.config.backup.keep).ok_or_else(|| {
                    Error::usage("--keep: how many backups to keep? Give --keep N or set backup.keep in nova.yaml")
                })?;
                let pruned = ops::prune(ws, &store, &repo, keep).await?;
                if out.json {
                    return out.json(&pruned);
                }
                out.text(&format!(
                    "kept {} in {}; removed {} ({}) and {} no backup used\n",
                    count(pruned.kept as u64, "backup"),
                    repo.label(),
                    pruned.removed.len(),
                    if pruned.removed.is_empty() { "none".into() } else { pruned.removed.join(", ") },
                    count(pruned.objects_removed as u64, "object")
                ))
            }
            Some(BackupAction::Unlock) => unlock(out, &repo).await,
            Some(BackupAction::Keygen { .. }) => unreachable!("handled above"),
        }
    });
    ops::save_kpis(ws, "backup");
    done
}

async fn unlock(out: &Output, repo: &Repo) -> Result<()> {
    let removed = lock::remove_stale(&repo.target).await?;
    let held = lock::list(&repo.target).await?;
    if out.json {
        return out.json(&json!({
            "removed": removed,
            "held": held.iter().map(|(key, l)| match l {
                Ok(l) => json!({"key": key, "lock": l}),
                Err(e) => json!({"key": key, "error": e}),
            }).collect::<Vec<_>>(),
        }));
    }
    let mut text = format!(
        "removed {} stale locks from {}\n",
        removed.len(),
        repo.label()
    );
    for (key, l) in &held {
        text.push_str(&match l {
            Ok(l) => format!(
                "still held: {key}: {} ({}) by {} (pid {}) since {}\n",
                l.purpose,
                l.kind.as_str(),
                l.host,
                l.pid,
                crate::clock::rfc3339(l.taken_at)
            ),
            Err(e) => format!(
                "not a lock nova can read: {key} ({e}); remove it by hand if it is not yours\n"
            ),
        });
    }
    out.text(&text)
}

async fn take(
    ws: &Workspace,
    store: &StoreChoice,
    out: &Output,
    repo: &Repo,
    with_runs: bool,
) -> Result<()> {
    let (done, verifier_key) = ops::take(ws, store, repo, with_runs).await?;
    // Retention: a backup that succeeded makes room for itself.
    let pruned = match ws.config.backup.keep {
        Some(keep) => Some(ops::prune(ws, store, repo, keep).await?),
        None => None,
    };
    if out.json {
        return out.json(&json!({
            "manifest": done.manifest,
            "target": done.target,
            "uploaded_objects": done.uploaded_objects,
            "uploaded_bytes": done.uploaded_bytes,
            "seconds": done.seconds,
            "checkpoint": done.checkpoint,
            "verifier_key": verifier_key,
            "pruned": pruned,
        }));
    }
    let m = &done.manifest;
    out.text(&format!(
        "backup {} in {}{}: {}, {}; wrote {}, {} in {:.2} s\n",
        m.id,
        repo.label(),
        if m.encrypted_to.is_some() {
            " (encrypted)"
        } else {
            ""
        },
        count(m.files.len() as u64, "file"),
        count(m.total_bytes(), "byte"),
        count(done.uploaded_objects, "object"),
        count(done.uploaded_bytes, "byte"),
        done.seconds
    ))?;
    if let Some(outside) = &m.outside {
        let keeper = if outside
            .holds
            .iter()
            .any(|h| h == super::manifest::AUDIT_LOG)
        {
            " (Redis's own persistence, RDB snapshots or the AOF, keeps what is in Redis)"
        } else {
            ""
        };
        out.text(&format!(
            "not in it: the {} in {}{keeper}\n",
            outside.holds.join(" and the "),
            outside.store
        ))?;
    }
    if let Some(key) = &done.checkpoint {
        out.text(&format!("audit checkpoint signed and stored at {key}\n"))?;
    }
    if let Some(p) = pruned.filter(|p| !p.removed.is_empty()) {
        out.text(&format!(
            "retention: removed {} and {}\n",
            count(p.removed.len() as u64, "older backup"),
            count(p.objects_removed as u64, "object")
        ))?;
    }
    Ok(())
}

async fn list(out: &Output, repo: &Repo) -> Result<()> {
    let all = repo.list().await?;
    if out.json {
        let rows: Vec<_> = all
            .iter()
            .map(|l| match &l.manifest {
                Some(m) => {
                    let mut v = serde_json::to_value(m).expect("a manifest serializes");
                    v["encrypted"] = l.encrypted.into();
                    v
                }
                None => json!({"id": l.id, "encrypted": true}),
            })
            .collect();
        return out.json(&rows);
    }
    if all.is_empty() {
        return out.text(&format!("no backups in {}\n", repo.label()));
    }
    let mut table = out.table(&["id", "files", "bytes", "audit head", "runs", "encrypted"]);
    for l in &all {
        let encrypted = if l.encrypted { "yes" } else { "no" }.to_string();
        let Some(m) = &l.manifest else {
            table.add_row(vec![
                l.id.clone(),
                "?".into(),
                "?".into(),
                "(give --key)".into(),
                "?".into(),
                encrypted,
            ]);
            continue;
        };
        table.add_row(vec![
            m.id.clone(),
            m.files.len().to_string(),
            m.total_bytes().to_string(),
            m.audit_head.as_ref().map_or("-".into(), |h| {
                format!("{} {}", h.seq, &h.hash[..12.min(h.hash.len())])
            }),
            if m.with_runs { "yes" } else { "no" }.into(),
            encrypted,
        ]);
    }
    out.print_table(&table)
}

async fn verify(
    ws: &Workspace,
    store: &StoreChoice,
    out: &Output,
    repo: &Repo,
    id: Option<&str>,
) -> Result<()> {
    let (m, problems) = ops::verify(ws, store, repo, id).await?;
    if out.json {
        out.json(&json!({"id": m.id, "files": m.files.len(), "problems": problems}))?;
    } else if problems.is_empty() {
        out.text(&format!(
            "backup {} in {}: {} {} their hashes\n",
            m.id,
            repo.label(),
            match m.files.len() {
                1 => "its 1 file".to_string(),
                n => format!("all {n} files"),
            },
            if m.files.len() == 1 {
                "matches"
            } else {
                "match"
            }
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
        repo.label(),
        list.join("\n")
    )))
}

pub fn restore_command(ws: &Workspace, out: &Output, args: &RestoreArgs) -> Result<()> {
    let store = StoreChoice {
        store: args.store.clone(),
        ..Default::default()
    };
    // Named before anything is restored; used to record the restore after.
    crate::store_url::StoreUrl::check_syntax(&store, &ws.root)?;
    let repo = Repo::open(
        ws,
        args.from.as_deref(),
        "--from",
        args.key.as_deref(),
        false,
    )?;
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        // Components, so that `./restored` is not shown as `ws/./restored`.
        let folder: std::path::PathBuf = ws.root.join(&args.to).components().collect();
        let lock = lock::hold_to_read(&repo.target, "restore").await?;
        let restored = async {
            let m = repo.manifest(Some(&args.id)).await?;
            let done = restore::restore(&repo, &m, &folder, args.force).await?;
            Ok::<_, Error>((m, done))
        }
        .await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let (m, done) = restored?;
        crate::counter!("backup.restored").inc();
        // The restore is the first record of the restored workspace's own history.
        let restored = Workspace::at(folder.clone(), None)?;
        ops::audit(
            &restored,
            &store,
            Event::new(operator(), "backup.restore", m.id.clone(), "done").details(json!({
                "from": repo.label(),
                "files": done.files,
                "bytes": done.bytes,
                "replaced_into": done.replaced_into,
            })),
        )
        .await;
        ops::save_kpis(&restored, "backup");
        if out.json {
            return out.json(&done);
        }
        let audit = match (done.audit_records, &m.outside) {
            (Some(n), _) => format!("audit chain of {} verified", count(n, "record")),
            (None, Some(outside)) => format!(
                "its queue and audit log were in {}, not in the backup",
                outside.store
            ),
            (None, None) => "no audit chain".to_string(),
        };
        out.text(&format!(
            "restored backup {} into {}: {}, {}; {audit}\n",
            done.id,
            folder.display(),
            count(done.files as u64, "file"),
            count(done.bytes, "byte"),
        ))?;
        if let Some(aside) = &done.replaced_into {
            out.text(&format!(
                "the files it replaced are in {}\n",
                aside.display()
            ))?;
        }
        Ok(())
    })
}

/// `nova audit verify --checkpoints URL`: the chain must hold, and every
/// signed checkpoint in the target must name a record still in it with the
/// same hash.
pub fn verify_checkpoints(
    ws: &Workspace,
    out: &Output,
    store: &crate::store_url::StoreChoice,
    url: &str,
    verifier_key: Option<&str>,
) -> Result<()> {
    let target = super::target::Target::open(url, &ws.root, false)?;
    let verifier_key = match verifier_key {
        Some(v) => v.to_string(),
        None => {
            let file = ops::signing_key_path(ws);
            if !file.exists() {
                return Err(Error::usage(format!(
                    "no checkpoint signing key at {}; give --verifier-key NAME+ID+KEY (printed by nova backup --json)",
                    file.display()
                )));
            }
            super::checkpoint::SigningKey::load_or_create(&file)?.verifier_key
        }
    };
    let rt = crate::runtime::runtime()?;
    rt.block_on(async {
        let log = crate::audit::open::workspace_log(ws, store, false).await?;
        let records = match &log {
            Some(log) => log.records().await.map_err(|e| Error::Failed(e.to_string()))?,
            None => Vec::new(),
        };
        let chain = crate::audit::verify(records.iter().cloned().map(Ok));
        let hashes: std::collections::HashMap<u64, String> =
            records.iter().map(|r| (r.seq, r.hash.clone())).collect();
        let checked = super::checkpoint::check_all(&target, &verifier_key, records.len() as u64, |seq| {
            hashes.get(&seq).cloned()
        })
        .await?;
        let bad: Vec<_> = checked.iter().filter(|c| c.problem.is_some()).collect();
        let holds = chain.broken.is_none() && bad.is_empty();
        if let Some(log) = &log {
            crate::audit::record(
                log,
                Event::new(operator(), "audit.verify", "audit log", if holds { "ok" } else { "broken" })
                    .details(json!({
                        "records": chain.records,
                        "checkpoints": checked.len(),
                        "checkpoints_failed": bad.len(),
                        "target": target.label,
                    })),
            )
            .await;
        }
        if out.json {
            out.json(&json!({
                "records": chain.records,
                "head": chain.head,
                "holds": holds,
                "broken": chain.broken,
                "checkpoints": checked,
            }))?;
        }
        if let Some(b) = &chain.broken {
            return Err(Error::Failed(format!("audit chain broken at record {}: {}", b.seq, b.reason)));
        }
        if !bad.is_empty() {
            let list: Vec<String> = bad
                .iter()
                .map(|c| format!("  {}: {}", c.key, c.problem.as_deref().unwrap_or_default()))
                .collect();
            return Err(Error::Failed(format!(
                "the audit chain holds by itself, but {} of {} checkpoints in {} do not match it:\n{}",
                bad.len(),
                checked.len(),
                target.label,
                list.join("\n")
            )));
        }
        if !out.json {
            out.text(&format!(
                "audit chain holds: {}, head {}; {} in {} {}\n",
                count(chain.records, "record"),
                chain.head.unwrap_or_default(),
                match checked.len() {
                    1 => "the 1 checkpoint".to_string(),
                    n => format!("all {n} checkpoints"),
                },
                target.label,
                if checked.len() == 1 { "matches" } else { "match" }
            ))?;
        }
        Ok(())
    })
}
