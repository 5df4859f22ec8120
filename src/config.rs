//! `nova.yaml`: the workspace's optional defaults.
//!
//! The file sits at the workspace root (the folder nova runs in). It is read
//! strictly: an unknown key or a value of the wrong type is an error that names
//! the key and its line. Precedence is fixed by DESIGN.md: flags override
//! environment variables, which override this file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::phases::{PhaseSpec, PlanSpec};
use crate::yaml;

pub const FILE_NAME: &str = "nova.yaml";

/// How the agents of one phase run: one after another, or side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    Sequential,
    Parallel,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Queue and state store: `sqlite:PATH` or `redis://HOST:PORT/DB`.
    pub store: Option<String>,
    /// URL of an Open Policy Agent server; unset means the embedded evaluator.
    pub opa_url: Option<String>,
    /// Default execution mode for `orchestrate`.
    pub execution_mode: Option<ExecutionMode>,
    /// Folder of the workspace's own blueprints (default: `blueprints/`).
    pub blueprints: Option<PathBuf>,
    /// Plan used when a command is given neither `--plan` nor agents or phases.
    pub plan: Option<String>,
    /// Phases of the workspace's default plan, to which blueprints without a `plan` belong.
    #[serde(default)]
    pub phases: Vec<PhaseSpec>,
    /// Further plans declared by the workspace.
    #[serde(default)]
    pub plans: Vec<PlanSpec>,
    /// The unprivileged user agents' tasks run as when nova runs as root
    /// (`nova setup --apply` creates it); `root` runs them as root knowingly.
    pub service_user: Option<String>,
    /// Thresholds and host settings for `nova setup`.
    #[serde(default)]
    pub setup: SetupConfig,
    /// Minimum versions of logical packages, as `docker: ">=24"`: an older
    /// install is reported `too old` by `nova setup`.
    #[serde(default)]
    pub packages: std::collections::BTreeMap<String, String>,
    /// Thresholds and alerting for `nova monitor`.
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// Where `nova backup` keeps backups.
    #[serde(default)]
    pub backup: BackupConfig,
}

/// `backup:` in nova.yaml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The default target of `nova backup` and `nova restore`: a folder or `s3://bucket/prefix`.
    pub to: Option<String>,
    /// An age key file: backups are encrypted with it and read back with it.
    pub key: Option<std::path::PathBuf>,
    /// How many backups `nova backup prune` and each scheduled backup keep.
    pub keep: Option<usize>,
    /// The Ed25519 key that signs audit checkpoints (created on first use)
    /// [default: `$XDG_CONFIG_HOME/nova/audit-signing.key`, else `~/.config/nova/`].
    pub signing_key: Option<std::path::PathBuf>,
}

/// `setup:` in nova.yaml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupConfig {
    /// Least free disk for $NOVA_HOME and `/` (default 5 GiB).
    pub min_disk_free: Option<bytesize::ByteSize>,
    /// Least total memory (default 2 GiB).
    pub min_memory: Option<bytesize::ByteSize>,
    /// Least number of NVIDIA GPUs (default 0: GPUs optional).
    pub min_gpus: Option<u32>,
    /// Least NVIDIA driver version, as `535` or `535.104` (default: any).
    pub min_driver: Option<String>,
    /// Names that must resolve in DNS.
    #[serde(default)]
    pub resolve: Vec<String>,
    /// `host:port` endpoints that must accept a TCP connection.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Ports to open in the firewall, as `22/tcp` or `8080`.
    #[serde(default)]
    pub open_ports: Vec<String>,
    /// Service users to create (system users, no login shell).
    #[serde(default)]
    pub users: Vec<String>,
    /// Logical packages added to the built-in catalog, or replacing one by name.
    #[serde(default)]
    pub catalog: std::collections::BTreeMap<String, crate::packages::Entry>,
}

/// `monitor:` in nova.yaml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Alert when CPU use stays above this percentage (default 90)...
    pub cpu_percent: Option<f32>,
    /// ...for this long (default 1m).
    pub cpu_for: Option<crate::yaml::HumanDuration>,
    /// Alert when memory use is above this percentage (default 95).
    pub memory_percent: Option<f32>,
    /// Alert when a disk has less than this percentage free (default 10).
    pub disk_free_percent: Option<f32>,
    /// Alert when a GPU is hotter than this, in °C (default 85).
    pub gpu_temperature: Option<u32>,
    /// POST every alert as JSON to this URL.
    pub webhook: Option<String>,
    /// Samples kept in the store (default 10000).
    pub history: Option<u32>,
}

impl Config {
    /// Read `nova.yaml` from `root`; `Ok(None)` when there is none.
    pub fn load(root: &Path) -> Result<Option<(PathBuf, Config)>> {
        let path = root.join(FILE_NAME);
        // A dangling symlink is there (and refused below); nothing at all is no file.
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        let text = crate::files::read_text(&path, crate::files::limits::CONFIG)?;
        let file = path.display().to_string();
        let config: Config = if yaml::is_blank(&text) {
            Config::default()
        } else {
            yaml::parse(&file, &text)?
        };
        let problems = config.problems(&file, &text);
        if !problems.is_empty() {
            return Err(Error::Invalid(yaml::Diagnostics(problems)));
        }
        Ok(Some((path, config)))
    }

    /// Values that parse but make no sense: a percentage over 100, a driver
    /// version that is not a version, an endpoint without a port.
    fn problems(&self, file: &str, text: &str) -> Vec<yaml::Diagnostic> {
        let mut out = Vec::new();
        if let Some(user) = &self.service_user
            && !valid_user_name(user)
        {
            out.push(
                yaml::Diagnostic::new(file, format!("{user:?} is not a user name"))
                    .at_line(yaml::key_line(text, "service_user"))
                    .field("service_user"),
            );
        }
        let mut bad = |section: &str, key: &str, message: String| {
            out.push(
                yaml::Diagnostic::new(file, message)
                    .at_line(yaml::section_key_line(text, section, key))
                    .field(format!("{section}.{key}")),
            );
        };
        let m = &self.monitor;
        for (key, value) in [
            ("cpu_percent", m.cpu_percent),
            ("memory_percent", m.memory_percent),
            ("disk_free_percent", m.disk_free_percent),
        ] {
            if let Some(v) = value
                && !(0.0..=100.0).contains(&v)
            {
                bad(
                    "monitor",
                    key,
                    format!("{v} is not a percentage (0 to 100)"),
                );
            }
        }
        if let Some(t) = m.gpu_temperature
            && !(1..=150).contains(&t)
        {
            bad(
                "monitor",
                "gpu_temperature",
                format!("{t} °C is not a GPU temperature threshold (1 to 150)"),
            );
        }
        if m.history == Some(0) {
            bad("monitor", "history", "keep at least 1 sample".into());
        }
        if let Some(v) = &self.setup.min_driver
            && !is_version(v)
        {
            bad(
                "setup",
                "min_driver",
                format!("{v:?} is not a driver version (as 535 or 535.104.05)"),
            );
        }
        for (name, spec) in &self.packages {
            if crate::packages::parse_minimum(spec).is_none() {
                bad(
                    "packages",
                    name,
                    format!("{spec:?} is not a minimum version (as \">=24\" or \"1.28\")"),
                );
            }
        }
        for (name, entry) in &self.setup.catalog {
            let names = entry
                .packages
                .values()
                .chain(entry.conflicts.values())
                .flatten();
            if let Some(bad_name) = names
                .into_iter()
                .find(|n| !crate::packages::valid_package_name(n))
            {
                bad(
                    "setup",
                    "catalog",
                    format!("{name}: {bad_name:?} is not a package name"),
                );
            }
            if entry
                .commands
                .iter()
                .any(|c| c.is_empty() || c.contains('/'))
            {
                bad(
                    "setup",
                    "catalog",
                    format!("{name}: commands are names looked up on PATH, without a /"),
                );
            }
        }
        for e in &self.setup.endpoints {
            let port_ok = e.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !port_ok {
                bad(
                    "setup",
                    "endpoints",
                    format!("{e:?} is not host:port (as db.internal:5432)"),
                );
            }
        }
        out
    }
}

/// `535`, `535.104`, `535.104.05`.
fn is_version(v: &str) -> bool {
    v.split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

impl From<yaml::Diagnostic> for Error {
    fn from(d: yaml::Diagnostic) -> Self {
        Error::Invalid(d.into())
    }
}

/// A name `useradd` takes: lower-case letters, digits, `-` and `_`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-')
}
