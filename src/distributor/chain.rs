//! Chains at dispatch (SPEC "Routes and fallback"): which recipients of a message go
//! now, and through which provider of their chain. Recipients whose chain and place in it
//! are the same go together, once per chain; the chain is read from the configuration in
//! force, so a reload changes where waiting mail goes.

use super::circuit::CircuitState;
use super::{Distributor, Routing};
use crate::history::{Recipient, Record};

/// Recipients of one message that go together through one provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Group {
    /// The provider they go to now.
    pub(super) provider: String,
    /// Where they stood in the chain (the provider skipped when its circuit is open).
    pub(super) planned: String,
    /// Their chain.
    pub(super) chain: Vec<String>,
    /// Their addresses.
    pub(super) rcpts: Vec<String>,
}

impl Group {
    /// The first provider of the chain.
    pub(super) fn first(&self) -> &str {
        self.chain
            .first()
            .map_or(self.provider.as_str(), String::as_str)
    }
}

/// What dispatch does with a due message.
#[derive(Debug)]
pub(super) enum Plan {
    /// Send this group.
    Send(Group),
    /// No recipient is due (an early index entry): its due time is written again.
    NotDue,
}

/// When a waiting recipient is due (ms; 0 when it has no time of its own).
pub(super) fn due_of(r: &Recipient) -> u64 {
    r.next_attempt_at.map_or(0, crate::time::Stamp::ms)
}

impl Routing {
    /// A recipient's chain: the one provider of a pinned message, else its route's, its
    /// user's or the default one.
    pub(super) fn chain_of(&self, record: &Record, r: &Recipient) -> Vec<String> {
        if record.pinned {
            return vec![
                r.provider
                    .clone()
                    .unwrap_or_else(|| record.provider.clone()),
            ];
        }
        self.chains
            .chain(record.user.as_deref(), &r.address)
            .0
            .to_vec()
    }
}

impl Distributor {
    /// The first group of `record` due at `now`, its provider chosen past open circuits.
    pub(super) fn plan(&self, record: &Record, routing: &Routing, now: u64) -> Plan {
        let mut group: Option<(Vec<String>, usize, Vec<String>)> = None;
        for r in record
            .recipients
            .iter()
            .filter(|r| !r.status.is_finished() && due_of(r) <= now)
        {
            let chain = routing.chain_of(record, r);
            let at = r
                .provider
                .as_ref()
                .and_then(|p| chain.iter().position(|c| c == p))
                .unwrap_or(0);
            match &mut group {
                None => group = Some((chain, at, vec![r.address.clone()])),
                Some((c, a, rcpts)) if *c == chain && *a == at => rcpts.push(r.address.clone()),
                Some(_) => {}
            }
        }
        let Some((chain, at, rcpts)) = group else {
            return Plan::NotDue;
        };
        let planned = chain[at].clone();
        let make = |provider: &str| Group {
            provider: provider.to_string(),
            planned: planned.clone(),
            chain: chain.clone(),
            rcpts: rcpts.clone(),
        };
        // Past open circuits to the first provider that may take the mail; when none
        // may, the provider where the recipients stand takes it as it would without a
        // circuit (its retries keep their backoff): a circuit picks a way out, it never
        // closes the last one.
        let Ok(map) = self.providers.lock() else {
            return Plan::Send(make(&planned));
        };
        let open = chain[at..]
            .iter()
            .find(|p| map.get(*p).is_none_or(|st| st.circuit.may_take(now)));
        Plan::Send(make(open.unwrap_or(&planned)))
    }

    /// The provider after `after` in `chain` that may take mail now (its circuit not
    /// open), if any.
    pub(super) fn next_provider(&self, chain: &[String], after: &str, now: u64) -> Option<String> {
        let at = chain.iter().position(|p| p == after)?;
        let map = self.providers.lock().ok()?;
        chain[at + 1..]
            .iter()
            .find(|p| map.get(*p).is_none_or(|st| st.circuit.may_take(now)))
            .cloned()
    }
}

impl Distributor {
    /// Mail of `id` moves on from `from` to `to` (`reason`: a diagnosis code or
    /// `circuit-open`): counted and logged.
    pub(super) fn failover(&self, id: &str, from: &str, to: &str, reason: &str) {
        self.metrics
            .failovers
            .get_or_create(&crate::metrics::Failover {
                from: from.to_string(),
                to: to.to_string(),
            })
            .inc();
        tracing::warn!(id = %id, from = %from, to = %to, reason = %reason, "failing over to the next provider of the chain");
    }

    /// A message goes to `provider` now: when its circuit is half-open, it is the probe.
    pub(super) fn circuit_started(&self, provider: &str, now: u64) {
        if let Ok(mut map) = self.providers.lock() {
            map.entry(provider.to_string())
                .or_default()
                .circuit
                .started(now);
        }
    }

    /// An attempt through `provider` ended: `unavailable` (its code) when the provider
    /// could not take the mail (counts towards opening its circuit; a configuration
    /// reason marks it as holding mail), else it answered (closes it).
    pub(super) fn circuit_after(
        &self,
        routing: &Routing,
        provider: &str,
        unavailable: Option<crate::diagnosis::Code>,
        now: u64,
    ) {
        use super::circuit::Change;
        let (open_after, cooldown) = routing
            .circuits
            .get(provider)
            .copied()
            .unwrap_or((5, 300_000));
        let change = match self.providers.lock() {
            Ok(mut map) => {
                let st = map.entry(provider.to_string()).or_default();
                st.held = unavailable
                    .filter(|c| c.is_config())
                    .map(|code| (code, st.held.map_or(now, |(_, since)| since)));
                self.metrics
                    .provider_held
                    .get_or_create(&crate::metrics::ProviderLabel {
                        provider: provider.to_string(),
                    })
                    .set(i64::from(st.held.is_some()));
                if unavailable.is_some() {
                    st.circuit.failed(now, open_after, cooldown)
                } else {
                    st.circuit.succeeded()
                }
            }
            Err(_) => Change::None,
        };
        self.circuit_changed(provider, change, "the provider answered again");
    }

    fn circuit_changed(&self, provider: &str, change: super::circuit::Change, why: &str) {
        use super::circuit::Change;
        let gauge = self
            .metrics
            .circuit_open
            .get_or_create(&crate::metrics::ProviderLabel {
                provider: provider.to_string(),
            });
        match change {
            Change::Opened(until) => {
                gauge.set(1);
                tracing::warn!(provider = %provider, until = %crate::time::rfc3339(until), circuit = "open", "circuit open: the provider failed repeatedly and is skipped until the cool-down ends; then one message tries it");
            }
            Change::Closed => {
                gauge.set(0);
                tracing::info!(provider = %provider, circuit = "closed", "circuit closed: {why}");
            }
            Change::None => {}
        }
    }

    /// Closes a provider's circuit (`mailgate verify` proved it healthy). Returns whether
    /// it was open or half-open.
    pub fn close_circuit(&self, provider: &str) -> bool {
        let change = match self.providers.lock() {
            Ok(mut map) => map
                .get_mut(provider)
                .map_or(super::circuit::Change::None, |st| st.circuit.succeeded()),
            Err(_) => super::circuit::Change::None,
        };
        let closed = change == super::circuit::Change::Closed;
        self.circuit_changed(
            provider,
            change,
            "mailgate verify proved the provider healthy",
        );
        if closed {
            self.wake.notify_one();
        }
        closed
    }

    /// The providers holding mail for a configuration reason: name, code, since (ms).
    pub fn held(&self) -> Vec<(String, crate::diagnosis::Code, u64)> {
        let routing = self.routing();
        self.providers
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(name, _)| routing.providers.contains_key(*name))
                    .filter_map(|(name, st)| st.held.map(|(c, at)| (name.clone(), c, at)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A provider's circuit now, and until when it is open.
    pub fn circuit(&self, provider: &str) -> (CircuitState, Option<u64>) {
        let now = self.now();
        self.providers
            .lock()
            .ok()
            .and_then(|m| {
                m.get(provider)
                    .map(|st| (st.circuit.state(now), st.circuit.open_until()))
            })
            .unwrap_or((CircuitState::Closed, None))
    }
}
