//! Fleet-wide connection leases, kept by this node between deliveries. A lease is the
//! right to one open connection to a provider, fleet-wide (`max_connections` of them);
//! a node keeps the leases it took while it uses them, so a busy node asks the fleet
//! store for none per message and reuses its connections. Every open upstream
//! connection of a node is covered by one of its leases: the idle connections a provider
//! keeps never outnumber the node's idle leases (they are closed before a lease is given
//! back). Leases are renewed together, every provider in one call; a lease idle for
//! [`LINGER`] is given back, and when another node waits for one, a node keeps no more
//! than its share (`max_connections / expected_nodes`, rounded up) and gives back the
//! rest as their deliveries end. A node refused a lease asks again after 10 ms, backing
//! off to 100 ms while it is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Distributor;
use crate::fleet::{Fleet, LEASE_TTL, LeaseBook};

/// A lease unused this long is given back.
pub(super) const LINGER: Duration = Duration::from_secs(2);
/// How often the keeper renews, gives back and trims.
const TICK: Duration = Duration::from_millis(500);
/// After another node said it waits, how long this node keeps to its share.
const YIELD_FOR: Duration = Duration::from_secs(3);
/// How long a delivery waits for a lease at most (a lease held by a dead node expires
/// after [`LEASE_TTL`]); then it goes on the local limits.
const WAIT_AT_MOST: Duration = Duration::from_secs(150);

/// A fleet-wide connection lease held by a delivery: its provider and token.
pub(super) type Lease = Option<(String, String)>;

/// One provider's leases on this node.
#[derive(Debug, Default)]
struct Book {
    /// Every token this node holds.
    held: Vec<String>,
    /// The tokens no delivery uses now, and since when.
    idle: Vec<(String, Instant)>,
    /// Keep to the share until then (another node waits).
    yield_until: Option<Instant>,
    /// The fleet-wide maximum, as last used.
    max: usize,
    /// After a refusal: no new lease is asked for before then (the pause doubles from
    /// 10 ms to 100 ms while refused, for every delivery of this node alike).
    next_ask: Option<(Instant, Duration)>,
}

/// The leases of every provider on this node.
#[derive(Debug, Default)]
pub(super) struct Leases {
    books: Mutex<HashMap<String, Book>>,
    /// One asker of the fleet store per provider at a time (the others wait behind it
    /// for a lease given back here or taken there).
    asking: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// A lease came back idle.
    returned: tokio::sync::Notify,
    /// When the keeper last renewed (every book at once).
    renewed: Mutex<Option<Instant>>,
    seq: std::sync::atomic::AtomicU64,
    /// The messages whose delivery waits for a lease other nodes hold.
    waiting: Mutex<std::collections::HashSet<String>>,
}

/// A message noted as waiting for a lease, until dropped.
struct Waits<'a> {
    leases: &'a Leases,
    id: Option<String>,
}

impl Waits<'_> {
    fn note(&mut self, id: &str) {
        if self.id.is_none()
            && let Ok(mut w) = self.leases.waiting.lock()
        {
            w.insert(id.to_string());
            self.id = Some(id.to_string());
        }
    }
}

impl Drop for Waits<'_> {
    fn drop(&mut self) {
        if let Some(id) = &self.id
            && let Ok(mut w) = self.leases.waiting.lock()
        {
            w.remove(id);
        }
    }
}

impl Leases {
    fn take_idle(&self, provider: &str) -> Option<String> {
        let mut books = self.books.lock().ok()?;
        books
            .get_mut(provider)
            .and_then(|b| b.idle.pop())
            .map(|(t, _)| t)
    }

    fn asker(&self, provider: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.asking
            .lock()
            .map(|mut a| a.entry(provider.to_string()).or_default().clone())
            .unwrap_or_default()
    }

    /// While asking the fleet store is paused after a refusal: until when.
    fn refused_until(&self, provider: &str) -> Option<Instant> {
        let books = self.books.lock().ok()?;
        let (at, _) = books.get(provider)?.next_ask?;
        (at > Instant::now()).then_some(at)
    }

    /// Notes another node's wait for a lease of these providers.
    pub(super) fn wanted(&self, providers: &[String]) {
        if providers.is_empty() {
            return;
        }
        if let Ok(mut books) = self.books.lock() {
            for p in providers {
                if let Some(b) = books.get_mut(p) {
                    b.yield_until = Some(Instant::now() + YIELD_FOR);
                }
            }
        }
    }

    /// Tokens to give back now: each provider's idle leases unused for [`LINGER`], and
    /// while another node waits, the idle ones above this node's share. They leave the
    /// books at once (no delivery takes them after).
    fn to_give_back(&self, share: impl Fn(usize) -> usize) -> HashMap<String, Vec<String>> {
        let now = Instant::now();
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        let Ok(mut books) = self.books.lock() else {
            return out;
        };
        for (provider, b) in books.iter_mut() {
            let yielding = b.yield_until.is_some_and(|u| u > now);
            let keep = share(b.max);
            let mut gone = Vec::new();
            b.idle.retain(|(t, since)| {
                let over = yielding && b.held.len() - gone.len() > keep;
                if now.duration_since(*since) >= LINGER || over {
                    gone.push(t.clone());
                    false
                } else {
                    true
                }
            });
            b.held.retain(|t| !gone.contains(t));
            if !gone.is_empty() {
                out.insert(provider.clone(), gone);
            }
        }
        out
    }
}

impl Distributor {
    fn fleet_leases(&self) -> Option<(&Arc<Fleet>, &Leases)> {
        Some((self.shared.fleet()?, &self.leases))
    }

    /// Whether message `id` waits for a fleet-wide connection lease now (its record
    /// then says `fleet-lease`).
    pub fn waits_for_lease(&self, id: &str) -> bool {
        self.leases.waiting.lock().is_ok_and(|w| w.contains(id))
    }

    /// Waits for one of the provider's fleet-wide connection leases for message `id`:
    /// an idle one of this node, else a new one from the fleet store. None without
    /// [fleet] or while the store is away (the local limits apply then). While refused,
    /// the message is noted as waiting for a lease.
    pub(super) async fn take_lease(&self, provider: &str, id: &str) -> Lease {
        let (f, leases) = self.fleet_leases()?;
        let max = self.routing().limits(provider).1;
        let deadline = Instant::now() + WAIT_AT_MOST;
        let mut waits = Waits { leases, id: None };
        while Instant::now() < deadline {
            if let Some(t) = leases.take_idle(provider) {
                return Some((provider.to_string(), t));
            }
            let asker = leases.asker(provider);
            let turn = asker.lock().await;
            // Given back here while this one waited for its turn.
            if let Some(t) = leases.take_idle(provider) {
                return Some((provider.to_string(), t));
            }
            if let Some(at) = leases.refused_until(provider) {
                waits.note(id);
                // Wait (holding the turn) for one given back here, or the next ask.
                let _ = tokio::time::timeout_at(at.into(), leases.returned.notified()).await;
                drop(turn);
                continue;
            }
            let n = leases
                .seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let token = f.token(&format!("{provider}:{n}"));
            let got = f.lease(provider, max, &token).await?;
            let Ok(mut books) = leases.books.lock() else {
                return None;
            };
            let b = books.entry(provider.to_string()).or_default();
            b.max = max;
            if got {
                b.held.push(token.clone());
                b.next_ask = None;
                return Some((provider.to_string(), token));
            }
            let pause = b.next_ask.map_or(Duration::from_millis(10), |(_, p)| {
                (p * 2).min(Duration::from_millis(100))
            });
            b.next_ask = Some((Instant::now() + pause, pause));
            drop(books);
            waits.note(id);
        }
        None
    }

    /// A delivery ended: its lease stays with this node, idle (given back later by the
    /// keeper), unless another node waits and this node holds more than its share.
    pub(super) async fn release_lease(&self, lease: Lease) {
        let Some((provider, token)) = lease else {
            return;
        };
        let Some((f, leases)) = self.fleet_leases() else {
            return;
        };
        let give_back = {
            let Ok(mut books) = leases.books.lock() else {
                return;
            };
            let b = books.entry(provider.clone()).or_default();
            if !b.held.contains(&token) {
                // Lost at a renewal (it had lapsed): nothing to keep or give back.
                false
            } else if b.yield_until.is_some_and(|u| u > Instant::now())
                && b.held.len() > f.fair_share(b.max)
            {
                b.held.retain(|t| *t != token);
                true
            } else {
                b.idle.push((token.clone(), Instant::now()));
                false
            }
        };
        if give_back {
            self.trim_idle_connections(&provider).await;
            f.unlease(&provider, &token).await;
        } else {
            leases.returned.notify_one();
        }
    }

    /// Closes the provider's idle connections beyond this node's idle leases.
    async fn trim_idle_connections(&self, provider: &str) {
        let keep = self
            .leases
            .books
            .lock()
            .map(|b| b.get(provider).map_or(0, |b| b.idle.len()))
            .unwrap_or(0);
        if let Some(p) = self.provider(provider) {
            p.keep_idle(keep).await;
        }
    }

    /// At shutdown (deliveries ended): gives back every lease of this node in one call,
    /// so the fleet need not wait for them to lapse.
    pub(super) async fn give_back_leases(&self) {
        let Some((f, leases)) = self.fleet_leases() else {
            return;
        };
        let held: Vec<(String, usize, Vec<String>, Vec<String>)> = leases
            .books
            .lock()
            .map(|mut books| {
                books
                    .iter_mut()
                    .filter(|(_, b)| !b.held.is_empty())
                    .map(|(p, b)| {
                        b.idle.clear();
                        (p.clone(), b.max, Vec::new(), std::mem::take(&mut b.held))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if held.is_empty() {
            return;
        }
        let routing = self.routing();
        for p in routing.providers.values() {
            p.keep_idle(0).await;
        }
        self.renew_leases(f, &held).await;
    }

    /// One [`Fleet::renew`] call for these (provider, max, tokens kept, tokens given
    /// back); notes which providers another node waits for and forgets lost tokens.
    async fn renew_leases(&self, f: &Fleet, entries: &[(String, usize, Vec<String>, Vec<String>)]) {
        let books: Vec<LeaseBook> = entries
            .iter()
            .map(|(p, max, renew, free)| LeaseBook {
                provider: p,
                max: *max,
                renew,
                free,
            })
            .collect();
        let Some((lost, wanted)) = f.renew(&books).await else {
            return;
        };
        self.leases.wanted(&wanted);
        if !lost.is_empty()
            && let Ok(mut books) = self.leases.books.lock()
        {
            for b in books.values_mut() {
                b.held.retain(|t| !lost.contains(t));
                b.idle.retain(|(t, _)| !lost.contains(t));
            }
        }
    }

    /// Until shutdown (the task is aborted): every [`TICK`], gives back the leases to
    /// give back (their connections closed first), renews the others when a third of
    /// their time has passed, all in one call, and keeps every provider's idle
    /// connections within this node's idle leases.
    pub(super) async fn keep_leases(self: Arc<Self>) {
        let Some((f, _)) = self.fleet_leases() else {
            return;
        };
        let f = f.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            f.stamp_accepted().await;
            let mut gone = self.leases.to_give_back(|max| f.fair_share(max));
            let routing = self.routing();
            for name in routing.providers.keys() {
                self.trim_idle_connections(name).await;
            }
            let due = self
                .leases
                .renewed
                .lock()
                .is_ok_and(|r| r.is_none_or(|at| at.elapsed() >= LEASE_TTL / 3));
            let entries: Vec<(String, usize, Vec<String>, Vec<String>)> = {
                let Ok(books) = self.leases.books.lock() else {
                    continue;
                };
                books
                    .iter()
                    .filter_map(|(p, b)| {
                        let renew = if due { b.held.clone() } else { Vec::new() };
                        let free = gone.remove(p).unwrap_or_default();
                        (!renew.is_empty() || !free.is_empty())
                            .then(|| (p.clone(), b.max, renew, free))
                    })
                    .collect()
            };
            if entries.is_empty() {
                continue;
            }
            if due && let Ok(mut r) = self.leases.renewed.lock() {
                *r = Some(Instant::now());
            }
            self.renew_leases(&f, &entries).await;
        }
    }
}
