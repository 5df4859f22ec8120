//! Start-to-finish time of read-only `nova` commands, as a user sees it.
//!
//! Runs the real binary (`cargo bench` builds it with the release profile) in
//! an empty temporary workspace, many times, and prints the median, p90 and
//! fastest wall time of each command. `true` is measured in the same run as
//! the floor that process start-up alone costs on this machine. Under
//! `cargo test` (no `--bench` argument) it runs each command a few times as a
//! smoke test and prints nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const COMMANDS: &[(&str, &[&str])] = &[
    ("nova blueprints --json", &["blueprints", "--json"]),
    ("nova roadmap", &["roadmap"]),
    ("nova tasks --checklist", &["tasks", "--checklist"]),
    ("nova plan --json", &["plan", "--json"]),
];

fn time_once(program: &str, args: &[&str], dir: &std::path::Path) -> Duration {
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_remove("NOVA_HOME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("command starts");
    let elapsed = start.elapsed();
    assert!(status.success(), "{program} {args:?} failed: {status}");
    elapsed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let (warmup, runs) = if benching { (5, 100) } else { (0, 2) };
    let nova = env!("CARGO_BIN_EXE_nova");
    let dir = tempfile::tempdir().expect("temp dir");

    let mut cases: Vec<(&str, &str, &[&str])> = vec![("true (process start floor)", "true", &[])];
    cases.extend(COMMANDS.iter().map(|(label, args)| (*label, nova, *args)));

    if benching {
        println!(
            "{runs} runs each after {warmup} warm-up runs, in an empty workspace; times in ms"
        );
        println!(
            "{:<30} {:>8} {:>8} {:>8}",
            "command", "median", "p90", "min"
        );
    }
    for (label, program, args) in cases {
        for _ in 0..warmup {
            time_once(program, args, dir.path());
        }
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| time_once(program, args, dir.path()))
            .collect();
        times.sort();
        if benching {
            println!(
                "{label:<30} {:>8} {:>8} {:>8}",
                ms(percentile(&times, 0.5)),
                ms(percentile(&times, 0.9)),
                ms(times[0])
            );
        }
    }
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a read-only command wrote to the workspace"
    );
}
