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
//!
//! A task spawned just before this process died may not be registered yet.
//! So every task also carries this process's guard token in its environment
//! ([`ENV`]), inherited by whatever it starts, and when the pipe ends the
//! guard also ends the group of every process whose environment holds the
//! token (read from `/proc`). Registering from inside the child between
//! fork and exec would close the window too, but any `pre_exec` makes the
//! standard library fork the whole multi-threaded process instead of
//! `posix_spawn`, which doubled the CPU cost of a trivial task
//! (docs/performance.md).

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
/// The environment variable that marks a task (and what it starts) as this
/// process's: its value is the guard's token.
pub const ENV: &str = "NOVA_GUARD";

/// This process's guard token: random, so one worker's guard never ends
/// another's tasks.
pub fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let bytes: [u8; 16] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

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
            let started = crate::files::own_executable().and_then(|exe| {
                Command::new(exe)
                    .arg(ARG)
                    .arg(token())
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

/// Whether this process has a guard (starting it if need be): tasks are
/// marked with [`token`] only when one watches them.
pub fn active() -> bool {
    guard().is_some()
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
    let token = std::env::args().nth(2).unwrap_or_default();
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
    if token.len() >= 16 {
        groups.extend(marked_groups(&token));
    }
    end_groups(&groups, super::supervisor::GRACE);
    std::process::ExitCode::SUCCESS
}

/// The process groups of every process whose environment carries `token`
/// (a task, or what it started, registered or not).
fn marked_groups(token: &str) -> BTreeSet<i32> {
    let marker = format!("{ENV}={token}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_bytes()))
        })
        .filter_map(|pid| nix::unistd::getpgid(Some(Pid::from_raw(pid))).ok())
        .map(|pgid| pgid.as_raw())
        .filter(|pgid| *pgid > 1)
        .collect()
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
