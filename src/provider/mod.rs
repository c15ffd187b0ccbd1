//! Providers: where a committed message goes (an .eml outbox, an SMTP upstream, Microsoft
//! Graph). Each attempt ends in one typed [`Outcome`] carrying a diagnosis [`Code`]:
//! transient or permanent is decided here, at the provider boundary, and the distributor
//! acts on it. The code becomes words (explanation, fix) only where the history record is
//! written.

pub mod eml;
pub mod graph;
pub mod oauth2;
pub mod smtp;
pub mod stage;

use std::sync::Arc;

use crate::config::{KindSettings, ProviderConfig};
use crate::diagnosis::{self, Code};
use crate::secrets::SecretStore;

/// An error's text with its causes (each cause once).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// The envelope and bytes of one delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Message id.
    pub id: String,
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients still to deliver.
    pub rcpts: Vec<String>,
    /// The stored message (a large one is read from its file piece by piece).
    pub body: Arc<crate::store::Body>,
    /// Which of `rcpts` no header names (from the record; None for a record written
    /// before mailgate kept it: then the header is read again).
    pub blind: Option<Vec<String>>,
}

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Accepted upstream.
    Sent,
    /// Try again later.
    Transient,
    /// Refused for good.
    Permanent,
}

/// One recipient's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    /// The recipient.
    pub address: String,
    /// Its fate.
    pub fate: Fate,
    /// The upstream reply concerning it.
    pub reply: String,
    /// Why it failed, when it did.
    pub code: Option<Code>,
}

/// What one attempt achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted for every recipient.
    Sent {
        /// Upstream reply (or a local description).
        reply: String,
    },
    /// Nothing delivered; try again later.
    Transient {
        /// Upstream reply or local error.
        reply: String,
        /// Why.
        code: Code,
    },
    /// Nothing delivered; it never will be as it is.
    Permanent {
        /// Upstream reply or local error.
        reply: String,
        /// Why.
        code: Code,
    },
    /// Nothing delivered; the upstream says when to try again.
    Later {
        /// Upstream reply.
        reply: String,
        /// Why.
        code: Code,
        /// Try again after this long (Retry-After).
        after: std::time::Duration,
    },
    /// Recipients had different fates.
    PerRecipient {
        /// The reply to the data (or the first refusal when nothing was sent).
        reply: String,
        /// Every recipient of the attempt.
        results: Vec<RcptResult>,
    },
}

impl Outcome {
    /// The provider could not take the mail now (its connection, TLS or sign-in failed,
    /// it holds mail for a configuration reason, or its daily quota is spent): the code.
    /// Decided here once: it counts towards the circuit and moves the mail on in a chain.
    pub fn unavailable(&self) -> Option<Code> {
        match self {
            Outcome::Transient { code, .. } if code.moves_on() => Some(*code),
            _ => None,
        }
    }
}

/// What providers need besides their own configuration.
#[derive(Debug, Clone)]
pub struct ProviderContext {
    /// Our name in EHLO.
    pub hostname: String,
    /// Stored secrets.
    pub secrets: SecretStore,
    /// Keep upstream connections open for reuse (in fleet mode, within the node's idle
    /// fleet-wide leases: see `distributor/leases.rs`).
    pub reuse_connections: bool,
}

/// What a provider kind does. Each kind's file implements it, and [`Provider`] reaches
/// every kind only through it (the `each_kind!` match), so a new kind is its variant,
/// its file with this impl, and one arm in `each_kind!` and in `Provider::from_config`;
/// the compiler points at each.
pub(crate) trait Deliver {
    /// Attempts one delivery.
    async fn deliver(&self, d: &Delivery) -> Outcome;
    /// `mailgate verify`: signs in (or probes) without sending; what it proved, or the
    /// diagnosis code and the reply.
    async fn verify(&self) -> Result<String, (Code, String)>;
    /// The longest one try of an attempt can take when every step uses its whole bound.
    fn attempt_once(&self, d: &Delivery) -> std::time::Duration;
    /// The OAuth2 token source, for kinds that use one.
    fn oauth(&self) -> Option<&oauth2::TokenSource> {
        None
    }
    /// Keeps at most `keep` idle upstream connections (the others are ended).
    async fn keep_idle(&self, _keep: usize) {}
    /// Ends the idle connections (signed in with a sign-in that changed).
    async fn drop_idle(&self) {}
}

/// `$e` with `$p` bound to the kind inside `$provider`, whichever it is.
macro_rules! each_kind {
    ($provider:expr, $p:ident => $e:expr) => {
        match $provider {
            Provider::Eml($p) => $e,
            Provider::Smtp($p) => $e,
            Provider::Graph($p) => $e,
        }
    };
}

/// A configured provider.
#[derive(Debug)]
pub enum Provider {
    /// One .eml file per message.
    Eml(Box<eml::EmlProvider>),
    /// An SMTP submission server.
    Smtp(Box<smtp::SmtpProvider>),
    /// Microsoft Graph sendMail.
    Graph(Box<graph::GraphProvider>),
}

impl Provider {
    /// Builds the provider of a configuration entry.
    pub fn from_config(p: &ProviderConfig, ctx: &ProviderContext) -> Provider {
        match &p.settings {
            KindSettings::Eml(s) => Provider::Eml(Box::new(eml::EmlProvider::new(
                s.directory.clone().unwrap_or_else(|| "outbox".into()),
                p.step_timeout(),
            ))),
            KindSettings::Smtp(s) => {
                let mut s = smtp::SmtpProvider::new(p, s, &ctx.hostname, ctx.secrets.clone());
                s.set_reuse(ctx.reuse_connections);
                Provider::Smtp(Box::new(s))
            }
            KindSettings::Graph(s) => Provider::Graph(Box::new(graph::GraphProvider::new(
                p,
                s,
                ctx.secrets.clone(),
            ))),
        }
    }

    /// `mailgate verify`: signs in (or, for eml, writes a probe file) without sending;
    /// what it proved, or the diagnosis code and the reply.
    pub async fn verify(&self) -> Result<String, (diagnosis::Code, String)> {
        each_kind!(self, p => Deliver::verify(&**p).await)
    }

    /// Keeps at most `keep` idle upstream connections (the others are ended).
    pub async fn keep_idle(&self, keep: usize) {
        each_kind!(self, p => Deliver::keep_idle(&**p, keep).await)
    }

    /// The OAuth2 token source, for providers that use one.
    pub fn oauth(&self) -> Option<&oauth2::TokenSource> {
        each_kind!(self, p => Deliver::oauth(&**p))
    }

    /// After `oauth2 login` or `logout`: the token source forgets what it held and idle
    /// connections signed in with the old sign-in are closed.
    pub async fn oauth_changed(&self) {
        if let Some(o) = self.oauth() {
            o.reset();
        }
        each_kind!(self, p => Deliver::drop_idle(&**p).await)
    }

    /// The OAuth2 token's state, for providers that use one.
    pub fn token_status(&self) -> Option<oauth2::TokenStatus> {
        self.oauth().map(oauth2::TokenSource::status)
    }

    /// The longest one attempt can take when every step it may take uses its whole
    /// bound (each kind's [`Deliver::attempt_once`]), with one fresh try after a stale
    /// connection or a refused token, and a margin. An attempt still running past it is
    /// a bug: the distributor logs it with its stage and ends it.
    pub fn attempt_bound(&self, d: &Delivery) -> std::time::Duration {
        let once = each_kind!(self, p => Deliver::attempt_once(&**p, d));
        once * 2 + std::time::Duration::from_secs(5)
    }

    /// Attempts one delivery.
    pub async fn deliver(&self, d: &Delivery) -> Outcome {
        each_kind!(self, p => Deliver::deliver(&**p, d).await)
    }
}
