//! nova: a single-binary orchestrator for multi-agent systems.
//!
//! The binary in `src/main.rs` only calls [`app::main`]; every command, and every
//! service the commands share, lives in this library so integration tests and
//! benchmarks run the same code the binary does. Dependencies point downwards:
//! command modules (`blueprints::command`, `plan::command`, `tasks`, `roadmap`)
//! use the subsystems (`store`, `blueprints`, `plan`, `workspace`), never the
//! other way round.

pub mod app;
pub mod audit;
pub mod backup;
pub mod bench;
pub mod blueprints;
pub mod cli;
pub mod clock;
pub mod config;
pub mod digest;
pub mod error;
pub mod files;
pub mod gpu;
pub mod http;
pub mod kpi;
pub mod logging;
pub mod monitor;
pub mod orchestrate;
pub mod output;
pub mod packages;
pub mod phases;
pub mod plan;
pub mod policy;
pub mod queue;
pub mod roadmap;
pub mod runtime;
pub mod serve;
pub mod setup;
pub mod store;
pub mod store_url;
pub mod tasks;
pub mod testreport;
pub mod tls;
pub mod workspace;
pub mod yaml;

pub use error::{Error, Result};
