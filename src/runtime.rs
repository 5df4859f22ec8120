//! The async runtime the commands that talk to the queue, Redis, OPA or
//! child processes run on: tokio, multi-threaded, with I/O and timers; and
//! the smaller one a queue server runs on (see [`server_threads`]).

use std::num::NonZeroUsize;

use crate::error::{Error, Result};

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    build(tokio::runtime::Builder::new_multi_thread().enable_all())
}

/// The runtime of a queue server: `threads` worker threads, or
/// [`server_threads`] when not given.
pub fn server_runtime(threads: Option<NonZeroUsize>) -> Result<tokio::runtime::Runtime> {
    let threads = threads.map_or_else(server_threads, NonZeroUsize::get);
    sized_runtime(threads, "nova-server")
}

/// A multi-threaded runtime of `threads` worker threads named `name`.
pub fn sized_runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime> {
    build(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all(),
    )
}

/// Half the CPUs, at least one: a queue server's calls are small and many,
/// and a worker thread that wakes another for each of them costs more than
/// it gives while the store (redis-server, SQLite's writer thread) and the
/// clients need the other CPUs. On 2 cores, one thread served a third more
/// tasks per second than two (docs/performance.md).
pub fn server_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

fn build(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime> {
    builder
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
