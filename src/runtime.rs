//! The async runtime the commands that talk to the queue, Redis, OPA or
//! child processes run on: tokio, multi-threaded, with I/O and timers.

use crate::error::{Error, Result};

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Failed(format!("cannot start the async runtime: {e}")))
}
