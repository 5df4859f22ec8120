//! The workspace's audit log, opened the same way for every command and
//! front-end, and who the operator is (the actor of their records).

use crate::error::{Error, Result};
use crate::store_url::{StoreChoice, StoreUrl};
use crate::workspace::Workspace;

use super::AuditLog;

/// The workspace's audit log: in Redis when the queue's store is Redis,
/// otherwise in the workspace database. `None` when it would have to be
/// created and `create` is false (a read-only command in a new workspace).
pub async fn workspace_log(
    ws: &Workspace,
    store: &StoreChoice,
    create: bool,
) -> Result<Option<AuditLog>> {
    match StoreUrl::resolve(ws, store)? {
        StoreUrl::Redis(url) => Ok(Some(
            AuditLog::redis(&url)
                .await
                .map_err(|e| Error::Failed(e.to_string()))?,
        )),
        StoreUrl::Sqlite(_) => {
            let db = ws.db_path();
            if !create && !db.exists() {
                return Ok(None);
            }
            // Refuse a file that is not a nova database as every command does.
            if db.exists() {
                crate::store::Store::open_read_only(&db)?;
            }
            match AuditLog::sqlite(&db) {
                Ok(log) => Ok(Some(log)),
                // A read-only command on a workspace it may not write still reads.
                Err(e) if !create => AuditLog::sqlite_for_reading(&db)
                    .map(Some)
                    .map_err(|_| Error::Failed(e.to_string())),
                Err(e) => Err(Error::Failed(e.to_string())),
            }
        }
    }
}

/// The operator running this command, for the `actor` of its records:
/// `NOVA_OPERATOR` when a front-end that started it says who asked (the
/// dashboard does, for the runs it starts), else the login name.
pub fn operator() -> String {
    if let Ok(who) = std::env::var("NOVA_OPERATOR")
        && !who.is_empty()
    {
        return format!("operator:{who}");
    }
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::current())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid-{}", nix::unistd::Uid::current()));
    format!("operator:{user}")
}
