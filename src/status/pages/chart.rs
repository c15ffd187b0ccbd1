//! The dashboard's pictures, drawn by the daemon as inline SVG (no script library): the
//! attempts per hour over the last 24 hours and per day over the last 30, stacked by
//! outcome (sent, deferred, failed), and a bar per provider limit. Only numbers and times
//! go into them, never text from mail; each bar carries its numbers as `data-*`
//! attributes and a `<title>` (the browser's tooltip).

use std::fmt::Write;

use crate::time::{DAY_MS, HOUR_MS, rfc3339};

/// One bar: the attempts of one hour or day by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Its start, ms since the epoch.
    pub start_ms: u64,
    /// Attempts that sent the message.
    pub sent: u64,
    /// Attempts that left it deferred.
    pub deferred: u64,
    /// Attempts that ended it failed (or partly sent).
    pub failed: u64,
}

impl Bucket {
    fn total(&self) -> u64 {
        self.sent + self.deferred + self.failed
    }
}

/// `n` buckets of `width` ms ending with the one holding `now`, filled from the hourly
/// counts (hour start ms, sent, deferred, failed).
pub fn buckets(tallies: &[(u64, u64, u64, u64)], now: u64, width: u64, n: u64) -> Vec<Bucket> {
    let last = now / width * width;
    let first = last.saturating_sub((n - 1) * width);
    let mut out: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start_ms: first + i * width,
            ..Bucket::default()
        })
        .collect();
    for &(hour, s, d, f) in tallies {
        if hour < first || hour >= last + width {
            continue;
        }
        let b = &mut out[((hour - first) / width) as usize];
        b.sent += s;
        b.deferred += d;
        b.failed += f;
    }
    out
}

/// The last 24 hours, hour by hour.
pub fn hourly(tallies: &[(u64, u64, u64, u64)], now: u64) -> Vec<Bucket> {
    buckets(tallies, now, HOUR_MS, 24)
}

/// The last 30 days (UTC), day by day.
pub fn daily(tallies: &[(u64, u64, u64, u64)], now: u64) -> Vec<Bucket> {
    buckets(tallies, now, DAY_MS, 30)
}

const WIDTH: u64 = 960;
const HEIGHT: u64 = 160;
const LEFT: u64 = 40;
const BOTTOM: u64 = 20;
const TOP: u64 = 8;

/// A round top for the axis at or above `max`: 1, 2, 5 times a power of ten.
fn round_top(max: u64) -> u64 {
    let mut top = 1;
    while top < max {
        top = match top.to_string().as_bytes()[0] {
            b'1' => top * 2,
            b'2' => top / 2 * 5,
            _ => top * 2,
        };
    }
    top
}

/// A stacked bar chart of `buckets`; `label` names a bucket on the x axis (every
/// `label_every`th), `when` in its tooltip. `id` is the SVG's id.
pub fn svg(
    id: &str,
    caption: &str,
    buckets: &[Bucket],
    label_every: usize,
    label: fn(u64) -> String,
    when: fn(u64) -> String,
) -> String {
    let top = round_top(buckets.iter().map(Bucket::total).max().unwrap_or(0));
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = buckets.len().max(1) as u64;
    let slot = (WIDTH - LEFT) / n;
    let bar_w = slot.saturating_sub(2).max(1);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="{id}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{caption}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        s,
        r#"<line class="axis" x1="{LEFT}" y1="{y0}" x2="{WIDTH}" y2="{y0}"/><line class="grid" x1="{LEFT}" y1="{TOP}" x2="{WIDTH}" y2="{TOP}"/><text class="tick" x="{x}" y="{ty}" text-anchor="end">{top}</text><text class="tick" x="{x}" y="{y0}" text-anchor="end">0</text>"#,
        y0 = TOP + plot_h,
        x = LEFT - 4,
        ty = TOP + 4,
    );
    for (i, b) in buckets.iter().enumerate() {
        let x = LEFT + i as u64 * slot + 1;
        let _ = write!(
            s,
            r#"<g class="bar" data-start="{}" data-sent="{}" data-deferred="{}" data-failed="{}"><title>{}: {} sent, {} deferred, {} failed</title>"#,
            rfc3339(b.start_ms),
            b.sent,
            b.deferred,
            b.failed,
            when(b.start_ms),
            b.sent,
            b.deferred,
            b.failed
        );
        // Stacked from the axis up: sent, deferred, failed.
        let mut y = TOP + plot_h;
        for (class, v) in [
            ("sent", b.sent),
            ("deferred", b.deferred),
            ("failed", b.failed),
        ] {
            if v == 0 {
                continue;
            }
            let h = (v * plot_h).div_ceil(top).max(1);
            y -= h.min(y - TOP);
            let _ = write!(
                s,
                r#"<rect class="{class}" x="{x}" y="{y}" width="{bar_w}" height="{h}"/>"#
            );
        }
        // An empty slot still shows where the bucket is, and keeps its tooltip.
        let _ = write!(
            s,
            r#"<rect class="hit" x="{x}" y="{TOP}" width="{bar_w}" height="{plot_h}"/></g>"#
        );
        if i % label_every == 0 {
            let _ = write!(
                s,
                r#"<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x + bar_w / 2,
                HEIGHT - 4,
                label(b.start_ms)
            );
        }
    }
    s.push_str("</svg>");
    s
}

/// `HH:00` of an hour start.
pub fn hour_label(ms: u64) -> String {
    rfc3339(ms)[11..16].to_string()
}

/// `MM-DD` of a day start.
pub fn day_label(ms: u64) -> String {
    rfc3339(ms)[5..10].to_string()
}

/// `2026-12-03 10:00 UTC`.
pub fn hour_when(ms: u64) -> String {
    format!("{} UTC", rfc3339(ms)[..16].replace('T', " "))
}

/// `2026-12-03`.
pub fn day_when(ms: u64) -> String {
    rfc3339(ms)[..10].to_string()
}

/// A limit's use as a bar: `used` of `limit` (0 = no limit: only the count).
pub fn limit_bar(class: &str, used: u64, limit: u32) -> String {
    if limit == 0 {
        return format!(r#"<span class="limit-none">{used} (no limit)</span>"#);
    }
    let limit = u64::from(limit);
    let w = 120u64;
    let filled = (used.min(limit) * w).div_ceil(limit);
    let level = match used * 100 / limit {
        0..=69 => "ok",
        70..=99 => "high",
        _ => "full",
    };
    format!(
        r#"<svg class="limit {class}" data-used="{used}" data-limit="{limit}" viewBox="0 0 {w} 10" width="{w}" height="10" role="img" aria-label="{used} of {limit}" xmlns="http://www.w3.org/2000/svg"><rect class="track" x="0" y="0" width="{w}" height="10"/><rect class="use {level}" x="0" y="0" width="{filled}" height="10"/></svg> <span class="limit-text">{used} / {limit}</span>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_bucket() {
        let now = 100 * HOUR_MS + 5;
        let t = [
            (99 * HOUR_MS, 2, 1, 0),
            (100 * HOUR_MS, 1, 0, 3),
            (50 * HOUR_MS, 9, 9, 9),
        ];
        let h = hourly(&t, now);
        assert_eq!(h.len(), 24);
        assert_eq!(h[23].start_ms, 100 * HOUR_MS);
        assert_eq!((h[23].sent, h[23].failed), (1, 3));
        assert_eq!((h[22].sent, h[22].deferred), (2, 1));
        assert_eq!(
            h.iter().map(Bucket::total).sum::<u64>(),
            7,
            "hour 50 is outside"
        );
        let d = daily(&t, now);
        assert_eq!(d.iter().map(Bucket::total).sum::<u64>(), 34);
    }

    #[test]
    fn the_svg_holds_numbers_only() {
        let b = hourly(&[(10 * HOUR_MS, 3, 0, 1)], 10 * HOUR_MS);
        let s = svg("h", "attempts", &b, 6, hour_label, hour_when);
        assert!(s.contains(r#"data-sent="3" data-deferred="0" data-failed="1""#));
        assert!(s.contains("<title>1970-01-01 10:00 UTC: 3 sent, 0 deferred, 1 failed</title>"));
        assert_eq!(s.matches("<g class=\"bar\"").count(), 24);
    }
}
