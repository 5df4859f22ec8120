//! The workspace: the folder nova works in, and `$NOVA_HOME`, where its state lives.
//!
//! `NOVA_HOME` comes from `--home`, then the `NOVA_HOME` variable, then
//! `./.nova`. Read-only commands never create anything: they open the store
//! only when `nova.db` already exists, and only for reading. The first command
//! that writes creates the folder and the database.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::Store;

pub const HOME_VAR: &str = "NOVA_HOME";
pub const DB_FILE: &str = "nova.db";
/// How long nova waits for OPA before denying (`--opa-timeout`).
pub const OPA_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct Workspace {
    /// The folder nova works in; `nova.yaml` and the workspace's blueprints sit here.
    pub root: PathBuf,
    /// `$NOVA_HOME`: database, logs, runs and reports.
    pub home: PathBuf,
    pub config: Config,
    /// The `nova.yaml` that was read, if any.
    pub config_file: Option<PathBuf>,
    /// How to reach the policy engine (flags and environment; see `policy::open`).
    pub opa: OpaSettings,
}

/// The OPA flags: `--opa-url` (else nova.yaml's `opa_url`), token file, timeout.
#[derive(Debug, Clone)]
pub struct OpaSettings {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub timeout: std::time::Duration,
}

impl Default for OpaSettings {
    fn default() -> Self {
        OpaSettings {
            url: None,
            token_file: None,
            timeout: OPA_TIMEOUT,
        }
    }
}

impl Workspace {
    /// Resolve the workspace rooted at the current directory.
    pub fn discover(home: Option<PathBuf>) -> Result<Self> {
        let root = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        Self::at(root, home)
    }

    /// Resolve the workspace rooted at `root`; `home` is the `--home` flag.
    pub fn at(root: PathBuf, home: Option<PathBuf>) -> Result<Self> {
        let home = home
            .or_else(|| {
                std::env::var_os(HOME_VAR)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(".nova"));
        let home = if home.is_absolute() {
            home
        } else {
            root.join(home)
        };
        if home.exists() && !home.is_dir() {
            return Err(Error::usage(format!(
                "NOVA_HOME {} is a file, not a folder (set --home or NOVA_HOME to a folder)",
                home.display()
            )));
        }
        let (config_file, config) = match Config::load(&root)? {
            Some((path, config)) => (Some(path), config),
            None => (None, Config::default()),
        };
        Ok(Workspace {
            root,
            home,
            config,
            config_file,
            opa: OpaSettings::default(),
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.home.join(DB_FILE)
    }

    /// The workspace's own blueprint folder (it may not exist).
    /// The workspace's own policies: `policies/` beside nova.yaml.
    pub fn policy_dir(&self) -> PathBuf {
        self.root.join("policies")
    }

    pub fn blueprint_dir(&self) -> PathBuf {
        match &self.config.blueprints {
            Some(dir) => self.root.join(dir),
            None => self.root.join("blueprints"),
        }
    }

    /// Open the store for reading; `None` when no database exists yet.
    pub fn open_store_read(&self) -> Result<Option<Store>> {
        let path = self.db_path();
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Store::open_read_only(&path)?))
    }

    /// Create `$NOVA_HOME` if it is missing, with a `.gitignore` of `*` in
    /// it: the workspace is often a code repository, and nova's state must
    /// not show up as untracked files there (as pytest's and ruff's caches do).
    pub fn ensure_home(&self) -> Result<()> {
        if self.home.is_dir() {
            return Ok(());
        }
        ensure_dir(&self.home)?;
        let ignore = self.home.join(".gitignore");
        std::fs::write(
            &ignore,
            "# Created by nova: its state is not part of the repository.\n*\n",
        )
        .map_err(|e| Error::io(&ignore, e))
    }

    /// Open the store for writing, creating `$NOVA_HOME` and the database if needed.
    pub fn open_store(&self) -> Result<Store> {
        self.ensure_home()?;
        Ok(Store::open(&self.db_path())?)
    }
}

pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}
