//! `nova bench dashboard`: what an open dashboard costs. In a temporary
//! workspace it starts `nova serve --http`, runs `--tasks` trivial tasks
//! with `nova orchestrate` twice, first with no page open, then with
//! `--pages` pages watching the run as the dashboard's run view does (the
//! event stream, and the run and its messages fetched again on each `run`
//! event, at most every 400 ms). It reports the server's CPU time during
//! each run (from /proc), the difference, and the events and fetches per
//! second the pages got, from the same invocation.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::BenchDashboardArgs;
use crate::error::{Error, Result};
use crate::output::Output;

#[derive(Debug, Serialize)]
struct Pass {
    pages: u32,
    run_seconds: f64,
    serve_cpu_seconds: f64,
    /// The server's CPU as a share of one core over the run.
    serve_cpu_percent: f64,
    events: u64,
    events_per_second: f64,
    fetches: u64,
    bytes_fetched: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    tasks: u32,
    jobs: u32,
    without_pages: Pass,
    with_pages: Pass,
    extra_cpu_seconds: f64,
    extra_cpu_percent_of_a_core: f64,
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / hz
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn start_server(exe: &Path, dir: &Path) -> Result<(Server, String)> {
    use std::io::BufRead;
    let mut child = Command::new(exe)
        .args([
            "--json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .current_dir(dir)
        .env("NOVA_HOME", dir.join(".nova"))
        .env("NOVA_SERVICE_USER", super::service_user())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot start nova serve: {e}")))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| Error::Failed(format!("nova serve said nothing: {e}")))?;
    let server = Server(child);
    let announced: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| Error::Failed(format!("nova serve announced {line:?}: {e}")))?;
    let url = announced["dashboard"]
        .as_str()
        .ok_or_else(|| Error::Failed(format!("no dashboard in {line}")))?
        .trim_end_matches('/')
        .to_string();
    Ok((server, url))
}

#[derive(Default)]
struct Counts {
    events: AtomicU64,
    fetches: AtomicU64,
    bytes: AtomicU64,
}

/// One page on the run view: the event stream, and the run refetched on its events.
async fn page(base: String, counts: Arc<Counts>, stop: tokio::sync::watch::Receiver<bool>) {
    let client = reqwest::Client::new();
    let Ok(mut stream) = client.get(format!("{base}/api/v1/events")).send().await else {
        return;
    };
    let mut buffer = String::new();
    let mut last_fetch = Instant::now() - Duration::from_secs(1);
    let mut run_id: Option<String> = None;
    loop {
        let mut stop = stop.clone();
        let chunk = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            chunk = stream.chunk() => chunk,
        };
        let Ok(Some(chunk)) = chunk else { return };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if event.starts_with(':') {
                continue;
            }
            counts.events.fetch_add(1, Ordering::Relaxed);
            if !event.contains("event: run\n") {
                continue;
            }
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: "))
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
            {
                run_id = v["id"].as_str().map(String::from);
            }
            if last_fetch.elapsed() < Duration::from_millis(400) {
                continue;
            }
            last_fetch = Instant::now();
            if let Some(id) = &run_id {
                for path in [
                    format!("/api/v1/runs/{id}"),
                    format!("/api/v1/runs/{id}/messages"),
                ] {
                    if let Ok(r) = client.get(format!("{base}{path}")).send().await
                        && let Ok(body) = r.bytes().await
                    {
                        counts.fetches.fetch_add(1, Ordering::Relaxed);
                        counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

fn pass(
    exe: &Path,
    dir: &Path,
    server: &Server,
    base: &str,
    pages: u32,
    jobs: u32,
) -> Result<Pass> {
    let rt = crate::runtime::runtime()?;
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    for _ in 0..pages {
        watchers.push(rt.spawn(page(base.to_string(), counts.clone(), stop_rx.clone())));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = server.0.id();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let status = Command::new(exe)
        .args([
            "--quiet",
            "orchestrate",
            "--apply",
            "--mode",
            "parallel",
            "--jobs",
        ])
        .arg(jobs.to_string())
        .current_dir(dir)
        .env("NOVA_HOME", dir.join(".nova"))
        .env("NOVA_SERVICE_USER", super::service_user())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Error::Failed(format!("cannot run nova orchestrate: {e}")))?;
    // Let the last changes reach the pages, as they would.
    std::thread::sleep(Duration::from_millis(1000));
    let run_seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let _ = stop_tx.send(true);
    rt.block_on(async {
        for w in watchers {
            let _ = w.await;
        }
    });
    if !status.success() {
        return Err(Error::Failed(format!(
            "the benchmark's run failed ({status})"
        )));
    }
    let events = counts.events.load(Ordering::Relaxed);
    Ok(Pass {
        pages,
        run_seconds,
        serve_cpu_seconds: cpu,
        serve_cpu_percent: 100.0 * cpu / run_seconds,
        events,
        events_per_second: events as f64 / run_seconds,
        fetches: counts.fetches.load(Ordering::Relaxed),
        bytes_fetched: counts.bytes.load(Ordering::Relaxed),
    })
}

pub fn run(out: &Output, args: &BenchDashboardArgs) -> Result<()> {
    let exe =
        std::env::current_exe().map_err(|e| Error::Failed(format!("cannot find nova: {e}")))?;
    let dir = tempfile::tempdir()
        .map_err(|e| Error::Failed(format!("cannot make a temporary folder: {e}")))?;
    super::orchestrate::write_workspace(dir.path(), args.tasks)?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let (server, base) = start_server(&exe, dir.path())?;
    let without = pass(&exe, dir.path(), &server, &base, 0, jobs)?;
    let with = pass(&exe, dir.path(), &server, &base, args.pages, jobs)?;
    let extra = with.serve_cpu_seconds - without.serve_cpu_seconds;
    let report = Report {
        tasks: args.tasks,
        jobs,
        extra_cpu_seconds: extra,
        extra_cpu_percent_of_a_core: 100.0 * extra / with.run_seconds,
        without_pages: without,
        with_pages: with,
    };
    if out.json {
        return out.json(&report);
    }
    let line = |name: &str, p: &Pass| {
        format!(
            "{name:<22} run {:>6.2} s   nova serve CPU {:>6.3} s ({:>5.1}% of a core)   {:>5} events ({:>6.1}/s)   {:>4} fetches, {}\n",
            p.run_seconds,
            p.serve_cpu_seconds,
            p.serve_cpu_percent,
            p.events,
            p.events_per_second,
            p.fetches,
            bytesize::ByteSize(p.bytes_fetched)
        )
    };
    out.text(&format!(
        "dashboard cost on a run of {} tasks (--jobs {jobs}, this machine, one invocation)\n{}{}extra CPU of nova serve with {} page(s) open: {:.3} s ({:.1}% of one core over the run)\n",
        report.tasks,
        line("no page open", &report.without_pages),
        line(&format!("{} page(s) open", report.with_pages.pages), &report.with_pages),
        report.with_pages.pages,
        report.extra_cpu_seconds,
        report.extra_cpu_percent_of_a_core
    ))
}
