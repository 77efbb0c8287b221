//! Wall-clock time as the store keeps it: milliseconds since the Unix epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn to_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The current time in milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    to_millis(SystemTime::now())
}

/// Milliseconds since the Unix epoch, rounded up, so that a delivery time is never early.
pub fn to_millis_ceil(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let ms = d.as_millis() as u64;
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    }
}
