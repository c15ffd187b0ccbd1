//! Alerts (SPEC "Telling people: bounces and alerts"): conditions that need a person,
//! read every two seconds from the same snapshot `/status` shows, each told to every
//! `[[alert]]` that wants its event once when it starts (`firing`) and once when it
//! clears (`resolved`). Failures are summed into digests, at most one per
//! `min_interval`. What is open and what is not yet delivered is kept in `alerts.json`
//! beside the store, so a restart neither repeats an alert that went nor drops one that
//! did not. Delivery (`deliver.rs`) is retried with backoff in this task, never in the
//! way of mail.

mod deliver;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{AlertConfig, AlertEvent, Config};
use crate::snapshot::{Core, Snapshot};
use crate::time::{now_ms, rfc3339};

pub use deliver::TestResult;

/// How often conditions are read.
const TICK: Duration = Duration::from_secs(2);
/// How long the fleet store may be away before the `fleet` alert fires.
const FLEET_GRACE_MS: u64 = 60_000;
/// `sign-in-expiring` looks this far ahead.
const EXPIRY_AHEAD_MS: u64 = 14 * crate::time::DAY_MS;
/// A digest lists at most this many messages.
const DIGEST_IDS: usize = 20;

/// One message in an alert: its id and diagnosis code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    /// Message id.
    pub id: String,
    /// Its diagnosis code (or status).
    pub diagnosis: String,
}

/// A condition that needs a person, while it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// The event (`held`, `queue-stuck`, ...).
    pub event: AlertEvent,
    /// The provider it is about, if any.
    pub provider: Option<String>,
    /// One line.
    pub summary: String,
    /// What to do, or more.
    pub details: String,
    /// Since when (ms).
    pub since_ms: u64,
    /// The messages concerned (a `failed` digest).
    #[serde(default)]
    pub messages: Vec<MessageRef>,
    /// For a `failed` digest: how many messages it sums.
    #[serde(default)]
    pub count: u64,
}

impl Condition {
    fn key(&self) -> String {
        format!("{}/{}", self.event, self.provider.as_deref().unwrap_or(""))
    }
}

/// An alert waiting to be delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    alert: String,
    state: String,
    condition: Condition,
    tries: u32,
    next_ms: u64,
}

/// The failures one alert has not yet been told of.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Digest {
    pending: Vec<MessageRef>,
    count: u64,
    firing: bool,
    first_pending_ms: u64,
    last_sent_ms: u64,
    last_failure_ms: u64,
}

impl Digest {
    /// The digest of the failures summed since the last one; they are then cleared.
    fn fire(&mut self, now: u64) -> Condition {
        let count = self.count;
        let condition = Condition {
            event: AlertEvent::Failed,
            provider: None,
            summary: format!(
                "{count} message{} failed or partly failed",
                if count == 1 { "" } else { "s" }
            ),
            details: "see each message's diagnosis: mailgate show ID, or the Email history page filtered by Failed".into(),
            since_ms: self.first_pending_ms,
            messages: self.pending.iter().take(DIGEST_IDS).cloned().collect(),
            count,
        };
        self.firing = true;
        self.last_sent_ms = now;
        self.pending.clear();
        self.count = 0;
        condition
    }

    /// The digest's `resolved`: nothing has failed for an interval.
    fn resolve(&mut self) -> Condition {
        self.firing = false;
        Condition {
            event: AlertEvent::Failed,
            provider: None,
            summary: "no message has failed since the last alert".into(),
            details: String::new(),
            since_ms: self.last_failure_ms,
            messages: Vec::new(),
            count: 0,
        }
    }
}

/// What survives a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    open: BTreeMap<String, Condition>,
    outbox: Vec<Pending>,
    digests: BTreeMap<String, Digest>,
}

/// The alert engine of one daemon.
#[derive(Debug)]
pub struct Alerts {
    file: PathBuf,
    state: Mutex<Persisted>,
    /// Since when the fleet store has been away (ms).
    fleet_down_since: Mutex<Option<u64>>,
    http: reqwest::Client,
}

impl Alerts {
    /// The engine, with what the last run left in `alerts.json` beside the store.
    pub fn new(config: &Config) -> Alerts {
        let file = config
            .store
            .path
            .parent()
            .map_or_else(|| PathBuf::from("alerts.json"), |d| d.join("alerts.json"));
        let state = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Alerts {
            file,
            state: Mutex::new(state),
            fleet_down_since: Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .no_proxy()
                .build()
                .unwrap_or_default(),
        }
    }

    /// The conditions open now, oldest first (`/status` `alerts`, the dashboard): the
    /// open set, and a `failed` digest while it fires.
    pub fn open(&self) -> Vec<Condition> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        let mut v: Vec<Condition> = s.open.values().cloned().collect();
        if let Some(d) = s.digests.values().find(|d| d.firing) {
            v.push(Condition {
                event: AlertEvent::Failed,
                provider: None,
                summary: "messages failed recently".into(),
                details: String::new(),
                since_ms: d.last_sent_ms,
                messages: Vec::new(),
                count: d.count,
            });
        }
        v.sort_by_key(|c| c.since_ms);
        v
    }

    /// Writes the state whole (off the async runtime: it fsyncs).
    async fn save(&self, bytes: Vec<u8>) {
        let file = self.file.clone();
        let written =
            tokio::task::spawn_blocking(move || crate::files::replace(&file, &bytes)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot save the alert state");
        }
    }

    /// Runs until shutdown: reads the conditions, queues firing and resolved alerts,
    /// delivers what is due.
    pub async fn run(self: Arc<Self>, app: Core, mut shutdown: watch::Receiver<bool>) {
        let mut events = app.distributor.subscribe();
        loop {
            let config = app.pipeline.config();
            // Failures since the last look go into the digests, with the diagnosis the
            // event carries (mail mailgate made itself is left out: a failing alert
            // email must not alert).
            let mut failed = Vec::new();
            loop {
                match events.try_recv() {
                    Ok(ev)
                        if !ev.own
                            && matches!(
                                ev.status,
                                crate::history::Status::Failed | crate::history::Status::Partial
                            ) =>
                    {
                        failed.push(MessageRef {
                            diagnosis: ev
                                .diagnosis
                                .map_or_else(|| ev.status.as_str().to_string(), |c| c.to_string()),
                            id: ev.id,
                        })
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
            let conditions = self.conditions(&app, &config).await;
            if let Some(bytes) = self.step(&config, conditions, failed, now_ms()) {
                self.save(bytes).await;
            }
            self.deliver_due(&app, &config).await;
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The conditions open now (all but `failed`).
    async fn conditions(&self, app: &Core, config: &Config) -> Vec<Condition> {
        let now = now_ms();
        let mut out = Vec::new();
        let mut open =
            |event: AlertEvent, provider: Option<String>, summary: String, details: String| {
                out.push(Condition {
                    event,
                    provider,
                    summary,
                    details,
                    since_ms: now,
                    messages: Vec::new(),
                    count: 0,
                });
            };
        for (provider, code, _) in app.distributor.held() {
            let (_, fix) = code.texts();
            open(
                AlertEvent::Held,
                Some(provider.clone()),
                format!("provider {provider} holds mail: {code}"),
                fix.to_string(),
            );
        }
        if let Ok(snap) = Snapshot::gather(app).await {
            let stuck = config.distributor.stuck_after.0.as_secs();
            if let Some(age) = snap.oldest_age_seconds().filter(|a| *a > stuck) {
                open(
                    AlertEvent::QueueStuck,
                    None,
                    format!(
                        "the oldest waiting message ({}) has waited {}",
                        snap.oldest.clone().unwrap_or_default(),
                        humantime::format_duration(Duration::from_secs(age))
                    ),
                    format!(
                        "more than distributor.stuck_after ({}); see why it waits: mailgate show ID",
                        humantime::format_duration(config.distributor.stuck_after.0)
                    ),
                );
            }
            for p in &snap.providers {
                if let Some((what, at)) = expiring(p, config, now) {
                    open(
                        AlertEvent::SignInExpiring,
                        Some(p.name.clone()),
                        format!("provider {}: {what} on {}", p.name, rfc3339(at)),
                        "renew it before then (see the README, \"Delegated OAuth2\" and \"Registering the app\")".into(),
                    );
                }
            }
        }
        // A past failed commit is cleared by a write that succeeds: try one (only while
        // in trouble), so the alert clears once the disk can write again.
        let store = app.pipeline.store();
        if store.trouble().is_some() {
            let _ = store.probe().await;
        }
        if let Some(problem) = crate::snapshot::store_problem(app).await {
            open(
                AlertEvent::Store,
                None,
                format!("the store needs attention: {problem}"),
                "see the README, Troubleshooting: store".into(),
            );
        }
        if let Some(fleet) = app.distributor.fleet() {
            // The store's own state (the gauge is only brought up to date when /status
            // or /metrics is asked, which nobody may do on a node left alone).
            let up = fleet.is_up();
            let down_for = {
                let mut since = self
                    .fleet_down_since
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match (up, *since) {
                    (true, _) => {
                        *since = None;
                        0
                    }
                    (false, None) => {
                        *since = Some(now);
                        0
                    }
                    (false, Some(t)) => now.saturating_sub(t),
                }
            };
            if down_for >= FLEET_GRACE_MS {
                open(
                    AlertEvent::Fleet,
                    None,
                    "the fleet store (Redis) has been unreachable for over a minute".into(),
                    "each node keeps to its share of the limits meanwhile; bring Redis back".into(),
                );
            }
        }
        out
    }

    /// Compares the conditions with those open before and queues what changed; sums
    /// failures into each alert's digest. Returns the state to save when it changed.
    fn step(
        &self,
        config: &Config,
        now_open: Vec<Condition>,
        failed: Vec<MessageRef>,
        now: u64,
    ) -> Option<Vec<u8>> {
        let mut s = self.state.lock().ok()?;
        let before = s.open.clone();
        let mut open = BTreeMap::new();
        for c in now_open {
            let key = c.key();
            let c = match before.get(&key) {
                // Still open: it keeps its first time and words.
                Some(old) => old.clone(),
                None => c,
            };
            open.insert(key, c);
        }
        let mut queued = Vec::new();
        for (key, c) in &open {
            if !before.contains_key(key) {
                tracing::warn!(event = %c.event, provider = c.provider.as_deref(), summary = %c.summary, state = "firing", "alert condition");
                queued.push(("firing", c.clone()));
            }
        }
        for (key, c) in &before {
            if !open.contains_key(key) {
                tracing::info!(event = %c.event, provider = c.provider.as_deref(), state = "resolved", "alert condition cleared");
                queued.push(("resolved", cleared(c)));
            }
        }
        s.open = open;
        for a in &config.alert {
            for (state, c) in &queued {
                let wants = a.wants(c.event);
                if wants {
                    s.outbox.push(Pending {
                        alert: a.name.get_ref().clone(),
                        state: (*state).into(),
                        condition: c.clone(),
                        tries: 0,
                        next_ms: now,
                    });
                }
            }
        }
        let changed = !queued.is_empty();
        let digests_changed = digest_step(&mut s, &config.alert, failed, now);
        (changed || digests_changed)
            .then(|| serde_json::to_vec_pretty(&*s).ok())
            .flatten()
    }
}

/// A condition as its `resolved` alert tells it: what is true now, and what was (the
/// firing summary) in `details`.
fn cleared(c: &Condition) -> Condition {
    let provider = c.provider.as_deref().unwrap_or("");
    let summary = match c.event {
        AlertEvent::Held => {
            format!("provider {provider} no longer holds mail: a delivery through it was not held")
        }
        AlertEvent::QueueStuck => {
            "no message has waited longer than distributor.stuck_after any more".into()
        }
        AlertEvent::SignInExpiring => {
            format!("provider {provider}: nothing ends within 14 days any more")
        }
        AlertEvent::Store => "the store writes again and has space".into(),
        AlertEvent::Fleet => "the fleet store (Redis) is reachable again".into(),
        AlertEvent::Failed | AlertEvent::Test => format!("cleared: {}", c.summary),
    };
    Condition {
        summary,
        details: format!("was: {}", c.summary),
        ..c.clone()
    }
}

/// Sums failures into each alert's digest and queues a digest when it is due: the first
/// a short settle after the first failure (a burst goes as one), then at most one per
/// `min_interval`; `resolved` after a `min_interval` without failures.
fn digest_step(
    s: &mut Persisted,
    alerts: &[AlertConfig],
    failed: Vec<MessageRef>,
    now: u64,
) -> bool {
    let mut changed = false;
    for a in alerts.iter().filter(|a| a.wants(AlertEvent::Failed)) {
        let name = a.name.get_ref().clone();
        let interval = crate::time::duration_ms(a.interval());
        let settle = interval.min(10_000);
        let d = s.digests.entry(name.clone()).or_default();
        if !failed.is_empty() {
            if d.pending.is_empty() && d.count == 0 {
                d.first_pending_ms = now;
            }
            d.count += failed.len() as u64;
            d.pending.extend(failed.iter().cloned());
            d.last_failure_ms = now;
            changed = true;
        }
        let due = !d.pending.is_empty()
            && if d.firing {
                now.saturating_sub(d.last_sent_ms) >= interval
            } else {
                now.saturating_sub(d.first_pending_ms) >= settle
            };
        let queue = if due {
            changed = true;
            Some(("firing", d.fire(now)))
        } else if d.firing
            && d.pending.is_empty()
            && now.saturating_sub(d.last_failure_ms) >= interval
        {
            changed = true;
            Some(("resolved", d.resolve()))
        } else {
            None
        };
        if let Some((state, condition)) = queue {
            tracing::warn!(alert = %name, event = "failed", state, summary = %condition.summary, "alert");
            s.outbox.push(Pending {
                alert: name,
                state: state.into(),
                condition,
                tries: 0,
                next_ms: now,
            });
        }
    }
    changed
}

/// What of a provider expires within 14 days, and when: a delegated sign-in ageing out,
/// the client certificate, or the client secret (`client_secret_expires`).
fn expiring(
    p: &crate::snapshot::ProviderView,
    config: &Config,
    now: u64,
) -> Option<(&'static str, u64)> {
    let soon = |t: u64| t <= now + EXPIRY_AHEAD_MS;
    if let Some(t) = p
        .token
        .as_ref()
        .and_then(|t| t.sign_in.as_ref())
        .map(|g| g.ages_out_ms)
        && soon(t)
    {
        return Some(("the delegated sign-in ages out", t));
    }
    let (what, t) = credential_ends(config.provider(&p.name)?)?;
    soon(t).then_some((what, t))
}

/// When a provider's own credential ends (ms), the earliest of its app's client
/// certificate (`notAfter`), its client secret (`client_secret_expires`) and the TLS
/// client certificate it presents upstream (`tls_client_cert`), with what it is.
pub fn credential_ends(p: &crate::config::ProviderConfig) -> Option<(&'static str, u64)> {
    let o = p.oauth2();
    let cert = o
        .and_then(|o| o.certificate_file.as_deref())
        .and_then(certificate_not_after)
        .map(|t| ("the client certificate expires", t));
    let secret = o
        .and_then(|o| o.client_secret_expires.as_deref())
        .and_then(|d| crate::time::parse_rfc3339(&format!("{d}T00:00:00Z")))
        .map(|t| ("the client secret expires", t));
    let tls = p
        .smtp()
        .and_then(|s| s.tls_client_cert.as_deref())
        .and_then(certificate_not_after)
        .map(|t| ("the TLS client certificate (tls_client_cert) expires", t));
    [cert, secret, tls]
        .into_iter()
        .flatten()
        .min_by_key(|(_, t)| *t)
}

/// The `notAfter` of a PEM certificate file (ms).
fn certificate_not_after(path: &std::path::Path) -> Option<u64> {
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let secs = cert.validity().not_after.timestamp();
    u64::try_from(secs).ok().map(|s| s * 1000)
}
