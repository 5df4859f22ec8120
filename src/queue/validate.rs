//! Ingress validation: every request is checked before it reaches a backend,
//! and a bad one is refused with `INVALID_ARGUMENT` naming the field.

use super::model::{DEFAULT_BACKOFF_MS, DEFAULT_QUEUE, NewTask};
use super::proto::{EnqueueRequest, WorkerInfo};

pub const MAX_TYPE_LEN: usize = 128;
pub const MAX_PAYLOAD: usize = 1024 * 1024;
pub const MAX_METADATA: usize = 64;
pub const MAX_KEY_LEN: usize = 128;
pub const MAX_VALUE_LEN: usize = 4 * 1024;
pub const MAX_ATTEMPTS: u32 = 1000;
pub const MAX_BATCH: usize = 1000;
/// A year: longer delays are more likely a unit mistake than a plan.
pub const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;

/// True for names of the form `[A-Za-z0-9_.-]{1,128}` (metadata keys, queue names).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KEY_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn queue_name(field: &str, queue: &str) -> Result<String, String> {
    if queue.is_empty() {
        return Ok(DEFAULT_QUEUE.to_string());
    }
    if !is_name(queue) {
        return Err(format!(
            "{field}: queue name {queue:?} must match [A-Za-z0-9_.-]{{1,128}}"
        ));
    }
    Ok(queue.to_string())
}

/// Check what a worker says of itself: a host name and a version of
/// printable text, of reasonable length.
pub fn worker_info(info: &WorkerInfo) -> Result<(), String> {
    for (field, value, most) in [
        ("worker.host", &info.host, 253),
        ("worker.version", &info.version, 64),
    ] {
        if value.chars().count() > most {
            return Err(format!("{field}: at most {most} characters"));
        }
        if value.chars().any(char::is_control) {
            return Err(format!("{field}: {value:?} has control characters"));
        }
    }
    Ok(())
}

/// Check an enqueue request; `field` prefixes the field names (for batches).
pub fn enqueue(field: &str, req: EnqueueRequest) -> Result<NewTask, String> {
    if req.r#type.trim().is_empty() {
        return Err(format!("{field}type: must not be empty"));
    }
    if req.r#type.chars().count() > MAX_TYPE_LEN {
        return Err(format!(
            "{field}type: is {} characters long; at most {MAX_TYPE_LEN} are allowed",
            req.r#type.chars().count()
        ));
    }
    if req.payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "{field}payload: is {} bytes; at most {MAX_PAYLOAD} (1 MiB) are allowed",
            req.payload.len()
        ));
    }
    if req.metadata.len() > MAX_METADATA {
        return Err(format!(
            "{field}metadata: has {} entries; at most {MAX_METADATA} are allowed",
            req.metadata.len()
        ));
    }
    for (i, entry) in req.metadata.iter().enumerate() {
        if !is_name(&entry.key) {
            return Err(format!(
                "{field}metadata[{i}].key: {:?} must match [A-Za-z0-9_.-]{{1,128}}",
                entry.key
            ));
        }
        if entry.value.len() > MAX_VALUE_LEN {
            return Err(format!(
                "{field}metadata[{i}].value: is {} bytes; at most {MAX_VALUE_LEN} (4 KiB) are allowed",
                entry.value.len()
            ));
        }
    }
    let queue = queue_name(&format!("{field}queue"), &req.queue)?;
    if req.max_attempts > MAX_ATTEMPTS {
        return Err(format!(
            "{field}max_attempts: {} is more than {MAX_ATTEMPTS}",
            req.max_attempts
        ));
    }
    if req.delay_ms > MAX_DELAY_MS {
        return Err(format!(
            "{field}delay_ms: {} is more than a year ({MAX_DELAY_MS} ms)",
            req.delay_ms
        ));
    }
    if req.idempotency_key.len() > 256 {
        return Err(format!(
            "{field}idempotency_key: at most 256 bytes are allowed"
        ));
    }
    Ok(NewTask {
        queue,
        kind: req.r#type,
        payload: req.payload,
        metadata: req.metadata.into_iter().map(|e| (e.key, e.value)).collect(),
        priority: req.priority,
        max_attempts: req.max_attempts.max(1),
        delay_ms: req.delay_ms,
        idempotency_key: (!req.idempotency_key.is_empty()).then_some(req.idempotency_key),
        retry_backoff_ms: if req.retry_backoff_ms == 0 {
            DEFAULT_BACKOFF_MS
        } else {
            req.retry_backoff_ms
        },
    })
}

pub fn task_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field}: must not be empty"));
    }
    if id.len() > 128 {
        return Err(format!("{field}: is longer than 128 characters"));
    }
    Ok(())
}
