//! Firewall ports and service users: what is already in place, and the
//! command that adds what is not (ufw, firewalld or nftables; useradd).

use std::process::Command;

use crate::blueprints::model::on_path;
use crate::error::{Error, Result};

pub struct HostStep {
    pub what: String,
    /// What the policy and the audit log name (`22/tcp`, `nova-agent`).
    pub resource: String,
    /// Empty when no tool on this host can do it.
    pub command: Vec<String>,
    /// Already in place: nothing to do.
    pub already: bool,
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// `22/tcp`, `8080` (tcp) or `53/udp`, checked.
fn parse_port(text: &str) -> Result<(u16, &'static str)> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
    let proto = match proto {
        "tcp" => "tcp",
        "udp" => "udp",
        other => {
            return Err(Error::usage(format!(
                "nova.yaml setup.open_ports: {text:?}: protocol {other:?} is neither tcp nor udp"
            )));
        }
    };
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
        Error::usage(format!(
            "nova.yaml setup.open_ports: {text:?} is not a port (1-65535, optionally /tcp or /udp)"
        ))
    })?;
    Ok((port, proto))
}

fn sudo(mut argv: Vec<String>) -> Vec<String> {
    if !nix::unistd::Uid::effective().is_root() {
        argv.insert(0, "sudo".into());
    }
    argv
}

pub fn firewall_steps(ports: &[String]) -> Result<Vec<HostStep>> {
    let mut steps = Vec::new();
    let tool = ["ufw", "firewall-cmd", "nft"]
        .into_iter()
        .find(|t| on_path(t));
    for text in ports {
        let (port, proto) = parse_port(text)?;
        let spec = format!("{port}/{proto}");
        let (already, command): (bool, Vec<&str>) = match tool {
            Some("ufw") => (
                output("ufw", &["status"]).is_some_and(|s| s.lines().any(|l| l.starts_with(&spec))),
                vec!["ufw", "allow", &spec],
            ),
            Some("firewall-cmd") => (
                output("firewall-cmd", &["--query-port", &spec]).is_some(),
                vec!["firewall-cmd", "--permanent", "--add-port", &spec],
            ),
            Some(_) => {
                let rule = format!("{proto} dport {port} accept");
                (
                    output("nft", &["list", "ruleset"]).is_some_and(|s| s.contains(&rule)),
                    vec![
                        "nft",
                        "add",
                        "rule",
                        "inet",
                        "filter",
                        "input",
                        proto,
                        "dport",
                        &spec[..spec.find('/').unwrap_or(spec.len())],
                        "accept",
                    ],
                )
            }
            None => (false, vec![]),
        };
        steps.push(HostStep {
            what: format!("open port {spec}"),
            resource: spec.clone(),
            command: if command.is_empty() {
                Vec::new()
            } else {
                sudo(command.into_iter().map(String::from).collect())
            },
            already,
        });
    }
    Ok(steps)
}

pub use crate::config::valid_user_name;

/// Steps that create `users` (system users without a login), and the
/// workspace's `service_user`, which gets a home of its own under /var/lib
/// (agents' tools keep caches there).
pub fn user_steps(users: &[String], service_user: Option<&str>) -> Result<Vec<HostStep>> {
    let service = service_user.filter(|u| *u != "root");
    let mut all: Vec<(&str, bool)> = users.iter().map(|u| (u.as_str(), false)).collect();
    if let Some(s) = service
        && !users.iter().any(|u| u == s)
    {
        all.push((s, true));
    }
    all.into_iter()
        .map(|(name, is_service)| {
            if !valid_user_name(name) {
                return Err(Error::usage(format!(
                    "nova.yaml setup.users: {name:?} is not a valid user name (lower-case letters, digits, - and _)"
                )));
            }
            let exists = output("id", &["-u", name]).is_some();
            let home: Vec<String> = if is_service || service == Some(name) {
                vec!["--create-home".into(), "--home-dir".into(), format!("/var/lib/{name}")]
            } else {
                vec!["--no-create-home".into()]
            };
            let command = if on_path("useradd") {
                let mut argv = vec!["useradd".to_string(), "--system".into()];
                argv.extend(home);
                argv.extend(["--shell".into(), "/usr/sbin/nologin".into(), name.to_string()]);
                sudo(argv)
            } else {
                Vec::new()
            };
            Ok(HostStep {
                what: format!("create service user {name}"),
                resource: name.to_string(),
                command,
                already: exists,
            })
        })
        .collect()
}
