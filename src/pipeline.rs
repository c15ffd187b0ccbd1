//! The one door into the store: a protocol-free [`Submission`] (envelope, bytes, who
//! handed it in) from the SMTP listener, the admin API or the sendmail maildrop goes
//! through the message stage (identify, rewrite, fit, trace) and is committed durably
//! with its history record; the answer is its id or a [`SubmitError`]. Nothing here
//! knows SMTP: `smtp/` turns a `SubmitError` into a reply.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::config::{Config, Live};
use crate::history::{Recipient, Record};
use crate::message;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::time::now_ms;

/// How a submission came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The SMTP listener.
    Smtp {
        /// The client announced SMTPUTF8.
        smtputf8: bool,
        /// The session was inside TLS.
        tls: bool,
    },
    /// `POST /api/send` (the CLI's `send` and `test-email`).
    AdminApi,
    /// The sendmail door's maildrop, taken in by the daemon.
    Maildrop,
}

/// Who handed the message in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Network address (the local host for the maildrop).
    pub addr: SocketAddr,
    /// HELO/EHLO name, when it said one.
    pub helo: Option<String>,
    /// SMTP AUTH login.
    pub auth_login: Option<String>,
    /// The Unix user of a local submission (the maildrop file's owner): the record's
    /// client is then `local:NAME`.
    pub local_user: Option<String>,
}

/// One message handed in, before the message stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// How it came in.
    pub origin: Origin,
    /// Who handed it in.
    pub client: Client,
    /// Envelope sender (`""` for the null sender).
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
    /// The message bytes (CRLF line ends).
    pub raw: Vec<u8>,
    /// The longest line as the door measured it (None: not measured).
    pub longest_line: Option<usize>,
    /// The user named outright (admin API `send --as`), not identified.
    pub as_user: Option<String>,
    /// The provider named outright (admin API `--provider`).
    pub provider: Option<String>,
}

/// Why a submission was not committed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The message cannot be made to fit (a line that cannot be re-encoded): refused as
    /// it is.
    #[error("{0}")]
    Unfit(String),
    /// The store could not commit it; the sender should try again.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the door needs of the pipeline: hand in a submission, get its id once it is
/// durable. A trait so the SMTP session can be tested without a store.
pub trait Submit: Send + Sync + std::fmt::Debug {
    /// Commits the submission; the id only once it is on disk.
    fn submit(
        &self,
        s: Submission,
    ) -> Pin<Box<dyn Future<Output = Result<String, SubmitError>> + Send + '_>>;
}

/// Accepted mail's way into the store: the message stage, then the durable commit with
/// its history record; wakes the distributor.
#[derive(Debug)]
pub struct Pipeline {
    store: Store,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    live: Arc<Live>,
}

impl Submit for Pipeline {
    fn submit(
        &self,
        s: Submission,
    ) -> Pin<Box<dyn Future<Output = Result<String, SubmitError>> + Send + '_>> {
        Box::pin(self.commit(s))
    }
}

/// The `with` keyword of the Received header (RFC 3848).
fn protocol(origin: Origin, auth: bool) -> &'static str {
    match origin {
        Origin::AdminApi => "HTTP",
        Origin::Maildrop => "local",
        Origin::Smtp { smtputf8, tls } => match (smtputf8, tls, auth) {
            (true, true, true) => "UTF8SMTPSA",
            (true, true, false) => "UTF8SMTPS",
            (true, false, true) => "UTF8SMTPA",
            (true, false, false) => "UTF8SMTP",
            (false, true, true) => "ESMTPSA",
            (false, true, false) => "ESMTPS",
            (false, false, true) => "ESMTPA",
            (false, false, false) => "ESMTP",
        },
    }
}

impl Pipeline {
    /// A pipeline over `store` with the configuration in force `live`; `wake` is
    /// notified after every commit.
    pub fn new(
        store: Store,
        wake: Arc<Notify>,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        Pipeline {
            store,
            metrics,
            wake,
            live,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.live.get()
    }

    /// The configuration in force, to replace on reload.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs the message stage and commits the message durably; returns its id only once
    /// it is on disk.
    pub async fn commit(&self, s: Submission) -> Result<String, SubmitError> {
        let config = self.config();
        let now = now_ms();
        let id = ulid::Ulid::new().to_string();
        let helo = s.client.helo.clone().unwrap_or_default();
        let facts = message::Facts {
            id: &id,
            now_ms: now,
            hostname: &config.smtp.hostname,
            helo: &helo,
            client_ip: s.client.addr.ip().to_string(),
            protocol: protocol(s.origin, s.client.auth_login.is_some()),
            auth_login: s.client.auth_login.as_deref(),
            mail_from: &s.mail_from,
            rcpts: &s.rcpts,
            as_user: s.as_user.as_deref(),
            provider: s.provider.as_deref(),
            longest_line: s.longest_line,
        };
        let p = message::process(s.raw, &facts, &config).map_err(SubmitError::Unfit)?;
        let pinned = s.provider.is_some();
        let recipients = queued_recipients(&s.rcpts, &p, pinned, &config);
        let client = match &s.client.local_user {
            Some(u) => format!("local:{u}"),
            None => s.client.addr.to_string(),
        };
        let mut record = Record {
            helo,
            auth_login: s.client.auth_login.clone(),
            user: p.plan.user.clone(),
            sender: p.plan.envelope_from.clone(),
            // The message keeps its subject whole; the history at most 998 bytes of it.
            subject: p
                .subject
                .map(|s| crate::text::clipped(&s, crate::text::MAX_SUBJECT)),
            message_id: Some(p.message_id),
            size: p.raw.len() as u64,
            pinned,
            ..Record::queued(
                id.clone(),
                crate::time::Stamp::at_ms(now),
                client,
                s.mail_from.clone(),
                recipients,
            )
        };
        // The record's provider is its first recipient's: the one its first attempt
        // goes to.
        record.provider = record
            .recipients
            .first()
            .and_then(|r| r.provider.clone())
            .unwrap_or_else(|| p.plan.provider.clone());
        let (nrcpt, size) = (record.recipients.len(), record.size);
        let record_provider = record.provider.clone();
        self.store.insert(p.raw, record, now).await?;
        self.metrics.accepted.inc();
        self.wake.notify_one();
        tracing::info!(
            id = %id,
            client = %s.client.addr,
            from = %s.mail_from,
            sender = %p.plan.envelope_from,
            user = p.plan.user.as_deref(),
            nrcpt,
            size,
            provider = %record_provider,
            status = "queued",
            "accepted"
        );
        Ok(id)
    }
}

/// Each recipient queued for the first provider of its chain (or the pinned provider),
/// and whether it is blind (named in no header field).
fn queued_recipients(
    rcpts: &[String],
    p: &message::Processed,
    pinned: bool,
    config: &Config,
) -> Vec<Recipient> {
    let chains = crate::config::Chains::from_config(config);
    rcpts
        .iter()
        .map(|a| {
            let provider = if pinned {
                p.plan.provider.clone()
            } else {
                chains.chain(p.plan.user.as_deref(), a).0[0].clone()
            };
            Recipient::queued(
                a.clone(),
                Some(!p.named.contains(&a.to_ascii_lowercase())),
                Some(provider),
            )
        })
        .collect()
}
