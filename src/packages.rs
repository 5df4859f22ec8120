//! Package managers and package catalog entries as data (what nova.yaml's
//! `setup.catalog` may declare), and the rules for package names and
//! minimum versions. A leaf: `setup` adds how to query and drive each
//! manager, and the built-in catalog.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

    pub(crate) fn program(self) -> &'static str {
        match self {
            Manager::Apt => "apt-get",
            other => other.name(),
        }
    }
}

/// One logical package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Commands that show the package is present (any one of them on PATH).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Arguments that make the first command print its version.
    #[serde(default = "default_version_args")]
    pub version_args: Vec<String>,
    /// Its packages per manager (`apt: [docker.io]`); a manager missing here
    /// does not package it.
    #[serde(default)]
    pub packages: BTreeMap<Manager, Vec<String>>,
    /// Installed packages, per manager, that these packages conflict with.
    #[serde(default)]
    pub conflicts: BTreeMap<Manager, Vec<String>>,
}

pub(crate) fn default_version_args() -> Vec<String> {
    vec!["--version".into()]
}

/// A package name as a manager may take it: no shell words, no option.
pub fn valid_package_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+._-@/".contains(&b))
}

/// `>=24`, `>= 1.28` or `24`: the version it asks for at least.
pub fn parse_minimum(spec: &str) -> Option<String> {
    let v = spec.trim().trim_start_matches(">=").trim();
    (!v.is_empty()
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| v.to_string())
}
