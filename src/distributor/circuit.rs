//! A provider's circuit (SPEC "Routes and fallback"): after `circuit_open_after`
//! consecutive unavailability failures it opens and the provider is skipped for
//! `circuit_cooldown`; then one message tries it (half-open): success closes it, failure
//! opens it again. Pure state; the distributor keeps one per provider.

/// What `/status` shows of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// The provider takes mail.
    Closed,
    /// The provider is skipped until the cool-down ends.
    Open,
    /// The cool-down is over: one message tries the provider.
    HalfOpen,
}

impl CircuitState {
    /// The name in `/status` and on the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
        }
    }
}

/// One provider's circuit.
#[derive(Debug, Default, Clone)]
pub(super) struct Circuit {
    /// Consecutive unavailability failures.
    failures: u32,
    /// Open until this time (ms); stays set through half-open until a success.
    open_until: Option<u64>,
    /// A half-open probe is in flight.
    probing: bool,
}

/// What an attempt's result did to a circuit, for the log and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Nothing worth saying.
    None,
    /// It opened (or opened again after a failed probe) until this time.
    Opened(u64),
    /// It closed after being open.
    Closed,
}

impl Circuit {
    /// Its state at `now`.
    pub(super) fn state(&self, now: u64) -> CircuitState {
        match self.open_until {
            None => CircuitState::Closed,
            Some(t) if t > now => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    /// Whether a message may go to the provider now: closed, or half-open with no probe
    /// in flight.
    pub(super) fn may_take(&self, now: u64) -> bool {
        match self.state(now) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => !self.probing,
        }
    }

    /// As a restart found it: `failures` in a row, open until `open_until` (no probe
    /// in flight: none survives a restart).
    pub(super) fn restored(failures: u32, open_until: Option<u64>) -> Circuit {
        Circuit {
            failures,
            open_until,
            probing: false,
        }
    }

    /// Unavailability failures in a row.
    pub(super) fn failures(&self) -> u32 {
        self.failures
    }

    /// When an open circuit lets a probe through.
    pub(super) fn open_until(&self) -> Option<u64> {
        self.open_until
    }

    /// A message was sent on its way to the provider: when half-open, it is the probe.
    pub(super) fn started(&mut self, now: u64) {
        if self.state(now) == CircuitState::HalfOpen {
            self.probing = true;
        }
    }

    /// An attempt ended without a result (nothing went): a probe may go again.
    pub(super) fn abandoned(&mut self) {
        self.probing = false;
    }

    /// The provider could not take mail: one more failure; opens at `open_after` (0:
    /// never) or when the probe failed.
    pub(super) fn failed(&mut self, now: u64, open_after: u32, cooldown_ms: u64) -> Change {
        self.failures = self.failures.saturating_add(1);
        let probe_failed = self.probing;
        self.probing = false;
        if open_after > 0 && (probe_failed || self.failures >= open_after) {
            let until = now + cooldown_ms;
            self.open_until = Some(until);
            return Change::Opened(until);
        }
        Change::None
    }

    /// The provider answered (it sent, or refused for a reason of the message's): closed.
    pub(super) fn succeeded(&mut self) -> Change {
        let was_open = self.open_until.is_some();
        *self = Circuit::default();
        if was_open {
            Change::Closed
        } else {
            Change::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_lets_one_probe_through_and_closes_on_success() {
        let mut c = Circuit::default();
        for _ in 0..4 {
            assert_eq!(c.failed(0, 5, 1000), Change::None);
        }
        assert_eq!(c.failed(10, 5, 1000), Change::Opened(1010));
        assert_eq!(c.state(500), CircuitState::Open);
        assert!(!c.may_take(500));
        assert_eq!(c.state(1010), CircuitState::HalfOpen);
        assert!(c.may_take(1010));
        c.started(1010);
        assert!(!c.may_take(1011), "one probe at a time");
        // The probe fails: open again at once, whatever the count.
        assert_eq!(c.failed(1100, 5, 1000), Change::Opened(2100));
        c.started(2200);
        assert_eq!(c.succeeded(), Change::Closed);
        assert_eq!(c.state(2200), CircuitState::Closed);
        assert_eq!(c.succeeded(), Change::None);
    }

    #[test]
    fn zero_never_opens() {
        let mut c = Circuit::default();
        for _ in 0..100 {
            assert_eq!(c.failed(0, 0, 1000), Change::None);
        }
        assert!(c.may_take(0));
    }
}
