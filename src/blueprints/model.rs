//! The blueprint format: an agent template and its idempotent tasks.
//!
//! Parsing is strict: unknown fields are errors, and the types that accept more
//! than one shape (commands, conditions, durations, sizes) explain the shapes
//! they accept when given something else. A task's `run` and `check` are argv
//! lists; a shell line is only accepted through an explicit `shell:` key, so
//! nothing is ever passed to `sh -c` by accident.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    pub name: String,
    pub role: String,
    /// The plan this agent belongs to; absent means the workspace's default plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    pub phase: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub skills: Vec<String>,
    /// Agents (`planner`) or tasks of agents (`nova/python`) this agent waits
    /// for; it does not start when one of them failed.
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub definition_of_done: Vec<String>,
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
}

impl Blueprint {
    /// The agents this one waits for, lower-cased, each once: its
    /// `depends_on` entries without their `/task`.
    pub fn dependency_agents(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for dep in &self.depends_on {
            let agent = split_dependency(dep).0.to_lowercase();
            if !out.contains(&agent) {
                out.push(agent);
            }
        }
        out
    }
}

/// A `depends_on` entry as (agent, task): `nova/python` → (`nova`, `python`).
pub fn split_dependency(dep: &str) -> (&str, Option<&str>) {
    match dep.split_once('/') {
        Some((agent, task)) => (agent, Some(task)),
        None => (dep, None),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory a task of this agent may use before it is stopped, as `512MiB` or `2GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bytesize::ByteSize>,
    /// Wall time a task of this agent may take before it is stopped, as `90s` or `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time: Option<HumanDuration>,
    /// GPUs the agent needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: String,
    pub title: String,
    /// The command that performs the step (used with `--apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<CommandSpec>,
    /// The command that tells whether the step is done: exit 0 means done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CommandSpec>,
    /// Conditions under which the task applies; otherwise it is skipped.
    #[serde(default, skip_serializing_if = "When::is_empty")]
    pub when: When,
    /// What the fix needs; when something is missing the fix is not run and
    /// the task is not done, saying what it needs.
    #[serde(default, skip_serializing_if = "Requires::is_empty")]
    pub requires: Requires,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub retries: u32,
    /// The task needs root: it runs as root where policy allows its role
    /// that; every other task runs as the service user when nova is root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_as_root: bool,
}

/// A command: an argv list, or a shell line under an explicit `shell:` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandSpec {
    /// The command as one line, for display.
    pub fn display(&self) -> String {
        match self {
            CommandSpec::Argv(argv) => argv
                .iter()
                .map(|a| {
                    if a.is_empty() || a.contains([' ', '"', '\'', '$']) {
                        format!("{a:?}")
                    } else {
                        a.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            CommandSpec::Shell(line) => format!("sh -c {line:?}"),
        }
    }
}

const COMMAND_SHAPES: &str =
    "an argv list such as [cargo, test] or a mapping {shell: \"a shell line\"}";

impl<'de> Deserialize<'de> for CommandSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(COMMAND_SHAPES)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandSpec, E> {
                Err(E::custom(format!(
                    "a command must be {COMMAND_SHAPES}; the plain string {v:?} is neither (write [prog, arg] or shell: ...)"
                )))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandSpec, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                if argv.first().is_none_or(|p| p.trim().is_empty()) {
                    return Err(de::Error::custom(
                        "a command's argv list must start with a program name",
                    ));
                }
                Ok(CommandSpec::Argv(argv))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CommandSpec, A::Error> {
                let mut shell = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "shell" {
                        return Err(de::Error::unknown_field(&key, &["shell"]));
                    }
                    shell = Some(map.next_value::<String>()?);
                }
                match shell {
                    Some(line) if !line.trim().is_empty() => Ok(CommandSpec::Shell(line)),
                    Some(_) => Err(de::Error::custom("`shell:` must not be empty")),
                    None => Err(de::Error::missing_field("shell")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for CommandSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            CommandSpec::Argv(argv) => argv.serialize(s),
            CommandSpec::Shell(line) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("shell", line)?;
                map.end()
            }
        }
    }
}

/// Conditions for a task to apply. Each key takes one value or a list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// True when any of these paths exists (relative to the task's folder).
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub file: Names,
    /// True when every one of these programs is on `PATH`.
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub command: Names,
    /// True when every one of these environment variables is set and not empty.
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub env: Names,
    /// True when the operating system is one of these (`linux`, `macos`, ...).
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub os: Names,
    /// With `true`: true when the task's folder is in a git work tree (it or
    /// a folder above it holds `.git`), so that a git command checks the
    /// project rather than failing for want of a repository.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub git: bool,
}

impl When {
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
            && self.command.is_empty()
            && self.env.is_empty()
            && self.os.is_empty()
            && !self.git
    }

    /// `None` when the task applies on this host in folder `dir`, else why not.
    pub fn unmet(&self, dir: &std::path::Path) -> Option<String> {
        if !self.os.is_empty() && !self.os.iter().any(|o| o == std::env::consts::OS) {
            return Some(format!("only on {}", self.os.join(", ")));
        }
        if !self.file.is_empty() && !self.file.iter().any(|f| dir.join(f).exists()) {
            return Some(format!("no {} here", self.file.join(" or ")));
        }
        if let Some(missing) = self.command.iter().find(|c| !program_found(dir, c)) {
            return Some(format!("{missing} is not on PATH"));
        }
        if let Some(unset) = self.env.iter().find(|v| !env_set(v)) {
            return Some(format!("{unset} is not set"));
        }
        if self.git && !in_git_work_tree(dir) {
            return Some("not in a git work tree".to_string());
        }
        None
    }
}

/// Whether `dir` or a folder above it holds `.git` (a folder, or the file
/// a linked work tree or submodule has), as git itself looks for it.
fn in_git_work_tree(dir: &std::path::Path) -> bool {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.ancestors().any(|d| d.join(".git").exists())
}

/// What a task's fix needs to run. Each key takes one value or a list, and
/// every value must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Files that must exist (relative to the task's folder).
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub file: Names,
    /// Programs that must be on `PATH`.
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub command: Names,
    /// Environment variables that must be set and not empty.
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub env: Names,
    /// An NVIDIA GPU must be on the host's PCI bus (driver or not).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gpu: bool,
    /// systemd must be the running service manager (`systemctl` works).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub systemd: bool,
    /// Services that must accept TCP connections, as `HOST:PORT`.
    #[serde(default, skip_serializing_if = "Names::is_empty")]
    pub tcp: Names,
}

impl Requires {
    pub fn is_empty(&self) -> bool {
        self.file.is_empty()
            && self.command.is_empty()
            && self.env.is_empty()
            && !self.gpu
            && !self.systemd
            && self.tcp.is_empty()
    }

    /// `None` when the fix has all it needs in folder `dir`, else what is
    /// missing (`A2F_HOME set, docker on PATH`).
    pub fn missing(&self, dir: &std::path::Path) -> Option<String> {
        let mut missing: Vec<String> = Vec::new();
        if self.gpu && !nvidia_gpu_present() {
            missing.push("an NVIDIA GPU".into());
        }
        if self.systemd && !systemd_running() {
            missing.push("systemd running as the service manager".into());
        }
        missing.extend(
            self.env
                .iter()
                .filter(|v| !env_set(v))
                .map(|v| format!("{v} set")),
        );
        missing.extend(
            self.command
                .iter()
                .filter(|c| !program_found(dir, c))
                .map(|c| {
                    if c.contains('/') {
                        format!("the program {c}")
                    } else {
                        format!("{c} on PATH")
                    }
                }),
        );
        missing.extend(
            self.file
                .iter()
                .filter(|f| !dir.join(f).exists())
                .map(|f| format!("the file {f}")),
        );
        missing.extend(
            self.tcp
                .iter()
                .filter(|a| !accepts_tcp(a))
                .map(|a| format!("a service listening on {a}")),
        );
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

/// An NVIDIA display or 3D controller on the PCI bus, as sysfs lists it:
/// seen before any driver is installed, which is when a fix needs to know.
fn nvidia_gpu_present() -> bool {
    let Ok(devices) = std::fs::read_dir("/sys/bus/pci/devices") else {
        return false;
    };
    devices.flatten().any(|d| {
        let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default();
        // Class 0x03xxxx is a display controller (VGA 0x0300, 3D 0x0302).
        read("vendor").trim() == "0x10de" && read("class").trim().starts_with("0x03")
    })
}

/// Whether `addr` (`HOST:PORT`) takes a TCP connection within a second.
fn accepts_tcp(addr: &str) -> bool {
    use std::net::ToSocketAddrs;
    let timeout = std::time::Duration::from_secs(1);
    addr.to_socket_addrs()
        .is_ok_and(|mut all| all.any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok()))
}

/// systemd's own test (`sd_booted`): it made this folder when it started.
fn systemd_running() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

/// Whether variable `name` is set and not empty.
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Whether `program` can be run from the task's folder `dir`: a path
/// (`.venv/bin/python`) is relative to it, a bare name is looked up on `PATH`.
fn program_found(dir: &std::path::Path, program: &str) -> bool {
    if program.contains('/') {
        dir.join(program).is_file()
    } else {
        on_path(program)
    }
}

pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// One name or a list of names: a blueprint may write `env: CI` or
/// `env: [CI, HOME]`. Written back as a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Names(pub Vec<String>);

impl Names {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Names {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a string or a list of strings")]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(Names(match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }))
    }
}

pub use crate::yaml::HumanDuration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_git_condition_holds_in_a_work_tree_and_below_it() {
        let when = When {
            git: true,
            ..When::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("a/b");
        std::fs::create_dir_all(&inner).unwrap();
        assert_eq!(when.unmet(&inner), Some("not in a git work tree".into()));
        // A linked work tree's `.git` is a file naming the repository.
        std::fs::write(dir.path().join("a/.git"), "gitdir: /elsewhere\n").unwrap();
        assert_eq!(when.unmet(&inner), None);
        assert_eq!(when.unmet(&dir.path().join("a")), None);
        assert!(when.unmet(dir.path()).is_some());
    }

    #[test]
    fn a_required_service_is_there_while_something_listens_on_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requires = Requires {
            tcp: Names(vec![addr.clone()]),
            command: Names(vec!["bin/tool".into()]),
            ..Requires::default()
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/tool"), "").unwrap();
        assert_eq!(requires.missing(dir.path()), None);
        drop(listener);
        assert_eq!(
            requires.missing(dir.path()),
            Some(format!("a service listening on {addr}"))
        );
        // A program given as a path is looked for in the task's folder.
        std::fs::remove_file(dir.path().join("bin/tool")).unwrap();
        assert!(
            requires
                .missing(dir.path())
                .unwrap()
                .starts_with("the program bin/tool, ")
        );
    }
}
