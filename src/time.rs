//! Time helpers shared by every stage (a leaf: it imports nothing of mailgate): wall-clock
//! milliseconds since the epoch, their RFC 3339 form, and the lengths of the limit windows.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One minute in milliseconds (the per-minute limit window).
pub const MINUTE_MS: u64 = 60_000;
/// One day in milliseconds (the daily recipient window).
pub const DAY_MS: u64 = 86_400_000;
/// One hour in milliseconds.
pub const HOUR_MS: u64 = 3_600_000;

/// Whether `every` has passed since the last time this said yes for `last` (the time it
/// keeps, in ms since the epoch): for log lines a stranger could otherwise repeat at
/// will.
pub fn once_per(last: &std::sync::atomic::AtomicU64, every: Duration) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let now = now_ms();
    let before = last.load(Relaxed);
    now.saturating_sub(before) >= duration_ms(every)
        && last.compare_exchange(before, now, Relaxed, Relaxed).is_ok()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// A `SystemTime` as milliseconds since the Unix epoch.
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// Milliseconds since the epoch as RFC 3339 UTC (second precision).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses an RFC 3339 time back into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(s).ok().map(to_ms)
}

/// A duration in whole milliseconds (saturating).
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
