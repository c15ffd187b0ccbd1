//! The limits of a provider, for a node alone or a fleet: whether a message may go now
//! (per-minute and daily windows, connections), the settling of a send, the fleet-wide
//! connection lease. Dispatch asks [`Distributor::admit`] and knows nothing of Redis;
//! with `[fleet]` the shared windows decide (one script in Redis), and while the fleet
//! store is away this node keeps to its share of each limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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

/// One send to admit: its provider and message, the limits in force, its recipients.
pub(super) struct Ask<'a> {
    provider: &'a str,
    id: &'a str,
    limits: Limits,
    max_conn: usize,
    pending: u32,
    /// After ten throttle deferrals it passes a full per-minute window.
    bypass: bool,
    now: u64,
}

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

    /// The shared windows' rulings for a batch of sends, in order, in one call to the
    /// fleet store (another node's wait for a lease is noted in `leases`).
    async fn reserve(&self, asks: &[Ask<'_>], leases: &super::leases::Leases) -> Vec<Ruling> {
        let Shared::Fleet { fleet: f, .. } = self else {
            return asks
                .iter()
                .map(|a| Ruling::Local(a.limits, a.max_conn, false))
                .collect();
        };
        let fleet_asks: Vec<crate::fleet::Ask> = asks
            .iter()
            .map(|a| crate::fleet::Ask {
                provider: a.provider,
                per_minute: a.limits.per_minute,
                per_day: a.limits.per_day,
                id: a.id,
                rcpts: a.pending,
                bypass_minute: a.bypass,
            })
            .collect();
        let Some(reserved) = f.reserve(&fleet_asks).await else {
            return asks
                .iter()
                .map(|a| {
                    Ruling::Local(
                        Limits {
                            per_minute: f.share(a.limits.per_minute),
                            per_day: f.share(a.limits.per_day),
                        },
                        f.share_of(a.max_conn),
                        true,
                    )
                })
                .collect();
        };
        leases.wanted(&reserved.wanted);
        reserved
            .decisions
            .into_iter()
            .zip(asks)
            .map(|(d, a)| match d {
                Decision::Go { bypassed } => Ruling::Decided(Verdict::Send, bypassed),
                Decision::Wait(ms) => Ruling::Decided(Verdict::Throttled(a.now + ms), false),
                Decision::DailyQuota(ms) => Ruling::Decided(Verdict::DailyQuota(a.now + ms), false),
            })
            .collect()
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
        } else if let Some((p, _)) = held {
            fleet.accepted(&p, id);
        }
    }
}

impl Distributor {
    /// The verdicts for a batch of sends, in order: `pending` recipients of a message
    /// through a provider now (the record says how often the per-minute limit held it
    /// back); None when the provider has no room for another delivery (it is looked at
    /// again when one ends). In a fleet, the whole batch is one call to the fleet store.
    /// A send is counted in the windows at once (and reserved in the fleet's);
    /// [`Distributor::settle`] confirms or gives it back.
    pub(super) async fn admit(
        &self,
        batch: &[(&str, &Record, u32)],
        routing: &Routing,
        now: u64,
    ) -> Vec<Option<Admit>> {
        let asks: Vec<Ask> = batch
            .iter()
            .map(|(provider, record, pending)| {
                let (limits, max_conn) = routing.limits(provider);
                Ask {
                    provider,
                    id: record.id.as_str(),
                    limits,
                    max_conn,
                    pending: *pending,
                    bypass: record.throttle_deferrals >= MAX_THROTTLE_DEFERRALS,
                    now,
                }
            })
            .collect();
        let rulings = self.shared.reserve(&asks, &self.leases).await;
        asks.iter()
            .zip(rulings)
            .map(|(a, ruling)| self.admit_one(a, &ruling))
            .collect()
    }

    /// One send's verdict after the shared windows' ruling: this node's connections, and
    /// its own windows when it decides alone.
    fn admit_one(&self, a: &Ask, ruling: &Ruling) -> Option<Admit> {
        let (provider, id, pending, now) = (a.provider, a.id, a.pending, a.now);
        let (limits, max_conn, decided) = match *ruling {
            Ruling::Decided(v, b) => (a.limits, a.max_conn, Some((v, b))),
            Ruling::Local(l, m, _) => (l, m, None),
        };
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
                (Verdict::Throttled(_), _) if a.bypass => (Verdict::Send, true),
                d => d,
            };
        if verdict == Verdict::Send {
            self.shared.admitted(ruling, (provider, id), pending, now);
        }
        match verdict {
            Verdict::Throttled(_) => st.throttle_deferrals += 1,
            Verdict::DailyQuota(_) => {}
            Verdict::Send => {
                st.windows.take(now, id, pending);
                st.in_flight += 1;
            }
        }
        Some(Admit {
            verdict,
            bypassed,
            per_day: limits.per_day,
        })
    }

    /// Confirms a dispatched send's place in its provider's windows (`sent_rcpts`), or
    /// gives it back when nothing went; frees its connection slot.
    pub(super) fn settle(&self, provider: &str, id: &str, sent_rcpts: u32, error: Option<String>) {
        self.shared.settle(id, sent_rcpts);
        if let Ok(mut map) = self.providers.lock() {
            let st = map.entry(provider.to_string()).or_default();
            st.windows.settle(id, sent_rcpts, self.now());
            st.in_flight = st.in_flight.saturating_sub(1);
            st.circuit.abandoned();
            if let Some(e) = error {
                st.last_error = Some((e, crate::time::now_ms()));
            }
        }
    }
}
