//! Files a built-in plan's fixes use (Grafana dashboards, n8n workflows, the
//! knowledge-base builder), compiled into the binary from
//! `blueprints/<plan>/assets/` and written into the workspace, at the same
//! relative path, when a plan needs them.
//!
//! A copy someone edited is never overwritten. nova records what it wrote
//! (`$NOVA_HOME/assets.json`: path to SHA-256): a file is written when it is
//! missing, replaced when it is still exactly what nova wrote and this nova
//! ships something else, and otherwise left alone, whether edited after
//! nova wrote it or put there by someone else.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::workspace::{Workspace, ensure_dir};

/// A shipped file: its plan, its path in the workspace, its text.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub plan: &'static str,
    pub path: &'static str,
    pub text: &'static str,
}

/// What [`write`] did, or would do, with one asset.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub plan: &'static str,
    pub path: &'static str,
    /// `written`, `updated`, `up to date`, `kept: edited` or `kept: not nova's`
    /// (with `--dry-run`: `would write`, `would update`, or the same).
    pub state: &'static str,
}

/// The shipped assets, of one plan or of all.
pub fn shipped(plan: Option<&str>) -> Vec<Asset> {
    super::catalog::builtin_assets()
        .iter()
        .filter(|(p, _, _)| plan.is_none_or(|want| want == *p))
        .map(|&(plan, path, text)| Asset { plan, path, text })
        .collect()
}

/// Whether nova ships a file at `path` (a workspace path) for some plan.
pub fn is_shipped(path: &str) -> bool {
    super::catalog::builtin_assets()
        .iter()
        .any(|(_, p, _)| *p == path)
}

fn record_path(ws: &Workspace) -> std::path::PathBuf {
    ws.home.join("assets.json")
}

fn read_record(path: &Path) -> Result<BTreeMap<String, String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            Error::usage(format!(
                "{}: not nova's record of written assets ({e}); move it away to start afresh",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Write the plan's assets (all plans' when `None`) into the workspace as
/// the module says; with `dry_run`, only say what would be done.
pub fn write(ws: &Workspace, plan: Option<&str>, dry_run: bool) -> Result<Vec<Outcome>> {
    let record_file = record_path(ws);
    let mut record = read_record(&record_file)?;
    let mut outcomes = Vec::new();
    let mut changed = false;
    for asset in shipped(plan) {
        let target = ws.root.join(asset.path);
        let shipped = crate::digest::sha256_hex(asset.text.as_bytes());
        let state = match std::fs::read(&target) {
            Ok(current) => {
                let current = crate::digest::sha256_hex(&current);
                match record.get(asset.path) {
                    _ if current == shipped => "up to date",
                    Some(wrote) if *wrote == current => "updated",
                    Some(_) => "kept: edited",
                    None => "kept: not nova's",
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "written",
            Err(e) => return Err(Error::io(&target, e)),
        };
        let writes = matches!(state, "written" | "updated");
        let state = match (dry_run, state) {
            (true, "written") => "would write",
            (true, "updated") => "would update",
            (_, s) => s,
        };
        if writes && !dry_run {
            if let Some(dir) = target.parent() {
                ensure_dir(dir)?;
            }
            std::fs::write(&target, asset.text).map_err(|e| Error::io(&target, e))?;
        }
        if (writes || state == "up to date") && !dry_run && record.get(asset.path) != Some(&shipped)
        {
            record.insert(asset.path.to_string(), shipped);
            changed = true;
        }
        outcomes.push(Outcome {
            plan: asset.plan,
            path: asset.path,
            state,
        });
    }
    if changed {
        ensure_dir(&ws.home)?;
        let text = serde_json::to_string_pretty(&record).expect("a record serializes");
        std::fs::write(&record_file, text + "\n").map_err(|e| Error::io(&record_file, e))?;
    }
    Ok(outcomes)
}
