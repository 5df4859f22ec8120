//! `nova bench orchestrate`: nova's overhead on trivial tasks. It runs
//! `--tasks` tasks of `true` with `nova orchestrate --apply --mode parallel
//! --jobs J` in a temporary workspace (independent agents of ten tasks each),
//! then the same number of `true` with `xargs -P J`, and
//! reports both times and their ratio, from the same run, with nova's peak
//! memory; and, when GNU parallel is installed, its time with bookkeeping
//! like nova's (a job log, output files, retries) as a second reference.
//! `--rounds` runs the three in turn that many times and reports medians
//! and each round's ratio, so that a shared machine's noise shows. The
//! ratios reported are medians of the rounds' own ratios, not ratios of
//! medians: a round's runs follow each other within seconds, while the
//! medians of the times can come from rounds minutes apart, in different
//! moods of a shared machine.

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
    rounds: u32,
    /// Medians over the rounds.
    nova_seconds: f64,
    xargs_seconds: f64,
    /// The median of the rounds' ratios.
    ratio: f64,
    /// nova over xargs in each round, in order.
    ratio_per_round: Vec<f64>,
    /// GNU parallel with --joblog, --results and --retries 3, when installed.
    parallel_seconds: Option<f64>,
    /// How many times faster nova was than that (below 1: slower): the
    /// median of the rounds' own.
    parallel_over_nova: Option<f64>,
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
    let gnu_parallel = is_gnu_parallel();
    let mut rounds: Vec<Round> = Vec::new();
    let mut peak = 0;
    for round in 0..args.rounds {
        // A home of its own each round: a run in the home of an earlier one
        // would find its tasks' states there.
        let nova = time_nova(
            tmp.path(),
            &tmp.path().join(format!(".nova-{round}")),
            args.jobs,
        )?;
        if round == 0 {
            // Only nova has been waited for yet: the largest child is it.
            peak = children_max_rss();
        }
        let xargs = time_reference(
            Command::new("xargs").args(["-P", &args.jobs.to_string(), "-n", "1", "true"]),
            args.tasks,
        )
        .map_err(|e| Error::Failed(format!("xargs: {e}")))?;
        let parallel = if gnu_parallel {
            Some(time_parallel(tmp.path(), round, args)?)
        } else {
            None
        };
        rounds.push(Round {
            nova,
            xargs,
            parallel,
        });
    }

    let nova = median(rounds.iter().map(|r| r.nova));
    let ratio_per_round: Vec<f64> = rounds.iter().map(|r| r.nova / r.xargs.max(1e-9)).collect();
    let report = Report {
        tasks: args.tasks,
        jobs: args.jobs,
        rounds: args.rounds,
        nova_seconds: nova,
        xargs_seconds: median(rounds.iter().map(|r| r.xargs)),
        ratio: median(ratio_per_round.iter().copied()),
        ratio_per_round,
        parallel_seconds: gnu_parallel.then(|| median(rounds.iter().filter_map(|r| r.parallel))),
        parallel_over_nova: gnu_parallel.then(|| {
            median(
                rounds
                    .iter()
                    .filter_map(|r| Some(r.parallel? / r.nova.max(1e-9))),
            )
        }),
        nova_peak_rss_bytes: peak,
        nova_tasks_per_second: args.tasks as f64 / nova.max(1e-9),
    };
    if out.json {
        return out.json(&report);
    }
    let parallel = match (report.parallel_seconds, report.parallel_over_nova) {
        (Some(p), Some(x)) => format!(
            "  GNU parallel      {p:.2} s (-j {} --joblog --results --retries 3; nova {x:.2}x as fast)\n",
            report.jobs
        ),
        _ => "  GNU parallel      not installed (apt-get install parallel)\n".to_string(),
    };
    let per_round = report
        .ratio_per_round
        .iter()
        .map(|r| format!("{r:.2}x"))
        .collect::<Vec<_>>()
        .join(", ");
    let (what, each) = if report.rounds == 1 {
        ("1 round".to_string(), String::new())
    } else {
        (
            format!("medians of {} rounds", report.rounds),
            format!(" (each round: {per_round})"),
        )
    };
    out.text(&format!(
        "{} tasks of `true`, {} at a time, {what}:\n  nova orchestrate  {:.2} s ({:.0} tasks/s), peak memory {}\n  xargs -P {}        {:.2} s\n{parallel}  ratio to xargs    {:.2}x{each}\n",
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

/// One round's times, in seconds.
struct Round {
    nova: f64,
    xargs: f64,
    parallel: Option<f64>,
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `nova orchestrate --apply --mode parallel --jobs J` in the workspace,
/// with `home` as its NOVA_HOME: how long it took.
fn time_nova(workspace: &Path, home: &Path, jobs: u32) -> Result<f64> {
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
        .arg(jobs.to_string())
        .current_dir(workspace)
        .env("NOVA_HOME", home)
        .env("NOVA_SERVICE_USER", super::service_user())
        .env_remove("NOVA_STORE")
        .env_remove("NOVA_OPA_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::Failed(format!("cannot run nova orchestrate: {e}")))?;
    let seconds = start.elapsed().as_secs_f64();
    if !status.status.success() {
        return Err(Error::Failed(format!(
            "the benchmark's run failed: {}",
            String::from_utf8_lossy(&status.stderr)
        )));
    }
    Ok(seconds)
}

/// GNU parallel with bookkeeping like nova's: a job log, each task's
/// output kept in files, retries.
fn time_parallel(dir: &Path, round: u32, args: &BenchOrchestrateArgs) -> Result<f64> {
    let results = dir.join(format!("parallel-results-{round}"));
    let joblog = dir.join(format!("parallel-joblog-{round}"));
    time_reference(
        Command::new("parallel")
            .args([
                "--will-cite",
                "-j",
                &args.jobs.to_string(),
                "--retries",
                "3",
            ])
            .arg("--joblog")
            .arg(&joblog)
            .arg("--results")
            .arg(&results)
            .arg("true"),
        args.tasks,
    )
    .map_err(|e| Error::Failed(format!("GNU parallel: {e}")))
}

/// Time `command` running `true` once per line of its stdin, `tasks` lines.
fn time_reference(command: &mut Command, tasks: u32) -> std::result::Result<f64, String> {
    use std::io::Write;
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let lines: String = (0..tasks).map(|i| format!("{i}\n")).collect();
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(lines.as_bytes())
        .map_err(|e| format!("cannot feed it: {e}"))?;
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("it failed ({status})"));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Whether `parallel` on PATH is GNU parallel (moreutils ships another).
fn is_gnu_parallel() -> bool {
    Command::new("parallel")
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU parallel"))
}
