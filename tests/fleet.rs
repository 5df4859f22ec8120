//! nova across hosts, on the multi-host test bed (tests/common/netns.rs): a
//! server host running redis-server and `nova serve`, worker hosts running
//! `nova worker`, all talking over a bridged network rather than loopback.
//! Each test says on stderr, and passes, where the machine cannot build the
//! test bed (not root, no iproute2).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Workspace;
use common::netns::{Host, Testbed};
use common::pki::{TOKEN, pki};
use serde_json::Value;

const URL: &str = "http://10.99.0.1:6682";
const TLS_URL: &str = "https://10.99.0.1:6682";
const REDIS: &str = "redis://:fleet-redis-password@10.99.0.1:6379/0";

/// Children that are killed (SIGKILL) and reaped when the test ends, however it ends.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn add(&mut self, child: Child) -> u32 {
        let pid = child.id();
        self.0.push(child);
        pid
    }

    /// Kill and reap the child `pid` now.
    fn stop(&mut self, pid: u32) {
        if let Some(i) = self.0.iter().position(|c| c.id() == pid) {
            let mut c = self.0.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn plan(ws: &Workspace) {
    ws.write(
        "nova.yaml",
        "plan: workspace\nphases:\n  - name: one\n    goal: first\n",
    );
    pki(ws);
}

/// An agent of `tasks` tasks in a row, each running `line` in a shell.
fn agent(ws: &Workspace, name: &str, tasks: usize, line: &str) {
    let mut text = format!("name: {name}\nrole: implementation\nphase: one\ntasks:\n");
    for t in 0..tasks {
        text.push_str(&format!(
            "  - id: t{t}\n    title: step {t}\n    run: {{shell: {}}}\n",
            serde_json::to_string(line).unwrap()
        ));
    }
    ws.write(&format!("blueprints/{name}.yaml"), &text);
}

/// A task line that records which host ran which task in `done.txt`.
const RECORD: &str = "echo \"$NOVA_AGENT/$NOVA_TASK $TESTBED_HOST\" >> done.txt";

/// redis-server on `host`, persisting to `dir` with the append-only file
/// fsynced on every write (what nova's delivery promise needs of Redis).
fn redis(host: &Host, dir: &std::path::Path) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", "6379", "--bind", &host.addr.to_string()])
        .arg("--dir")
        .arg(dir)
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .args(["--requirepass", "fleet-redis-password"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = host.enter(cmd).spawn().expect("redis-server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let mut ping = Command::new("redis-cli");
        ping.args(["-h", &host.addr.to_string(), "--no-auth-warning"])
            .args(["-a", "fleet-redis-password", "ping"]);
        let out = host.enter(ping).output().expect("redis-cli runs");
        if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not start on {}", host.name);
}

/// `nova serve` on `host` over the test bed's Redis, with a token; `tls`
/// serves https with the test CA's certificate, otherwise plain text with
/// --insecure. Returns once it announced itself.
fn serve(ws: &Workspace, host: &Host, tls: bool) -> Child {
    let mut cmd = ws.std_command();
    cmd.args([
        "--json",
        "serve",
        "--listen",
        "10.99.0.1:6682",
        "--store",
        REDIS,
    ])
    .args(["--token-file", "token"]);
    if tls {
        cmd.args(["--tls-cert", "server.pem", "--tls-key", "server.key"]);
    } else {
        cmd.arg("--insecure");
    }
    let mut child = host
        .enter(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("nova serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let announced: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("nova serve announced {line:?}: {e}"));
    assert_eq!(
        announced["listening"].as_str().unwrap(),
        if tls { TLS_URL } else { URL }
    );
    child
}

/// `nova worker` running `concurrency` tasks at once on `host`, with a home
/// of its own (as on a machine of its own); its tasks see TESTBED_HOST set
/// to the host's name.
fn worker(ws: &Workspace, host: &Host, lease: &str, concurrency: u32) -> Child {
    let mut cmd = ws.std_command();
    let home = ws.path().join(format!(".nova-{}", host.name));
    cmd.args(["worker", "--server", URL, "--token-file", "token"])
        .args(["--lease", lease, "--grace", "0s"])
        .args(["--concurrency", &concurrency.to_string()])
        .arg("--home")
        .arg(home)
        .env("TESTBED_HOST", &host.name)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    host.enter(cmd).spawn().expect("nova worker starts")
}

/// `nova orchestrate --apply --mode parallel --server` on `host` with no local workers,
/// its JSON report read when it ends.
fn orchestrate(ws: &Workspace, host: &Host) -> Child {
    let mut cmd = ws.std_command();
    cmd.args([
        "orchestrate",
        "--apply",
        "--mode",
        "parallel",
        "--server",
        URL,
        "--token-file",
        "token",
    ])
    .args(["--jobs", "0", "--json"])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    host.enter(cmd).spawn().expect("nova orchestrate starts")
}

/// The run's exit code and JSON report, waiting at most `limit`.
fn finish(mut run: Child, limit: Duration) -> (i32, Value, String) {
    let deadline = Instant::now() + limit;
    while run.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = run.kill();
            let out = run.wait_with_output().unwrap();
            panic!(
                "the run did not end within {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, stderr)
}

/// Each line of `done.txt` as (agent/task, host).
fn done(ws: &Workspace) -> Vec<(String, String)> {
    std::fs::read_to_string(ws.path().join("done.txt"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (task, host) = l.split_once(' ').unwrap();
            (task.to_string(), host.to_string())
        })
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Every task of the report is done, each `agent/task` of `expected` ran,
/// and none ran more than `most` times.
fn all_done(ws: &Workspace, report: &Value, expected: &[String], most: usize) {
    for t in report["tasks"].as_array().unwrap() {
        assert_eq!(t["status"], "done", "{t}");
    }
    assert_eq!(report["tasks"].as_array().unwrap().len(), expected.len());
    let ran = done(ws);
    for name in expected {
        let times = ran.iter().filter(|(t, _)| t == name).count();
        assert!(
            (1..=most).contains(&times),
            "{name} ran {times} times: {ran:?}"
        );
    }
}

fn names(agents: &[&str], tasks: usize) -> Vec<String> {
    agents
        .iter()
        .flat_map(|a| (0..tasks).map(move |t| format!("{a}/t{t}")))
        .collect()
}

#[test]
fn a_run_on_the_server_host_is_worked_by_two_other_hosts_at_once() {
    let Some(bed) = Testbed::new(&["server", "w1", "w2"]) else {
        return;
    };
    let ws = Workspace::new();
    plan(&ws);
    let agents = ["a", "b", "c", "d", "e", "f"];
    // Each task notes how many tasks were running when it started.
    std::fs::create_dir(ws.path().join("running")).unwrap();
    let line = format!(
        "touch running/$NOVA_AGENT; ls running | wc -l >> peaks.txt; sleep 0.3; rm running/$NOVA_AGENT; {RECORD}"
    );
    for a in agents {
        agent(&ws, a, 3, &line);
    }
    // A real network's round trips: 1 ms each way on every host, where
    // the kernel has netem.
    for h in ["server", "w1", "w2"] {
        bed.host(h).delay(1);
    }
    let redis_dir = tempfile::tempdir().unwrap();
    let mut children = Children::default();
    children.add(redis(bed.host("server"), redis_dir.path()));
    children.add(serve(&ws, bed.host("server"), false));
    let w1 = children.add(worker(&ws, bed.host("w1"), "5s", 2));
    let w2 = children.add(worker(&ws, bed.host("w2"), "5s", 2));
    let (code, report, stderr) = finish(
        orchestrate(&ws, bed.host("server")),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{stderr}");
    all_done(&ws, &report, &names(&agents, 3), 1);
    let hosts: std::collections::BTreeSet<String> = done(&ws).into_iter().map(|(_, h)| h).collect();
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        ["w1", "w2"],
        "both worker hosts ran tasks, the server host none"
    );
    // Every ready agent's task is queued, so both hosts' four slots fill.
    let peak = std::fs::read_to_string(ws.path().join("peaks.txt"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse::<u32>().unwrap())
        .max()
        .unwrap();
    assert!(peak >= 3, "at most {peak} tasks ran at once on 4 slots");

    // The server knows its workers: each process's streams, with its
    // version and slots; one that goes is no longer listed.
    let listed = workers(&ws, bed.host("server"));
    let mut pids: Vec<u64> = listed.iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    pids.sort();
    let mut expected = vec![u64::from(w1), u64::from(w1), u64::from(w2), u64::from(w2)];
    expected.sort();
    assert_eq!(pids, expected, "{listed:?}");
    for w in &listed {
        assert_eq!(w["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(w["concurrency"], 2);
        assert_eq!(w["tasks"], serde_json::json!([]), "the run is over");
    }
    let mut cmd = ws.std_command();
    cmd.args(["queue", "--server", URL, "--token-file", "token", "workers"]);
    let text = bed.host("server").enter(cmd).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for needle in [
        w1.to_string(),
        w2.to_string(),
        "0/2".into(),
        env!("CARGO_PKG_VERSION").into(),
    ] {
        assert!(text.contains(&needle), "no {needle} in:\n{text}");
    }
    children.stop(w1);
    wait_until(
        "the stopped worker to leave the list",
        Duration::from_secs(20),
        || {
            workers(&ws, bed.host("server"))
                .iter()
                .all(|w| w["pid"] == u64::from(w2))
        },
    );
}

/// `nova queue workers --json` asked from `host`.
fn workers(ws: &Workspace, host: &Host) -> Vec<Value> {
    let mut cmd = ws.std_command();
    cmd.args([
        "queue",
        "--server",
        URL,
        "--token-file",
        "token",
        "workers",
        "--json",
    ]);
    let out = host.enter(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_worker_host_cut_off_mid_task_loses_it_to_the_other_host_after_the_lease() {
    let Some(bed) = Testbed::new(&["server", "w1", "w2"]) else {
        return;
    };
    let ws = Workspace::new();
    plan(&ws);
    // `hold` runs long enough to be cut off in; the others are quick.
    agent(
        &ws,
        "hold",
        1,
        &format!("echo $TESTBED_HOST >> hold.txt; sleep 4; {RECORD}"),
    );
    for a in ["x", "y"] {
        agent(&ws, a, 3, &format!("sleep 0.1; {RECORD}"));
    }
    let redis_dir = tempfile::tempdir().unwrap();
    let mut children = Children::default();
    children.add(redis(bed.host("server"), redis_dir.path()));
    let server = children.add(serve(&ws, bed.host("server"), false));
    // Only w1 at first, so it takes `hold`.
    children.add(worker(&ws, bed.host("w1"), "2s", 1));
    let run = orchestrate(&ws, bed.host("server"));
    wait_until("w1 to start the long task", Duration::from_secs(60), || {
        std::fs::read_to_string(ws.path().join("hold.txt")).is_ok_and(|s| s.trim() == "w1")
    });
    let cut_at = Instant::now();
    bed.host("w1").cut();
    children.add(worker(&ws, bed.host("w2"), "2s", 1));
    let (code, report, stderr) = finish(run, Duration::from_secs(120));
    assert_eq!(code, 0, "{stderr}");
    let held = std::fs::read_to_string(ws.path().join("hold.txt")).unwrap();
    assert_eq!(
        held.lines().collect::<Vec<_>>(),
        ["w1", "w2"],
        "the cut-off host's task ran again on the other"
    );
    assert!(
        cut_at.elapsed() >= Duration::from_secs(2),
        "handed out again before its lease ran out"
    );
    let hold = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["agent"] == "hold")
        .unwrap();
    assert_eq!(hold["attempts"], 2, "{hold}");
    // At least once: the cut-off task ran twice (w1 finished its copy too,
    // but could not say so); every other task once.
    let mut expected = names(&["x", "y"], 3);
    expected.push("hold/t0".into());
    all_done(&ws, &report, &expected, 2);
    let ran = done(&ws);
    for t in names(&["x", "y"], 3) {
        assert_eq!(
            ran.iter().filter(|(n, _)| *n == t).count(),
            1,
            "{t}: {ran:?}"
        );
    }
    let mut hold: Vec<&str> = ran
        .iter()
        .filter(|(t, _)| t == "hold/t0")
        .map(|(_, h)| h.as_str())
        .collect();
    hold.sort();
    assert_eq!(hold, ["w1", "w2"], "{ran:?}");

    // The cut-off worker's connection can never close (no packet gets
    // through either way); the server stops anyway, within its drain time.
    let stopping = Instant::now();
    unsafe { libc::kill(server as i32, libc::SIGTERM) };
    wait_until("nova serve to stop", Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{server}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{server}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "{:?}",
        stopping.elapsed()
    );
}

#[test]
fn a_run_survives_redis_being_killed_and_restarted_mid_run() {
    let Some(bed) = Testbed::new(&["server", "w1", "w2"]) else {
        return;
    };
    let ws = Workspace::new();
    plan(&ws);
    let agents = ["a", "b", "c", "d"];
    for a in agents {
        agent(&ws, a, 4, &format!("sleep 0.15; {RECORD}"));
    }
    let redis_dir = tempfile::tempdir().unwrap();
    let mut children = Children::default();
    let mut first_redis = redis(bed.host("server"), redis_dir.path());
    children.add(serve(&ws, bed.host("server"), false));
    children.add(worker(&ws, bed.host("w1"), "3s", 1));
    children.add(worker(&ws, bed.host("w2"), "3s", 1));
    let run = orchestrate(&ws, bed.host("server"));
    wait_until("a few tasks to finish", Duration::from_secs(60), || {
        done(&ws).len() >= 3
    });
    first_redis.kill().unwrap(); // SIGKILL: no shutdown save
    first_redis.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    children.add(redis(bed.host("server"), redis_dir.path()));
    let (code, report, stderr) = finish(run, Duration::from_secs(120));
    assert_eq!(code, 0, "{stderr}");
    // A task whose ack was cut off by the restart may run again.
    all_done(&ws, &report, &names(&agents, 4), 2);
}

/// Capture the server host's traffic on port 6682 while `client` runs;
/// the captured bytes.
fn capture(server: &Host, client: impl FnOnce()) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("tcpdump");
    // Immediate mode: without it, packets still in the kernel's ring when
    // tcpdump is stopped are never written.
    cmd.args(["--immediate-mode", "-i", "eth0", "-U", "-s", "0", "-w"])
        .arg(file.path())
        .args(["tcp", "port", "6682"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut dump = server
        .enter(cmd)
        .spawn()
        .expect("tcpdump starts (scripts/test installs it)");
    let mut line = String::new();
    BufReader::new(dump.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on eth0"), "tcpdump: {line}");
    client();
    std::thread::sleep(Duration::from_millis(200));
    unsafe { libc::kill(dump.id() as i32, libc::SIGINT) };
    dump.wait().unwrap();
    std::fs::read(file.path()).unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `text` as HTTP/2 sends a header value: HPACK's Huffman code (RFC 7541,
/// appendix B), for the characters of `Bearer <TOKEN>` only.
fn huffman(text: &str) -> Vec<u8> {
    let code = |c: char| -> (u32, u32) {
        match c {
            '0' => (0x0, 5),
            '1' => (0x1, 5),
            '2' => (0x2, 5),
            'a' => (0x3, 5),
            'e' => (0x5, 5),
            'o' => (0x7, 5),
            's' => (0x8, 5),
            't' => (0x9, 5),
            ' ' => (0x14, 6),
            '-' => (0x16, 6),
            '3' => (0x19, 6),
            '4' => (0x1a, 6),
            '5' => (0x1b, 6),
            '6' => (0x1c, 6),
            '7' => (0x1d, 6),
            '8' => (0x1e, 6),
            '9' => (0x1f, 6),
            'l' => (0x28, 6),
            'n' => (0x2a, 6),
            'r' => (0x2c, 6),
            'B' => (0x5d, 7),
            'k' => (0x75, 7),
            other => panic!("no Huffman code here for {other:?}"),
        }
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
    for c in text.chars() {
        let (value, len) = code(c);
        acc = (acc << len) | u64::from(value);
        bits += len;
        while bits >= 8 {
            out.push((acc >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    if bits > 0 {
        // Padded with the high bits of end-of-string: ones.
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

#[test]
fn with_tls_no_token_crosses_the_wire_in_clear() {
    let Some(bed) = Testbed::new(&["server", "w1"]) else {
        return;
    };
    let ws = Workspace::new();
    plan(&ws);
    let redis_dir = tempfile::tempdir().unwrap();
    let mut children = Children::default();
    children.add(redis(bed.host("server"), redis_dir.path()));
    let call = |url: &str| {
        let mut cmd = ws.std_command();
        cmd.args(["queue", "--server", url, "--token-file", "token"]);
        if url.starts_with("https") {
            cmd.args(["--ca", "ca.pem"]);
        }
        cmd.args(["enqueue", "secret-work", "--json"]);
        let out = bed.host("w1").enter(cmd).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Plain text (--insecure): the capture does see the token (in the
    // header, Huffman-coded) and the task, so it would see them below if
    // they were there.
    let bearer = huffman(&format!("Bearer {TOKEN}"));
    let plain = children.add(serve(&ws, bed.host("server"), false));
    let seen = capture(bed.host("server"), || call(URL));
    assert!(
        contains(&seen, &bearer),
        "the capture saw no token in plain text"
    );
    assert!(contains(&seen, b"secret-work"));
    children.stop(plain);

    children.add(serve(&ws, bed.host("server"), true));
    let seen = capture(bed.host("server"), || call(TLS_URL));
    assert!(
        seen.len() > 1000,
        "the capture is empty: {} bytes",
        seen.len()
    );
    assert!(
        !contains(&seen, &bearer) && !contains(&seen, TOKEN.as_bytes()),
        "the token crossed in clear"
    );
    assert!(
        !contains(&seen, b"secret-work"),
        "the task crossed in clear"
    );
}
