//! The deployment files in `deploy/` checked as far as this machine allows:
//! the Kubernetes manifests against the Kubernetes schemas
//! (`kubernetes-validate --strict`, installed by scripts/test), the systemd
//! units with `systemd-analyze verify`, every nova flag they use against
//! nova's own parser, and the Dockerfile's shape (there is no Docker engine
//! here to build it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let python = std::env::var("NOVA_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let tool = Path::new(&python).with_file_name("kubernetes-validate");
    let out = Command::new(&tool)
        .arg("--strict")
        .args(manifests())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): scripts/test installs kubernetes-validate and names its Python in NOVA_TEST_PYTHON",
                tool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for kind in [
        "statefulset/nova-redis",
        "deployment/nova-serve",
        "service/nova-serve",
        "deployment/nova-worker",
        "poddisruptionbudget/nova-worker",
        "horizontalpodautoscaler/nova-worker",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
}

/// Every container's command line in the manifests: (file, argv).
fn container_commands() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc).unwrap();
            let containers = &doc["spec"]["template"]["spec"]["containers"];
            for c in containers.as_sequence().into_iter().flatten() {
                let image = c["image"].as_str().unwrap_or_default();
                let strings = |v: &serde_yaml::Value| -> Vec<String> {
                    v.as_sequence()
                        .into_iter()
                        .flatten()
                        .map(|s| s.as_str().unwrap().to_string())
                        .collect()
                };
                if image.contains("nova") {
                    out.push((file.display().to_string(), strings(&c["args"])));
                }
                for probe in ["readinessProbe", "livenessProbe"] {
                    let command = strings(&c[probe]["exec"]["command"]);
                    if command.first().is_some_and(|c| c == "nova") {
                        out.push((file.display().to_string(), command[1..].to_vec()));
                    }
                }
            }
        }
    }
    out
}

use serde::Deserialize;

/// The `--flags` of an argv, without their values.
fn flags(argv: &[String]) -> Vec<String> {
    argv.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

/// Whether `nova <command> --help` lists every flag in `argv`.
fn nova_takes(argv: &[String]) -> Vec<String> {
    let command: Vec<&str> = argv
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let ws = common::Workspace::new();
    let mut help_args = command.clone();
    help_args.push("--help");
    let help = ws.run(&help_args).success().stdout;
    flags(argv)
        .into_iter()
        .filter(|f| !help.contains(&format!("{f} ")) && !help.contains(&format!("{f}\n")))
        .collect()
}

#[test]
fn every_nova_flag_in_the_deploy_files_is_one_nova_takes() {
    let mut checked = 0;
    for (file, argv) in container_commands() {
        let unknown = nova_takes(&argv);
        assert!(unknown.is_empty(), "{file}: nova {argv:?} uses {unknown:?}");
        checked += 1;
    }
    assert!(checked >= 4, "serve, worker and the probes: {checked}");
    for unit in ["nova-serve.service", "nova-worker.service"] {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit)).unwrap();
        // ExecStart= and its continuation lines (ending in a backslash).
        let mut exec = String::new();
        for line in text.split("ExecStart=").nth(1).unwrap().lines() {
            let (part, more) = match line.trim_end().strip_suffix('\\') {
                Some(part) => (part, true),
                None => (line, false),
            };
            exec.push_str(part);
            exec.push(' ');
            if !more {
                break;
            }
        }
        let argv: Vec<String> = exec.split_whitespace().skip(1).map(String::from).collect();
        let unknown = nova_takes(&argv);
        assert!(unknown.is_empty(), "{unit}: {argv:?} uses {unknown:?}");
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nova = assert_cmd::cargo::cargo_bin("nova");
    let mut units = Vec::new();
    for unit in ["nova-serve.service", "nova-worker.service"] {
        // The test's own binary where the unit expects the installed one.
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit))
            .unwrap()
            .replace("/usr/local/bin/nova", nova.to_str().unwrap());
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown or misspelt settings are only warnings: none are allowed.
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_as_a_user() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let from: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(
        from.len() >= 2,
        "a build stage and a runtime stage: {from:?}"
    );
    assert!(from[0].contains(" AS build"), "{from:?}");
    assert!(text.contains("cargo build --release --locked"));
    assert!(text.contains("COPY --from=build /src/target/release/nova"));
    let user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(
        !user.contains("root") && !user.split_whitespace().nth(1).unwrap().starts_with("0"),
        "{user}"
    );
    // The runtime stage installs no compiler.
    let runtime = text.rsplit("FROM ").next().unwrap();
    assert!(
        !runtime.contains("cargo") && !runtime.contains("gcc"),
        "{runtime}"
    );
}

/// The readiness probe of nova-serve, run as written (its paths pointed at
/// the test's files) against a real `nova serve` over TLS: it passes while
/// the server answers and fails once it is gone.
#[test]
fn the_serve_probe_passes_against_a_live_tls_server_and_fails_without_one() {
    let ws = common::Workspace::new();
    common::pki::pki(&ws);
    let (mut server, announced) = ws.serve(&[
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        "token",
        "--tls-cert",
        "server.pem",
        "--tls-key",
        "server.key",
    ]);
    let port = announced["listening"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let text = std::fs::read_to_string(deploy().join("kubernetes/nova-serve.yaml")).unwrap();
    let deployment = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    let probe: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]
        ["readinessProbe"]["exec"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap()
                .replace("https://localhost:6682", &format!("https://localhost:{port}"))
                .replace("/etc/nova/tls/ca.crt", "ca.pem")
                .replace("/etc/nova/token/token", "token")
        })
        .collect();
    assert_eq!(probe[0], "nova");
    let args: Vec<&str> = probe[1..].iter().map(String::as_str).collect();
    ws.run(&args).success();
    server.kill().unwrap();
    server.wait().unwrap();
    let failed = ws.run(&args);
    assert_ne!(failed.code, 0, "the probe passed with no server");
}
