//! `nova bench orchestrate`: nova's overhead on trivial tasks. It runs
//! `--tasks` tasks of `true` with `nova orchestrate --apply --mode parallel
//! --jobs J` in a temporary workspace (independent agents of ten tasks each),
//! then the same number of `true` with `xargs -P J`, and
//! reports both times and their ratio, from the same run, with nova's peak
//! memory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use crate::cli::BenchOrchestrateArgs;
use crate::error::{Error, Result};
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Report {
    tasks: u32,
    jobs: u32,
    nova_seconds: f64,
    xargs_seconds: f64,
    ratio: f64,
    nova_peak_rss_bytes: u64,
    nova_tasks_per_second: f64,
}

pub(super) fn write_workspace(dir: &Path, tasks: u32) -> Result<()> {
    let io = |p: &Path, e| Error::io(p, e);
    let bp = dir.join("blueprints");
    std::fs::create_dir_all(&bp).map_err(|e| io(&bp, e))?;
    let yaml = dir.join("nova.yaml");
    std::fs::write(
        &yaml,
        "plan: workspace\nphases:\n  - name: bench\n    goal: trivial tasks\n",
    )
    .map_err(|e| io(&yaml, e))?;
    // Agents of ten tasks each: a task waits for the one before it in its
    // agent, and agents are independent.
    let agents = tasks.div_ceil(10);
    for a in 0..agents {
        let share = tasks / agents + u32::from(a < tasks % agents);
        let mut text = format!("name: bench-{a}\nrole: implementation\nphase: bench\ntasks:\n");
        for t in 0..share {
            text.push_str(&format!(
                "  - id: t{t}\n    title: nothing\n    run: [\"true\"]\n"
            ));
        }
        let path = bp.join(format!("bench-{a}.yaml"));
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    Ok(())
}

/// The largest resident set of any child waited for so far, in bytes.
fn children_max_rss() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss() as u64 * 1024)
        .unwrap_or(0)
}

pub fn run(out: &Output, args: &BenchOrchestrateArgs) -> Result<()> {
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    write_workspace(tmp.path(), args.tasks)?;
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;

    let start = Instant::now();
    let status = Command::new(&exe)
        .args([
            "orchestrate",
            "--apply",
            "--mode",
            "parallel",
            "-q",
            "--jobs",
        ])
        .arg(args.jobs.to_string())
        .current_dir(tmp.path())
        .env("NOVA_HOME", tmp.path().join(".nova"))
        .env("NOVA_SERVICE_USER", super::service_user())
        .env_remove("NOVA_STORE")
        .env_remove("NOVA_OPA_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Failed(format!("cannot run nova orchestrate: {e}")))?;
    let nova = start.elapsed().as_secs_f64();
    let peak = children_max_rss();
    if !status.status.success() {
        return Err(Error::Failed(format!(
            "the benchmark's run failed: {}",
            String::from_utf8_lossy(&status.stderr)
        )));
    }

    let start = Instant::now();
    let mut xargs = Command::new("xargs")
        .args(["-P", &args.jobs.to_string(), "-n", "1", "true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot run xargs: {e}")))?;
    {
        use std::io::Write;
        let mut stdin = xargs.stdin.take().expect("piped stdin");
        let lines: String = (0..args.tasks).map(|i| format!("{i}\n")).collect();
        stdin
            .write_all(lines.as_bytes())
            .map_err(|e| Error::io("xargs stdin", e))?;
    }
    let xstatus = xargs.wait().map_err(|e| Error::io("xargs", e))?;
    let xargs_secs = start.elapsed().as_secs_f64();
    if !xstatus.success() {
        return Err(Error::Failed("xargs failed".into()));
    }

    let report = Report {
        tasks: args.tasks,
        jobs: args.jobs,
        nova_seconds: nova,
        xargs_seconds: xargs_secs,
        ratio: nova / xargs_secs.max(1e-9),
        nova_peak_rss_bytes: peak,
        nova_tasks_per_second: args.tasks as f64 / nova.max(1e-9),
    };
    if out.json {
        return out.json(&report);
    }
    out.text(&format!(
        "{} tasks of `true`, {} at a time:\n  nova orchestrate  {:.2} s ({:.0} tasks/s), peak memory {}\n  xargs -P {}        {:.2} s\n  ratio             {:.2}x\n",
        report.tasks,
        report.jobs,
        report.nova_seconds,
        report.nova_tasks_per_second,
        bytesize::ByteSize(report.nova_peak_rss_bytes),
        report.jobs,
        report.xargs_seconds,
        report.ratio
    ))
}
