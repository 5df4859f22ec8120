//! Logging: a human format on stderr and, for commands that change state,
//! JSON lines in `$NOVA_HOME/logs/nova.log.YYYY-MM-DD`, rotated daily with
//! the last [`KEEP_FILES`] kept.
//!
//! `NOVA_LOG` (an `EnvFilter` directive such as `info` or `nova=debug`)
//! filters both; without it stderr shows warnings (more with `-v`, less with
//! `-q`) and the files keep `info` and up. The file writer runs on its own
//! thread; the [`LogGuard`] flushes it when dropped, which `app::main` does on
//! every way out, errors and Ctrl-C included.

use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub const KEEP_FILES: usize = 14;

/// Flushes the log files when dropped.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

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

    let mut guard = None;
    let file = files.and_then(|dir| {
        let appender = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix("nova.log")
            .max_log_files(KEEP_FILES)
            .build(dir)
            .map_err(|e| eprintln!("warning: no log files in {}: {e}", dir.display()))
            .ok()?;
        let (writer, g) = tracing_appender::non_blocking(appender);
        guard = Some(g);
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
    LogGuard(guard)
}
