//! Packages: the host's package manager, what each requested package comes
//! to on this host, and the exact commands that install what is missing.
//!
//! A requested name is, in this order: present (one of its catalog commands
//! answers, whatever installed it; nothing is planned), too old (present,
//! below the minimum nova.yaml asks for), installed (its packages are there
//! though no command shows it), in conflict (a package it would install
//! clashes with one installed; nothing is planned), or to install. Only the
//! last kind reaches the plan.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::catalog::Catalog;
use crate::error::{Error, Result};

pub use crate::packages::{Manager, parse_minimum, valid_package_name};

impl Manager {
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

    /// The installed package that owns `path`, if the manager knows one.
    pub fn owner(self, path: &Path) -> Option<String> {
        let run = |program: &str, args: &[&str]| -> Option<String> {
            let out = Command::new(program).args(args).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !text.is_empty()).then_some(text)
        };
        owner_candidates(path).into_iter().find_map(|p| {
            let p = p.to_str()?.to_string();
            match self {
                Manager::Apt => run("dpkg", &["-S", &p]).and_then(|t| {
                    t.lines()
                        .next()?
                        .split_once(':')
                        .map(|(pkg, _)| pkg.trim().to_string())
                }),
                Manager::Dnf | Manager::Yum | Manager::Zypper => {
                    run("rpm", &["-qf", "--qf", "%{NAME}", &p])
                }
                Manager::Pacman => run("pacman", &["-Qoq", &p]),
                Manager::Apk => run("apk", &["info", "-W", &p]).and_then(|t| {
                    t.rsplit_once(" is owned by ")
                        .map(|(_, pkg)| pkg.trim().to_string())
                }),
                Manager::Brew => p
                    .split_once("/Cellar/")
                    .and_then(|(_, rest)| rest.split('/').next().map(String::from)),
            }
        })
    }
}

/// The names under which a package database may record the file found at
/// `path`: the path itself, the file it links to (as written and fully
/// resolved: alternatives link), and each one's other name on a merged /usr,
/// where /usr/sbin/ip and /sbin/ip are one file but dpkg knows only the name
/// its package shipped.
fn owner_candidates(path: &Path) -> Vec<std::path::PathBuf> {
    let mut found = vec![path.to_path_buf()];
    if let Ok(target) = std::fs::read_link(path) {
        found.push(match path.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        });
    }
    if let Ok(real) = std::fs::canonicalize(path) {
        found.push(real);
    }
    let mut all = Vec::new();
    for p in found {
        let other = merged_usr_alias(&p);
        for q in std::iter::once(p).chain(other) {
            if !all.contains(&q) {
                all.push(q);
            }
        }
    }
    all
}

/// `/usr/bin/x` for `/bin/x` and the other way round (bin, sbin, lib).
fn merged_usr_alias(path: &Path) -> Option<std::path::PathBuf> {
    let text = path.to_str()?;
    for top in ["bin/", "sbin/", "lib/"] {
        if let Some(rest) = text.strip_prefix(&format!("/usr/{top}")) {
            return Some(format!("/{top}{rest}").into());
        }
        if let Some(rest) = text.strip_prefix(&format!("/{top}")) {
            return Some(format!("/usr/{top}{rest}").into());
        }
    }
    None
}

#[derive(Debug, Clone, Serialize)]
pub struct Package {
    pub name: String,
    /// The installed version, when installed.
    pub installed: Option<String>,
}

/// A command that shows a requested package is already on the host.
#[derive(Debug, Clone, Serialize)]
pub struct Present {
    pub command: String,
    pub path: PathBuf,
    /// The version the command reports, when it reports one.
    pub version: Option<String>,
    /// The package that owns the file, when the package manager knows it.
    pub owner: Option<String>,
}

/// What a requested package comes to on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// A command of it answers: nothing to install.
    Present,
    /// Present, below the minimum version asked for.
    TooOld,
    /// Its packages are installed though none of its commands is on PATH.
    Installed,
    /// Installing it would clash with an installed package: nothing planned.
    Conflict,
    /// Missing: the plan installs its packages.
    Install,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Present => "present",
            State::TooOld => "too old",
            State::Installed => "installed",
            State::Conflict => "conflict",
            State::Install => "install",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Wanted {
    /// As the user wrote it: a logical name or `manager:package`.
    pub requested: String,
    pub state: State,
    /// What shows it is present (state present or too old).
    pub present: Option<Present>,
    /// Its packages on this host's manager, with their installed versions.
    pub packages: Vec<Package>,
    /// Installed packages that the packages to install would clash with.
    pub conflicts: Vec<Package>,
    /// The minimum version nova.yaml asks for, as written.
    pub minimum: Option<String>,
    /// One line for a person.
    pub detail: String,
}

/// The full path of `program` on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// The first thing in `text` that looks like a version (`v1.32.4` → `1.32.4`).
pub fn version_in(text: &str) -> Option<String> {
    static VERSION: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = VERSION.get_or_init(|| regex::Regex::new(r"\d+(?:\.\d+)+").expect("a valid regex"));
    re.find(text).map(|m| m.as_str().to_string())
}

/// Resolve what the user asked for on `manager`: logical names through the
/// catalog (satisfied first by their commands), `manager:package` as given
/// (only for this host's manager). `minimums` maps logical names to a
/// minimum version (nova.yaml's `packages:`).
pub fn resolve(
    manager: Manager,
    names: &[String],
    catalog: &Catalog,
    minimums: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Wanted>> {
    let mut out = Vec::new();
    for requested in names {
        let (packages, entry) = if let Some((m, pkg)) = requested.split_once(':') {
            if m != manager.name() {
                return Err(Error::usage(format!(
                    "--packages {requested}: this host's package manager is {}, not {m}",
                    manager.name()
                )));
            }
            if !valid_package_name(pkg) {
                return Err(Error::usage(format!(
                    "--packages {requested}: {pkg:?} is not a package name (letters, digits and + . _ - @ /, starting with a letter or digit)"
                )));
            }
            (vec![pkg.to_string()], None)
        } else {
            let Some(entry) = catalog.get(requested) else {
                return Err(Error::usage(format!(
                    "--packages {requested}: unknown package name; known: {} (or MANAGER:PACKAGE to pass one through)",
                    catalog.names().join(", ")
                )));
            };
            let Some(list) = entry.packages.get(&manager) else {
                return Err(Error::usage(format!(
                    "--packages {requested}: not packaged for {}",
                    manager.name()
                )));
            };
            (list.clone(), Some(entry))
        };
        let minimum = minimums
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(requested))
            .map(|(_, v)| v.clone());
        let packages: Vec<Package> = packages
            .into_iter()
            .map(|name| Package {
                installed: manager.installed(&name),
                name,
            })
            .collect();
        let present = entry.and_then(|e| {
            e.commands.iter().find_map(|command| {
                let path = find_on_path(command)?;
                let args: Vec<&str> = e.version_args.iter().map(String::as_str).collect();
                let version = Command::new(&path)
                    .args(&args)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .ok()
                    .and_then(|o| {
                        version_in(&String::from_utf8_lossy(&o.stdout))
                            .or_else(|| version_in(&String::from_utf8_lossy(&o.stderr)))
                    });
                Some(Present {
                    command: command.clone(),
                    owner: manager.owner(&path),
                    path,
                    version,
                })
            })
        });
        let conflicts: Vec<Package> = entry
            .and_then(|e| e.conflicts.get(&manager))
            .into_iter()
            .flatten()
            .filter_map(|name| {
                manager.installed(name).map(|v| Package {
                    name: name.clone(),
                    installed: Some(v),
                })
            })
            .collect();
        let (state, detail) = if let Some(p) = &present {
            let from = match &p.owner {
                Some(owner) => format!("package {owner}"),
                None => format!("not installed by {}", manager.name()),
            };
            let version = p.version.as_deref().unwrap_or("version unknown");
            let at = format!("{version} at {} ({from})", p.path.display());
            match (minimum.as_deref().and_then(parse_minimum), &p.version) {
                (Some(min), Some(have)) if !super::checks::version_at_least(have, &min) => (
                    State::TooOld,
                    format!("{at}; older than {min} that nova.yaml asks for"),
                ),
                _ => (State::Present, at),
            }
        } else if packages.iter().all(|p| p.installed.is_some()) {
            (
                State::Installed,
                packages
                    .iter()
                    .map(|p| format!("{} {}", p.name, p.installed.as_deref().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        } else if !conflicts.is_empty() {
            let missing: Vec<&str> = packages
                .iter()
                .filter(|p| p.installed.is_none())
                .map(|p| p.name.as_str())
                .collect();
            (
                State::Conflict,
                format!(
                    "{} would conflict with installed {}; nothing proposed",
                    missing.join(" "),
                    conflicts
                        .iter()
                        .map(|c| format!("{} {}", c.name, c.installed.as_deref().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        } else {
            (
                State::Install,
                format!(
                    "{} ({})",
                    packages
                        .iter()
                        .filter(|p| p.installed.is_none())
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    manager.name()
                ),
            )
        };
        out.push(Wanted {
            requested: requested.clone(),
            state,
            present,
            packages,
            conflicts,
            minimum,
            detail,
        });
    }
    Ok(out)
}

/// The packages to install: those of requests in state `Install` that are not installed yet.
pub fn missing(wanted: &[Wanted]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in wanted.iter().filter(|w| w.state == State::Install) {
        for p in &w.packages {
            if p.installed.is_none() && !out.contains(&p.name) {
                out.push(p.name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_looked_up_under_its_merged_usr_names_and_link_targets() {
        assert_eq!(
            merged_usr_alias(Path::new("/usr/sbin/ip")),
            Some("/sbin/ip".into())
        );
        assert_eq!(
            merged_usr_alias(Path::new("/bin/ls")),
            Some("/usr/bin/ls".into())
        );
        assert_eq!(merged_usr_alias(Path::new("/opt/x/bin/y")), None);
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let found = owner_candidates(&link);
        assert_eq!(found[0], link);
        assert!(found.contains(&real), "{found:?}");
    }

    #[test]
    fn versions_are_found_in_what_tools_print() {
        assert_eq!(
            version_in("Docker version 28.2.2, build e6534b4").as_deref(),
            Some("28.2.2")
        );
        assert_eq!(
            version_in("Client Version: v1.32.4-dispatcher").as_deref(),
            Some("1.32.4")
        );
        assert_eq!(version_in("no digits"), None);
    }

    #[test]
    fn minimums_read_as_written_in_nova_yaml() {
        assert_eq!(parse_minimum(">=24").as_deref(), Some("24"));
        assert_eq!(parse_minimum(">= 1.28").as_deref(), Some("1.28"));
        assert_eq!(parse_minimum("1.2"), Some("1.2".into()));
        assert_eq!(parse_minimum("latest"), None);
        assert_eq!(parse_minimum(">=1..2"), None);
    }

    #[test]
    fn package_names_carry_no_shell_words() {
        assert!(valid_package_name("docker.io"));
        assert!(valid_package_name("libstdc++6"));
        assert!(valid_package_name("postgresql@16"));
        assert!(!valid_package_name("bad;touch /tmp/x"));
        assert!(!valid_package_name("-y"));
        assert!(!valid_package_name(""));
    }
}
