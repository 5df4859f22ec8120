//! Who a task runs as, said truthfully to the policy engine.
//!
//! When nova runs as root, a task whose blueprint says `run_as_root: true`
//! runs as root (where policy allows its role that), and every other task
//! runs as the workspace's service user (`service_user` in nova.yaml or
//! `NOVA_SERVICE_USER`; `nova setup --apply` creates it). `service_user:
//! root` is the explicit choice to run every task as root, for hosts that
//! have no other user (containers, CI). Without a service user, tasks run
//! as root and say so: the shipped policy then lets their checks run and
//! denies their fixes. When nova does not run as root, tasks run as nova's
//! user and nothing is claimed that is not so.
//!
//! The invariant: the `as_root` a policy sees is the uid the task gets.

use std::ffi::CString;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The variable that names the service user (over nova.yaml's `service_user`).
pub const SERVICE_USER_VAR: &str = "NOVA_SERVICE_USER";

/// An unprivileged account a task is switched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Its supplementary groups (docker, say), as `initgroups` would set them.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Service {
    /// None named.
    Unset,
    /// `service_user: root`: every task runs as root, knowingly.
    Root,
    User(Account),
}

/// What this process may do about tasks' users.
#[derive(Debug, Clone)]
pub struct Privileges {
    nova_is_root: bool,
    service: Service,
}

/// Who one task runs as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub as_root: bool,
    /// The account to switch to; `None`: the task keeps nova's own user.
    pub account: Option<Account>,
    /// The user's name, for logs and the audit log.
    pub user: String,
}

impl Privileges {
    /// From `NOVA_SERVICE_USER`, else nova.yaml's `service_user`. A named
    /// user that does not exist is an error when nova runs as root (it
    /// could not be switched to); otherwise the name does not matter.
    pub fn resolve(configured: Option<&str>) -> Result<Self> {
        let nova_is_root = nix::unistd::Uid::effective().is_root();
        let name = std::env::var(SERVICE_USER_VAR)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| configured.map(String::from));
        let service = match name.as_deref() {
            None => Service::Unset,
            Some("root") => Service::Root,
            // Not root: there is no one to switch to, and nothing to claim.
            Some(_) if !nova_is_root => Service::Unset,
            Some(name) => Service::User(account(name)?),
        };
        Ok(Privileges {
            nova_is_root,
            service,
        })
    }

    pub fn service_user(&self) -> Option<&str> {
        match &self.service {
            Service::Unset => None,
            Service::Root => Some("root"),
            Service::User(a) => Some(&a.name),
        }
    }

    /// Who a task with this `run_as_root` runs as.
    pub fn identity(&self, run_as_root: bool) -> Identity {
        let root = || Identity {
            as_root: true,
            account: None,
            user: "root".into(),
        };
        if !self.nova_is_root {
            return Identity {
                as_root: false,
                account: None,
                user: current_user(),
            };
        }
        match &self.service {
            _ if run_as_root => root(),
            Service::User(a) => Identity {
                as_root: false,
                account: Some(a.clone()),
                user: a.name.clone(),
            },
            Service::Root | Service::Unset => root(),
        }
    }

    /// The part of a task's policy input that says who it runs as.
    pub fn context(&self, identity: &Identity, run_as_root: bool) -> Value {
        json!({
            "as_root": identity.as_root,
            "blueprint_allows_root": run_as_root,
            "service_user": self.service_user(),
            "user": identity.user,
        })
    }
}

fn current_user() -> String {
    let uid = nix::unistd::Uid::effective();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}

/// The account named `name`, with its groups.
pub fn account(name: &str) -> Result<Account> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| Error::Failed(format!("cannot look up the service user {name}: {e}")))?
        .ok_or_else(|| {
            Error::Failed(format!(
                "the service user {name} does not exist on this host; nova setup --apply creates it (service_user in nova.yaml, or {SERVICE_USER_VAR})"
            ))
        })?;
    let c_name = CString::new(name).map_err(|_| Error::usage(format!("bad user name {name:?}")))?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()]);
    Ok(Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        home: user.dir,
    })
}

/// Make `path` (a task's inbox or results folder) the account's, so a task
/// switched to it can read and write what nova prepared for it.
pub fn hand_over(path: &std::path::Path, account: &Account) {
    if let Err(e) = std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid)) {
        tracing::warn!(path = %path.display(), user = %account.name, error = %e, "cannot hand the file over to the service user");
    }
}

/// In the child between fork and exec: take on `account`'s groups, group
/// and user, in that order (the user last, while the others may still be set).
///
/// # Safety
/// Runs after fork in a possibly multi-threaded parent: only the raw
/// syscalls below, no allocation.
pub unsafe fn switch_to(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls on values owned by the caller.
    unsafe {
        check(libc::setgroups(
            groups.len() as libc::size_t,
            groups.as_ptr(),
        ))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn privileges(nova_is_root: bool, service: Service) -> Privileges {
        Privileges {
            nova_is_root,
            service,
        }
    }

    fn agent() -> Account {
        Account {
            name: "agent".into(),
            uid: 990,
            gid: 990,
            groups: vec![990],
            home: "/".into(),
        }
    }

    #[test]
    fn as_root_is_what_the_task_gets() {
        let p = privileges(true, Service::User(agent()));
        let plain = p.identity(false);
        assert!(!plain.as_root);
        assert_eq!(plain.account, Some(agent()));
        let needs_root = p.identity(true);
        assert!(needs_root.as_root && needs_root.account.is_none());

        // Root without a service user: tasks run as root and say so.
        assert!(privileges(true, Service::Unset).identity(false).as_root);
        assert!(privileges(true, Service::Root).identity(false).as_root);
        // Not root: nothing runs as root, whatever the blueprint asks.
        let user = privileges(false, Service::Unset).identity(true);
        assert!(!user.as_root && user.account.is_none());
    }
}
