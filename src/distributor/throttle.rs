//! Provider limits, counted exactly: messages in any rolling 60 seconds
//! (`per_minute_limit`) and recipients in any rolling 24 hours
//! (`per_day_recipient_limit`). A send takes its place in the windows when it is
//! dispatched (so concurrent dispatches cannot overshoot); it stays if the message went
//! out and is persisted with it, or is given back if nothing was sent. The windows are
//! rebuilt from the store at start, so a restart grants no fresh burst. Pure: times are
//! passed in.

use std::collections::VecDeque;

pub use crate::time::{DAY_MS, MINUTE_MS};
/// Throttle deferrals after which a message is sent regardless.
pub const MAX_THROTTLE_DEFERRALS: u32 = 10;

/// The limits of one provider (0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Messages per rolling minute.
    pub per_minute: u32,
    /// Recipients per rolling day.
    pub per_day: u32,
}

/// A send counted in the windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// When it was dispatched, ms.
    pub at: u64,
    /// Message id.
    pub id: String,
    /// Recipients it carried (or will carry).
    pub rcpts: u32,
}

/// What the limits say about a message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it now.
    Send,
    /// The per-minute limit is reached: wait until this time (at most a minute away).
    Throttled(u64),
    /// The daily recipient quota would be exceeded: wait until this time.
    DailyQuota(u64),
}

/// The rolling windows of one provider: the sends of the last day, ordered by time, and
/// their recipients' sum. A check, a take and a settle work from the newest end (the
/// minute) or the running sum (the day), so their cost does not grow with the day's
/// sends (only a check over the daily quota walks from the oldest end, to find when
/// enough recipients leave the day).
#[derive(Debug, Default, Clone)]
pub struct Windows {
    uses: VecDeque<Use>,
    /// Recipients of every use in `uses`.
    day_rcpts: u64,
}

impl Windows {
    /// Forgets uses older than a day.
    fn expire(&mut self, now: u64) {
        while self.uses.front().is_some_and(|u| u.at + DAY_MS <= now) {
            if let Some(u) = self.uses.pop_front() {
                self.day_rcpts -= u64::from(u.rcpts);
            }
        }
    }

    /// Messages sent in the minute before `now`.
    pub fn last_minute(&mut self, now: u64) -> usize {
        self.expire(now);
        self.uses
            .iter()
            .rev()
            .take_while(|u| u.at + MINUTE_MS > now)
            .count()
    }

    /// Recipients sent in the day before `now`.
    pub fn last_day(&mut self, now: u64) -> u64 {
        self.expire(now);
        self.day_rcpts
    }

    /// Whether a message of `rcpts` recipients may go now.
    pub fn check(&mut self, limits: Limits, now: u64, rcpts: u32) -> Verdict {
        self.expire(now);
        if limits.per_day > 0 {
            let used = self.day_rcpts;
            let need = u64::from(rcpts);
            let cap = u64::from(limits.per_day);
            // A message larger than the whole quota goes when the window is empty.
            if used > 0 && used + need > cap {
                let mut freed = 0u64;
                let mut until = now;
                for u in &self.uses {
                    freed += u64::from(u.rcpts);
                    until = u.at + DAY_MS;
                    if used - freed + need <= cap || freed == used {
                        break;
                    }
                }
                return Verdict::DailyQuota(until.max(now + 1));
            }
        }
        if limits.per_minute > 0 {
            // The window is full while the per_minute-th newest send is inside it, and a
            // place frees when that send leaves it.
            let nth_newest = self
                .uses
                .len()
                .checked_sub(limits.per_minute as usize)
                .and_then(|i| self.uses.get(i));
            if let Some(u) = nth_newest
                && u.at + MINUTE_MS > now
            {
                let until = u.at + MINUTE_MS;
                return Verdict::Throttled(until.clamp(now + 1, now + MINUTE_MS));
            }
        }
        Verdict::Send
    }

    /// Counts a dispatched send.
    pub fn take(&mut self, at: u64, id: &str, rcpts: u32) {
        // Keep the window ordered by time (restored uses may come in any order).
        let pos = self
            .uses
            .iter()
            .rposition(|u| u.at <= at)
            .map_or(0, |p| p + 1);
        self.uses.insert(
            pos,
            Use {
                at,
                id: id.to_string(),
                rcpts,
            },
        );
        self.day_rcpts += u64::from(rcpts);
    }

    /// After the attempt: keeps the send with the recipients actually sent, moved to
    /// `at` (when the upstream accepted it, which is when the mailbox counts it), or
    /// gives its place back when nothing was sent.
    pub fn settle(&mut self, id: &str, sent_rcpts: u32, at: u64) {
        // A send settles soon after it was taken: look from the newest end.
        if let Some(pos) = self.uses.iter().rposition(|u| u.id == id) {
            let Some(u) = self.uses.remove(pos) else {
                return;
            };
            self.day_rcpts -= u64::from(u.rcpts);
            if sent_rcpts > 0 {
                self.take(at.max(u.at), id, sent_rcpts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_minute_is_a_rolling_window() {
        let limits = Limits {
            per_minute: 3,
            per_day: 0,
        };
        let mut w = Windows::default();
        for (i, t) in [0u64, 10_000, 20_000].iter().enumerate() {
            assert_eq!(w.check(limits, *t, 1), Verdict::Send);
            w.take(*t, &i.to_string(), 1);
        }
        assert_eq!(w.check(limits, 30_000, 1), Verdict::Throttled(60_000));
        assert_eq!(
            w.check(limits, 60_000, 1),
            Verdict::Send,
            "the first send left the window"
        );
        w.take(60_000, "x", 1);
        assert_eq!(w.check(limits, 60_001, 1), Verdict::Throttled(70_000));
        // A send that went nowhere gives its place back.
        w.settle("x", 0, 60_001);
        assert_eq!(w.check(limits, 60_001, 1), Verdict::Send);
        // A send counts from when the upstream accepted it.
        let one = Limits {
            per_minute: 1,
            per_day: 0,
        };
        let mut w = Windows::default();
        w.take(0, "y", 1);
        w.settle("y", 1, 1_500);
        assert_eq!(w.check(one, 60_000, 1), Verdict::Throttled(61_500));
    }

    #[test]
    fn daily_quota_counts_recipients() {
        let limits = Limits {
            per_minute: 0,
            per_day: 4,
        };
        let mut w = Windows::default();
        assert_eq!(w.check(limits, 0, 2), Verdict::Send);
        w.take(0, "a", 2);
        assert_eq!(w.check(limits, 1000, 2), Verdict::Send);
        w.take(1000, "b", 2);
        assert_eq!(w.check(limits, 2000, 2), Verdict::DailyQuota(DAY_MS));
        assert_eq!(w.check(limits, DAY_MS, 2), Verdict::Send);
        // Bigger than the whole quota: goes when the window is empty, waits otherwise.
        let mut empty = Windows::default();
        assert_eq!(empty.check(limits, 0, 9), Verdict::Send);
        assert_eq!(w.check(limits, 2000, 9), Verdict::DailyQuota(DAY_MS + 1000));
    }

    /// The running day sum follows takes, settles and expiry; a message tried twice
    /// settles its newest reservation, never the send that already went.
    #[test]
    fn day_sum_follows_every_change() {
        let mut w = Windows::default();
        w.take(0, "m", 3);
        w.settle("m", 2, 100); // two of three went
        assert_eq!(w.last_day(200), 2);
        w.take(5_000, "m", 1); // the third, tried again
        assert_eq!(w.last_day(5_000), 3);
        w.settle("m", 0, 5_100); // it went nowhere: only that place is given back
        assert_eq!(w.last_day(5_100), 2);
        assert_eq!(w.last_minute(5_100), 1);
        assert_eq!(w.uses.front().map(|u| u.at), Some(100));
        w.take(70_000, "n", 4);
        assert_eq!(w.last_day(DAY_MS + 100), 4, "the first send left the day");
        assert_eq!(w.last_minute(DAY_MS + 100), 0);
        assert_eq!(w.last_day(DAY_MS + 70_000), 0);
    }
}
