//! What an attempt's outcome counts: the metrics by provider and diagnosis, and the
//! totals `/status` shows (the applications' mail; notices apart).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Distributor;
use crate::history::Status;

impl Distributor {
    pub(super) fn count_deferred(&self, provider: &str, diagnosis: &str) {
        self.metrics
            .deferred
            .get_or_create(&crate::metrics::ProviderDiagnosis {
                provider: provider.to_string(),
                diagnosis: diagnosis.to_string(),
            })
            .inc();
    }

    pub(super) fn count_outcome(
        &self,
        provider: &str,
        status: Status,
        last: Option<&crate::history::Attempt>,
        took: Duration,
        notice: bool,
    ) {
        use crate::metrics::{ProviderDiagnosis, ProviderLabel};
        let m = &self.metrics;
        let label = ProviderLabel {
            provider: provider.to_string(),
        };
        m.delivery_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        let diagnosis = last
            .and_then(|a| a.diagnosis.as_ref())
            .map_or_else(|| "none".to_string(), |d| d.code.to_string());
        match status {
            Status::Sent | Status::Partial => {
                m.sent.get_or_create(&label).inc();
                // The totals count the applications' mail; notices apart.
                let total = if notice {
                    &m.totals.notices_sent
                } else if status == Status::Sent {
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
                if notice {
                    &m.totals.notices_failed
                } else {
                    &m.totals.failed
                }
                .fetch_add(1, Ordering::Relaxed);
            }
            Status::Deferred => self.count_deferred(provider, &diagnosis),
            Status::Queued | Status::Cancelled => {}
        }
    }
}
