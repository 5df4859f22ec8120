//! Locks in a backup target, so that prune never deletes an object that a
//! backup, verify or restore running elsewhere counts on (restic's scheme).
//! Taking, verifying and restoring a backup hold a shared lock; prune holds
//! an exclusive one. A lock is an object `locks/<id>.json` saying who holds
//! it and since when, rewritten every few minutes while it is held.
//!
//! A process writes its lock first and looks at the others after: of two
//! that race, at least one sees the other and gives up. A lock not
//! refreshed for [`STALE_MS`], or one taken on this host by a process that
//! is gone, is ignored; `nova backup unlock` removes such locks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::target::Target;
use crate::clock::now_ms;
use crate::error::{Error, Result};

/// A lock its holder has not refreshed for this long is ignored.
const STALE_MS: i64 = 30 * 60 * 1000;
/// How often a held lock is rewritten with the time.
const REFRESH: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Taking, verifying or restoring a backup: any number at once.
    Shared,
    /// Pruning: nothing else at the same time.
    Exclusive,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Shared => "shared",
            Kind::Exclusive => "exclusive",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lock {
    pub kind: Kind,
    /// What the holder is doing ("backup", "prune", ...).
    pub purpose: String,
    pub host: String,
    pub pid: u32,
    pub taken_at: i64,
    pub refreshed_at: i64,
}

impl Lock {
    /// Whether its holder is gone: not refreshed for [`STALE_MS`], or a
    /// process of this host that no longer runs (where `/proc` tells).
    pub fn stale(&self, now: i64) -> bool {
        let proc = std::path::Path::new("/proc");
        now - self.refreshed_at > STALE_MS
            || (self.host == crate::orchestrate::run::hostname()
                && proc.join("self").exists()
                && !proc.join(self.pid.to_string()).exists())
    }

    fn describe(&self, key: &str) -> String {
        format!(
            "{} by {} (pid {}) since {} ({key})",
            self.purpose,
            self.host,
            self.pid,
            crate::clock::rfc3339(self.taken_at)
        )
    }
}

/// A lock this process holds; [`Held::release`] removes it.
pub struct Held {
    target: Target,
    key: String,
    refresher: tokio::task::JoinHandle<()>,
}

impl Held {
    pub async fn release(self) {
        self.refresher.abort();
        if let Err(e) = self.target.delete(&self.key).await {
            tracing::warn!(lock = %self.key, error = %e, "could not remove the backup target's lock");
        }
    }
}

/// Take a lock of `kind` on `target` for `purpose`; refused, naming the
/// holder, while a lock that conflicts with it is held.
pub async fn hold(target: &Target, kind: Kind, purpose: &str) -> Result<Held> {
    let held = write(target, kind, purpose).await?;
    checked(held, kind, purpose).await
}

/// `held` if no lock it conflicts with is held beside it; else released.
async fn checked(held: Held, kind: Kind, purpose: &str) -> Result<Held> {
    match conflicting(&held.target, &held.key, kind).await {
        Ok(None) => Ok(held),
        Ok(Some(why)) => {
            let e = locked(&held.target, &why, purpose);
            held.release().await;
            Err(e)
        }
        Err(e) => {
            held.release().await;
            Err(e)
        }
    }
}

/// A shared lock for what only reads the target (verify, restore): one
/// that cannot be written (credentials that may only read) is gone without,
/// after checking that no prune holds the target; `None` then.
pub async fn hold_to_read(target: &Target, purpose: &str) -> Result<Option<Held>> {
    match write(target, Kind::Shared, purpose).await {
        Ok(held) => checked(held, Kind::Shared, purpose).await.map(Some),
        Err(e) => {
            if let Some(why) = conflicting(target, "", Kind::Shared).await? {
                return Err(locked(target, &why, purpose));
            }
            tracing::warn!(error = %e, "could not lock the backup target (may this process only read it?); going on without a lock");
            Ok(None)
        }
    }
}

fn locked(target: &Target, why: &str, purpose: &str) -> Error {
    Error::Failed(format!(
        "backup target {} is locked: {why}; try the {purpose} again once that ends \
         (a lock whose process is gone is ignored after 30 minutes, or at once on its \
         own host; `nova backup unlock` removes such locks)",
        target.label
    ))
}

/// Write a lock of `kind` and keep it fresh until released.
async fn write(target: &Target, kind: Kind, purpose: &str) -> Result<Held> {
    let now = now_ms();
    let mut lock = Lock {
        kind,
        purpose: purpose.to_string(),
        host: crate::orchestrate::run::hostname(),
        pid: std::process::id(),
        taken_at: now,
        refreshed_at: now,
    };
    let key = format!("locks/{}.json", uuid::Uuid::now_v7());
    target.put(&key, encode(&lock)).await?;
    let refresher = {
        let (target, key) = (target.clone(), key.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REFRESH).await;
                lock.refreshed_at = now_ms();
                if let Err(e) = target.put(&key, encode(&lock)).await {
                    tracing::warn!(lock = %key, error = %e, "could not refresh the backup target's lock");
                }
            }
        })
    };
    Ok(Held {
        target: target.clone(),
        key,
        refresher,
    })
}

/// The locks in `target`, by key, as read; an unreadable one as `Err`.
pub async fn list(target: &Target) -> Result<Vec<(String, std::result::Result<Lock, String>)>> {
    let mut found = Vec::new();
    for key in target.list("locks").await? {
        // Released since it was listed.
        let Some(bytes) = target.get(&key).await? else {
            continue;
        };
        found.push((
            key,
            serde_json::from_slice::<Lock>(&bytes).map_err(|e| e.to_string()),
        ));
    }
    Ok(found)
}

/// Remove the stale locks in `target`; their keys.
pub async fn remove_stale(target: &Target) -> Result<Vec<String>> {
    let now = now_ms();
    let mut removed = Vec::new();
    for (key, lock) in list(target).await? {
        if lock.is_ok_and(|l| l.stale(now)) {
            target.delete(&key).await?;
            removed.push(key);
        }
    }
    Ok(removed)
}

/// The first lock other than `own` that a lock of `kind` cannot share the
/// target with, described. A lock that cannot be read counts: nova cannot
/// tell what it guards.
async fn conflicting(target: &Target, own: &str, kind: Kind) -> Result<Option<String>> {
    let now = now_ms();
    for (key, lock) in list(target).await? {
        if key == own {
            continue;
        }
        match lock {
            Err(e) => return Ok(Some(format!("{key} is not a lock nova can read ({e})"))),
            Ok(lock) if lock.stale(now) => {}
            Ok(lock) if kind == Kind::Exclusive || lock.kind == Kind::Exclusive => {
                return Ok(Some(lock.describe(&key)));
            }
            Ok(_) => {}
        }
    }
    Ok(None)
}

fn encode(lock: &Lock) -> Vec<u8> {
    serde_json::to_vec(lock).expect("a lock serializes")
}
