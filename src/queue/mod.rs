//! The task queue: the wire types, the delivery rules, the backends that
//! persist tasks, the tonic service and server, and the client the rest of
//! nova uses.
//!
//! Delivery is at-least-once: a dequeued task holds a lease, a heartbeat
//! extends it, an expired lease puts the task back in the queue, and an ack is
//! only accepted from the lease that holds the task. Both backends implement
//! [`backend::QueueBackend`] with the same rules; `tests/queue_conformance.rs`
//! checks them against each other.

pub mod any;
pub mod backend;
pub mod client;
pub mod command;
pub mod enqueue_stream;
pub mod handle;
mod idle;
pub mod metrics;
pub mod model;
pub mod open;
mod pollers;
pub mod proto;
pub mod redis;
pub mod server;
pub mod service;
pub mod sqlite;
pub mod validate;
pub mod work_stream;

pub use backend::{QueueBackend, QueueError};
pub use model::{AckSpec, DequeueSpec, NewTask, Status};
