//! `nova bench monitor`: what watching the host costs. It times sampling
//! passes with NVML and without (and NVML's part alone), then runs
//! `nova monitor` at one sample a second in a temporary workspace and
//! reports the CPU it used once started, and over its whole life.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::BenchMonitorArgs;
use crate::error::{Error, Result};
use crate::monitor::Sampler;
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Pass {
    what: &'static str,
    passes: u32,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Daemon {
    interval_ms: u64,
    seconds: f64,
    /// CPU time over wall time once started (the first and last second left out).
    steady_cpu_percent: f64,
    /// The same over the whole process life, start-up and exit included.
    lifetime_cpu_percent: f64,
    peak_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    /// The GPUs NVML found, or why it did not.
    nvml: String,
    passes: Vec<Pass>,
    monitor: Daemon,
}

fn time_passes(what: &'static str, passes: u32, mut f: impl FnMut()) -> Pass {
    let mut micros: Vec<f64> = (0..passes)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let mean = micros.iter().sum::<f64>() / micros.len().max(1) as f64;
    micros.sort_by(f64::total_cmp);
    Pass {
        what,
        passes,
        mean_us: mean,
        p50_us: super::pick(&micros, 0.5).unwrap_or(0.0),
        p99_us: super::pick(&micros, 0.99).unwrap_or(0.0),
    }
}

/// CPU milliseconds the process `pid` has used so far.
fn cpu_ms(sys: &mut sysinfo::System, pid: sysinfo::Pid) -> Option<u64> {
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        false,
        sysinfo::ProcessRefreshKind::nothing().with_cpu(),
    );
    sys.process(pid).map(|p| p.accumulated_cpu_time())
}

fn run_monitor(interval: Duration, seconds: u32) -> Result<Daemon> {
    let tmp = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let before = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| Error::Failed(format!("getrusage: {e}")))?;
    let start = Instant::now();
    let child = Command::new(&exe)
        .args(["monitor", "--json", "--interval"])
        .arg(humantime::format_duration(interval).to_string())
        .arg("--for")
        .arg(format!("{seconds}s"))
        .current_dir(tmp.path())
        .env("NOVA_HOME", tmp.path().join(".nova"))
        .env_remove("NOVA_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot run nova monitor: {e}")))?;
    let pid = sysinfo::Pid::from_u32(child.id());
    let mut sys = sysinfo::System::new().map_err(|e| Error::Failed(e.to_string()))?;
    std::thread::sleep(Duration::from_secs(1));
    let window_start = (Instant::now(), cpu_ms(&mut sys, pid));
    std::thread::sleep(Duration::from_secs(u64::from(
        seconds.saturating_sub(2).max(1),
    )));
    let window_end = (Instant::now(), cpu_ms(&mut sys, pid));
    let output = child
        .wait_with_output()
        .map_err(|e| Error::Failed(format!("nova monitor: {e}")))?;
    let lifetime = start.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(Error::Failed(format!(
            "nova monitor failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let after = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| Error::Failed(format!("getrusage: {e}")))?;
    let secs = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    let cpu = secs(after.user_time()) + secs(after.system_time())
        - secs(before.user_time())
        - secs(before.system_time());
    let (Some(from), Some(to)) = (window_start.1, window_end.1) else {
        return Err(Error::Failed(
            "could not read nova monitor's CPU time while it ran".into(),
        ));
    };
    let window = window_end.0.duration_since(window_start.0).as_secs_f64();
    Ok(Daemon {
        interval_ms: interval.as_millis() as u64,
        seconds: lifetime,
        steady_cpu_percent: (to - from) as f64 / 10.0 / window.max(1e-3),
        lifetime_cpu_percent: cpu * 100.0 / lifetime.max(1e-3),
        peak_rss_bytes: after.max_rss() as u64 * 1024,
    })
}

pub fn run(out: &Output, args: &BenchMonitorArgs) -> Result<()> {
    if args.interval < crate::monitor::MIN_INTERVAL {
        return Err(Error::usage("--interval: at least 200ms"));
    }
    let nvml = match crate::gpu::readings() {
        Ok(gpus) => format!(
            "present: {} GPU(s){}",
            gpus.len(),
            gpus.first()
                .map_or(String::new(), |g| format!(", {}", g.name))
        ),
        Err(why) => format!("absent: {why}"),
    };
    let mut with_gpus = Sampler::new()?;
    let mut without = Sampler::new()?.without_gpus();
    // One pass each first: the first reads every disk and interface anew.
    with_gpus.sample();
    without.sample();
    let passes = vec![
        time_passes("sample, with NVML", args.passes, || {
            std::hint::black_box(with_gpus.sample());
        }),
        time_passes("sample, without NVML", args.passes, || {
            std::hint::black_box(without.sample());
        }),
        time_passes("NVML readings alone", args.passes, || {
            let _ = std::hint::black_box(crate::gpu::readings());
        }),
    ];
    let monitor = run_monitor(args.interval, args.seconds)?;
    let report = Report {
        nvml,
        passes,
        monitor,
    };
    if out.json {
        return out.json(&report);
    }
    let mut table = out.table(&["pass", "passes", "mean us", "p50 us", "p99 us"]);
    for p in &report.passes {
        table.add_row(vec![
            p.what.to_string(),
            p.passes.to_string(),
            format!("{:.1}", p.mean_us),
            format!("{:.1}", p.p50_us),
            format!("{:.1}", p.p99_us),
        ]);
    }
    out.print_table(&table)?;
    let m = &report.monitor;
    out.text(&format!(
        "NVML: {}\nnova monitor, one sample every {} ms for {:.0} s: {:.2}% of one core once started, {:.2}% over its whole life (start-up included), peak memory {}\n",
        report.nvml,
        m.interval_ms,
        m.seconds,
        m.steady_cpu_percent,
        m.lifetime_cpu_percent,
        bytesize::ByteSize(m.peak_rss_bytes)
    ))
}
