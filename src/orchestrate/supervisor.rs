//! Running one command as a supervised process.
//!
//! The command runs in its own process group, so a timeout or a cancel can
//! stop it with everything it started: SIGTERM to the group, then SIGKILL
//! after a grace period. Whatever the group leaves behind when its leader
//! exits is killed too. stdout and stderr go line by line to a log file,
//! made when the first line comes (and, when asked, to the terminal with the
//! agent's name in front); stdout lines of the form `::nova:: {json}` are
//! messages for the hub. While it runs, the
//! process tree's memory and CPU are sampled; a memory limit stops it. The
//! group is registered with the [`super::guard`], which ends it should this
//! process die without doing so itself.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::blueprints::CommandSpec;

/// Time between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
const TAIL_LINES: usize = 20;
pub const MESSAGE_PREFIX: &str = "::nova:: ";

pub struct Spec {
    pub command: CommandSpec,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub memory_limit: Option<u64>,
    /// Echo each line to stderr with this in front (`-v`).
    pub echo: Option<String>,
    /// Run as this account instead of nova's own user (nova runs as root).
    pub account: Option<super::privilege::Account>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub enum Stopped {
    Timeout(Duration),
    Memory { limit: u64, used: u64 },
    Cancelled,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Timeout(d) => write!(
                f,
                "killed after its timeout of {}",
                humantime::format_duration(*d)
            ),
            Stopped::Memory { limit, used } => write!(
                f,
                "killed: memory {} passed its limit of {}",
                bytesize::ByteSize(*used),
                bytesize::ByteSize(*limit)
            ),
            Stopped::Cancelled => f.write_str("killed: the run was interrupted"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    pub stopped: Option<Stopped>,
    pub peak_rss: u64,
    pub mean_rss: u64,
    pub mean_cpu: f32,
    /// GPU memory held by the process tree at its peak, where NVML sees a GPU.
    pub gpu_peak_memory: Option<u64>,
    /// Mean utilisation of the GPUs the task used.
    pub gpu_mean_utilization: Option<f32>,
    pub messages: Vec<Value>,
    pub tail: Vec<String>,
    pub duration: Duration,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && self.stopped.is_none()
    }
}

fn signal_group(pgid: i32, signal: Signal) {
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// The memory (bytes) and CPU (%) of `root` and its descendants, and their pids.
fn sample_tree(sys: &mut sysinfo::System, root: u32) -> (u64, f32, Vec<u32>) {
    sys.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::All,
        true,
        // Threads are not read (`nothing()` would read them): each would
        // cost a /proc read a sample.
        sysinfo::ProcessRefreshKind::nothing()
            .with_memory()
            .with_cpu()
            .without_tasks(),
    );
    let procs = sys.processes();
    // Where sysinfo lists a process's threads, it lists them as its
    // children, each with the whole process's memory and CPU: counted, a
    // PyTorch task's 0.7 GiB read as 12.5 GiB.
    let is_process = |p: &sysinfo::Process| p.thread_kind().is_none();
    let mut tree = vec![sysinfo::Pid::from_u32(root)];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            procs
                .iter()
                .filter(|(_, p)| p.parent() == Some(parent) && is_process(p))
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    let (mem, cpu) = tree
        .iter()
        .filter_map(|pid| procs.get(pid))
        .fold((0, 0.0), |(m, c), p| (m + p.memory(), c + p.cpu_usage()));
    (mem, cpu, tree.iter().map(|p| p.as_u32()).collect())
}

fn build(spec: &Spec) -> tokio::process::Command {
    let mut cmd = match &spec.command {
        CommandSpec::Argv(argv) => {
            let mut c = tokio::process::Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
        CommandSpec::Shell(line) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(line);
            c
        }
    };
    cmd.envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    if super::guard::active() {
        cmd.env(super::guard::ENV, super::guard::token());
    }
    if let Some(account) = &spec.account {
        // Not Command::uid: std then drops every supplementary group, and a
        // service user's groups (docker, say) are part of what it may do.
        let (uid, gid, groups) = (account.uid, account.gid, account.groups.clone());
        // SAFETY: switch_to makes only async-signal-safe syscalls on values
        // moved into the closure before the fork.
        unsafe {
            cmd.pre_exec(move || super::privilege::switch_to(uid, gid, &groups));
        }
    }
    cmd
}

/// Open `log` for appending, making its folder if need be.
fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()
        }
        other => other,
    }
}

/// A step's log file, opened (and its header written) with the first line
/// of output: a step that prints nothing leaves no file behind, and costs no
/// file creation.
struct LazyLog {
    path: PathBuf,
    header: String,
    file: Option<std::fs::File>,
    /// Opening failed once; the output still reaches the tail, not the file.
    failed: bool,
}

impl LazyLog {
    fn line(&mut self, line: &str) {
        use std::io::Write;
        if self.file.is_none() && !self.failed {
            match open_log(&self.path).and_then(|mut f| writeln!(f, "{}", self.header).map(|_| f)) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.failed = true;
                    tracing::warn!(log = %self.path.display(), error = %e, "cannot write the task's log");
                }
            }
        }
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Run `spec`, appending `header` and then its output to `log` (made with
/// the first line of output); `cancel` turning true stops it.
///
/// The log is written with plain blocking writes: a line appended to a
/// local file takes microseconds, less than handing it to tokio's blocking
/// pool would.
pub async fn run(
    spec: &Spec,
    log: &Path,
    header: &str,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Outcome> {
    let file = Arc::new(Mutex::new(LazyLog {
        path: log.to_path_buf(),
        header: header.to_string(),
        file: None,
        failed: false,
    }));
    let started = Instant::now();
    let mut child = build(spec).spawn()?;
    let pid = child.id().unwrap_or(0);
    let pgid = pid as i32;
    super::guard::watch(pgid);

    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let messages = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for (stream, is_stdout) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            true,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            false,
        ),
    ] {
        let Some(stream) = stream else { continue };
        let (file, tail, messages, echo) = (
            file.clone(),
            tail.clone(),
            messages.clone(),
            spec.echo.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if is_stdout && let Some(json) = line.strip_prefix(MESSAGE_PREFIX) {
                    let body = serde_json::from_str(json)
                        .unwrap_or_else(|_| Value::String(json.to_string()));
                    messages
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(body);
                }
                if let Some(prefix) = &echo {
                    eprintln!("{prefix} {line}");
                }
                file.lock().unwrap_or_else(|p| p.into_inner()).line(&line);
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        }));
    }

    // Made at the first sample (reading /proc costs a task that ends before
    // then for nothing); without process information (an odd platform), the
    // task runs unsampled.
    let mut sys: Option<sysinfo::System> = None;
    let mut unsampled = false;
    let (mut peak, mut mem_sum, mut cpu_sum, mut samples) = (0u64, 0u64, 0f32, 0u32);
    let (mut gpu_peak, mut gpu_util_sum, mut gpu_samples) = (None::<u64>, 0f32, 0u32);
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(50),
        SAMPLE_EVERY,
    );
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut stopped = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() && stopped.is_none() => {
                stopped = Some(Stopped::Timeout(spec.timeout.unwrap_or_default()));
                signal_group(pgid, Signal::SIGTERM);
                break stop(&mut child, pgid).await?;
            }
            changed = cancel.changed(), if stopped.is_none() => {
                if changed.is_err() || *cancel.borrow() {
                    stopped = Some(Stopped::Cancelled);
                    signal_group(pgid, Signal::SIGTERM);
                    break stop(&mut child, pgid).await?;
                }
            }
            _ = tick.tick(), if !unsampled => {
                if sys.is_none() {
                    sys = sysinfo::System::new().ok();
                }
                let Some(sys) = sys.as_mut() else {
                    unsampled = true;
                    continue;
                };
                let (mem, cpu, pids) = sample_tree(sys, pid);
                if let Some((gpu_mem, util)) = crate::gpu::usage_of(&pids) {
                    gpu_peak = Some(gpu_peak.unwrap_or(0).max(gpu_mem));
                    if let Some(u) = util {
                        gpu_util_sum += u as f32;
                        gpu_samples += 1;
                    }
                }
                peak = peak.max(mem);
                mem_sum += mem;
                cpu_sum += cpu;
                samples += 1;
                if let Some(limit) = spec.memory_limit && mem > limit {
                    stopped = Some(Stopped::Memory { limit, used: mem });
                    signal_group(pgid, Signal::SIGTERM);
                    break stop(&mut child, pgid).await?;
                }
            }
        }
    };
    // Nothing the task started outlives it.
    signal_group(pgid, Signal::SIGKILL);
    super::guard::release(pgid);
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
    }
    let tail = tail
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let messages = std::mem::take(&mut *messages.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Outcome {
        exit_code: status.code(),
        stopped,
        peak_rss: peak,
        mean_rss: if samples == 0 {
            0
        } else {
            mem_sum / samples as u64
        },
        mean_cpu: if samples == 0 {
            0.0
        } else {
            cpu_sum / samples as f32
        },
        gpu_peak_memory: gpu_peak,
        gpu_mean_utilization: (gpu_samples > 0).then(|| gpu_util_sum / gpu_samples as f32),
        messages,
        tail,
        duration: started.elapsed(),
    })
}

/// After SIGTERM: wait the grace period, then SIGKILL the group.
async fn stop(
    child: &mut tokio::process::Child,
    pgid: i32,
) -> std::io::Result<std::process::ExitStatus> {
    match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            signal_group(pgid, Signal::SIGKILL);
            child.wait().await
        }
    }
}
