//! Retry rules: `retry_initial` doubling up to `retry_max`, give up after `give_up_after`.

use crate::config::DistributorConfig;

/// Backoff and give-up rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay, ms.
    pub initial_ms: u64,
    /// Largest delay, ms.
    pub max_ms: u64,
    /// Age at which a message is failed, ms.
    pub give_up_ms: u64,
}

use crate::time::duration_ms as ms;

impl RetryPolicy {
    /// The rules of `[distributor]`.
    pub fn from_config(d: &DistributorConfig) -> RetryPolicy {
        RetryPolicy {
            initial_ms: ms(d.retry_initial.0),
            max_ms: ms(d.retry_max.0),
            give_up_ms: ms(d.give_up_after.0),
        }
    }

    /// Delay before the retry after the `n`th deferral (n >= 1).
    pub fn delay_ms(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(32);
        self.initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_ms)
    }

    /// Whether a message received at `received_ms` should be failed now.
    pub fn gives_up(&self, received_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(received_ms) >= self.give_up_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap() {
        let r = RetryPolicy {
            initial_ms: 60_000,
            max_ms: 1_800_000,
            give_up_ms: 172_800_000,
        };
        let delays: Vec<u64> = (1..=7).map(|n| r.delay_ms(n) / 1000).collect();
        assert_eq!(delays, vec![60, 120, 240, 480, 960, 1800, 1800]);
        assert_eq!(r.delay_ms(1000), 1_800_000);
        assert!(!r.gives_up(0, 172_799_999));
        assert!(r.gives_up(0, 172_800_000));
    }
}
