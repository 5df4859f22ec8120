//! Opening the queue backend a [`StoreUrl`] names, for every command and
//! front-end.

use std::path::Path;

use super::any::AnyQueue;
use super::backend::QueueError;
use super::redis::RedisQueue;
use super::sqlite::SqliteQueue;
use crate::error::{Error, Result};
use crate::store_url::StoreUrl;
use crate::workspace::ensure_dir;

fn open_sqlite(path: &Path) -> Result<SqliteQueue> {
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    SqliteQueue::open(path).map_err(|e| {
        // A file that is not a database (or a newer one) is bad input, as for every other command.
        match crate::store::Store::open(path) {
            Err(store) if store.is_bad_input() => Error::Store(store),
            _ => Error::Failed(e.to_string()),
        }
    })
}

/// Open the backend `store` names; `label` is how messages name it.
pub async fn open_queue(store: &StoreUrl) -> Result<(AnyQueue, String)> {
    match store {
        StoreUrl::Sqlite(path) => Ok((
            AnyQueue::Sqlite(open_sqlite(path)?),
            format!("sqlite:{}", path.display()),
        )),
        StoreUrl::Redis(url) => {
            let queue = RedisQueue::connect(url).await.map_err(|e| match e {
                QueueError::InvalidArgument(m) => Error::usage(format!("--store: {m}")),
                other => Error::Failed(other.to_string()),
            })?;
            Ok((
                AnyQueue::Redis(queue),
                crate::store_url::without_password(url),
            ))
        }
    }
}
