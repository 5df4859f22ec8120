//! The package catalog: what a logical package name (`docker`, `kubernetes`)
//! means on each package manager, which commands prove it is already on the
//! host whatever installed it, and which installed packages it must never be
//! installed beside.
//!
//! The built-in entries cover what nova's own blueprints install; nova.yaml's
//! `setup.catalog` adds entries or replaces built-in ones by name. The one
//! invariant: a name is satisfied by its commands first, so nova never plans
//! a second copy of a tool the host already has from another source.

use std::collections::BTreeMap;

use super::packages::Manager;

pub use crate::packages::Entry;

/// The catalog in force: built-in entries, then the workspace's.
#[derive(Debug, Clone)]
pub struct Catalog {
    entries: BTreeMap<String, Entry>,
}

impl Catalog {
    pub fn new(workspace: &BTreeMap<String, Entry>) -> Self {
        let mut entries = built_in();
        for (name, entry) in workspace {
            entries.insert(name.to_ascii_lowercase(), entry.clone());
        }
        Catalog { entries }
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(&name.to_ascii_lowercase())
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }
}

/// `(name, commands, version args, [(manager, packages)], [(manager, conflicts)])`.
type Row = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    &'static [(Manager, &'static [&'static str])],
    &'static [(Manager, &'static [&'static str])],
);

use Manager::{Apk, Apt, Brew, Dnf, Pacman, Yum, Zypper};

/// Every manager packaging it under the same name.
macro_rules! same_everywhere {
    ($($p:literal),+) => {
        &[
            (Apt, &[$($p),+]), (Dnf, &[$($p),+]), (Yum, &[$($p),+]), (Zypper, &[$($p),+]),
            (Pacman, &[$($p),+]), (Apk, &[$($p),+]), (Brew, &[$($p),+]),
        ]
    };
}

const BUILT_IN: &[Row] = &[
    (
        "docker",
        &["docker"],
        &["--version"],
        &[
            (Apt, &["docker.io"]),
            (Dnf, &["moby-engine"]),
            (Yum, &["docker"]),
            (Zypper, &["docker"]),
            (Pacman, &["docker"]),
            (Apk, &["docker"]),
            (Brew, &["docker"]),
        ],
        // Docker's own packages, Moby's and podman's docker shim all own
        // /usr/bin/docker and the daemon's socket.
        &[
            (
                Apt,
                &[
                    "docker-ce",
                    "docker-ce-cli",
                    "moby-engine",
                    "moby-cli",
                    "podman-docker",
                ],
            ),
            (
                Dnf,
                &["docker-ce", "docker-ce-cli", "podman-docker", "docker"],
            ),
            (
                Yum,
                &["docker-ce", "docker-ce-cli", "podman-docker", "moby-engine"],
            ),
            (Zypper, &["docker-ce", "podman-docker"]),
            (Pacman, &["docker-desktop"]),
        ],
    ),
    (
        "kubernetes",
        &["kubectl"],
        &["version", "--client"],
        &[
            (Apt, &["kubernetes-client"]),
            (Dnf, &["kubernetes-client"]),
            (Yum, &["kubernetes-client"]),
            (Zypper, &["kubernetes-client"]),
            (Pacman, &["kubectl"]),
            (Apk, &["kubectl"]),
            (Brew, &["kubernetes-cli"]),
        ],
        // Both ship /usr/bin/kubectl.
        &[
            (Apt, &["kubectl"]),
            (Dnf, &["kubectl"]),
            (Yum, &["kubectl"]),
            (Zypper, &["kubectl"]),
        ],
    ),
    (
        "python",
        &["python3"],
        &["--version"],
        &[
            (Apt, &["python3", "python3-pip", "python3-venv"]),
            (Dnf, &["python3", "python3-pip"]),
            (Yum, &["python3", "python3-pip"]),
            (Zypper, &["python3", "python3-pip"]),
            (Pacman, &["python", "python-pip"]),
            (Apk, &["python3", "py3-pip"]),
            (Brew, &["python"]),
        ],
        &[],
    ),
    (
        // Python's venv module with its pip bootstrap, which Debian ships apart.
        "python-venv",
        &[],
        &[],
        &[
            (Apt, &["python3-venv"]),
            (Dnf, &["python3"]),
            (Yum, &["python3"]),
            (Zypper, &["python3"]),
            (Pacman, &["python"]),
            (Apk, &["python3"]),
            (Brew, &["python"]),
        ],
        &[],
    ),
    (
        "nodejs",
        &["npm"],
        &["--version"],
        &[
            (Apt, &["nodejs", "npm"]),
            (Dnf, &["nodejs", "npm"]),
            (Yum, &["nodejs", "npm"]),
            (Zypper, &["nodejs", "npm"]),
            (Pacman, &["nodejs", "npm"]),
            (Apk, &["nodejs", "npm"]),
            (Brew, &["node"]),
        ],
        &[],
    ),
    (
        "curl",
        &["curl"],
        &["--version"],
        same_everywhere!("curl"),
        &[],
    ),
    (
        "git",
        &["git"],
        &["--version"],
        same_everywhere!("git"),
        &[],
    ),
    (
        "wireguard",
        &["wg"],
        &["--version"],
        same_everywhere!("wireguard-tools"),
        &[],
    ),
    (
        "nvidia-container-toolkit",
        &["nvidia-ctk"],
        &["--version"],
        &[
            (Apt, &["nvidia-container-toolkit"]),
            (Dnf, &["nvidia-container-toolkit"]),
            (Yum, &["nvidia-container-toolkit"]),
            (Zypper, &["nvidia-container-toolkit"]),
            (Pacman, &["nvidia-container-toolkit"]),
        ],
        &[],
    ),
    (
        "redis",
        &["redis-server"],
        &["--version"],
        &[
            (Apt, &["redis-server"]),
            (Dnf, &["redis"]),
            (Yum, &["redis"]),
            (Zypper, &["redis"]),
            (Pacman, &["redis"]),
            (Apk, &["redis"]),
            (Brew, &["redis"]),
        ],
        // Valkey's packages replace Redis's files on some distributions.
        &[(Apt, &["valkey-server"]), (Dnf, &["valkey"])],
    ),
    (
        "postgresql",
        // Debian keeps the server's binaries off PATH; its cluster tools are on it.
        &["pg_ctlcluster", "postgres"],
        &["--version"],
        &[
            (Apt, &["postgresql"]),
            (Dnf, &["postgresql-server"]),
            (Yum, &["postgresql-server"]),
            (Zypper, &["postgresql-server"]),
            (Pacman, &["postgresql"]),
            (Apk, &["postgresql"]),
            (Brew, &["postgresql"]),
        ],
        &[],
    ),
    (
        "tree",
        &["tree"],
        &["--version"],
        same_everywhere!("tree"),
        &[],
    ),
    (
        "iproute2",
        &["ip"],
        &["-V"],
        &[
            (Apt, &["iproute2"]),
            (Dnf, &["iproute"]),
            (Yum, &["iproute"]),
            (Zypper, &["iproute2"]),
            (Pacman, &["iproute2"]),
            (Apk, &["iproute2"]),
        ],
        &[],
    ),
    (
        "pciutils",
        &["lspci"],
        &["--version"],
        same_everywhere!("pciutils"),
        &[],
    ),
    (
        "ethtool",
        &["ethtool"],
        &["--version"],
        same_everywhere!("ethtool"),
        &[],
    ),
    (
        "lshw",
        &["lshw"],
        &["-version"],
        same_everywhere!("lshw"),
        &[],
    ),
    (
        "ufw",
        &["ufw"],
        &["--version"],
        &[
            (Apt, &["ufw"]),
            (Dnf, &["ufw"]),
            (Zypper, &["ufw"]),
            (Pacman, &["ufw"]),
            (Apk, &["ufw"]),
        ],
        // Two firewall front-ends fight over one ruleset.
        &[(Apt, &["firewalld"]), (Dnf, &["firewalld"])],
    ),
    (
        "clamav",
        &["clamscan"],
        &["--version"],
        &[
            (Apt, &["clamav", "clamav-freshclam"]),
            (Dnf, &["clamav", "clamav-update"]),
            (Yum, &["clamav", "clamav-update"]),
            (Zypper, &["clamav"]),
            (Pacman, &["clamav"]),
            (Apk, &["clamav"]),
            (Brew, &["clamav"]),
        ],
        &[],
    ),
    (
        "restic",
        &["restic"],
        &["version"],
        same_everywhere!("restic"),
        &[],
    ),
];

fn built_in() -> BTreeMap<String, Entry> {
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let per_manager = |rows: &[(Manager, &[&str])]| {
        rows.iter()
            .map(|(m, list)| (*m, owned(list)))
            .collect::<BTreeMap<_, _>>()
    };
    BUILT_IN
        .iter()
        .map(|(name, commands, version_args, packages, conflicts)| {
            (
                name.to_string(),
                Entry {
                    commands: owned(commands),
                    version_args: owned(version_args),
                    packages: per_manager(packages),
                    conflicts: per_manager(conflicts),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::default_version_args;

    #[test]
    fn every_built_in_entry_is_proven_by_a_command_and_packaged_by_apt_or_dnf() {
        for (name, entry) in built_in() {
            // A module has no command of its own: its package proves it.
            assert!(
                !entry.commands.is_empty() || name == "python-venv",
                "{name} has no command"
            );
            assert!(
                entry.packages.contains_key(&Apt) || entry.packages.contains_key(&Dnf),
                "{name}"
            );
        }
    }

    #[test]
    fn a_workspace_entry_replaces_a_built_in_one() {
        let mut mine = BTreeMap::new();
        let entry = Entry {
            commands: vec!["dockerd".into()],
            version_args: default_version_args(),
            packages: BTreeMap::from([(Apt, vec!["docker-ce".into()])]),
            conflicts: BTreeMap::new(),
        };
        mine.insert("Docker".to_string(), entry.clone());
        assert_eq!(Catalog::new(&mine).get("docker"), Some(&entry));
    }
}
