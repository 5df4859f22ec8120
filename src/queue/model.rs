//! Task states and the requests the backends carry out.
//!
//! A task's record on the wire and in the backends is the proto [`Task`]; this
//! module adds the status type, the inputs of each operation, and the retry
//! backoff rule, so both backends compute the same thing.

use std::time::Duration;

use rand::Rng;

pub use super::proto::Task;

pub const DEFAULT_QUEUE: &str = "default";
pub const DEFAULT_LEASE_MS: u32 = 30_000;
pub const DEFAULT_BACKOFF_MS: u32 = 1_000;
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::Failed => "FAILED",
            Status::Cancelled => "CANCELLED",
        }
    }

    /// Completed, failed or cancelled: nothing more happens to the task by itself.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    /// Parse a status name, case-insensitively (`in_progress` and `IN_PROGRESS` both work).
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task to enqueue, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub metadata: Vec<(String, String)>,
    pub priority: i32,
    pub max_attempts: u32,
    pub delay_ms: u64,
    pub idempotency_key: Option<String>,
    pub retry_backoff_ms: u32,
}

impl NewTask {
    /// The task this becomes when stored as `id` at `now`: pending, never
    /// attempted (both backends answer an enqueue with it, not a read-back).
    pub fn into_task(self, id: String, now: i64) -> super::proto::Task {
        super::proto::Task {
            id,
            r#type: self.kind,
            payload: self.payload,
            metadata: self
                .metadata
                .into_iter()
                .map(|(key, value)| super::proto::TaskMetadataEntry { key, value })
                .collect(),
            status: Status::Pending.as_str().to_string(),
            created_at: now,
            updated_at: now,
            queue: self.queue,
            priority: self.priority,
            max_attempts: self.max_attempts.max(1),
            run_at: now.saturating_add(self.delay_ms.min(i64::MAX as u64) as i64),
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            retry_backoff_ms: self.retry_backoff_ms,
            ..Default::default()
        }
    }

    pub fn new(kind: impl Into<String>, payload: impl Into<String>) -> Self {
        NewTask {
            queue: DEFAULT_QUEUE.into(),
            kind: kind.into(),
            payload: payload.into(),
            metadata: Vec::new(),
            priority: 0,
            max_attempts: 1,
            delay_ms: 0,
            idempotency_key: None,
            retry_backoff_ms: DEFAULT_BACKOFF_MS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DequeueSpec {
    pub worker_id: String,
    /// Empty means every queue.
    pub queues: Vec<String>,
    pub lease_ms: u32,
    pub max_tasks: u32,
    /// At most this many bytes of tasks in one answer (0: no limit); the
    /// first task is always taken. Checked before leasing, so a reply too
    /// big to send never leaves tasks leased that nobody received.
    pub max_bytes: u64,
}

/// About what a task weighs in a reply: its variable fields plus room for
/// the fixed ones. Both backends size candidates with it before leasing.
pub const TASK_OVERHEAD: u64 = 512;

#[derive(Debug, Clone)]
pub struct AckSpec {
    pub task_id: String,
    pub success: bool,
    pub result: String,
    /// When set, the ack only applies if this lease still holds the task.
    pub lease_id: Option<String>,
    pub retry: bool,
    pub error: String,
    /// The outcome needs only the task's id and status (a Work stream's
    /// brief acks): a backend may leave the task's other fields empty, and
    /// need not read them.
    pub brief: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// (queue, status, count), sorted.
    pub counts: Vec<(String, String, u64)>,
    pub oldest_pending_age_ms: i64,
    pub in_flight_leases: u64,
    /// Paused queues, sorted.
    pub paused: Vec<String>,
}

/// A worker connected by a Work stream, as the store keeps it while the
/// stream lasts (refreshed every [`WORKER_REFRESH`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub version: String,
    pub pid: u32,
    pub concurrency: u32,
    /// The queues it takes tasks from (none: every queue).
    pub queues: Vec<String>,
    pub connected_at: i64,
    pub last_seen_at: i64,
}

/// How often a server notes that a worker's stream is still there.
pub const WORKER_REFRESH: Duration = Duration::from_secs(10);
/// A worker not heard of for this long is not listed (its server went
/// without saying goodbye); after [`WORKER_FORGET_MS`] its record is deleted.
pub const WORKER_TTL_MS: i64 = 30_000;
pub const WORKER_FORGET_MS: i64 = 3_600_000;

pub use crate::clock::{ms_ago, now_ms};

/// A task as a brief ack answers it: its id and status, nothing else.
pub fn brief_task(id: String, status: String) -> Task {
    Task {
        id,
        status,
        ..Task::default()
    }
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Delay before the retry that follows attempt number `attempts` (1-based):
/// `base * 2^(attempts - 1)`, capped at an hour, with jitter drawn from the
/// upper half so retries of many tasks spread out without coming early.
pub fn backoff_ms(base_ms: u32, attempts: u32) -> i64 {
    backoff_at(base_ms, attempts, rand::rng().random::<f64>())
}

/// [`backoff_ms`] with the jitter given: `fraction` in `[0, 1)` picks the
/// point in the upper half. The Redis backend's Lua computes the same thing
/// (`backoff` in `redis/prelude.lua`) from a fraction this side draws.
pub fn backoff_at(base_ms: u32, attempts: u32, fraction: f64) -> i64 {
    let base = if base_ms == 0 {
        DEFAULT_BACKOFF_MS
    } else {
        base_ms
    } as u64;
    let exp = attempts.saturating_sub(1).min(32);
    let full = base
        .saturating_mul(1u64 << exp)
        .min(MAX_BACKOFF.as_millis() as u64);
    let low = full / 2;
    let jitter = ((full - low + 1) as f64 * fraction.clamp(0.0, 1.0)) as u64;
    (low + jitter).min(full) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let first = backoff_ms(100, 1);
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff_ms(100, 3);
            assert!((200..=400).contains(&third), "{third}");
            assert!(backoff_ms(1000, 40) <= 3_600_000);
        }
        assert_eq!(backoff_at(100, 2, 0.0), 100);
        assert_eq!(backoff_at(100, 2, 0.999_999), 200);
        assert_eq!(backoff_at(0, 1, 0.0), 500, "0 means the default base");
    }

    #[test]
    fn statuses_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("in_progress"), Some(Status::InProgress));
        assert_eq!(Status::parse("DONE"), None);
    }
}
