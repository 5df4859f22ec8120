//! Backups of a workspace to a folder or an S3 bucket, and restores from them.
//!
//! A backup is a set of content-addressed objects (`objects/<2 hex>/<sha256>`)
//! and a manifest (`backups/<id>.json`) that names each file of the workspace
//! with its size and SHA-256. The database is copied with SQLite's online
//! backup API, so a backup taken while `nova serve` or a run writes is one
//! consistent snapshot. Objects already in the target are not written again,
//! and the manifest is written last: a backup cut short is never listed.
//! The target is reached through `object_store`, so other stores than a
//! folder plug in behind [`target::Target`]. Prune takes the target's lock
//! for itself alone, so it never deletes what a backup, verify or restore
//! running elsewhere counts on ([`lock`]).

mod aws_profile;
pub mod checkpoint;
pub mod command;
pub mod create;
pub mod key;
pub mod lock;
pub mod manifest;
pub mod ops;
pub mod prune;
pub mod repo;
pub mod restore;
pub mod target;
