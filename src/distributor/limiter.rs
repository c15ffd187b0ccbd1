//! The limits of a provider, for a node alone or a fleet: whether a message may go now
//! (per-minute and daily windows, connections), the settling of a send, the fleet-wide
//! connection lease. Dispatch asks [`Distributor::admit`] and knows nothing of Redis;
//! with `[fleet]` the shared windows decide (one script in Redis), and while the fleet
//! store is away this node keeps to its share of each limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::throttle::{Limits, MAX_THROTTLE_DEFERRALS, Verdict};
use super::{Distributor, Routing};
use crate::fleet::{Decision, Fleet};
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

/// The windows a provider's limits are kept in beyond this node: none for a node alone,
/// the fleet store (Redis) for a fleet. This node's own windows (`Distributor::providers`)
/// are kept either way: they serve `/status`, and a fleet node keeps to its share of
/// them while the fleet store is away.
#[derive(Debug)]
pub(super) enum Shared {
    /// A node alone: its own windows decide.
    Alone,
    /// A fleet: one script in Redis decides for every node.
    Fleet {
        /// The fleet store client.
        fleet: Arc<Fleet>,
        /// Reservations of deliveries in flight: id -> (provider, recipients).
        reserved: Mutex<HashMap<String, (String, u32)>>,
    },
}

/// What the shared windows said, before this node's own look.
enum Ruling {
    /// They decided (a fleet with its store up): the verdict, and whether the message
    /// passed the per-minute limit after ten throttle deferrals.
    Decided(Verdict, bool),
    /// This node decides with these limits and connections; `owe`: a fleet whose store
    /// is away, told of the send when it is back.
    Local(Limits, usize, bool),
}

impl Shared {
    /// Alone, or the fleet of `fleet`.
    pub(super) fn new(fleet: Option<Arc<Fleet>>) -> Shared {
        match fleet {
            None => Shared::Alone,
            Some(fleet) => Shared::Fleet {
                fleet,
                reserved: Mutex::new(HashMap::new()),
            },
        }
    }

    /// The fleet store client, in a fleet.
    pub(super) fn fleet(&self) -> Option<&Arc<Fleet>> {
        match self {
            Shared::Alone => None,
            Shared::Fleet { fleet, .. } => Some(fleet),
        }
    }

    async fn reserve(
        &self,
        (provider, id): (&str, &str),
        (limits, max_conn): (Limits, usize),
        pending: u32,
        bypass: bool,
        now: u64,
    ) -> Ruling {
        let Shared::Fleet { fleet: f, .. } = self else {
            return Ruling::Local(limits, max_conn, false);
        };
        match f
            .reserve(
                provider,
                limits.per_minute,
                limits.per_day,
                id,
                pending,
                bypass,
            )
            .await
        {
            Some(Decision::Go { bypassed }) => Ruling::Decided(Verdict::Send, bypassed),
            Some(Decision::Wait(ms)) => Ruling::Decided(Verdict::Throttled(now + ms), false),
            Some(Decision::DailyQuota(ms)) => Ruling::Decided(Verdict::DailyQuota(now + ms), false),
            None => Ruling::Local(
                Limits {
                    per_minute: f.share(limits.per_minute),
                    per_day: f.share(limits.per_day),
                },
                (f.share(u32::try_from(max_conn).unwrap_or(u32::MAX)) as usize).max(1),
                true,
            ),
        }
    }

    /// A send admitted: its shared reservation is remembered (to give back if nothing
    /// goes), or the fleet is owed it once its store is back.
    fn admitted(&self, ruling: &Ruling, (provider, id): (&str, &str), pending: u32, now: u64) {
        let Shared::Fleet { fleet, reserved } = self else {
            return;
        };
        match ruling {
            Ruling::Decided(..) => {
                if let Ok(mut r) = reserved.lock() {
                    r.insert(id.to_string(), (provider.to_string(), pending));
                }
            }
            Ruling::Local(_, _, true) => fleet.owe(provider, id, pending, now),
            Ruling::Local(..) => {}
        }
    }

    /// Gives a shared reservation back in the background (nothing was sent).
    fn give_back_later(&self, provider: &str, id: &str, rcpts: u32) {
        if let Shared::Fleet { fleet, .. } = self {
            let (f, provider, id) = (fleet.clone(), provider.to_string(), id.to_string());
            tokio::spawn(async move { f.give_back(&provider, &id, rcpts).await });
        }
    }

    /// A delivery ended: a reservation whose send went nowhere is given back.
    fn settle(&self, id: &str, sent_rcpts: u32) {
        let Shared::Fleet { fleet, reserved } = self else {
            return;
        };
        let held = reserved.lock().ok().and_then(|mut r| r.remove(id));
        if sent_rcpts == 0 {
            if let Some((p, rcpts)) = held {
                self.give_back_later(&p, id, rcpts);
            }
            fleet.forgive(id);
        }
    }
}

impl Distributor {
    /// The verdict for `pending` recipients of message `id` through `provider` now
    /// (`record` says how often the per-minute limit held it back); None when the
    /// provider has no room for another delivery (it is looked at again when one ends). A
    /// send is counted in the windows at once (and reserved in the fleet's);
    /// [`Distributor::settle`] confirms or gives it back.
    pub(super) async fn admit(
        &self,
        (provider, record): (&str, &Record),
        pending: u32,
        routing: &Routing,
        now: u64,
    ) -> Option<Admit> {
        let (limits, max_conn) = routing.limits(provider);
        let id = record.id.as_str();
        let bypass = record.throttle_deferrals >= MAX_THROTTLE_DEFERRALS;
        if self.provider_full(provider, max_conn) {
            return None;
        }
        let ruling = self
            .shared
            .reserve((provider, id), (limits, max_conn), pending, bypass, now)
            .await;
        let (limits, max_conn, decided) = match ruling {
            Ruling::Decided(v, b) => (limits, max_conn, Some((v, b))),
            Ruling::Local(l, m, _) => (l, m, None),
        };
        let (verdict, bypassed) = {
            let Ok(mut map) = self.providers.lock() else {
                return None;
            };
            let st = map.entry(provider.to_string()).or_default();
            if st.in_flight >= max_conn {
                if let Some((Verdict::Send, _)) = decided {
                    self.shared.give_back_later(provider, id, pending);
                }
                return None;
            }
            // A message throttled ten times goes regardless (the attempt says so).
            let (verdict, bypassed) =
                match decided.unwrap_or_else(|| (st.windows.check(limits, now, pending), false)) {
                    (Verdict::Throttled(_), _) if bypass => (Verdict::Send, true),
                    d => d,
                };
            if verdict == Verdict::Send {
                self.shared.admitted(&ruling, (provider, id), pending, now);
            }
            match verdict {
                Verdict::Throttled(_) => st.throttle_deferrals += 1,
                Verdict::DailyQuota(_) => {}
                Verdict::Send => {
                    st.windows.take(now, id, pending);
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

    /// Confirms a dispatched send's place in its provider's windows (`sent_rcpts`), or
    /// gives it back when nothing went; frees its connection slot.
    pub(super) fn settle(&self, provider: &str, id: &str, sent_rcpts: u32, error: Option<String>) {
        self.shared.settle(id, sent_rcpts);
        if let Ok(mut map) = self.providers.lock() {
            let st = map.entry(provider.to_string()).or_default();
            st.windows.settle(id, sent_rcpts);
            st.in_flight = st.in_flight.saturating_sub(1);
            st.circuit.abandoned();
            if let Some(e) = error {
                st.last_error = Some((e, crate::time::now_ms()));
            }
        }
    }

    /// Waits for one of the provider's fleet-wide connection leases (None without
    /// [fleet] or while the store is away: the local limits apply then).
    pub(super) async fn take_lease(&self, provider: &str, id: &str) -> Lease {
        let f = self.shared.fleet()?.clone();
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
            if let Some(f) = self.shared.fleet() {
                f.unlease(provider, &token).await;
            }
        }
    }
}
