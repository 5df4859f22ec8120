//! Time as nova stores and shows it: milliseconds since the Unix epoch, and
//! RFC 3339 for people. A leaf every module may use.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// [`now_ms`] less `ago` (saturating: a century ago is still a time).
pub fn ms_ago(ago: Duration) -> i64 {
    now_ms().saturating_sub(ago.as_millis().min(i64::MAX as u128) as i64)
}

/// `millis` as an RFC 3339 time to the second, in UTC.
pub fn rfc3339(millis: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(millis.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}
