//! Agent blueprints: the model, the built-in catalog, loading and validation,
//! and the `nova blueprints` command.
//!
//! A blueprint is a YAML agent template (see [`model`]); the catalog
//! ([`catalog`]) gathers the built-in ones and the workspace's own and checks
//! them as a whole ([`validate`]). Nothing outside this module parses blueprint
//! YAML.

pub mod assets;
pub mod catalog;
pub mod command;
pub mod model;
pub mod template;
pub mod validate;

pub use catalog::{Agent, Catalog, Layer};
pub use model::{Blueprint, CommandSpec, HumanDuration, Requires, Resources, TaskSpec, When};
