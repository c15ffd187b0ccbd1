//! The distributor: takes due messages from the store's due index (oldest first), checks
//! its provider's limits and concurrency, hands each to its provider, and records the
//! typed outcome in the same store. A [`Notify`] wakes it on new mail; otherwise it sleeps
//! until the next due time; nothing polls. A message stays in the due index until its
//! outcome is committed, so whatever was in flight when the process died is simply due
//! again after a restart.

mod cancel;
mod chain;
pub mod circuit;
mod counted;
mod dispatch;
mod leases;
mod limiter;
mod notice;
pub mod outcome;
mod remembered;
pub mod retry;
pub mod throttle;
mod unrecorded;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, broadcast, watch};
use tokio::task::JoinSet;

use crate::config::{Config, ProviderConfig};
use crate::history::Status;
use crate::provider::{Provider, ProviderContext};
use crate::store::{Mutation, Store, StoreError};
use crate::time::now_ms;
pub use cancel::CancelError;
pub use outcome::apply_outcome;
use retry::RetryPolicy;
use throttle::{Limits, Windows};

/// How many deliveries run at once across all providers.
const MAX_IN_FLIGHT: usize = 64;

/// Claims message `id` in the in-flight map unless someone holds it already (a send or
/// a cancel); never overwrites the holder's entry.
fn claim(map: &mut HashMap<String, Option<Status>>, id: &str, how: Option<Status>) -> bool {
    match map.entry(id.to_string()) {
        std::collections::hash_map::Entry::Occupied(_) => false,
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(how);
            true
        }
    }
}

/// The limits of a provider in force (its own, else its kind's defaults).
pub fn provider_limits(p: &ProviderConfig) -> Limits {
    let (per_minute, per_day) = p.limits();
    Limits {
        per_minute,
        per_day,
    }
}

/// Providers, their limits and the retry rules of one configuration (replaced whole on
/// reload).
#[derive(Debug)]
pub struct Routing {
    /// Providers by name.
    pub providers: HashMap<String, Arc<Provider>>,
    /// Limits and concurrency by provider name.
    pub limits: HashMap<String, (Limits, usize)>,
    /// Backoff and give-up rules.
    pub retry: RetryPolicy,
    /// The provider chains and routes.
    pub chains: crate::config::Chains,
    /// Circuit settings by provider name: failures to open (0: never), cool-down (ms).
    pub circuits: HashMap<String, (u32, u64)>,
    /// Notices to the sender.
    pub notify: notice::NotifySettings,
}

impl Routing {
    /// Builds the routing of a configuration.
    pub fn from_config(c: &Config) -> Routing {
        let ctx = ProviderContext {
            hostname: c.smtp.hostname.clone(),
            secrets: crate::secrets::SecretStore::beside(&c.store.path),
            reuse_connections: true,
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
            limits: c
                .provider
                .iter()
                .map(|p| {
                    (
                        p.name.get_ref().clone(),
                        (provider_limits(p), p.common.max_connections.max(1)),
                    )
                })
                .collect(),
            retry: RetryPolicy::from_config(&c.distributor),
            chains: crate::config::Chains::from_config(c),
            notify: notice::NotifySettings::from_config(c),
            circuits: c
                .provider
                .iter()
                .map(|p| {
                    let (after, cooldown) = p.circuit();
                    (
                        p.name.get_ref().clone(),
                        (after, crate::time::duration_ms(cooldown)),
                    )
                })
                .collect(),
        }
    }

    fn limits(&self, provider: &str) -> (Limits, usize) {
        self.limits
            .get(provider)
            .copied()
            .unwrap_or((Limits::default(), 1))
    }
}

/// Published after every attempt or deferral whose outcome was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    /// Message id.
    pub id: String,
    /// Its status after the attempt.
    pub status: Status,
    /// The latest diagnosis its record holds.
    pub diagnosis: Option<crate::diagnosis::Code>,
    /// A message mailgate made itself (a notice, an alert email).
    pub own: bool,
}

impl DeliveryEvent {
    /// The event of a record as committed.
    pub fn of(r: &crate::history::Record) -> DeliveryEvent {
        DeliveryEvent {
            id: r.id.clone(),
            status: r.status,
            diagnosis: r.last_diagnosis(),
            own: r.is_own(),
        }
    }
}

/// What the status endpoint shows of a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Messages sent in the last minute.
    pub sent_last_minute: u64,
    /// Recipients sent in the last 24 hours.
    pub recipients_last_day: u64,
    /// Throttle deferrals since start.
    pub throttle_deferrals: u64,
    /// Deliveries running now.
    pub in_flight: usize,
    /// The attempts running now, oldest first.
    pub attempts: Vec<RunningAttempt>,
    /// The last failure's reply (never a success), and when it came (ms).
    pub last_error: Option<(String, u64)>,
}

/// A delivery attempt running now, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningAttempt {
    /// Message id.
    pub id: String,
    /// The step of the exchange it is at (`connect`, `MAIL`, `message body`, ...).
    pub stage: &'static str,
    /// How long it has run.
    pub age: Duration,
}

/// An attempt in flight: its provider, start and stage.
#[derive(Debug)]
struct Running {
    provider: String,
    started: tokio::time::Instant,
    stage: crate::provider::stage::Stage,
}

#[derive(Debug, Default)]
struct ProviderState {
    windows: Windows,
    in_flight: usize,
    throttle_deferrals: u64,
    last_error: Option<(String, u64)>,
    circuit: circuit::Circuit,
    /// Holding mail for a configuration reason: the code and since when (ms).
    held: Option<(crate::diagnosis::Code, u64)>,
}

/// Time as the scheduler sees it: the wall clock at start plus tokio's monotonic clock
/// since, so tests can drive it with `tokio::time::pause()`.
#[derive(Debug)]
struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> u64 {
        self.base_ms + crate::time::duration_ms(self.base.elapsed())
    }
}

/// The delivery scheduler.
#[derive(Debug)]
pub struct Distributor {
    metrics: Arc<crate::metrics::Metrics>,
    events: broadcast::Sender<DeliveryEvent>,
    store: Store,
    wake: Arc<Notify>,
    paused: AtomicBool,
    routing: RwLock<Arc<Routing>>,
    /// Messages claimed: being sent (with the status their record had when the attempt
    /// began), or being cancelled (None).
    in_flight: Mutex<HashMap<String, Option<Status>>>,
    /// The attempts handed to a provider and not yet ended, by message id.
    running: Mutex<HashMap<String, Running>>,
    providers: Mutex<HashMap<String, ProviderState>>,
    slots: Arc<Semaphore>,
    clock: Clock,
    /// Outcomes the store could not record yet (see `unrecorded.rs`).
    unrecorded: Mutex<Vec<unrecorded::Unrecorded>>,
    /// Messages not to pick up before a time (ms): after a failed attempt's bookkeeping
    /// or a panic, so no error path retries without a delay.
    cooldown: Mutex<HashMap<String, u64>>,
    /// Messages whose record cannot be read (store damage); passed over, reported once.
    damaged: Mutex<HashSet<String>>,
    /// The windows kept beyond this node: none alone, the fleet store's in a fleet.
    shared: limiter::Shared,
    /// The fleet-wide connection leases this node holds (fleet mode).
    leases: leases::Leases,
    /// Where what a restart keeps of the providers is written (`remembered.rs`).
    remembered_file: std::path::PathBuf,
    /// What was last written there.
    remembered_last: Mutex<remembered::Remembered>,
    /// When a failed write was last logged (ms).
    remembered_warned: std::sync::atomic::AtomicU64,
}

impl Distributor {
    /// A distributor over `store`; `wake` is notified by whoever commits new mail.
    pub fn new(
        store: Store,
        wake: Arc<Notify>,
        config: &Config,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Distributor {
        // Every provider's series exist from the start (at 0), so alerts can use them.
        for p in &config.provider {
            let label = crate::metrics::ProviderLabel {
                provider: p.name.get_ref().clone(),
            };
            let _ = metrics.sent.get_or_create(&label);
            let _ = metrics.throttle_deferrals.get_or_create(&label);
            let _ = metrics.oldest_inflight.get_or_create(&label);
            let _ = metrics.circuit_open.get_or_create(&label);
            let _ = metrics.provider_held.get_or_create(&label);
        }
        // What the last run knew of each provider: held, its circuit, its last error.
        let remembered_file = remembered::file_for(&config.store.path);
        let kept = remembered::Remembered::read(&remembered_file);
        let mut providers = HashMap::new();
        for (name, st) in kept.clone().states() {
            let label = crate::metrics::ProviderLabel {
                provider: name.clone(),
            };
            metrics
                .provider_held
                .get_or_create(&label)
                .set(i64::from(st.held.is_some()));
            metrics
                .circuit_open
                .get_or_create(&label)
                .set(i64::from(st.circuit.open_until().is_some()));
            providers.insert(name, st);
        }
        Distributor {
            metrics,
            events: broadcast::channel(4096).0,
            store,
            wake,
            paused: AtomicBool::new(!config.distributor.enabled),
            routing: RwLock::new(Arc::new(Routing::from_config(config))),
            in_flight: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            providers: Mutex::new(providers),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            unrecorded: Mutex::new(Vec::new()),
            cooldown: Mutex::new(HashMap::new()),
            damaged: Mutex::new(HashSet::new()),
            shared: limiter::Shared::Alone,
            leases: leases::Leases::default(),
            remembered_file,
            remembered_last: Mutex::new(kept),
            remembered_warned: std::sync::atomic::AtomicU64::new(0),
            clock: Clock {
                base_ms: now_ms(),
                base: tokio::time::Instant::now(),
            },
        }
    }

    /// Shares this distributor's limits with a fleet (before it runs).
    pub fn with_fleet(mut self, fleet: Option<Arc<crate::fleet::Fleet>>) -> Distributor {
        self.shared = limiter::Shared::new(fleet);
        self
    }

    /// The fleet store client, with `[fleet]`.
    pub fn fleet(&self) -> Option<&Arc<crate::fleet::Fleet>> {
        self.shared.fleet()
    }

    /// The scheduler's clock, ms since the epoch.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Outcomes of attempts and deferrals, as they are committed.
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

    /// Makes the scheduler look at the due index now (after a retry).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Whether sending is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Replaces providers, limits and retry rules (config reload).
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

    /// The provider of this name in the routing in force.
    pub fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.routing().providers.get(name).cloned()
    }

    /// The attempts of a provider running now, oldest first.
    pub fn running_attempts(&self, provider: &str) -> Vec<RunningAttempt> {
        let Ok(running) = self.running.lock() else {
            return Vec::new();
        };
        let mut out: Vec<RunningAttempt> = running
            .iter()
            .filter(|(_, r)| r.provider == provider)
            .map(|(id, r)| RunningAttempt {
                id: id.clone(),
                stage: r.stage.get(),
                age: r.started.elapsed(),
            })
            .collect();
        out.sort_by_key(|a| std::cmp::Reverse(a.age));
        out
    }

    /// Per-provider figures for the status endpoint.
    pub fn provider_stats(&self, name: &str) -> ProviderStats {
        let attempts = self.running_attempts(name);
        let now = self.now();
        let Ok(mut map) = self.providers.lock() else {
            return ProviderStats::default();
        };
        let Some(st) = map.get_mut(name) else {
            return ProviderStats::default();
        };
        ProviderStats {
            sent_last_minute: st.windows.last_minute(now) as u64,
            recipients_last_day: st.windows.last_day(now),
            throttle_deferrals: st.throttle_deferrals,
            in_flight: st.in_flight,
            attempts,
            last_error: st.last_error.clone(),
        }
    }

    /// Messages being delivered right now.
    pub fn sending(&self) -> usize {
        self.in_flight
            .lock()
            .map_or(0, |s| s.values().filter(|v| v.is_some()).count())
    }

    /// Of the messages being sent, how many have a record that still says `status`
    /// (queued or deferred until the attempt ends): a message being sent is counted
    /// once, as sending, not also as waiting.
    pub fn sending_from(&self, status: Status) -> u64 {
        self.in_flight.lock().map_or(0, |s| {
            s.values().filter(|v| **v == Some(status)).count() as u64
        })
    }

    /// Makes every message deferred for an authentication, TLS or configuration reason
    /// due now (after a config fix: reload, restart). Returns how many.
    pub async fn release_held(&self) -> Result<usize, StoreError> {
        self.make_deferred_due(true, None).await
    }

    /// [`Distributor::release_held`] for the mail of one provider (after its
    /// `oauth2 login`).
    pub async fn release_held_of(&self, provider: &str) -> Result<usize, StoreError> {
        self.make_deferred_due(true, Some(provider)).await
    }

    /// Makes every deferred message due now (`retry --all`). Returns how many.
    pub async fn retry_deferred(&self) -> Result<usize, StoreError> {
        self.make_deferred_due(false, None).await
    }

    /// Every provider of the routing in force.
    pub fn providers(&self) -> Vec<Arc<Provider>> {
        self.routing().providers.values().cloned().collect()
    }

    async fn make_deferred_due(
        &self,
        only_config_held: bool,
        provider: Option<&str>,
    ) -> Result<usize, StoreError> {
        let held_for_config = |r: &crate::history::Record| {
            r.attempts
                .last()
                .and_then(|a| a.diagnosis.as_ref())
                .is_some_and(|d| d.code.is_config())
        };
        let ids: Vec<String> = self
            .store
            .blocking(|s| s.query(Some(Status::Deferred), None, None, usize::MAX))
            .await?
            .into_iter()
            .filter(|r| !only_config_held || held_for_config(r))
            .filter(|r| {
                provider.is_none_or(|p| {
                    r.provider == p
                        || r.recipients
                            .iter()
                            .any(|x| !x.status.is_finished() && x.provider.as_deref() == Some(p))
                })
            })
            .map(|r| r.id)
            .collect();
        let n = ids.len();
        if n > 0 {
            let now = self.now();
            self.store
                .write(
                    ids.into_iter()
                        .map(|id| Mutation::DueNow { id, now_ms: now })
                        .collect(),
                )
                .await?;
            if only_config_held {
                tracing::info!(
                    messages = n,
                    "released mail held for a configuration reason"
                );
            } else {
                tracing::info!(messages = n, "every deferred message queued again");
            }
            self.wake.notify_one();
        }
        Ok(n)
    }

    /// Rebuilds the limit windows from the sends of the last 24 hours in the store.
    async fn restore_windows(&self) -> Result<(), StoreError> {
        let since = self.now().saturating_sub(throttle::DAY_MS);
        let uses = self.store.blocking(move |s| s.usage_since(since)).await?;
        if let Ok(mut map) = self.providers.lock() {
            for (provider, at, id, rcpts) in uses {
                map.entry(provider)
                    .or_default()
                    .windows
                    .take(at, &id, rcpts);
            }
        }
        Ok(())
    }

    /// Runs until `shutdown` turns true; then waits up to `drain` for deliveries in
    /// flight and abandons the rest (they stay due in the store).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let mut tasks = JoinSet::new();
        if let Err(e) = self.restore_windows().await {
            tracing::error!(error = %e, "cannot restore the provider limit windows");
        }
        // A start is a config change too: what waited for a fix goes now.
        if let Err(e) = self.release_held().await {
            tracing::error!(error = %e, "cannot release held mail");
        }
        let keeper = self
            .fleet()
            .is_some()
            .then(|| tokio::spawn(self.clone().keep_leases()));
        let remember = tokio::spawn({
            let me = self.clone();
            async move {
                loop {
                    tokio::time::sleep(remembered::EVERY).await;
                    me.keep_remembered().await;
                }
            }
        });
        let mut backoff = unrecorded::FIRST_BACKOFF;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut wait_ms = None;
            // A store that cannot record what was sent must not send more.
            if self.unrecorded() > 0 {
                if self.flush_unrecorded().await {
                    backoff = unrecorded::FIRST_BACKOFF;
                } else {
                    wait_ms = Some(crate::time::duration_ms(backoff));
                    backoff = (backoff * 2).min(unrecorded::MAX_BACKOFF);
                }
            }
            if wait_ms.is_none() && !self.is_paused() {
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
        if let Some(k) = keeper {
            k.abort();
            self.give_back_leases().await;
        }
        remember.abort();
        self.keep_remembered().await;
        if self.unrecorded() > 0 && !self.flush_unrecorded().await {
            tracing::error!(
                outcomes = self.unrecorded(),
                "stopping with delivery outcomes the store could not record: those messages were sent and will be sent again after the restart"
            );
        }
    }

    /// Puts a message aside for `ms` (after an error in its attempt's bookkeeping).
    fn cool_down(&self, id: &str, ms: u64) {
        if let Ok(mut c) = self.cooldown.lock() {
            c.insert(id.to_string(), self.now() + ms);
        }
    }

    /// Ids the scan must pass over now: cooling down or damaged.
    fn set_aside(&self) -> HashSet<String> {
        let now = self.now();
        let mut out: HashSet<String> = self.damaged.lock().map(|d| d.clone()).unwrap_or_default();
        if let Ok(mut c) = self.cooldown.lock() {
            c.retain(|_, until| *until > now);
            out.extend(c.keys().cloned());
        }
        out
    }

    /// Messages whose record cannot be read back (store damage).
    pub fn damaged(&self) -> Vec<String> {
        self.damaged
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }
}
