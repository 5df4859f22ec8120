//! Where the queue's (and the audit log's) state lives: the workspace
//! database, another SQLite file, or Redis. One place resolves it from
//! `--store`, `NOVA_STORE` and nova.yaml for every command and front-end,
//! and names where a bad value came from; and says how long a connection
//! to Redis waits.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// What the user chose: a store URL (`--store` or `NOVA_STORE`), and whether
/// a SQLite file it names may be created.
#[derive(Debug, Clone, Default)]
pub struct StoreChoice {
    pub store: Option<String>,
    pub create: bool,
    /// Whether the command has `--create` (to suggest it for a missing file).
    pub offers_create: bool,
}

/// Where queue state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Redis(String),
}

impl StoreUrl {
    /// `--store`/`NOVA_STORE`, else `nova.yaml`'s `store`, else the workspace database.
    ///
    /// Only the workspace's own database (its default, or nova.yaml's
    /// `store`) is created on demand; a SQLite path given on the command
    /// line or in NOVA_STORE must exist, unless `--create` says to make it.
    pub fn resolve(ws: &Workspace, arg: &StoreChoice) -> Result<StoreUrl> {
        let (url, source) = match (&arg.store, &ws.config.store) {
            (Some(url), _) => (url.as_str(), given_in(url)),
            (None, Some(url)) => (url.as_str(), "nova.yaml store"),
            (None, None) => return Ok(StoreUrl::Sqlite(ws.db_path())),
        };
        let store = StoreUrl::parse_from(url, &ws.root, source)?;
        if let StoreUrl::Sqlite(path) = &store
            && !arg.create
            && source != "nova.yaml store"
            && std::fs::symlink_metadata(path).is_err()
            && *path != ws.db_path()
        {
            return Err(Error::usage(format!(
                "{source} {url:?}: there is no database at {}{}",
                path.display(),
                if arg.offers_create {
                    "; --create makes one"
                } else {
                    ""
                }
            )));
        }
        Ok(store)
    }

    /// The store `arg` names, if any, read without opening or checking
    /// for it: for a command that must refuse a malformed URL before it
    /// does anything, though the store is only used at its end.
    pub fn check_syntax(arg: &StoreChoice, root: &Path) -> Result<()> {
        match &arg.store {
            Some(url) => Self::parse_from(url, root, given_in(url)).map(|_| ()),
            None => Ok(()),
        }
    }

    pub fn parse(url: &str, root: &Path) -> Result<StoreUrl> {
        Self::parse_from(url, root, "--store")
    }

    /// `source` names where the URL came from, for the messages.
    fn parse_from(url: &str, root: &Path, source: &str) -> Result<StoreUrl> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(Error::usage(format!(
                    "{source} {url:?}: give a path after sqlite:"
                )));
            }
            if path.starts_with(':') {
                return Err(Error::usage(format!(
                    "{source} {url:?}: give a file path after sqlite: (an in-memory database would lose everything when nova exits)"
                )));
            }
            let path = PathBuf::from(path);
            return Ok(StoreUrl::Sqlite(if path.is_absolute() {
                path
            } else {
                root.join(path)
            }));
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return Ok(StoreUrl::Redis(url.to_string()));
        }
        Err(Error::usage(format!(
            "{source} {url:?}: expected sqlite:PATH or redis://HOST:PORT/DB"
        )))
    }
}

/// `url` as messages and output may show it: a password in it (as in
/// `redis://:secret@host:6379/0` or `redis://user:secret@host`) replaced by
/// `[redacted]`; anything else as it is.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}://{user}:[redacted]@{host}{path}")
        }
        _ => url.to_string(),
    }
}

/// Where a store URL given to this command came from, for messages:
/// `NOVA_STORE` or `--store`.
fn given_in(url: &str) -> &'static str {
    let from_env = std::env::var("NOVA_STORE").is_ok_and(|v| v == url)
        && !std::env::args().any(|a| a == "--store" || a.starts_with("--store="));
    if from_env { "NOVA_STORE" } else { "--store" }
}

/// How nova's connections to Redis (the queue's, the audit log's) wait.
/// The redis crate answers "timed out" after 500 ms by default, but the
/// script it stops waiting for goes on and commits: a batch of a few
/// thousand tasks on a busy Redis would be stored and reported as not
/// stored (CI met it with 5,200 tasks). Ten seconds is still quick to
/// notice a Redis that stopped answering.
pub fn redis_connection_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)))
        .set_number_of_retries(3)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_left_out_of_shown_urls() {
        use super::without_password as w;
        assert_eq!(w("redis://:pw@h:6379/0"), "redis://:[redacted]@h:6379/0");
        assert_eq!(w("rediss://me:p:w@h/1"), "rediss://me:[redacted]@h/1");
        assert_eq!(w("redis://me@h/0"), "redis://me@h/0");
        assert_eq!(w("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(w("sqlite:a@b:c"), "sqlite:a@b:c");
    }
}
