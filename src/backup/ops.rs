//! The backup operations as `nova backup` and `nova serve --backup-every`
//! run them: each one audited (ISO 27001 A.8.13) and counted in the KPIs,
//! whether it succeeds or fails.

use std::path::PathBuf;

use serde_json::json;

use super::checkpoint::SigningKey;
use super::create::{Outcome, create};
use super::lock::{self, Kind};
use super::manifest::Manifest;
use super::prune::Pruned;
use super::repo::Repo;
use super::restore::Problem;
use crate::audit::open::{operator, workspace_log};
use crate::audit::record::Event;
use crate::error::{Error, Result};
use crate::store_url::{StoreChoice, StoreUrl};
use crate::workspace::Workspace;

/// Record `event` in the workspace's audit log (created if need be): in
/// the workspace database, or in Redis when that is the queue's `store`.
/// A log that cannot be opened (Redis down) is noted, as a failed append
/// is: the operation it records happened either way.
pub async fn audit(ws: &Workspace, store: &StoreChoice, event: Event) {
    match workspace_log(ws, store, true).await {
        Ok(Some(log)) => crate::audit::record(&log, event).await,
        Ok(None) => {}
        Err(e) => crate::audit::not_recorded(&event.action, &e),
    }
}

/// Where the key that signs audit checkpoints lives: nova.yaml's
/// `backup.signing_key`, else the user's configuration folder, outside
/// every workspace (a restore with --force replaces `.nova`, not this).
pub fn signing_key_path(ws: &Workspace) -> PathBuf {
    if let Some(file) = &ws.config.backup.signing_key {
        return ws.root.join(file);
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let config = env("XDG_CONFIG_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".config")))
        .unwrap_or_else(|| ws.home.clone());
    config.join("nova").join("audit-signing.key")
}

/// Take a backup, with the signed checkpoint of its audit head.
pub async fn take(
    ws: &Workspace,
    store: &StoreChoice,
    repo: &Repo,
    with_runs: bool,
) -> Result<(Outcome, String)> {
    let _t = crate::timer!("backup.take");
    let done = async {
        let url = StoreUrl::resolve(ws, store)?;
        let signer = SigningKey::load_or_create(&signing_key_path(ws))?;
        let lock = lock::hold(&repo.target, Kind::Shared, "backup").await?;
        let done = create(ws, &url, repo, with_runs, Some(&signer)).await;
        lock.release().await;
        Ok::<_, Error>((done?, signer.verifier_key))
    }
    .await;
    let (id, outcome, details) = match &done {
        Ok((d, _)) => {
            crate::counter!("backup.created").inc();
            crate::counter!("backup.uploaded_bytes").add(d.uploaded_bytes);
            let m = &d.manifest;
            (
                m.id.clone(),
                "done",
                json!({
                    "target": repo.label(),
                    "files": m.files.len(),
                    "bytes": m.total_bytes(),
                    "uploaded_bytes": d.uploaded_bytes,
                    "audit_head": m.audit_head,
                    "outside": m.outside,
                    "checkpoint": d.checkpoint,
                    "encrypted": m.encrypted_to.is_some(),
                }),
            )
        }
        Err(e) => {
            crate::counter!("backup.failed").inc();
            (
                "-".to_string(),
                "failed",
                json!({"target": repo.label(), "error": e.to_string()}),
            )
        }
    };
    audit(
        ws,
        store,
        Event::new(operator(), "backup.create", id, outcome).details(details),
    )
    .await;
    done
}

/// Check every object of backup `id` (the newest when `None`).
pub async fn verify(
    ws: &Workspace,
    store: &StoreChoice,
    repo: &Repo,
    id: Option<&str>,
) -> Result<(Manifest, Vec<Problem>)> {
    let lock = lock::hold_to_read(&repo.target, "verify").await?;
    let checked = async {
        let m = repo.manifest(id).await?;
        let problems = super::restore::verify(repo, &m).await?;
        Ok::<_, Error>((m, problems))
    }
    .await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    let (m, problems) = checked?;
    let outcome = if problems.is_empty() {
        crate::counter!("backup.verified").inc();
        "verified"
    } else {
        crate::counter!("backup.damaged").inc();
        "damaged"
    };
    audit(
        ws,
        store,
        Event::new(operator(), "backup.verify", m.id.clone(), outcome).details(json!({
            "target": repo.label(),
            "problems": problems,
        })),
    )
    .await;
    Ok((m, problems))
}

/// Keep the newest `keep` backups.
pub async fn prune(
    ws: &Workspace,
    store: &StoreChoice,
    repo: &Repo,
    keep: usize,
) -> Result<Pruned> {
    let lock = lock::hold(&repo.target, Kind::Exclusive, "prune").await?;
    let pruned = super::prune::prune(repo, keep).await;
    lock.release().await;
    let pruned = pruned?;
    crate::counter!("backup.pruned").add(pruned.removed.len() as u64);
    audit(
        ws,
        store,
        Event::new(operator(), "backup.prune", repo.label().to_string(), "done").details(json!({
            "removed": pruned.removed,
            "kept": pruned.kept,
            "objects_removed": pruned.objects_removed,
        })),
    )
    .await;
    Ok(pruned)
}

/// Save this process's KPIs (the backup counters) under `source`, for a
/// one-shot command; `nova serve` saves its own.
pub fn save_kpis(ws: &Workspace, source: &str) {
    if !ws.db_path().exists() {
        return;
    }
    let saved = crate::store::Store::open(&ws.db_path())
        .map_err(|e| Error::Failed(e.to_string()))
        .and_then(|store| {
            crate::kpi::store::save(store.connection(), source, &crate::kpi::snapshot())
                .map_err(|e| Error::Failed(e.to_string()))
        });
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not save the KPI snapshot");
    }
}
