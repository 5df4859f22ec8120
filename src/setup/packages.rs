//! Packages: the host's package manager, logical names mapped to its real
//! packages, which are installed (with versions), and the exact commands that
//! install the rest.

use std::process::Command;

use serde::Serialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Apt,
    Dnf,
    Yum,
    Zypper,
    Pacman,
    Apk,
    Brew,
}

impl Manager {
    pub const ALL: [Manager; 7] = [
        Manager::Apt,
        Manager::Dnf,
        Manager::Yum,
        Manager::Zypper,
        Manager::Pacman,
        Manager::Apk,
        Manager::Brew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Manager::Apt => "apt",
            Manager::Dnf => "dnf",
            Manager::Yum => "yum",
            Manager::Zypper => "zypper",
            Manager::Pacman => "pacman",
            Manager::Apk => "apk",
            Manager::Brew => "brew",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Manager::Apt => "apt-get",
            other => other.name(),
        }
    }

    /// The first manager found on PATH, in the order of [`Manager::ALL`].
    pub fn detect() -> Option<Manager> {
        Manager::ALL
            .into_iter()
            .find(|m| crate::blueprints::model::on_path(m.program()))
    }

    /// The installed version of `package`, if it is installed.
    pub fn installed(self, package: &str) -> Option<String> {
        let run = |program: &str, args: &[&str]| -> Option<String> {
            let out = Command::new(program).args(args).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        match self {
            Manager::Apt => {
                let text = run(
                    "dpkg-query",
                    &["-W", "-f", "${Status}\t${Version}", package],
                )?;
                let (status, version) = text.split_once('\t')?;
                status.ends_with(" installed").then(|| version.to_string())
            }
            Manager::Dnf | Manager::Yum | Manager::Zypper => {
                run("rpm", &["-q", "--qf", "%{VERSION}-%{RELEASE}", package])
            }
            Manager::Pacman => run("pacman", &["-Q", package])
                .and_then(|t| t.split_whitespace().nth(1).map(String::from)),
            Manager::Apk => run("apk", &["info", "-e", "-v", package])
                .map(|t| t.trim_start_matches(&format!("{package}-")).to_string()),
            Manager::Brew => run("brew", &["list", "--versions", package])
                .and_then(|t| t.split_whitespace().nth(1).map(String::from)),
        }
    }

    /// The commands that install `packages` (as root; `sudo` in front otherwise).
    pub fn install_commands(self, packages: &[String]) -> Vec<Vec<String>> {
        let mut cmds: Vec<Vec<String>> = match self {
            Manager::Apt => vec![
                vec!["apt-get".into(), "update".into()],
                ["apt-get", "install", "-y", "--no-install-recommends"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(packages.iter().cloned())
                    .collect(),
            ],
            Manager::Dnf | Manager::Yum => vec![
                [self.program(), "install", "-y"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(packages.iter().cloned())
                    .collect(),
            ],
            Manager::Zypper => vec![
                ["zypper", "--non-interactive", "install"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(packages.iter().cloned())
                    .collect(),
            ],
            Manager::Pacman => vec![
                ["pacman", "-S", "--noconfirm", "--needed"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(packages.iter().cloned())
                    .collect(),
            ],
            Manager::Apk => vec![
                ["apk", "add"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(packages.iter().cloned())
                    .collect(),
            ],
            Manager::Brew => vec![
                ["brew", "install"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain(packages.iter().cloned())
                    .collect(),
            ],
        };
        if self != Manager::Brew && !nix::unistd::Uid::effective().is_root() {
            for c in &mut cmds {
                c.insert(0, "sudo".into());
            }
        }
        cmds
    }
}

/// Logical names and their packages per manager (`None`: not packaged there).
const CATALOG: &[(&str, [Option<&[&str]>; 7])] = &[
    (
        "docker",
        [
            Some(&["docker.io"]),
            Some(&["moby-engine"]),
            Some(&["docker"]),
            Some(&["docker"]),
            Some(&["docker"]),
            Some(&["docker"]),
            Some(&["docker"]),
        ],
    ),
    (
        "kubernetes",
        [
            Some(&["kubernetes-client"]),
            Some(&["kubernetes-client"]),
            Some(&["kubernetes-client"]),
            Some(&["kubernetes-client"]),
            Some(&["kubectl"]),
            Some(&["kubectl"]),
            Some(&["kubernetes-cli"]),
        ],
    ),
    (
        "python",
        [
            Some(&["python3", "python3-pip", "python3-venv"]),
            Some(&["python3", "python3-pip"]),
            Some(&["python3", "python3-pip"]),
            Some(&["python3", "python3-pip"]),
            Some(&["python", "python-pip"]),
            Some(&["python3", "py3-pip"]),
            Some(&["python"]),
        ],
    ),
    (
        "git",
        [
            Some(&["git"]),
            Some(&["git"]),
            Some(&["git"]),
            Some(&["git"]),
            Some(&["git"]),
            Some(&["git"]),
            Some(&["git"]),
        ],
    ),
    (
        "wireguard",
        [
            Some(&["wireguard-tools"]),
            Some(&["wireguard-tools"]),
            Some(&["wireguard-tools"]),
            Some(&["wireguard-tools"]),
            Some(&["wireguard-tools"]),
            Some(&["wireguard-tools"]),
            Some(&["wireguard-tools"]),
        ],
    ),
    (
        "nvidia-container-toolkit",
        [
            Some(&["nvidia-container-toolkit"]),
            Some(&["nvidia-container-toolkit"]),
            Some(&["nvidia-container-toolkit"]),
            Some(&["nvidia-container-toolkit"]),
            Some(&["nvidia-container-toolkit"]),
            None,
            None,
        ],
    ),
    (
        "redis",
        [
            Some(&["redis-server"]),
            Some(&["redis"]),
            Some(&["redis"]),
            Some(&["redis"]),
            Some(&["redis"]),
            Some(&["redis"]),
            Some(&["redis"]),
        ],
    ),
    (
        "postgresql",
        [
            Some(&["postgresql"]),
            Some(&["postgresql-server"]),
            Some(&["postgresql-server"]),
            Some(&["postgresql-server"]),
            Some(&["postgresql"]),
            Some(&["postgresql"]),
            Some(&["postgresql"]),
        ],
    ),
    (
        "tree",
        [
            Some(&["tree"]),
            Some(&["tree"]),
            Some(&["tree"]),
            Some(&["tree"]),
            Some(&["tree"]),
            Some(&["tree"]),
            Some(&["tree"]),
        ],
    ),
];

pub fn known_names() -> Vec<&'static str> {
    CATALOG.iter().map(|(n, _)| *n).collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Package {
    pub name: String,
    /// The installed version, when installed.
    pub installed: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Wanted {
    /// As the user wrote it: a logical name or `manager:package`.
    pub requested: String,
    pub packages: Vec<Package>,
}

/// Resolve what the user asked for on `manager`: logical names through the
/// catalog, `manager:package` as given (only for this host's manager).
pub fn resolve(manager: Manager, names: &[String]) -> Result<Vec<Wanted>> {
    let index = Manager::ALL
        .iter()
        .position(|m| *m == manager)
        .expect("every manager is listed");
    let mut out = Vec::new();
    for requested in names {
        let packages: Vec<String> = if let Some((m, pkg)) = requested.split_once(':') {
            if m != manager.name() {
                return Err(Error::usage(format!(
                    "--packages {requested}: this host's package manager is {}, not {m}",
                    manager.name()
                )));
            }
            if pkg.is_empty() || pkg.starts_with('-') {
                return Err(Error::usage(format!(
                    "--packages {requested}: give a package name after {m}:"
                )));
            }
            vec![pkg.to_string()]
        } else {
            let Some((_, per)) = CATALOG
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(requested))
            else {
                return Err(Error::usage(format!(
                    "--packages {requested}: unknown package name; known: {} (or MANAGER:PACKAGE to pass one through)",
                    known_names().join(", ")
                )));
            };
            match per[index] {
                Some(list) => list.iter().map(|s| s.to_string()).collect(),
                None => {
                    return Err(Error::usage(format!(
                        "--packages {requested}: not packaged for {}",
                        manager.name()
                    )));
                }
            }
        };
        out.push(Wanted {
            requested: requested.clone(),
            packages: packages
                .into_iter()
                .map(|name| Package {
                    installed: manager.installed(&name),
                    name,
                })
                .collect(),
        });
    }
    Ok(out)
}

/// The packages of `wanted` that are not installed yet.
pub fn missing(wanted: &[Wanted]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in wanted {
        for p in &w.packages {
            if p.installed.is_none() && !out.contains(&p.name) {
                out.push(p.name.clone());
            }
        }
    }
    out
}
