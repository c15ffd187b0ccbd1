//! Outcomes the store could not record. A delivery that reached the upstream but whose
//! outcome cannot be committed must never be started again while the store does not know
//! it went: the outcome is kept here (the message stays "in flight", so no scan picks it
//! up), the commit is retried with backoff, and no new delivery starts until every kept
//! outcome is on disk. Its place in the provider's limit windows stays taken: a copy that
//! went out counts. When the store commits again the outcomes are written, logged and
//! published as if they had just happened.

use std::sync::Arc;
use std::time::Duration;

use super::Distributor;
use crate::history::Attempt;
use crate::store::Mutation;

/// First wait after a failed commit of kept outcomes; it doubles up to [`MAX_BACKOFF`].
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between commit retries.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What to log, count and publish once an attempt's outcome is committed.
#[derive(Debug, Clone)]
pub(super) struct Finish {
    pub(super) provider: String,
    pub(super) deferrals: u32,
    pub(super) last: Option<Attempt>,
    pub(super) took: Duration,
    /// A notice mailgate made (bounce, delay): counted apart in the totals.
    pub(super) notice: bool,
    /// What watchers are told once it is committed: the message's id and status.
    pub(super) event: super::DeliveryEvent,
}

/// An attempt's outcome waiting for the store.
#[derive(Debug)]
pub(super) struct Unrecorded {
    pub(super) mutations: Vec<Mutation>,
    pub(super) finish: Finish,
}

impl Distributor {
    /// Logs, counts and publishes a committed outcome.
    pub(super) fn finished(&self, f: Finish) {
        // Logged once committed, so what the log says is what the history holds. Its
        // target names what it is, whichever module writes it.
        tracing::info!(
            target: "mailgate::delivery",
            id = %f.event.id,
            status = f.event.status.as_str(),
            provider = %f.provider,
            deferrals = f.deferrals,
            diagnosis = f.last.as_ref().and_then(|a| a.diagnosis.as_ref()).map(|d| d.code.as_str()),
            reply = f.last.as_ref().map(|a| a.reply.clone()),
            delay_ms = crate::time::duration_ms(f.took),
            "delivery"
        );
        self.count_outcome(
            &f.provider,
            f.event.status,
            f.last.as_ref(),
            f.took,
            f.notice,
        );
        let _ = self.events.send(f.event);
    }

    /// Keeps an outcome the store refused; the message stays in flight until it is written.
    pub(super) fn keep_unrecorded(&self, u: Unrecorded, error: &crate::store::StoreError) {
        tracing::error!(
            id = %u.finish.event.id,
            status = u.finish.event.status.as_str(),
            error = %error,
            "the outcome of a delivery cannot be recorded; it is kept in memory, no new delivery starts until the store commits again"
        );
        if let Ok(mut g) = self.unrecorded.lock() {
            g.push(u);
        }
    }

    /// Outcomes waiting for the store.
    pub fn unrecorded(&self) -> usize {
        self.unrecorded.lock().map_or(0, |g| g.len())
    }

    /// Tries to commit every kept outcome in one transaction. True when none is left.
    pub(super) async fn flush_unrecorded(self: &Arc<Self>) -> bool {
        // The kept outcomes stay listed (and counted) until their commit succeeds.
        let (n, mutations): (usize, Vec<Mutation>) = match self.unrecorded.lock() {
            Ok(g) => (
                g.len(),
                g.iter().flat_map(|u| u.mutations.iter().cloned()).collect(),
            ),
            Err(_) => return true,
        };
        if n == 0 {
            return true;
        }
        match self.store.write(mutations).await {
            Ok(()) => {
                let done: Vec<Unrecorded> = match self.unrecorded.lock() {
                    Ok(mut g) => g.drain(..n).collect(),
                    Err(_) => Vec::new(),
                };
                tracing::info!(
                    outcomes = done.len(),
                    "the store commits again: kept delivery outcomes recorded"
                );
                for u in done {
                    if let Ok(mut s) = self.in_flight.lock() {
                        s.remove(&u.finish.event.id);
                    }
                    self.finished(u.finish);
                }
                self.wake.notify_one();
                self.unrecorded() == 0
            }
            Err(e) => {
                tracing::warn!(outcomes = n, error = %e, "the store still cannot commit; delivery stays stopped");
                false
            }
        }
    }
}
