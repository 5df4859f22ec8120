//! `nova setup` and `nova monitor` on this real host.

mod common;

use std::io::{Read, Write};

use common::Workspace;
use serde_json::Value;

fn is_apt_host() -> bool {
    std::process::Command::new("apt-get")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[test]
fn setup_checks_the_host_plans_packages_and_changes_nothing_the_second_time() {
    let ws = Workspace::new();
    let out = ws.run(&["setup", "--packages", "docker", "kubernetes", "--json"]);
    let report = out.json();
    let failed_required = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["required"] == true && c["status"] == "fail");
    assert_eq!(
        out.code,
        if failed_required { 1 } else { 0 },
        "{}",
        out.stderr
    );
    for name in [
        "cpu",
        "memory",
        "os",
        "time sync",
        "disk $NOVA_HOME",
        "disk /",
        "gpu",
        "default route",
        "tool docker",
        "tool kubectl",
    ] {
        let c = check(&report, name);
        assert!(
            ["ok", "warn", "fail", "skipped"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
    }
    let gpu = check(&report, "gpu");
    if gpu["status"] == "skipped" {
        assert!(
            gpu["detail"]
                .as_str()
                .unwrap()
                .contains("no NVIDIA driver found"),
            "{gpu}"
        );
    }
    let created: Vec<&str> = report["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        created.iter().any(|c| c.ends_with("nova.db")),
        "{created:?}"
    );
    assert!(
        created.iter().any(|c| c.ends_with("nova.yaml")),
        "{created:?}"
    );
    assert!(ws.home().join("reports/host.md").exists());
    if is_apt_host() {
        assert_eq!(report["package_manager"], "apt");
        let names: Vec<&str> = report["packages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| {
                w["packages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["name"].as_str().unwrap())
            })
            .collect();
        assert_eq!(names, ["docker.io", "kubernetes-client"]);
        let steps = report["steps"].as_array().unwrap();
        for s in steps {
            assert_eq!(s["outcome"], "planned", "a plan changes nothing: {s}");
        }
    }
    let yaml = std::fs::read(ws.path().join("nova.yaml")).unwrap();

    // Again: nothing new is created and nova.yaml is left as it is.
    let again = ws
        .run(&["setup", "--packages", "docker", "kubernetes", "--json"])
        .json();
    assert_eq!(again["created"], serde_json::json!([]));
    assert_eq!(std::fs::read(ws.path().join("nova.yaml")).unwrap(), yaml);
    let text = ws.run(&["setup", "--packages", "docker", "kubernetes"]);
    assert!(
        text.stdout
            .contains("plan (nothing was changed; --apply runs these)")
            || text.stdout.contains("nothing to install"),
        "{}",
        text.stdout
    );
    let audit = ws
        .run(&["audit", "log", "--action", "setup.check", "--json"])
        .success()
        .json();
    assert_eq!(audit.as_array().unwrap().len(), 3);
}

#[test]
fn setup_refuses_bad_names_and_settings() {
    let ws = Workspace::new();
    ws.run(&["setup", "--packages", "teapot"])
        .code(2)
        .stderr_has("unknown package name; known: clamav, curl, docker, ethtool");
    if is_apt_host() {
        ws.run(&["setup", "--packages", "dnf:tree"])
            .code(2)
            .stderr_has("not dnf");
        let plan = ws.run(&["setup", "--packages", "apt:sl", "--json"]).json();
        assert_eq!(plan["packages"][0]["packages"][0]["name"], "sl");
    }
    ws.write("nova.yaml", "setup:\n  open_ports: [\"99999/tcp\"]\n");
    ws.run(&["setup"]).code(2).stderr_has("99999/tcp");
    ws.write("nova.yaml", "setup:\n  users: [\"Bad User\"]\n");
    ws.run(&["setup"])
        .code(2)
        .stderr_has("not a valid user name");
    ws.write("nova.yaml", "setup:\n  min_memory: lots\n");
    ws.run(&["setup"]).code(2).stderr_has("min_memory");
    ws.write(
        "nova.yaml",
        "setup:\n  users: [nova-plan-only-user]\n  min_disk_free: 1MB\n",
    );
    let plan = ws.run(&["setup", "--json"]).json();
    let step = &plan["steps"][0];
    assert_eq!(step["outcome"], "planned");
    assert!(
        step["command"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "useradd"),
        "{step}"
    );
    assert!(
        !std::process::Command::new("id")
            .args(["-u", "nova-plan-only-user"])
            .output()
            .unwrap()
            .status
            .success(),
        "a plan creates no user"
    );
}

#[test]
fn apply_installs_a_real_package_once_and_policy_can_stop_it() {
    let root = nix::unistd::Uid::effective().is_root();
    if !(root && is_apt_host()) {
        eprintln!("skipped: installing packages needs root on an apt host");
        return;
    }
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "setup:\n  min_disk_free: 1MB\n  min_memory: 1MB\n",
    );
    // A policy that denies installs stops it before the package manager runs.
    ws.write(
        "policies/no-installs.rego",
        "package nova.authz\nimport rego.v1\ndeny contains \"installs are frozen\" if input.action == \"install\"\n",
    );
    // Start from a host without `tree`, so the denial and the single install
    // are really checked (an installed `tree` let both slip through before).
    let installed = || {
        std::process::Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", "tree"])
            .output()
            .unwrap()
            .stdout
            .ends_with(b" installed")
    };
    if installed() {
        let purged = std::process::Command::new("dpkg")
            .args(["--purge", "tree"])
            .output()
            .unwrap();
        assert!(purged.status.success(), "dpkg --purge tree: {purged:?}");
    }
    assert!(!installed(), "tree is still installed after dpkg --purge");
    ws.run(&["setup", "--packages", "tree", "--apply"])
        .code(3)
        .stderr_has("installs are frozen");
    assert!(!installed(), "a denied install installed nothing");
    std::fs::remove_file(ws.path().join("policies/no-installs.rego")).unwrap();
    let first = ws.run(&["setup", "--packages", "tree", "--apply", "--json"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let report = first.json();
    assert!(
        report["packages"][0]["packages"][0]["installed"].is_string(),
        "{report}"
    );
    assert!(std::path::Path::new("/usr/bin/tree").exists());
    let second = ws
        .run(&["setup", "--packages", "tree", "--apply"])
        .success();
    assert!(
        second.stdout.contains("nothing to install or change"),
        "{}",
        second.stdout
    );
    let installs = ws
        .run(&["audit", "log", "--action", "package.install", "--json"])
        .success()
        .json();
    assert_eq!(
        installs.as_array().unwrap().len(),
        1,
        "one install, recorded once"
    );
    assert_eq!(installs[0]["outcome"], "done");
}

/// A one-request HTTP server: the body of the first POST it gets.
fn webhook_server() -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
                    return body.to_string();
                }
            }
        }
        String::new()
    });
    (url, handle)
}

#[test]
fn monitor_samples_keeps_history_and_alerts_once() {
    let ws = Workspace::new();
    let sample = ws.run(&["monitor", "--once", "--json"]).success();
    let s: Value = serde_json::from_str(sample.stdout.trim()).unwrap();
    for key in [
        "cpu_percent",
        "memory_used",
        "memory_total",
        "disks",
        "load",
        "net_rx_bytes_per_second",
    ] {
        assert!(!s[key].is_null(), "{key} missing: {s}");
    }
    if s["gpus"].as_array().unwrap().is_empty() {
        assert!(s["gpu_note"].as_str().unwrap().contains("NVIDIA"), "{s}");
    }
    let lines = ws
        .run(&["monitor", "--json", "--interval", "300ms", "--for", "1s"])
        .success();
    assert!(lines.stdout.lines().count() >= 3, "{}", lines.stdout);
    let db = rusqlite::Connection::open(ws.home().join("nova.db")).unwrap();
    let kept: i64 = db
        .query_row("SELECT COUNT(*) FROM monitor_samples", [], |r| r.get(0))
        .unwrap();
    assert!(kept >= 4, "{kept}");

    // Every disk is "low" when 100% free is required: the alert fires once
    // over several samples, reaches the audit log and the webhook.
    // (The run above may have raised alerts of its own on a host whose
    // disk is nearly full: count only this run's.)
    let alerts_before = ws
        .run(&["audit", "log", "--action", "monitor.alert", "--json"])
        .success()
        .json()
        .as_array()
        .unwrap()
        .len();
    let (url, hook) = webhook_server();
    ws.write(
        "nova.yaml",
        &format!("monitor:\n  disk_free_percent: 100\n  webhook: {url}\n  history: 2\n"),
    );
    let out = ws
        .run(&["monitor", "--json", "--interval", "300ms", "--for", "1s"])
        .success();
    let fired: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .flat_map(|s| s["alerts"].as_array().unwrap().clone())
        .collect();
    assert!(!fired.is_empty());
    let keys: Vec<&str> = fired.iter().map(|a| a["key"].as_str().unwrap()).collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "each alert fires once: {keys:?}");
    assert!(fired.iter().all(|a| a["state"] == "fired"));
    let body = hook.join().unwrap();
    let posted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(posted["state"], "fired");
    assert!(posted["key"].as_str().unwrap().starts_with("disk:"));
    let audit = ws
        .run(&["audit", "log", "--action", "monitor.alert", "--json"])
        .success()
        .json();
    assert_eq!(audit.as_array().unwrap().len() - alerts_before, fired.len());
    let kept: i64 = db
        .query_row("SELECT COUNT(*) FROM monitor_samples", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, 2, "the history is bounded");

    ws.run(&["monitor", "--interval", "1ms", "--once"]).code(2);
    ws.run(&["bench", "monitor", "--interval", "1ms"])
        .code(2)
        .stderr_has("--interval");
    ws.write("nova.yaml", "monitor:\n  webhook: ftp://x\n");
    ws.run(&["monitor", "--once"])
        .code(2)
        .stderr_has("monitor.webhook");
}

#[test]
fn apply_creates_a_service_user_once() {
    let root = nix::unistd::Uid::effective().is_root();
    let has_useradd = std::path::Path::new("/usr/sbin/useradd").exists();
    if !(root && has_useradd) {
        eprintln!("skipped: creating users needs root and useradd");
        return;
    }
    let name = format!("nova-t{}", std::process::id() % 100_000);
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        &format!("setup:\n  users: [{name}]\n  min_disk_free: 1MB\n  min_memory: 1MB\n"),
    );
    let first = ws.run(&["setup", "--apply", "--json"]);
    let cleanup = || {
        let _ = std::process::Command::new("userdel").arg(&name).status();
    };
    if first.code != 0 {
        cleanup();
        panic!("{}", first.stderr);
    }
    let exists = std::process::Command::new("id")
        .args(["-u", &name])
        .output()
        .unwrap()
        .status
        .success();
    let second = ws.run(&["setup", "--apply", "--json"]).json();
    let audit = ws
        .run(&["audit", "log", "--action", "user.create", "--json"])
        .json();
    cleanup();
    assert!(exists, "the user was created");
    assert_eq!(first.json()["steps"][0]["outcome"], "done");
    assert_eq!(
        second["steps"][0]["outcome"], "already",
        "the second run leaves it alone"
    );
    assert_eq!(audit.as_array().unwrap().len(), 1);
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn setup_names_unreachable_endpoints_and_unresolvable_names() {
    let ws = Workspace::new();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap();
    let closed = closed_port();
    ws.write(
        "nova.yaml",
        &format!(
            "setup:\n  min_disk_free: 1MB\n  min_memory: 1MB\n  endpoints: [\"{open_addr}\", \"127.0.0.1:{closed}\"]\n  resolve: [nova-test.invalid]\n"
        ),
    );
    let out = ws.run(&["setup", "--json"]);
    assert_eq!(out.code, 1, "a required check failed: {}", out.stdout);
    let report = out.json();
    let ok = check(&report, &format!("reach {open_addr}"));
    assert_eq!(ok["status"], "ok", "{ok}");
    let down = check(&report, &format!("reach 127.0.0.1:{closed}"));
    assert_eq!(down["status"], "fail", "{down}");
    assert!(
        down["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("TCP connection to 127.0.0.1:{closed} failed")),
        "{down}"
    );
    let dns = check(&report, "dns nova-test.invalid");
    assert_eq!(dns["status"], "fail", "{dns}");
    let text = ws.run(&["setup"]);
    assert_eq!(text.code, 1);
    assert!(text.stdout.contains("TCP connection to"), "{}", text.stdout);
}

#[test]
fn bad_thresholds_in_nova_yaml_are_named_with_their_line() {
    let ws = Workspace::new();
    ws.write("nova.yaml", "monitor:\n  history: 5\n  cpu_percent: 150\n");
    ws.run(&["monitor", "--once"])
        .code(2)
        .stderr_has("nova.yaml:3")
        .stderr_has("monitor.cpu_percent")
        .stderr_has("150 is not a percentage");
    ws.write(
        "nova.yaml",
        "monitor:\n  gpu_temperature: 0\n  history: 0\n",
    );
    ws.run(&["monitor", "--once"])
        .code(2)
        .stderr_has("monitor.gpu_temperature")
        .stderr_has("monitor.history");
    ws.write("nova.yaml", "setup:\n  min_driver: latest\n");
    ws.run(&["setup"])
        .code(2)
        .stderr_has("\"latest\" is not a driver version");
    ws.write("nova.yaml", "setup:\n  endpoints: [db.internal]\n");
    ws.run(&["setup"])
        .code(2)
        .stderr_has("\"db.internal\" is not host:port");
    assert!(
        !ws.home().join("nova.db").exists(),
        "bad settings stop setup before it creates anything"
    );
}

#[test]
fn a_webhook_that_is_down_does_not_stop_sampling() {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        &format!(
            "monitor:\n  disk_free_percent: 100\n  webhook: http://127.0.0.1:{}/hook\n",
            closed_port()
        ),
    );
    // Each delivery is retried with backoff (0.5 s, 1 s, 2 s...); were it in
    // the sampling loop, the first alert would hold it up past --for and
    // only one or two samples would come out.
    let out = ws
        .run(&[
            "monitor",
            "--json",
            "--interval",
            "250ms",
            "--for",
            "1500ms",
        ])
        .success();
    let samples: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(samples.len() >= 5, "{} samples", samples.len());
    assert!(
        !samples[0]["alerts"].as_array().unwrap().is_empty(),
        "the first sample fires the disk alerts"
    );
    let audit = ws
        .run(&["audit", "log", "--action", "monitor.alert", "--json"])
        .success()
        .json();
    assert!(!audit.as_array().unwrap().is_empty());
}

/// A folder of executable scripts to put on PATH.
fn shims(ws: &Workspace, scripts: &[(&str, &str)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = ws.path().join("shims");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, body) in scripts {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

// A host with a static docker and a kubectl from another package was told to
// apt-get install docker.io kubernetes-client, which would break it.
#[test]
fn tools_already_on_path_are_present_and_no_package_manager_runs() {
    let ws = Workspace::new();
    ws.write(
        "nova.yaml",
        "setup:\n  min_disk_free: 1MB\n  min_memory: 1MB\n",
    );
    let calls = ws.path().join("apt-calls");
    let dir = shims(
        &ws,
        &[
            ("docker", "echo 'Docker version 28.2.2, build e6534b4'"),
            ("kubectl", "echo 'Client Version: v1.32.4'"),
            (
                "apt-get",
                &format!("echo \"apt-get $*\" >> {}; exit 100", calls.display()),
            ),
        ],
    );
    let run = |args: &[&str]| {
        let out = ws
            .std_command()
            .env("PATH", &dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["setup", "--packages", "docker", "kubernetes", "--json"]);
    assert!(code == Some(0) || code == Some(1), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["package_manager"], "apt");
    for (i, (name, version)) in [("docker", "28.2.2"), ("kubectl", "1.32.4")]
        .iter()
        .enumerate()
    {
        let w = &report["packages"][i];
        assert_eq!(w["state"], "present", "{w}");
        assert_eq!(w["present"]["path"], dir.join(name).display().to_string());
        assert_eq!(w["present"]["version"], *version);
    }
    assert!(
        !report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["what"].as_str().unwrap().starts_with("install")),
        "no install planned: {}",
        report["steps"]
    );
    let (code, stdout, stderr) = run(&[
        "setup",
        "--packages",
        "docker",
        "kubernetes",
        "--packages-only",
        "--apply",
    ]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("present  28.2.2 at "), "{stdout}");
    assert!(stdout.contains("nothing to install or change"), "{stdout}");
    assert!(
        !calls.exists(),
        "apt-get was run: {:?}",
        std::fs::read_to_string(&calls)
    );
}

fn dpkg_installed(package: &str) -> bool {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| o.stdout.ends_with(b" installed"))
}

#[test]
fn a_package_that_conflicts_with_an_installed_one_is_refused_on_a_real_dpkg_database() {
    if !(is_apt_host() && dpkg_installed("bash")) {
        eprintln!("skipped: needs a Debian host's dpkg database");
        return;
    }
    let ws = Workspace::new();
    // A test catalog entry whose package clashes with bash, installed on every Debian host.
    ws.write(
        "nova.yaml",
        "setup:\n  catalog:\n    clash:\n      commands: [nova-test-absent-tool]\n      packages: {apt: [nova-test-absent-package]}\n      conflicts: {apt: [bash]}\n",
    );
    let calls = ws.path().join("apt-calls");
    let dir = shims(
        &ws,
        &[(
            "apt-get",
            &format!("echo \"apt-get $*\" >> {}; exit 100", calls.display()),
        )],
    );
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    let out = ws
        .std_command()
        .env("PATH", &path)
        .args(["setup", "--packages", "clash", "--packages-only", "--json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = &report["packages"][0];
    assert_eq!(w["state"], "conflict", "{w}");
    assert_eq!(w["conflicts"][0]["name"], "bash");
    let detail = w["detail"].as_str().unwrap();
    assert!(
        detail.contains("nova-test-absent-package") && detail.contains("installed bash"),
        "both are named: {detail}"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        report["steps"].as_array().unwrap().is_empty(),
        "nothing proposed: {}",
        report["steps"]
    );
    let out = ws
        .std_command()
        .env("PATH", &path)
        .args(["setup", "--packages", "clash", "--packages-only", "--apply"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would conflict with installed bash"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!calls.exists(), "apt-get was run");
}

#[test]
fn an_install_older_than_nova_yaml_asks_for_is_too_old_and_bad_minimums_are_refused() {
    let ws = Workspace::new();
    ws.write("nova.yaml", "packages:\n  docker: \">=29\"\n");
    let dir = shims(
        &ws,
        &[
            ("docker", "echo 'Docker version 28.2.2, build e6534b4'"),
            ("apt-get", "exit 100"),
        ],
    );
    let out = ws
        .std_command()
        .env("PATH", &dir)
        .args(["setup", "--packages", "docker", "--packages-only"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("too old") && stdout.contains("older than 29 that nova.yaml asks for"),
        "{stdout}"
    );
    ws.write("nova.yaml", "packages:\n  docker: latest\n");
    ws.run(&["setup", "--packages", "docker"])
        .code(2)
        .stderr_has("nova.yaml:2: field `packages.docker`: \"latest\" is not a minimum version");
    std::fs::remove_file(ws.path().join("nova.yaml")).unwrap();
    ws.run(&["setup", "--packages", "apt:bad;touch /tmp/x"])
        .code(2)
        .stderr_has("is not a package name");
}
