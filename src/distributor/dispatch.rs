//! Dispatch: which due messages go now, which wait for their provider's limits, and
//! the bookkeeping of each attempt (record, limit windows, metrics, log line, event).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::chain::{Group, Plan};
use super::limiter::Admit;
use super::outcome::{Settled, Step};
use super::throttle::{MAX_THROTTLE_DEFERRALS, Verdict};
use super::unrecorded::{Finish, Unrecorded};
use super::{DeliveryEvent, Distributor, Routing, apply_outcome, outcome};
use crate::diagnosis::Code;
use crate::history::{Record, Status};
use crate::provider::{Delivery, Outcome};
use crate::store::{Mutation, Pick, StoreError};

/// How long a message is set aside after its attempt panicked.
const BOOKKEEPING_COOLDOWN_MS: u64 = 30_000;
/// How long a message is set aside after its body could not be read (a store error that
/// is not damage, such as the moment the writer reopens the file).
const READ_RETRY_MS: u64 = 2_000;

/// A delivery's hold on its message and its provider's connection count. The count is
/// given back as soon as the upstream has answered ([`Slot::settle`]), the message when
/// its outcome is committed; if the attempt panics (or is aborted) instead, the drop
/// releases both and sets the message aside for a while, so neither the provider wedges
/// nor the message is retried in a loop.
struct Slot {
    dist: Arc<Distributor>,
    id: String,
    provider: String,
    armed: bool,
    settled: bool,
}

impl Slot {
    /// The provider's connection count and limit windows, settled once: `sent`
    /// recipients went (0: nothing went, the reservation is given back).
    fn settle(&mut self, sent: u32, error: Option<String>) {
        if !self.settled {
            self.settled = true;
            self.dist.settle(&self.provider, &self.id, sent, error);
            // The connection is free for the next message while this outcome commits.
            self.dist.wake.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if std::thread::panicking() {
            tracing::error!(id = %self.id, provider = %self.provider, "a delivery attempt panicked; the message is tried again in {}s", BOOKKEEPING_COOLDOWN_MS / 1000);
        }
        self.dist.cool_down(&self.id, BOOKKEEPING_COOLDOWN_MS);
        self.settle(0, None);
        if let Ok(mut s) = self.dist.in_flight.lock() {
            s.remove(&self.id);
        }
        self.dist.wake.notify_one();
    }
}

impl Distributor {
    /// How many more deliveries a provider has room for on this node now.
    fn room(&self, provider: &str, routing: &Routing) -> usize {
        let max = routing.limits(provider).1;
        self.providers.lock().map_or(0, |map| {
            max.saturating_sub(map.get(provider).map_or(0, |st| st.in_flight))
        })
    }

    /// How many more deliveries each provider has room for on this node now.
    fn rooms(&self, routing: &Routing) -> HashMap<String, usize> {
        routing
            .providers
            .keys()
            .map(|name| (name.clone(), self.room(name, routing)))
            .collect()
    }

    /// Starts every due delivery its provider has room for; defers what its limits hold
    /// back. Returns ms until the next due message (None: wait for a wake-up).
    pub(super) async fn dispatch(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Option<u64> {
        let routing = self.routing();
        let now = self.now();
        let Some(candidates) = self.scan_due(&routing, now).await else {
            return Some(1000);
        };
        let mut held = Vec::new();
        let mut next = None;
        // First the sends due now (as many as the providers and the slots have room
        // for), then their admission as one batch (one call to the fleet store).
        let mut sends = Vec::new();
        let mut room: HashMap<String, usize> = HashMap::new();
        let mut slots = self.slots.available_permits();
        for (due, record) in candidates {
            let Some(mut record) = record else {
                next = Some(due.saturating_sub(now));
                break;
            };
            if record.status.is_finished() {
                held.push((record, None));
                continue;
            }
            let group = match self.plan(&record, &routing, now) {
                Plan::Send(group) => group,
                Plan::NotDue => {
                    let due = outcome::refresh(&mut record, now);
                    held.push((record, due));
                    continue;
                }
            };
            if slots == 0 {
                break;
            }
            let left = room
                .entry(group.provider.clone())
                .or_insert_with(|| self.room(&group.provider, &routing));
            if *left == 0 {
                continue;
            }
            *left -= 1;
            slots -= 1;
            sends.push((record, group));
        }
        let batch: Vec<(&str, &Record, u32)> = sends
            .iter()
            .map(|(r, g)| {
                let pending = u32::try_from(g.rcpts.len()).unwrap_or(u32::MAX);
                (g.provider.as_str(), r, pending)
            })
            .collect();
        let admits = self.admit(&batch, &routing, now).await;
        for ((record, group), admit) in sends.into_iter().zip(admits) {
            let Some(Admit {
                verdict,
                bypassed,
                per_day,
            }) = admit
            else {
                continue;
            };
            match verdict {
                Verdict::Throttled(until) => held.push(self.throttled(record, &group, until, now)),
                Verdict::DailyQuota(until) => {
                    held.push(self.quota_spent(record, &group, until, per_day, now));
                }
                Verdict::Send => self.start(tasks, record, group, now, bypassed),
            }
        }
        if !held.is_empty() {
            // Look again at once (the next due time has changed), or in 1 s when the
            // deferrals could not be recorded.
            return Some(if self.record_held(held).await {
                0
            } else {
                1000
            });
        }
        next
    }

    /// A send the per-minute limit holds back: counted, logged, recorded with its time.
    fn throttled(
        &self,
        mut record: Record,
        group: &Group,
        until: u64,
        now: u64,
    ) -> (Record, Option<u64>) {
        self.metrics
            .throttle_deferrals
            .get_or_create(&crate::metrics::ProviderLabel {
                provider: group.provider.clone(),
            })
            .inc();
        tracing::info!(id = %record.id, provider = %group.provider, status = "deferred", reason = "per_minute_limit", until = %crate::time::rfc3339(until), wait = %wait_words(until.saturating_sub(now)), "throttled");
        let due = outcome::throttled(&mut record, &group.rcpts, until, now);
        (record, Some(due))
    }

    /// A send over the daily quota: it moves to the next provider of its chain, or
    /// waits until the window allows.
    fn quota_spent(
        &self,
        mut record: Record,
        group: &Group,
        until: u64,
        per_day: u32,
        now: u64,
    ) -> (Record, Option<u64>) {
        self.count_deferred(&group.provider, "daily-quota");
        let next = self.next_provider(&group.chain, &group.provider, now);
        match &next {
            Some(to) => self.failover(&record.id, &group.provider, to, "daily-quota"),
            None => {
                tracing::info!(id = %record.id, provider = %group.provider, status = "deferred", diagnosis = "daily-quota", until = %crate::time::rfc3339(until), wait = %wait_words(until.saturating_sub(now)), "daily quota reached");
            }
        }
        let step = Step {
            provider: &group.provider,
            rcpts: &group.rcpts,
            first: group.first(),
            next: next.as_deref(),
        };
        let due = outcome::quota_spent(&mut record, step, now, until, per_day);
        (record, Some(due))
    }

    /// An admitted send: a slot and the message's claim taken, its attempt started as a
    /// task of its own (or settled at once when either is not to be had).
    fn start(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        record: Record,
        group: Group,
        now: u64,
        bypassed: bool,
    ) {
        // Every admitted send is settled, the ones without a slot too.
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.settle(&group.provider, &record.id, 0, None);
            return;
        };
        // A cancel in progress holds the id: then it is not sent.
        let claimed = self
            .in_flight
            .lock()
            .is_ok_and(|mut s| super::claim(&mut s, &record.id, Some(record.status)));
        if !claimed {
            self.settle(&group.provider, &record.id, 0, None);
            return;
        }
        self.circuit_started(&group.provider, now);
        if group.provider != group.planned {
            self.failover(&record.id, &group.planned, &group.provider, "circuit-open");
        }
        let this = self.clone();
        tasks.spawn(async move { this.deliver(record, group, permit, now, bypassed).await });
    }

    /// The due messages of providers with room, oldest first, each with its record, in
    /// one blocking read; the first entry not yet due ends the list (its record None).
    /// A record that cannot be read (store damage) is set aside, never retried in a
    /// loop. None: the due index cannot be read now.
    async fn scan_due(
        self: &Arc<Self>,
        routing: &Routing,
        now: u64,
    ) -> Option<Vec<(u64, Option<Record>)>> {
        // A provider's messages are read no further than it has room for, and the scan
        // ends when every provider's room is taken or at the first entry not yet due: a
        // round reads (and parses) what it can start, not the whole queue in front of a
        // busy provider. With no room at all there is no round: the end of a delivery
        // wakes dispatch. (An entry naming a provider no longer configured is taken when
        // the scan reaches it: behind older mail of busy providers, it waits its turn.)
        let mut rooms = self.rooms(routing);
        let limit = self.slots.available_permits() + 1;
        let mut open = rooms.values().filter(|r| **r > 0).count();
        if limit == 1 || (open == 0 && !rooms.is_empty()) {
            return Some(Vec::new());
        }
        let this = self.clone();
        let aside = self.set_aside();
        let scan = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let in_flight = this.in_flight.lock().map(|s| s.clone()).unwrap_or_default();
            let entries = this.store.due_entries(limit, |due, id, provider| {
                if due > now {
                    // When to look again.
                    return Pick::Last;
                }
                if in_flight.contains_key(id) || aside.contains(id) {
                    return Pick::Skip;
                }
                match rooms.get_mut(provider) {
                    Some(0) => Pick::Skip,
                    Some(room) => {
                        *room -= 1;
                        if *room == 0 {
                            open -= 1;
                        }
                        if open == 0 { Pick::Last } else { Pick::Take }
                    }
                    None => Pick::Take,
                }
            })?;
            let mut out = Vec::new();
            let mut damaged = Vec::new();
            for (due, id, _) in entries {
                if due > now {
                    out.push((due, None));
                    break;
                }
                match this.store.record(&id) {
                    Ok(r) => out.push((due, r)),
                    Err(e) if e.is_damage() => damaged.push((id, e)),
                    Err(e) => return Err(e),
                }
            }
            Ok((out, damaged))
        })
        .await;
        match scan {
            Ok(Ok((c, damaged))) => {
                if let Ok(mut d) = self.damaged.lock() {
                    for (id, e) in damaged {
                        tracing::error!(id = %id, error = %e, diagnosis = "store-damaged", "the record of a queued message cannot be read; it is set aside (run `mailgate store check`)");
                        d.insert(id);
                    }
                }
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the due index; retrying in 1s");
                None
            }
            Err(_) => None,
        }
    }

    /// Records the messages dispatch held back (throttled, over quota, or found
    /// finished) and tells their watchers; false when the store refused.
    async fn record_held(&self, held: Vec<(Record, Option<u64>)>) -> bool {
        let events: Vec<DeliveryEvent> = held.iter().map(|(r, _)| DeliveryEvent::of(r)).collect();
        let mutations = held
            .into_iter()
            .map(|(r, due)| Mutation::Update {
                record: Box::new(r),
                due_ms: due,
            })
            .collect();
        if let Err(e) = self.store.write(mutations).await {
            tracing::error!(error = %e, "cannot record deferrals; retrying in 1s");
            return false;
        }
        for ev in events {
            let _ = self.events.send(ev);
        }
        true
    }

    async fn deliver(
        self: Arc<Self>,
        record: Record,
        group: Group,
        _permit: OwnedSemaphorePermit,
        at: u64,
        bypassed: bool,
    ) {
        let id = record.id.clone();
        let mut slot = Slot {
            dist: self.clone(),
            id: id.clone(),
            provider: group.provider.clone(),
            armed: true,
            settled: false,
        };
        let (sent, error, recorded) = match self
            .attempt(record, &group, at, bypassed, &mut slot)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(id = %id, error = %e, "delivery bookkeeping failed; the message stays queued and is tried again in {}s", READ_RETRY_MS / 1000);
                self.cool_down(&id, READ_RETRY_MS);
                (0, None, true)
            }
        };
        slot.settle(sent, error);
        slot.armed = false;
        // An outcome the store could not record keeps its message in flight until it is.
        if recorded && let Ok(mut s) = self.in_flight.lock() {
            s.remove(&id);
        }
        self.wake.notify_one();
    }

    /// The record of a message whose stored body cannot be read back: failed, with the
    /// store-damaged diagnosis (logged once; it is never picked up again).
    fn damaged_outcome(&self, mut record: Record, e: &StoreError) -> Record {
        tracing::error!(id = %record.id, error = %e, diagnosis = "store-damaged", "a stored message cannot be read back; it is marked failed");
        let now = self.now();
        for r in record
            .recipients
            .iter_mut()
            .filter(|r| !r.status.is_finished())
        {
            r.status = Status::Failed;
            r.reply = Some(e.to_string());
        }
        record.status = Status::Failed;
        record.next_attempt_at = None;
        record.attempts.push(crate::history::Attempt {
            at: crate::time::Stamp::at_ms(now),
            provider: record.provider.clone(),
            reply: e.to_string(),
            diagnosis: Some(Code::StoreDamaged.diagnosis()),
            note: None,
        });
        record
    }

    /// The message's body, unless its record says it is finished (a message cancelled
    /// since the scan is not sent).
    async fn body_unless_finished(
        &self,
        id: &str,
    ) -> Result<Option<crate::store::Body>, StoreError> {
        let id = id.to_string();
        self.store
            .blocking(move |s| {
                if s.status(&id)?.is_none_or(|st| st.is_finished()) {
                    return Ok(None);
                }
                s.body(&id)
            })
            .await
    }

    /// One attempt; returns the recipients sent, the failure reply if any, and whether
    /// its outcome is recorded (false: kept in memory until the store commits again).
    /// The message is read before a connection lease is taken, and the lease and the
    /// provider's connection count (`slot`) are given back as soon as the upstream has
    /// answered: a connection carries the next message while this outcome commits.
    async fn attempt(
        &self,
        record: Record,
        group: &Group,
        at: u64,
        bypassed: bool,
        slot: &mut Slot,
    ) -> Result<(u32, Option<String>, bool), StoreError> {
        let started = std::time::Instant::now();
        let read = self.body_unless_finished(&record.id).await;
        let mut headers = Vec::new();
        let mut settled = match read {
            Ok(None) => return Ok((0, None, true)),
            Err(e) if e.is_damage() => {
                let reply = e.to_string();
                Settled::without_sending(self.damaged_outcome(record, &e), Some(reply))
            }
            Err(e) => return Err(e),
            Ok(Some(body)) => {
                if let Ok(head) = body.head() {
                    headers = crate::notify::header_block(&head).to_vec();
                }
                let lease = self.take_lease(&group.provider, &record.id).await;
                let settled = self.send(record, group, body).await;
                self.release_lease(lease).await;
                slot.settle(settled.sent, settled.error.clone());
                settled
            }
        };
        settled.notice = self.notice(&mut settled.record, &headers, &self.routing());
        let record = &mut settled.record;
        if bypassed && let Some(a) = record.attempts.last_mut() {
            a.note = Some(format!(
                "sent regardless of the per-minute limit after {MAX_THROTTLE_DEFERRALS} throttle deferrals"
            ));
        }
        let finish = Finish {
            provider: group.provider.clone(),
            deferrals: record.deferrals,
            last: record.attempts.last().cloned(),
            took: started.elapsed(),
            notice: record.origin() == crate::history::Origin::Notice,
            event: DeliveryEvent::of(record),
        };
        let (sent, error) = (settled.sent, settled.error.clone());
        let mutations = settled.mutations(&group.provider, at, self.now());
        match self.store.write(mutations.clone()).await {
            Ok(()) => {
                self.finished(finish);
                Ok((sent, error, true))
            }
            Err(e) => {
                self.keep_unrecorded(Unrecorded { mutations, finish }, &e);
                Ok((sent, error, false))
            }
        }
    }

    /// Hands the message to its provider; the attempt settled.
    async fn send(&self, record: Record, group: &Group, body: crate::store::Body) -> Settled {
        let routing = self.routing();
        let pending: Vec<&crate::history::Recipient> = record
            .recipients
            .iter()
            .filter(|r| !r.status.is_finished() && group.rcpts.contains(&r.address))
            .collect();
        let delivery = Delivery {
            id: record.id.clone(),
            from: record.sender.clone(),
            rcpts: pending.iter().map(|r| r.address.clone()).collect(),
            // Known for every recipient of a record written since mailgate keeps it.
            blind: pending
                .iter()
                .map(|r| r.blind.map(|b| b.then(|| r.address.clone())))
                .collect::<Option<Vec<Option<String>>>>()
                .map(|v| v.into_iter().flatten().collect()),
            body: Arc::new(body),
        };
        let outcome = match routing.providers.get(&group.provider) {
            Some(p) => self.bounded(p, &group.provider, &delivery).await,
            None => Outcome::Transient {
                reply: format!(
                    "the message is routed to provider {:?}, which is not in the configuration: add it back, or route the user elsewhere, and reload",
                    group.provider
                ),
                code: Code::ProviderConfig,
            },
        };
        let now = self.now();
        let unavailable = outcome.unavailable();
        self.circuit_after(&routing, &group.provider, unavailable, now);
        let next = unavailable.and_then(|_| self.next_provider(&group.chain, &group.provider, now));
        let step = Step {
            provider: &group.provider,
            rcpts: &group.rcpts,
            first: group.first(),
            next: next.as_deref(),
        };
        let settled = apply_outcome(record, step, outcome, &routing.retry, now);
        if let (Some(to), Some(code)) = (&settled.moved_to, unavailable) {
            self.failover(&settled.record.id, &group.provider, to, code.as_str());
        }
        settled
    }

    /// One attempt, visible in `/status` while it runs (its stage and age), and ended at
    /// its provider's [`attempt_bound`](crate::provider::Provider::attempt_bound) whatever
    /// happens: every step has its own bound, so reaching this one is a bug, logged once
    /// with the stage it was stuck at; the message is deferred like any connection
    /// failure and the provider's slot is free again.
    async fn bounded(
        &self,
        provider: &crate::provider::Provider,
        name: &str,
        d: &Delivery,
    ) -> Outcome {
        use crate::provider::stage::{self, Stage};
        struct Registered<'a>(&'a Distributor, &'a str);
        impl Drop for Registered<'_> {
            fn drop(&mut self) {
                if let Ok(mut r) = self.0.running.lock() {
                    r.remove(self.1);
                }
            }
        }
        let st = Stage::default();
        let bound = provider.attempt_bound(d);
        if let Ok(mut r) = self.running.lock() {
            r.insert(
                d.id.clone(),
                super::Running {
                    provider: name.to_string(),
                    started: tokio::time::Instant::now(),
                    stage: st.clone(),
                },
            );
        }
        let _registered = Registered(self, &d.id);
        match tokio::time::timeout(bound, st.scope(provider.deliver(d))).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let at = st.get();
                tracing::error!(id = %d.id, provider = %name, stage = at, bound = %stage::words(bound), "bug: a delivery attempt was still running at its bound although every step has its own; it is ended and the message deferred");
                Outcome::Transient {
                    reply: format!(
                        "{at}: the attempt did not end within {} and was stopped",
                        stage::words(bound)
                    ),
                    code: Code::ConnectionFailed,
                }
            }
        }
    }
}

/// A wait for the log, to a tenth of a second (`until` is shown to the second, so a
/// wait under one would otherwise read as no wait at all).
fn wait_words(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}
