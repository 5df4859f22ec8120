//! The orphan guard: no task outlives the process that runs it.
//!
//! Each task runs in its own process group, and the supervisor kills that
//! group when the task ends, times out or is cancelled. That needs the
//! supervisor alive: a worker killed with SIGKILL (or by the OOM killer)
//! would leave its tasks running, and after the lease ran out the task would
//! run twice at once, the orphan and the retry. `PR_SET_PDEATHSIG` alone does
//! not help: it reaches only the task's first process, never what that
//! process started.
//!
//! So the first task a process runs starts a guard beside it: the same nova
//! binary as `nova __guard`, in its own process group, deaf to the terminal's
//! signals, reading a pipe whose only writer is this process. The supervisor
//! writes `+PGID` when a task's group starts and `-PGID` when it is gone.
//! When the pipe ends, which happens however this process ends, the guard
//! sends SIGTERM to every group still registered, SIGKILL to what is left
//! after [`super::supervisor::GRACE`], and exits.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigHandler, Signal, killpg, signal};
use nix::unistd::Pid;

/// The argument that makes the nova binary a guard (not a user command).
pub const ARG: &str = "__guard";

static ENABLED: AtomicBool = AtomicBool::new(false);
static GUARD: OnceLock<Option<Mutex<(Child, ChildStdin)>>> = OnceLock::new();

/// Let this process start a guard: only the nova binary itself can be one,
/// so `app::main` enables it (a test harness running the library does not).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

fn guard() -> Option<&'static Mutex<(Child, ChildStdin)>> {
    GUARD
        .get_or_init(|| {
            if !ENABLED.load(Ordering::Relaxed) {
                return None;
            }
            let started = std::env::current_exe().and_then(|exe| {
                Command::new(exe)
                    .arg(ARG)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .process_group(0)
                    .spawn()
            });
            match started {
                Ok(mut child) => {
                    let stdin = child.stdin.take().expect("a piped stdin");
                    Some(Mutex::new((child, stdin)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the orphan guard; tasks may outlive a killed worker");
                    None
                }
            }
        })
        .as_ref()
}

fn tell(line: String) {
    if let Some(g) = guard() {
        let mut g = g.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = g.1.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "the orphan guard is gone");
        }
    }
}

/// The write end of the guard's pipe, starting the guard if need be. A task
/// registers its own group through it between fork and exec
/// ([`register_self`]), so no moment exists in which a killed worker could
/// leave a task the guard does not know.
pub fn pipe_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    guard().map(|g| g.lock().unwrap_or_else(|p| p.into_inner()).1.as_raw_fd())
}

/// In the child between fork and exec: write `+PID` to the guard's pipe
/// `fd` (the child leads its own process group, so its pid is the group's).
///
/// # Safety
/// Only getpid and write, on a stack buffer: async-signal-safe.
pub unsafe fn register_self(fd: std::os::fd::RawFd) {
    let mut buf = [0u8; 24];
    // SAFETY: getpid has no preconditions.
    let mut pid = unsafe { libc::getpid() } as u64;
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (pid % 10) as u8;
        n += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    buf[0] = b'+';
    for i in 0..n {
        buf[1 + i] = digits[n - 1 - i];
    }
    buf[1 + n] = b'\n';
    // One write below PIPE_BUF is atomic beside the worker's own lines.
    // SAFETY: the buffer outlives the call; a failed write is ignored (the
    // worker registers the group again after spawn).
    let _ = unsafe { libc::write(fd, buf.as_ptr().cast(), n + 2) };
}

/// The task group `pgid` has started: the guard ends it if this process dies.
pub fn watch(pgid: i32) {
    tell(format!("+{pgid}\n"));
}

/// The task group `pgid` is gone.
pub fn release(pgid: i32) {
    tell(format!("-{pgid}\n"));
}

/// `nova __guard`: keep the groups registered on stdin; end them when it closes.
pub fn serve() -> std::process::ExitCode {
    // The terminal's Ctrl-C and a service manager's SIGTERM are for the
    // process being guarded; the guard's own end is its pipe closing.
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: setting a signal to be ignored installs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let mut groups = BTreeSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<i32>() else {
            continue;
        };
        if pgid <= 1 {
            continue;
        }
        match op {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    end_groups(&groups, super::supervisor::GRACE);
    std::process::ExitCode::SUCCESS
}

/// SIGTERM to each group, SIGKILL to those still there after `grace`.
fn end_groups(groups: &BTreeSet<i32>, grace: Duration) {
    let alive = |pgid: i32| killpg(Pid::from_raw(pgid), None).is_ok();
    for &pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && groups.iter().any(|&g| alive(g)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}
