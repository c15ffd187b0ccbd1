//! The distributor: takes due messages from the store's due index (oldest first), hands
//! each to its provider, and records the typed outcome in the same store. A channel
//! ([`Notify`]) wakes it on new mail; otherwise it sleeps until the next due time. A
//! message stays in the due index until its outcome is committed, so whatever was in
//! flight when the process died is simply due again after a restart.

pub mod retry;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::history::{Attempt, Diagnosis, Record, Status, now_ms, rfc3339};
use crate::provider::{Delivery, Fate, Outcome, Provider, ProviderContext, RcptResult};
use crate::store::Store;
use retry::RetryPolicy;

/// How many deliveries run at once across all providers.
const MAX_IN_FLIGHT: usize = 64;

/// Providers and retry rules of one configuration (replaced whole on reload).
#[derive(Debug)]
pub struct Routing {
    /// Providers by name.
    pub providers: HashMap<String, Arc<Provider>>,
    /// Backoff and give-up rules.
    pub retry: RetryPolicy,
}

impl Routing {
    /// Builds the routing of a configuration.
    pub fn from_config(c: &Config) -> Routing {
        let ctx = ProviderContext {
            hostname: c.smtp.hostname.clone(),
            secrets: crate::secrets::SecretStore::beside(&c.store.path),
        };
        Routing {
            providers: c
                .provider
                .iter()
                .map(|p| {
                    (
                        p.name.get_ref().clone(),
                        Arc::new(Provider::from_config(p, &ctx)),
                    )
                })
                .collect(),
            retry: RetryPolicy::from_config(&c.distributor),
        }
    }
}

/// Published after every attempt whose outcome was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    /// Message id.
    pub id: String,
    /// Its status after the attempt.
    pub status: Status,
}

/// The delivery scheduler.
#[derive(Debug)]
pub struct Distributor {
    events: broadcast::Sender<DeliveryEvent>,
    store: Store,
    wake: Arc<Notify>,
    paused: AtomicBool,
    routing: RwLock<Arc<Routing>>,
    in_flight: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
}

impl Distributor {
    /// A distributor over `store`; `wake` is notified by whoever commits new mail.
    pub fn new(store: Store, wake: Arc<Notify>, config: &Config) -> Distributor {
        Distributor {
            events: broadcast::channel(1024).0,
            store,
            wake,
            paused: AtomicBool::new(!config.distributor.enabled),
            routing: RwLock::new(Arc::new(Routing::from_config(config))),
            in_flight: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Outcomes of attempts, as they are committed (for `test-email` and tests).
    pub fn subscribe(&self) -> broadcast::Receiver<DeliveryEvent> {
        self.events.subscribe()
    }

    /// Stops sending; mail is still accepted and queued.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        tracing::info!("distributor paused");
    }

    /// Starts sending again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.wake.notify_one();
        tracing::info!("distributor resumed");
    }

    /// Whether sending is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Replaces providers and retry rules (config reload).
    pub fn set_routing(&self, routing: Routing) {
        if let Ok(mut g) = self.routing.write() {
            *g = Arc::new(routing);
        }
        self.wake.notify_one();
    }

    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn is_in_flight(&self, id: &str) -> bool {
        self.in_flight.lock().is_ok_and(|s| s.contains(id))
    }

    /// Makes every message deferred for an authentication, TLS or configuration reason
    /// due now (after a config fix: reload, restart, `retry --all`). Returns how many.
    pub async fn release_held(&self) -> Result<usize, crate::store::StoreError> {
        let store = self.store.clone();
        let held = tokio::task::spawn_blocking(move || {
            store.list(usize::MAX, |r| {
                r.status == Status::Deferred
                    && r.attempts
                        .last()
                        .and_then(|a| a.diagnosis.as_ref())
                        .and_then(|d| crate::provider::diagnosis::Code::parse(&d.code))
                        .is_some_and(|c| c.is_config())
            })
        })
        .await
        .map_err(|e| crate::store::StoreError::Io(e.to_string()))??;
        let now = now_ms();
        let n = held.len();
        if n > 0 {
            self.store
                .write(
                    held.into_iter()
                        .map(|r| crate::store::Mutation::DueNow {
                            id: r.id,
                            now_ms: now,
                        })
                        .collect(),
                )
                .await?;
            tracing::info!(
                messages = n,
                "released mail held for a configuration reason"
            );
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Runs until `shutdown` turns true; then waits up to `drain` for deliveries in
    /// flight and abandons the rest (they stay due in the store).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let mut tasks = JoinSet::new();
        // A start is a config change too: what waited for a fix goes now.
        if let Err(e) = self.release_held().await {
            tracing::error!(error = %e, "cannot release held mail");
        }
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut wait_ms = None;
            if !self.is_paused() {
                wait_ms = self.dispatch(&mut tasks).await;
            }
            let sleep = tokio::time::sleep(Duration::from_millis(wait_ms.unwrap_or(0)));
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = sleep, if wait_ms.is_some() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.changed() => {}
            }
        }
        let drained =
            tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "deliveries still running at the shutdown deadline; they stay queued"
            );
            tasks.abort_all();
        }
    }

    /// Starts every due delivery there is a slot for; returns ms until the next due one.
    async fn dispatch(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Option<u64> {
        let this = self.clone();
        let limit = self.slots.available_permits() + 1;
        let entries = tokio::task::spawn_blocking(move || {
            this.store.due_entries(limit, |id| this.is_in_flight(id))
        })
        .await
        .ok()?;
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the due index; retrying in 1s");
                return Some(1000);
            }
        };
        let now = now_ms();
        for (due, id) in entries {
            if due > now {
                return Some(due - now);
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                return None; // a finishing delivery wakes us
            };
            if let Ok(mut s) = self.in_flight.lock() {
                s.insert(id.clone());
            }
            let this = self.clone();
            tasks.spawn(async move { this.deliver(id, permit).await });
        }
        None
    }

    async fn deliver(self: Arc<Self>, id: String, _permit: OwnedSemaphorePermit) {
        if let Err(e) = self.attempt(&id).await {
            tracing::error!(id = %id, error = %e, "delivery bookkeeping failed; the message stays queued");
        }
        if let Ok(mut s) = self.in_flight.lock() {
            s.remove(&id);
        }
        self.wake.notify_one();
    }

    async fn attempt(&self, id: &str) -> Result<(), crate::store::StoreError> {
        let (record, raw) = {
            let store = self.store.clone();
            let id = id.to_string();
            tokio::task::spawn_blocking(move || {
                Ok::<_, crate::store::StoreError>((
                    store.record_with_due(&id)?,
                    store.message(&id)?,
                ))
            })
            .await
            .map_err(|e| crate::store::StoreError::Io(e.to_string()))??
        };
        let (Some((record, _)), Some(raw)) = (record, raw) else {
            return Ok(());
        };
        if record.status.is_finished() {
            // Finished but still indexed (should not happen): drop the index entry.
            return self.store.update(record, None).await;
        }
        let routing = self.routing();
        let delivery = Delivery {
            id: id.to_string(),
            from: record.sender.clone(),
            rcpts: record
                .recipients
                .iter()
                .filter(|r| !r.status.is_finished())
                .map(|r| r.address.clone())
                .collect(),
            raw: Arc::new(raw),
        };
        let started = std::time::Instant::now();
        let outcome = match routing.providers.get(&record.provider) {
            Some(p) => p.deliver(&delivery).await,
            None => Outcome::Transient {
                reply: format!("no provider named {:?}", record.provider),
                diagnosis: Diagnosis {
                    code: "unknown".into(),
                    explanation: format!("The message is routed to provider {:?}, which is not in the configuration", record.provider),
                    fix: "Add the provider back to the configuration, or route the user elsewhere, and reload".into(),
                },
            },
        };
        let (record, due) = apply_outcome(record, outcome, &routing.retry, now_ms());
        let (id, status, provider, deferrals) = (
            record.id.clone(),
            record.status,
            record.provider.clone(),
            record.deferrals,
        );
        let (diagnosis, reply) = record.attempts.last().map_or((None, None), |a| {
            (
                a.diagnosis.as_ref().map(|d| d.code.clone()),
                Some(a.reply.clone()),
            )
        });
        self.store.update(record, due).await?;
        // Logged once committed, so what the log says is what the history holds.
        tracing::info!(
            id = %id,
            status = status.as_str(),
            provider = %provider,
            deferrals,
            diagnosis,
            reply,
            delay_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "delivery"
        );
        let event = DeliveryEvent { id, status };
        let _ = self.events.send(event);
        Ok(())
    }
}

/// The record after an attempt, and its next due time (None when finished).
///
/// Every outcome becomes a fate per pending recipient; the message's status follows from
/// its recipients: any still waiting -> `deferred`; else all sent -> `sent`, all failed
/// -> `failed`, a mix -> `partial`. A transient failure past `give_up_after` is failed.
pub fn apply_outcome(
    mut record: Record,
    outcome: Outcome,
    retry: &RetryPolicy,
    now: u64,
) -> (Record, Option<u64>) {
    let at = rfc3339(now);
    let pending: Vec<String> = record
        .recipients
        .iter()
        .filter(|r| !r.status.is_finished())
        .map(|r| r.address.clone())
        .collect();
    let all = |fate: Fate, reply: &str, diagnosis: Option<Diagnosis>| -> Vec<RcptResult> {
        pending
            .iter()
            .map(|a| RcptResult {
                address: a.clone(),
                fate,
                reply: reply.to_string(),
                diagnosis: diagnosis.clone(),
            })
            .collect()
    };
    let (reply, results) = match outcome {
        Outcome::Sent { reply } => {
            let results = all(Fate::Sent, &reply, None);
            (reply, results)
        }
        Outcome::Transient { reply, diagnosis } => {
            let results = all(Fate::Transient, &reply, Some(diagnosis));
            (reply, results)
        }
        Outcome::Permanent { reply, diagnosis } => {
            let results = all(Fate::Permanent, &reply, Some(diagnosis));
            (reply, results)
        }
        Outcome::PerRecipient { reply, results } => (reply, results),
    };
    let received = ulid::Ulid::from_string(&record.id)
        .map(|u| u.timestamp_ms())
        .unwrap_or(now);
    let give_up = retry.gives_up(received, now);
    let diagnosis = results.iter().find_map(|r| r.diagnosis.clone());
    for res in results {
        let Some(r) = record
            .recipients
            .iter_mut()
            .find(|r| r.address == res.address && !r.status.is_finished())
        else {
            continue;
        };
        r.status = match res.fate {
            Fate::Sent => Status::Sent,
            Fate::Permanent => Status::Failed,
            Fate::Transient if give_up => Status::Failed,
            Fate::Transient => Status::Deferred,
        };
        r.reply = Some(res.reply);
    }
    record.attempts.push(Attempt {
        at: at.clone(),
        provider: record.provider.clone(),
        reply,
        diagnosis,
    });
    let waiting = record.recipients.iter().any(|r| !r.status.is_finished());
    let sent = record
        .recipients
        .iter()
        .filter(|r| r.status == Status::Sent)
        .count();
    if waiting {
        record.deferrals += 1;
        record.status = Status::Deferred;
        let due = now + retry.delay_ms(record.deferrals);
        record.next_attempt_at = Some(rfc3339(due));
        if sent > 0 && record.sent_at.is_none() {
            record.sent_at = Some(at);
        }
        return (record, Some(due));
    }
    record.next_attempt_at = None;
    record.status = if sent == record.recipients.len() {
        Status::Sent
    } else if sent == 0 {
        Status::Failed
    } else {
        Status::Partial
    };
    if sent > 0 && record.sent_at.is_none() {
        record.sent_at = Some(at);
    }
    (record, None)
}
