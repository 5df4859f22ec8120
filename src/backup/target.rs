//! Where backups go: a URL (a folder or an S3 bucket) turned into an object
//! store, and the key layout inside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, RetryConfig};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// An object store holding backups, and what to call it in messages.
#[derive(Clone)]
pub struct Target {
    store: Arc<dyn ObjectStore>,
    pub label: String,
}

impl Target {
    /// Open the target `url` names: a folder (`file:///path` or a path,
    /// relative to `root`). `create` makes a missing folder (a backup);
    /// without it a missing folder is refused, so a mistyped target is not
    /// answered with "no backups" and left behind as an empty folder.
    pub fn open(url: &str, root: &Path, create: bool) -> Result<Target> {
        if url.trim().is_empty() {
            return Err(Error::usage("--to: the backup target is empty"));
        }
        let folder = match url.split_once("://") {
            Some(("file", rest)) => PathBuf::from(rest),
            Some(("s3", rest)) => return Target::s3(url, rest),
            Some((scheme, _)) => {
                return Err(Error::usage(format!(
                    "{url}: nova cannot back up to {scheme}:// targets; give a folder (a path or file:///path) or s3://bucket/prefix"
                )));
            }
            // Components, so that `./t` is named `ws/t`, not `ws/./t`.
            None => root.join(url).components().collect(),
        };
        if create {
            std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        } else if !folder.is_dir() {
            return Err(Error::usage(format!(
                "{url}: there is no backup folder at {}",
                folder.display()
            )));
        }
        let store = LocalFileSystem::new_with_prefix(&folder)
            .map_err(|e| Error::Failed(format!("backup target {}: {e}", folder.display())))?;
        Ok(Target {
            store: Arc::new(store),
            label: folder.display().to_string(),
        })
    }

    /// An S3 bucket (`s3://bucket/prefix`), on AWS or any S3-compatible
    /// service: endpoint, region and credentials from the `AWS_*`
    /// environment, then the AWS profile files.
    fn s3(url: &str, rest: &str) -> Result<Target> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::usage(format!(
                "{url}: no bucket name (s3://bucket/prefix)"
            )));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in super::aws_profile::settings()? {
            let key = key.parse().expect("a known object_store S3 key");
            builder = builder.with_config(key, value);
        }
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        // The operator named a plain-HTTP endpoint (a local MinIO, say).
        let plain_http = endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"));
        if builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        // A few quick retries: an endpoint that is down is named within
        // seconds instead of after object_store's default three minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        let store = builder
            .with_retry(retry)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(plain_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            )
            .build()
            .map_err(|e| Error::usage(format!("{url}: {e}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.trim_matches('/').is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix.trim_matches('/')))
        };
        Ok(Target {
            store,
            label: url.trim_end_matches('/').to_string(),
        })
    }

    fn failed(&self, what: &str, e: object_store::Error) -> Error {
        Error::Failed(format!(
            "backup target {}: {what}: {}",
            self.label,
            describe(&e)
        ))
    }

    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&Key::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed(key, e)),
        }
    }

    /// Write `bytes` at `key` (atomically: a reader sees all of it or nothing).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&Key::from(key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.failed(key, e))
    }

    /// The object at `key`; `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self.store.get(&Key::from(key)).await {
            Ok(found) => Ok(Some(
                found
                    .bytes()
                    .await
                    .map_err(|e| self.failed(key, e))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(key, e)),
        }
    }

    /// Remove the object at `key` (gone already is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Key::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed(key, e)),
        }
    }

    /// The keys under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        use futures_util::TryStreamExt;
        let metas: Vec<_> = self
            .store
            .list(Some(&Key::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.failed(prefix, e))?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }
}

/// What went wrong, in a line: the S3 service's own error code and message
/// when it answered one, else the innermost cause (a refused connection, a
/// timeout, a full disk).
fn describe(e: &object_store::Error) -> String {
    let debug = format!("{e:?}");
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = debug.find(&open)? + open.len();
        let len = debug[start..].find("</")?;
        Some(debug[start..start + len].to_string())
    };
    if let Some(code) = tag("Code") {
        return match tag("Message") {
            Some(message) => format!("the service answered {code}: {message}"),
            None => format!("the service answered {code}"),
        };
    }
    // A HEAD answer has no body to carry a code: go by the status.
    if let Some(at) = debug.find("status: ") {
        let status: String = debug[at + 8..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        match status.as_str() {
            "401" | "403" => {
                return format!(
                    "access denied (HTTP {status}): check the credentials and the bucket's permissions"
                );
            }
            "" => {}
            _ => return format!("the service answered HTTP {status}"),
        }
    }
    let mut causes = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    // The last two causes name the failure and its reason ("tcp connect
    // error: Connection refused"), the outer ones only wrap them.
    let n = causes.len();
    match &causes[n.saturating_sub(2)..] {
        [outer, inner] if !outer.contains(inner.as_str()) => format!("{outer}: {inner}"),
        [.., last] => last.clone(),
        [] => unreachable!("there is at least the error itself"),
    }
}
