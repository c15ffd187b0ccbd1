//! The limits of a provider, for a node alone or a fleet: whether a message may go now
//! (per-minute and daily windows, connections), the settling of a send, the fleet-wide
//! connection lease. Dispatch asks [`Distributor::admit`] and knows nothing of Redis;
//! with `[fleet]` the shared windows decide (one script in Redis), and while the fleet
//! store is away this node keeps to its share of each limit.

use std::time::Duration;

use super::throttle::{Limits, MAX_THROTTLE_DEFERRALS, Verdict};
use super::{Distributor, Routing};
use crate::fleet::Decision;
use crate::history::Record;

/// May a message go now: the verdict, whether it passes the per-minute limit after ten
/// throttle deferrals, and the daily limit in force (for the quota deferral's words).
pub(super) struct Admit {
    pub(super) verdict: Verdict,
    pub(super) bypassed: bool,
    pub(super) per_day: u32,
}

/// A fleet-wide connection lease held by a delivery: its renewal and its token.
pub(super) type Lease = Option<(tokio::task::JoinHandle<()>, String)>;

impl Distributor {
    /// The verdict for `record` now; None when its provider has no room for another
    /// delivery (it is looked at again when one ends). A send is counted in the windows
    /// at once (and reserved in the fleet's); [`Distributor::settle`] confirms or gives
    /// it back.
    pub(super) async fn admit(
        &self,
        record: &Record,
        routing: &Routing,
        now: u64,
    ) -> Option<Admit> {
        let (limits, max_conn) = routing.limits(&record.provider);
        let pending = record
            .recipients
            .iter()
            .filter(|r| !r.status.is_finished())
            .count() as u32;
        // With [fleet], the shared windows decide (one script in Redis); while the
        // store is away, this node keeps to its share of each limit.
        let (mut limits, mut max_conn) = (limits, max_conn);
        let bypass = record.throttle_deferrals >= MAX_THROTTLE_DEFERRALS;
        let mut shared = None;
        let mut shared_bypassed = false;
        let mut owe = false;
        if let Some(f) = &self.fleet {
            if self.provider_full(&record.provider, max_conn) {
                return None;
            }
            match f
                .reserve(
                    &record.provider,
                    limits.per_minute,
                    limits.per_day,
                    &record.id,
                    pending,
                    bypass,
                )
                .await
            {
                Some(Decision::Go { bypassed }) => {
                    shared = Some(Verdict::Send);
                    shared_bypassed = bypassed;
                }
                Some(Decision::Wait(ms)) => shared = Some(Verdict::Throttled(now + ms)),
                Some(Decision::DailyQuota(ms)) => shared = Some(Verdict::DailyQuota(now + ms)),
                None => {
                    limits = Limits {
                        per_minute: f.share(limits.per_minute),
                        per_day: f.share(limits.per_day),
                    };
                    max_conn =
                        (f.share(u32::try_from(max_conn).unwrap_or(u32::MAX)) as usize).max(1);
                    owe = true;
                }
            }
        }
        // A message throttled ten times goes regardless (the attempt says so).
        let (verdict, bypassed) = {
            let Ok(mut map) = self.providers.lock() else {
                return None;
            };
            let st = map.entry(record.provider.clone()).or_default();
            if st.in_flight >= max_conn {
                if shared == Some(Verdict::Send) {
                    self.give_back_later(&record.provider, &record.id, pending);
                }
                return None;
            }
            let local = match shared {
                Some(v) => v,
                None => st.windows.check(limits, now, pending),
            };
            let (verdict, bypassed) = match local {
                Verdict::Throttled(_) if bypass => (Verdict::Send, true),
                Verdict::Send if shared.is_some() => (Verdict::Send, shared_bypassed),
                v => (v, false),
            };
            if verdict == Verdict::Send {
                if shared.is_some() {
                    if let Ok(mut r) = self.fleet_reserved.lock() {
                        r.insert(record.id.clone(), (record.provider.clone(), pending));
                    }
                } else if owe && let Some(f) = &self.fleet {
                    f.owe(&record.provider, &record.id, pending, now);
                }
            }
            match verdict {
                Verdict::Throttled(_) => st.throttle_deferrals += 1,
                Verdict::DailyQuota(_) => {}
                Verdict::Send => {
                    st.windows.take(now, &record.id, pending);
                    st.in_flight += 1;
                }
            }
            (verdict, bypassed)
        };
        Some(Admit {
            verdict,
            bypassed,
            per_day: limits.per_day,
        })
    }

    /// Whether a provider has no room for another delivery on this node.
    fn provider_full(&self, provider: &str, max_conn: usize) -> bool {
        self.providers
            .lock()
            .map(|m| m.get(provider).is_some_and(|st| st.in_flight >= max_conn))
            .unwrap_or(true)
    }

    /// Gives a shared reservation back in the background (nothing was sent).
    fn give_back_later(&self, provider: &str, id: &str, rcpts: u32) {
        if let Some(f) = self.fleet.clone() {
            let (provider, id) = (provider.to_string(), id.to_string());
            tokio::spawn(async move { f.give_back(&provider, &id, rcpts).await });
        }
    }

    /// Confirms a dispatched send's place in its provider's windows (`sent_rcpts`), or
    /// gives it back when nothing went; frees its connection slot.
    pub(super) fn settle(&self, provider: &str, id: &str, sent_rcpts: u32, error: Option<String>) {
        let reserved = self
            .fleet_reserved
            .lock()
            .ok()
            .and_then(|mut r| r.remove(id));
        if let Some((p, rcpts)) = reserved
            && sent_rcpts == 0
        {
            self.give_back_later(&p, id, rcpts);
        }
        if sent_rcpts == 0
            && let Some(f) = &self.fleet
        {
            f.forgive(id);
        }
        if let Ok(mut map) = self.providers.lock() {
            let st = map.entry(provider.to_string()).or_default();
            st.windows.settle(id, sent_rcpts);
            st.in_flight = st.in_flight.saturating_sub(1);
            if let Some(e) = error {
                st.last_error = Some((e, crate::time::now_ms()));
            }
        }
    }

    /// Waits for one of the provider's fleet-wide connection leases (None without
    /// [fleet] or while the store is away: the local limits apply then).
    pub(super) async fn take_lease(&self, provider: &str, id: &str) -> Lease {
        let f = self.fleet.clone()?;
        let max = self.routing().limits(provider).1;
        let token = f.token(id);
        // Bounded: a lease held by a dead node expires after LEASE_TTL.
        for _ in 0..15_000 {
            match f.lease(provider, max, &token).await {
                Some(true) => {
                    let (f2, p, t) = (f.clone(), provider.to_string(), token.clone());
                    let renew = tokio::spawn(async move {
                        let mut tick = tokio::time::interval(crate::fleet::LEASE_TTL / 3);
                        tick.tick().await;
                        loop {
                            tick.tick().await;
                            let _ = f2.lease(&p, max, &t).await;
                        }
                    });
                    return Some((renew, token));
                }
                Some(false) => tokio::time::sleep(Duration::from_millis(10)).await,
                None => return None,
            }
        }
        None
    }

    /// Frees a lease taken by [`Distributor::take_lease`].
    pub(super) async fn release_lease(&self, provider: &str, lease: Lease) {
        if let Some((renew, token)) = lease {
            renew.abort();
            if let Some(f) = &self.fleet {
                f.unlease(provider, &token).await;
            }
        }
    }
}
