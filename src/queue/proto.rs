//! The generated gRPC types of `proto/task_queue.proto`; the rest of nova uses
//! them through this module only.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("nova.taskqueue");
