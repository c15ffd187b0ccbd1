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

/// A moment in a record (when a message or recipient is tried next, until when it
/// waits): milliseconds since the epoch, in whole seconds, written as RFC 3339 UTC
/// (`2026-12-07T21:00:00Z`) in the store, the API and the CLI, as these fields always
/// were. Compared and used as a number inside, never parsed twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    /// The moment `ms` (cut to its second, as RFC 3339 keeps it).
    pub fn at_ms(ms: u64) -> Stamp {
        Stamp(ms - ms % 1000)
    }

    /// Milliseconds since the epoch.
    pub fn ms(self) -> u64 {
        self.0
    }

    /// An RFC 3339 time.
    pub fn parse(s: &str) -> Option<Stamp> {
        parse_rfc3339(s).map(Stamp)
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&rfc3339(self.0))
    }
}

impl serde::Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Stamp::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time")))
    }
}

/// Parses an RFC 3339 time back into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(s).ok().map(to_ms)
}

/// A duration in whole milliseconds (saturating).
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
