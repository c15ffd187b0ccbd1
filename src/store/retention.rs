//! History retention: finished records older than `history.retention_days` are deleted
//! with their bodies, at start and then hourly, in small batches so a long prune never
//! holds up the writer (submissions commit between the batches). Unfinished records
//! (queued, deferred) are never deleted.

use std::time::Duration;

use tokio::sync::watch;

use super::{Mutation, Store, StoreError};
use crate::time::{DAY_MS, duration_ms, now_ms};

/// Finished records deleted per transaction.
const PRUNE_BATCH: usize = 200;

/// How often retention runs while the daemon runs.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

impl Store {
    /// Deletes finished records (sent, partial, failed) received more than `keep` before
    /// `now` (ms), with their message bodies, in bounded batches. Also forgets provider
    /// sends older than any limit window. Returns how many records went.
    pub async fn prune(&self, keep: Duration, now: u64) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(duration_ms(keep));
        let mut total = 0;
        loop {
            let ids = self
                .blocking(move |s| s.finished_before(cutoff, PRUNE_BATCH))
                .await?;
            if ids.is_empty() {
                break;
            }
            let n = ids.len();
            self.write(ids.into_iter().map(|id| Mutation::Delete { id }).collect())
                .await?;
            total += n;
            if n < PRUNE_BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.write(vec![
            Mutation::PruneUsage {
                before: now.saturating_sub(DAY_MS),
            },
            // The chart shows 30 days; a day more is kept for the partial first one.
            Mutation::PruneTally {
                before: now.saturating_sub(31 * DAY_MS),
            },
        ])
        .await?;
        Ok(total)
    }
}

/// Runs [`Store::prune`] at start and then every [`RETENTION_INTERVAL`] until `shutdown`
/// turns true. A failed run is logged and tried again at the next interval.
pub async fn retention_task(store: Store, keep: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match store.prune(keep, now_ms()).await {
            Ok(n) => tracing::info!(
                deleted = n,
                retention_days = keep.as_secs() / 86_400,
                "history retention ran"
            ),
            Err(e) => {
                tracing::error!(error = %e, "history retention failed; will try again in an hour")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
