//! Logging: a human format on stderr and, for commands that change state,
//! JSON lines in `$NOVA_HOME/logs/nova.log.YYYY-MM-DD`, rotated daily with
//! the last [`KEEP_FILES`] kept.
//!
//! `NOVA_LOG` (an `EnvFilter` directive such as `info` or `nova=debug`)
//! filters both; without it stderr shows warnings (more with `-v`, less with
//! `-q`) and the files keep `info` and up. The file writer runs on its own
//! thread; the [`LogGuard`] flushes it when dropped, which `app::main` does on
//! every way out, errors included, and [`flush_on_signals`] on Ctrl-C and
//! SIGTERM for the commands that do not stop gracefully by themselves.

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub const KEEP_FILES: usize = 14;

/// The file writer's guard: dropping it flushes what is queued.
static FILE_GUARD: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
    std::sync::Mutex::new(None);

/// Flushes the log files when dropped.
pub struct LogGuard;

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// Write out every queued log line and close the files.
pub fn flush() {
    let guard = FILE_GUARD.lock().unwrap_or_else(|p| p.into_inner()).take();
    drop(guard);
}

/// For commands that do not handle signals themselves: on SIGINT or SIGTERM,
/// log it, flush the files and exit with 128 + the signal's number.
pub fn flush_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("nova-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(signal, "interrupted");
                flush();
                std::process::exit(128 + signal);
            }
        });
}

fn filter(default: &str) -> EnvFilter {
    std::env::var("NOVA_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Start logging; `files` is the logs folder when this command keeps log files.
pub fn init(verbose: u8, quiet: bool, files: Option<&Path>) -> LogGuard {
    let stderr_level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_filter(filter(stderr_level));

    let file = files.and_then(|dir| {
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("nova.log")
            .max_log_files(KEEP_FILES)
            .build(dir)
            .map_err(|e| eprintln!("warning: no log files in {}: {e}", dir.display()))
            .ok()?;
        let (writer, g) = tracing_appender::non_blocking(appender);
        *FILE_GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
        Some(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .with_filter(filter(if verbose > 1 { stderr_level } else { "info" })),
        )
    });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
    LogGuard
}
