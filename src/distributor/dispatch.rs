//! Dispatch: which due messages go now, which wait for their provider's limits, and
//! the bookkeeping of each attempt (record, limit windows, metrics, log line, event).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::throttle::{MAX_THROTTLE_DEFERRALS, Verdict};
use super::{DeliveryEvent, Distributor, Routing, apply_outcome, outcome};
use crate::history::{Diagnosis, Record, Status};
use crate::provider::{Delivery, Outcome};
use crate::store::{Mutation, StoreError};

impl Distributor {
    fn busy_providers(&self, routing: &Routing) -> HashSet<String> {
        self.providers.lock().map_or_else(
            |_| HashSet::new(),
            |map| {
                map.iter()
                    .filter(|(name, st)| st.in_flight >= routing.limits(name).1)
                    .map(|(name, _)| name.clone())
                    .collect()
            },
        )
    }

    /// Starts every due delivery its provider has room for; defers what its limits hold
    /// back. Returns ms until the next due message (None: wait for a wake-up).
    pub(super) async fn dispatch(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Option<u64> {
        let routing = self.routing();
        let busy = self.busy_providers(&routing);
        let this = self.clone();
        let limit = self.slots.available_permits() + 1;
        let now = self.now();
        // Due entries of providers with room, and their records, in one blocking read.
        let scan = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let in_flight = this.in_flight.lock().map(|s| s.clone()).unwrap_or_default();
            let entries = this.store.due_entries(limit, |id, provider| {
                in_flight.contains(id) || busy.contains(provider)
            })?;
            let mut out = Vec::new();
            for (due, id, _) in entries {
                if due > now {
                    out.push((due, None));
                    break;
                }
                out.push((due, this.store.record(&id)?));
            }
            Ok(out)
        })
        .await;
        let candidates = match scan {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the due index; retrying in 1s");
                return Some(1000);
            }
            Err(_) => return Some(1000),
        };
        let mut held = Vec::new();
        let mut next = None;
        for (due, record) in candidates {
            let Some(record) = record else {
                next = Some(due.saturating_sub(now));
                break;
            };
            if record.status.is_finished() {
                held.push((record, None));
                continue;
            }
            let (limits, max_conn) = routing.limits(&record.provider);
            let pending = record
                .recipients
                .iter()
                .filter(|r| !r.status.is_finished())
                .count() as u32;
            // A message throttled ten times goes regardless (the attempt says so).
            let (verdict, bypassed) = {
                let Ok(mut map) = self.providers.lock() else {
                    break;
                };
                let st = map.entry(record.provider.clone()).or_default();
                if st.in_flight >= max_conn {
                    continue;
                }
                let (verdict, bypassed) = match st.windows.check(limits, now, pending) {
                    Verdict::Throttled(_)
                        if record.throttle_deferrals >= MAX_THROTTLE_DEFERRALS =>
                    {
                        (Verdict::Send, true)
                    }
                    v => (v, false),
                };
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
            match verdict {
                Verdict::Throttled(until) => {
                    self.metrics
                        .throttle_deferrals
                        .get_or_create(&crate::status::metrics::ProviderLabel {
                            provider: record.provider.clone(),
                        })
                        .inc();
                    tracing::info!(id = %record.id, provider = %record.provider, status = "deferred", reason = "per_minute_limit", until = %crate::time::rfc3339(until), "throttled");
                    held.push((outcome::throttle_deferral(record, until), Some(until)));
                }
                Verdict::DailyQuota(until) => {
                    self.count_deferred(&record.provider, "daily-quota");
                    tracing::info!(id = %record.id, provider = %record.provider, status = "deferred", diagnosis = "daily-quota", until = %crate::time::rfc3339(until), "daily quota reached");
                    held.push((
                        outcome::quota_deferral(record, now, until, limits.per_day),
                        Some(until),
                    ));
                }
                Verdict::Send => {
                    let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                        self.settle(&record.provider, &record.id, 0, None);
                        break;
                    };
                    if let Ok(mut s) = self.in_flight.lock() {
                        s.insert(record.id.clone());
                    }
                    let this = self.clone();
                    tasks.spawn(async move { this.deliver(record, permit, now, bypassed).await });
                }
            }
        }
        if !held.is_empty() {
            let events: Vec<DeliveryEvent> = held
                .iter()
                .map(|(r, _)| DeliveryEvent {
                    id: r.id.clone(),
                    status: r.status,
                })
                .collect();
            let mutations = held
                .into_iter()
                .map(|(r, due)| Mutation::Update {
                    record: Box::new(r),
                    due_ms: due,
                })
                .collect();
            if let Err(e) = self.store.write(mutations).await {
                tracing::error!(error = %e, "cannot record deferrals; retrying in 1s");
                return Some(1000);
            }
            for ev in events {
                let _ = self.events.send(ev);
            }
            return Some(0); // look again: the next due time has changed
        }
        next
    }

    /// Gives back or confirms a dispatched send's place in its provider's windows.
    fn settle(&self, provider: &str, id: &str, sent_rcpts: u32, error: Option<String>) {
        if let Ok(mut map) = self.providers.lock() {
            let st = map.entry(provider.to_string()).or_default();
            st.windows.settle(id, sent_rcpts);
            st.in_flight = st.in_flight.saturating_sub(1);
            if error.is_some() {
                st.last_error = error;
            }
        }
    }

    async fn deliver(
        self: Arc<Self>,
        record: Record,
        _permit: OwnedSemaphorePermit,
        at: u64,
        bypassed: bool,
    ) {
        let (id, provider) = (record.id.clone(), record.provider.clone());
        let (sent, error) = match self.attempt(record, at, bypassed).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(id = %id, error = %e, "delivery bookkeeping failed; the message stays queued");
                (0, None)
            }
        };
        self.settle(&provider, &id, sent, error);
        if let Ok(mut s) = self.in_flight.lock() {
            s.remove(&id);
        }
        self.wake.notify_one();
    }

    /// One attempt; returns the recipients sent and the failure reply, if any.
    async fn attempt(
        &self,
        record: Record,
        at: u64,
        bypassed: bool,
    ) -> Result<(u32, Option<String>), StoreError> {
        let raw = {
            let store = self.store.clone();
            let id = record.id.clone();
            tokio::task::spawn_blocking(move || store.message(&id))
                .await
                .map_err(|e| StoreError::Io(e.to_string()))??
        };
        let Some(raw) = raw else {
            return Ok((0, None));
        };
        let routing = self.routing();
        let delivery = Delivery {
            id: record.id.clone(),
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
                    code: "provider-config".into(),
                    explanation: format!(
                        "The message is routed to provider {:?}, which is not in the configuration",
                        record.provider
                    ),
                    fix: "Add the provider back to the configuration, or route the user elsewhere, and reload".into(),
                },
            },
        };
        let was_sent = |r: &Record| {
            r.recipients
                .iter()
                .filter(|x| x.status == Status::Sent)
                .count()
        };
        let sent_before = was_sent(&record);
        let (mut record, due) = apply_outcome(record, outcome, &routing.retry, self.now());
        if bypassed && let Some(a) = record.attempts.last_mut() {
            a.note = Some(format!(
                "sent regardless of the per-minute limit after {MAX_THROTTLE_DEFERRALS} throttle deferrals"
            ));
        }
        let sent = u32::try_from(was_sent(&record) - sent_before).unwrap_or(u32::MAX);
        let last = record.attempts.last().cloned();
        let error = last
            .as_ref()
            .filter(|a| a.diagnosis.is_some())
            .map(|a| a.reply.clone());
        let (id, status, provider, deferrals) = (
            record.id.clone(),
            record.status,
            record.provider.clone(),
            record.deferrals,
        );
        let mut mutations = vec![Mutation::Update {
            record: Box::new(record),
            due_ms: due,
        }];
        if sent > 0 {
            mutations.push(Mutation::Usage {
                provider: provider.clone(),
                at,
                id: id.clone(),
                rcpts: sent,
            });
        }
        self.store.write(mutations).await?;
        // Logged once committed, so what the log says is what the history holds.
        tracing::info!(
            id = %id,
            status = status.as_str(),
            provider = %provider,
            deferrals,
            diagnosis = last.as_ref().and_then(|a| a.diagnosis.as_ref()).map(|d| d.code.clone()),
            reply = last.as_ref().map(|a| a.reply.clone()),
            delay_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "delivery"
        );
        self.count_outcome(&provider, status, last.as_ref(), started.elapsed());
        let _ = self.events.send(DeliveryEvent { id, status });
        Ok((sent, error))
    }

    fn count_deferred(&self, provider: &str, diagnosis: &str) {
        self.metrics
            .deferred
            .get_or_create(&crate::status::metrics::ProviderDiagnosis {
                provider: provider.to_string(),
                diagnosis: diagnosis.to_string(),
            })
            .inc();
    }

    fn count_outcome(
        &self,
        provider: &str,
        status: Status,
        last: Option<&crate::history::Attempt>,
        took: Duration,
    ) {
        use crate::status::metrics::{ProviderDiagnosis, ProviderLabel};
        let m = &self.metrics;
        let label = ProviderLabel {
            provider: provider.to_string(),
        };
        m.delivery_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        let diagnosis = last
            .and_then(|a| a.diagnosis.as_ref())
            .map_or_else(|| "none".to_string(), |d| d.code.clone());
        match status {
            Status::Sent | Status::Partial => {
                m.sent.get_or_create(&label).inc();
                let total = if status == Status::Sent {
                    &m.totals.sent
                } else {
                    &m.totals.partial
                };
                total.fetch_add(1, Ordering::Relaxed);
            }
            Status::Failed => {
                m.failed
                    .get_or_create(&ProviderDiagnosis {
                        provider: provider.to_string(),
                        diagnosis,
                    })
                    .inc();
                m.totals.failed.fetch_add(1, Ordering::Relaxed);
            }
            Status::Deferred => self.count_deferred(provider, &diagnosis),
            Status::Queued => {}
        }
    }
}
