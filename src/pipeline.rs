//! Accepted mail's way into the store: who sent it, the From rewrite, long lines, the
//! trace headers, and the durable commit with its history record (before the 250).

use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use crate::config::Config;
use crate::history::{Recipient, Record, Status};
use crate::smtp::policy::Policy;
use crate::smtp::session::Transaction;
use crate::store::{Store, StoreError};
use crate::time::{now_ms, rfc3339};
use crate::{message, smtp, status};

/// Why a finished DATA was not acknowledged.
#[derive(Debug)]
pub enum SubmitError {
    /// The message is refused as it is (e.g. a line that cannot be re-encoded).
    Refused(smtp::reply::Reply),
    /// The store could not commit it; the client should try again.
    Store(StoreError),
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        SubmitError::Store(e)
    }
}

/// Accepted mail's way into the store: prepares the message, commits it with its
/// history record, and wakes the distributor.
#[derive(Debug)]
pub struct Pipeline {
    store: Store,
    metrics: Arc<status::metrics::Metrics>,
    wake: Arc<Notify>,
    config: RwLock<Arc<Config>>,
    policy: RwLock<Arc<Policy>>,
}

impl Pipeline {
    /// A pipeline over `store` for `config`; `wake` is notified after every commit.
    pub fn new(
        store: Store,
        wake: Arc<Notify>,
        config: Arc<Config>,
        space: Arc<dyn smtp::policy::SpaceCheck>,
        metrics: Arc<status::metrics::Metrics>,
    ) -> Pipeline {
        let policy = Arc::new(Policy::from_config(&config, space));
        Pipeline {
            store,
            metrics,
            wake,
            config: RwLock::new(config),
            policy: RwLock::new(policy),
        }
    }

    /// The session policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Puts a new configuration in force for the next session and message.
    pub fn set_config(&self, config: Arc<Config>) {
        let space = self.policy().space.clone();
        space.set_min_free(config.store.min_free_space.0);
        let policy = Arc::new(Policy::from_config(&config, space));
        if let Ok(mut g) = self.policy.write() {
            *g = policy;
        }
        if let Ok(mut g) = self.config.write() {
            *g = config;
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &status::metrics::Metrics {
        &self.metrics
    }

    /// Identifies the sender, rewrites From, fits long lines, adds the trace headers
    /// and commits the message durably; returns its id only once it is on disk.
    pub async fn submit(&self, txn: Transaction) -> Result<String, SubmitError> {
        let config = self.config();
        let now = now_ms();
        let id = ulid::Ulid::new().to_string();
        let mut data = txn.data.bytes;
        let header_from = message::rewrite::header_from(&data);
        let mut plan = message::identify::plan_for(
            &config,
            txn.as_user.as_deref(),
            txn.auth_login.as_deref(),
            &txn.mail_from,
            header_from.as_deref(),
        );
        if let Some(p) = &txn.provider {
            plan.provider = p.clone();
        }
        if let Some(target) = &plan.target {
            message::rewrite::rewrite_in_place(
                &mut data,
                &message::rewrite::Rewrite {
                    target: target.clone(),
                    sender: plan.on_behalf_of.clone(),
                    reply_to_original: config.rewrite.reply_to_original,
                },
            );
        }
        if message::longlines::longest_line(&data) > message::longlines::MAX_LINE {
            data = message::longlines::encode(&data)
                .map_err(|why| SubmitError::Refused(smtp::reply::Reply::new(554, "5.6.0", why)))?;
        }
        let protocol = match (txn.smtputf8, txn.tls, txn.auth_login.is_some()) {
            (true, true, true) => "UTF8SMTPSA",
            (true, true, false) => "UTF8SMTPS",
            (true, false, true) => "UTF8SMTPA",
            (true, false, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPSA",
            (false, true, false) => "ESMTPS",
            (false, false, true) => "ESMTPA",
            (false, false, false) => "ESMTP",
        };
        let prepared = message::prepare(
            data,
            &message::TraceInfo {
                id: &id,
                hostname: &config.smtp.hostname,
                helo: &txn.helo,
                client_ip: txn.peer.ip().to_string(),
                protocol,
                single_rcpt: (txn.rcpts.len() == 1).then(|| txn.rcpts[0].as_str()),
                now_ms: now,
            },
        );
        let record = Record {
            id: id.clone(),
            status: Status::Queued,
            received_at: rfc3339(now),
            client: txn.peer.to_string(),
            helo: txn.helo.clone(),
            auth_login: txn.auth_login.clone(),
            user: plan.user.clone(),
            original_sender: txn.mail_from.clone(),
            sender: plan.envelope_from.clone(),
            recipients: txn
                .rcpts
                .iter()
                .map(|a| Recipient {
                    address: a.clone(),
                    status: Status::Queued,
                    reply: None,
                })
                .collect(),
            subject: prepared.subject,
            message_id: Some(prepared.message_id),
            size: prepared.raw.len() as u64,
            provider: plan.provider.clone(),
            deferrals: 0,
            throttle_deferrals: 0,
            sent_at: None,
            next_attempt_at: None,
            attempts: Vec::new(),
        };
        let (nrcpt, size) = (record.recipients.len(), record.size);
        self.store.insert(prepared.raw, record, now).await?;
        self.metrics.accepted.inc();
        self.wake.notify_one();
        tracing::info!(
            id = %id,
            client = %txn.peer,
            from = %txn.mail_from,
            sender = %plan.envelope_from,
            user = plan.user.as_deref(),
            nrcpt,
            size,
            provider = %plan.provider,
            status = "queued",
            "accepted"
        );
        Ok(id)
    }
}
