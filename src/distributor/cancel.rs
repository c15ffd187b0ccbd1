//! Cancel: a queued or deferred message is not sent (Postfix's `postsuper -d`). The
//! message keeps its record (status `cancelled`, who and when) until retention removes
//! it; one being sent right now cannot be stopped and is refused.

use super::{DeliveryEvent, Distributor};
use crate::history::{Cancellation, Record, Status};
use crate::store::{Mutation, StoreError};

/// Why a message could not be cancelled.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No such message.
    #[error("no message {0}")]
    NotFound(String),
    /// It is being handed to its provider now.
    #[error("message {0} is being sent right now and cannot be cancelled")]
    Sending(String),
    /// It has already ended.
    #[error("message {0} is already {1}; only a queued or deferred message can be cancelled")]
    Finished(String, &'static str),
    /// The store could not read or record it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Distributor {
    /// Cancels message `id` on behalf of `by`; the record as cancelled.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<Record, CancelError> {
        // The id is held in the in-flight set while the cancel runs, so the scheduler
        // cannot start it meanwhile (and a running attempt is seen).
        let claimed = self
            .in_flight
            .lock()
            .is_ok_and(|mut s| super::claim(&mut s, id, None));
        if !claimed {
            return Err(CancelError::Sending(id.to_string()));
        }
        let result = self.cancel_claimed(id, by).await;
        if let Ok(mut s) = self.in_flight.lock() {
            s.remove(id);
        }
        let record = result?;
        tracing::info!(id = %id, status = "cancelled", provider = %record.provider, by = %by, "cancelled");
        let _ = self.events.send(DeliveryEvent::of(&record));
        Ok(record)
    }

    async fn cancel_claimed(&self, id: &str, by: &str) -> Result<Record, CancelError> {
        let lookup = id.to_string();
        let mut record = self
            .store
            .blocking(move |s| s.record(&lookup))
            .await?
            .ok_or_else(|| CancelError::NotFound(id.to_string()))?;
        if record.status.is_finished() {
            return Err(CancelError::Finished(
                id.to_string(),
                record.status.as_str(),
            ));
        }
        let at = crate::time::Stamp::at_ms(self.now());
        for r in record
            .recipients
            .iter_mut()
            .filter(|r| !r.status.is_finished())
        {
            r.status = Status::Cancelled;
        }
        record.status = Status::Cancelled;
        record.next_attempt_at = None;
        record.waiting = None;
        record.cancelled = Some(Cancellation {
            at,
            by: by.to_string(),
        });
        self.store
            .write(vec![Mutation::Update {
                record: Box::new(record.clone()),
                due_ms: None,
            }])
            .await?;
        Ok(record)
    }
}
