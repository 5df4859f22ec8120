//! Steering runs from outside the process that drives them: start one as a
//! `nova orchestrate` process of its own (what the dashboard does), and
//! cancel a running one by signalling its process, as Ctrl-C would.
//!
//! A run records the process that drives it (`pid`, `host` in its args), so
//! any front-end on the same host can stop it, whoever started it. Stopping
//! is SIGTERM: the run ends `interrupted`, its tasks' processes are ended by
//! its workers, and `nova orchestrate --resume RUN` finishes it.

use std::path::PathBuf;
use std::process::Stdio;

use super::run::{RunRequest, hostname};
use super::runs::{self, RunRow};
use crate::error::{Error, Result};
use crate::workspace::Workspace;

/// The stored run `id` (a unique prefix will do).
pub fn find(ws: &Workspace, id: &str) -> Result<RunRow> {
    let Some(store) = ws.open_store_read()? else {
        return Err(Error::usage(format!("no run {id:?} (see nova runs)")));
    };
    runs::find_run(store.connection(), id)
        .map_err(|e| Error::Failed(e.to_string()))?
        .ok_or_else(|| Error::usage(runs::not_found(store.connection(), id)))
}

/// Whether `run` is recorded as running on this host while its process is
/// gone (killed with SIGKILL, or the machine restarted): nothing will end it
/// but `nova orchestrate --resume`.
pub fn abandoned(run: &RunRow) -> bool {
    run.status == "running"
        && run.args["host"].as_str() == Some(hostname().as_str())
        && process(run).is_none()
}

/// The process driving a running run on this host, if it is still alive and
/// still a `nova orchestrate` (a recycled pid is not signalled).
pub fn process(run: &RunRow) -> Option<i32> {
    if run.status != "running" || run.args["host"].as_str() != Some(hostname().as_str()) {
        return None;
    }
    let pid = i32::try_from(run.args["pid"].as_u64()?).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == b"orchestrate")
        .then_some(pid)
}

/// Ask the run `id` to stop. Its status turns `interrupted` once its process
/// has ended its tasks; the answer is the run as found.
pub fn cancel(ws: &Workspace, id: &str) -> Result<RunRow> {
    let run = find(ws, id)?;
    if run.status != "running" {
        return Err(Error::usage(format!(
            "run {} is {}, not running: nothing to cancel",
            run.id, run.status
        )));
    }
    let Some(pid) = process(&run) else {
        return Err(Error::Failed(format!(
            "run {} is recorded as running, but no nova orchestrate process of it runs on this host ({}); \
             it was stopped without ending (nova orchestrate --resume {} finishes it)",
            run.id,
            run.args["host"].as_str().unwrap_or("unknown host"),
            run.id
        )));
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(|e| Error::Failed(format!("cannot signal run {} (pid {pid}): {e}", run.id)))?;
    Ok(run)
}

/// Start `request` as a `nova orchestrate` process of its own (own process
/// group, so a signal to the front-end does not reach it), with its output
/// in `$NOVA_HOME/runs/RUN/orchestrate.log`. `operator` is who asked, for
/// the run's audit records. Checked first, so a request that cannot run is
/// an error here, not a failed process.
pub fn spawn(
    ws: &Workspace,
    request: &RunRequest,
    operator: &str,
) -> Result<tokio::process::Child> {
    super::run::check(ws, request)?;
    let id = match (&request.run_id, &request.resume) {
        (Some(id), _) => id.clone(),
        (None, Some(Some(id))) => id.clone(),
        _ => return Err(Error::usage("a spawned run needs its id")),
    };
    let folder = ws.home.join("runs").join(&id);
    crate::workspace::ensure_dir(&folder)?;
    let log_path: PathBuf = folder.join("orchestrate.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| Error::Io {
            path: log_path.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| Error::Io {
        path: log_path.clone(),
        source,
    })?;
    let exe = crate::files::own_executable()
        .map_err(|e| Error::Failed(format!("cannot find nova's own binary: {e}")))?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(request.to_args())
        .arg("--quiet")
        .current_dir(&ws.root)
        .env("NOVA_HOME", &ws.home)
        .env("NOVA_OPERATOR", operator)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    command
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot start nova orchestrate: {e}")))
}
