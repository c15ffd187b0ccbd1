//! The smtp provider: relays the stored bytes to a submission server with lettre's async
//! connection, speaking MAIL, RCPT and DATA itself so every recipient gets its own
//! answer. STARTTLS is required when configured (never a plain-text fallback); a
//! provider with a username must authenticate (AUTH PLAIN or LOGIN); without one it never
//! does. Connections are pooled (at most `max_connections`) and reused across messages.
//! Every failure is decided here, once, into an [`Outcome`] with a diagnosis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::Mechanism;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use tokio::sync::{Mutex, Semaphore};

mod body;
mod connect;
mod failure;
mod pool;
pub mod tls;
mod transaction;
mod wire;

use super::oauth2::TokenSource;
use super::stage::{self, CLOSE_WAIT};
use super::{Delivery, Fate, Outcome, RcptResult};
use crate::config::{ProviderConfig, SmtpSettings, TlsMode};
use crate::diagnosis::Code;
use crate::secrets::{SecretError, SecretStore, provider_password};
use crate::store::Body;
use body::{send_body, unreadable};
pub use failure::Failure;
use failure::{error_chain, no_answer, response_text, timed};
use pool::{close, close_in_place, quit, reset};

/// An idle connection is reused only this long; older ones are closed.
const IDLE_REUSE: Duration = Duration::from_secs(30);

/// An upstream connection, and what its server offers that lettre does not keep.
struct Conn {
    smtp: AsyncSmtpConnection,
    /// The server offers PIPELINING (RFC 2920): MAIL, every RCPT and DATA go in one
    /// write and their replies are read in order, two round trips a message instead of
    /// three or more.
    pipelining: bool,
}

impl std::ops::Deref for Conn {
    type Target = AsyncSmtpConnection;
    fn deref(&self) -> &AsyncSmtpConnection {
        &self.smtp
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AsyncSmtpConnection {
        &mut self.smtp
    }
}

/// Whether a server's greeting and EHLO reply offer PIPELINING (a `250` line naming it).
fn offers_pipelining(heard: &[u8]) -> bool {
    String::from_utf8_lossy(heard).lines().any(|l| {
        l.get(..4).is_some_and(|c| c == "250-" || c == "250 ")
            && l[4..]
                .split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
    })
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// An upstream SMTP submission server.
pub struct SmtpProvider {
    /// The provider's name (its stored password's key).
    name: String,
    settings: SmtpSettings,
    host: String,
    port: u16,
    timeout: Duration,
    hello: ClientId,
    secrets: SecretStore,
    oauth: Option<TokenSource>,
    pool: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    opened: AtomicU64,
    /// The last TLS session (version, cipher, certificate), for `verify`.
    last_tls: std::sync::Mutex<Option<String>>,
    /// Keep connections for reuse (off for the CLI's one-shot sends).
    reuse: bool,
}

impl std::fmt::Debug for SmtpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpProvider")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn valid_envelope_address(a: &str) -> bool {
    !a.chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c.is_whitespace())
}

/// One trailing CRLF removed, because lettre ends the data with CRLF . CRLF itself. Every
/// door stores CRLF line ends (`message::process`), so the body is borrowed as stored;
/// only a message stored by an older mailgate (its admin API kept bare LFs) is copied
/// with CRLF, since lettre dot-stuffs only after CRLF.
pub fn wire_body(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match crate::message::crlf_normalized(raw) {
        std::borrow::Cow::Borrowed(b) => b.strip_suffix(b"\r\n").unwrap_or(b).into(),
        std::borrow::Cow::Owned(mut v) => {
            if v.ends_with(b"\r\n") {
                v.truncate(v.len() - 2);
            }
            v.into()
        }
    }
}

impl SmtpProvider {
    /// A provider for `config`; EHLO names `hostname`.
    pub fn new(
        config: &ProviderConfig,
        settings: &SmtpSettings,
        hostname: &str,
        secrets: SecretStore,
    ) -> SmtpProvider {
        SmtpProvider {
            host: settings.host().unwrap_or_default().to_string(),
            port: settings.port(),
            timeout: config.step_timeout(),
            hello: ClientId::Domain(hostname.to_string()),
            oauth: settings
                .oauth2
                .as_ref()
                .map(|_| TokenSource::new(config, secrets.clone())),
            secrets,
            pool: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.common.max_connections.max(1))),
            opened: AtomicU64::new(0),
            last_tls: std::sync::Mutex::new(None),
            reuse: true,
            settings: settings.clone(),
            name: config.name.get_ref().clone(),
        }
    }

    /// How long one step of an exchange may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The OAuth2 token source, when the provider uses XOAUTH2.
    pub fn oauth(&self) -> Option<&TokenSource> {
        self.oauth.as_ref()
    }

    /// Connections opened since start (connection reuse is visible here).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Signs in without sending (connect, TLS, AUTH, QUIT); the text describes the
    /// server reached.
    pub async fn verify(&self) -> Result<String, Failure> {
        let conn = self.connect().await?;
        let info = conn.server_info();
        let offered: Vec<&str> = [
            (Mechanism::Plain, "PLAIN"),
            (Mechanism::Login, "LOGIN"),
            (Mechanism::Xoauth2, "XOAUTH2"),
        ]
        .into_iter()
        .filter(|(m, _)| info.supports_auth_mechanism(*m))
        .map(|(_, n)| n)
        .collect();
        let offered = if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(" ")
        };
        // The mechanism lettre picks: the first of ours that the server offers.
        // With OAuth2 the XOAUTH2 user is the username, or a service account's subject.
        let oauth_user = self
            .oauth
            .as_ref()
            .and_then(|o| Some((o.username()?, o.flow())));
        let used = match (oauth_user, &self.settings.username) {
            (Some((u, flow)), _) => format!(
                "signed in as {u} with XOAUTH2 (OAuth2 flow {})",
                flow.as_str()
            ),
            (None, Some(u)) => {
                if info.supports_auth_mechanism(Mechanism::Plain) {
                    format!("signed in as {u} with PLAIN")
                } else {
                    format!("signed in as {u} with LOGIN")
                }
            }
            _ if self.settings.tls_client_cert.is_some() => {
                "no sign-in (the client certificate identifies mailgate)".to_string()
            }
            _ => "no sign-in (no username)".to_string(),
        };
        quit(conn).await;
        let tls = match self.settings.tls {
            TlsMode::Starttls | TlsMode::Tls => {
                let how = if self.settings.tls == TlsMode::Tls {
                    "implicit TLS"
                } else {
                    "STARTTLS"
                };
                let sess = self
                    .last_tls
                    .lock()
                    .ok()
                    .and_then(|g| g.clone())
                    .unwrap_or_default();
                format!("{how}, {sess}")
            }
            TlsMode::None => "no TLS (tls = \"none\")".to_string(),
        };
        let mut said = format!(
            "{}:{}: connected; {tls}; AUTH offered: {offered}; {used}",
            self.host, self.port
        );
        if let Some(path) = &self.settings.tls_client_cert {
            let pem = tokio::fs::read(path).await.unwrap_or_default();
            if let Some((subject, issuer, end)) = tls::summary_of(&pem) {
                said.push_str(&format!(
                    "; client certificate presented: subject {subject}, issuer {issuer}, valid until {end}"
                ));
            }
        }
        Ok(said)
    }

    /// Delivers one message.
    pub async fn deliver(&self, d: &Delivery) -> Outcome {
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return Failure::local(Code::Unknown, "provider closed").into_outcome();
        };
        for a in std::iter::once(&d.from).chain(d.rcpts.iter()) {
            if !valid_envelope_address(a) {
                return Outcome::Permanent {
                    reply: format!("invalid envelope address {a:?}"),
                    code: Code::Unknown,
                };
            }
        }
        let (mut conn, reused) = match self.checkout().await {
            Ok(c) => c,
            Err(f) => return f.into_outcome(),
        };
        let mut result = self.transact(&mut conn, d).await;
        if reused && matches!(&result, Err(f) if f.is_broken()) {
            // The idle connection went stale; one fresh try.
            drop(conn);
            conn = match self.connect().await {
                Ok(c) => c,
                Err(f) => return f.into_outcome(),
            };
            result = self.transact(&mut conn, d).await;
        }
        self.finish(conn, result).await
    }

    /// After a transaction: a usable connection goes back to the pool (reset after a
    /// refusal), a broken one is closed.
    async fn finish(&self, mut conn: Conn, result: Result<Outcome, Failure>) -> Outcome {
        match result {
            Ok(outcome) => {
                self.checkin(conn).await;
                outcome
            }
            // A server that stopped answering gets no QUIT: the socket is dropped. So
            // does one inside a body that could not be read: anything written now would
            // be more data, and the message must never be ended.
            Err(f)
                if f.is_broken()
                    && matches!(f.code, Code::ConnectionFailed | Code::StoreDamaged) =>
            {
                drop(conn);
                f.into_outcome()
            }
            Err(f) if f.is_broken() => {
                close(conn).await;
                f.into_outcome()
            }
            Err(f) => {
                if reset(&mut conn, self.timeout).await {
                    self.checkin(conn).await;
                } else {
                    close(conn).await;
                }
                f.into_outcome()
            }
        }
    }
}

impl super::Deliver for SmtpProvider {
    async fn deliver(&self, d: &Delivery) -> Outcome {
        SmtpProvider::deliver(self, d).await
    }

    async fn verify(&self) -> Result<String, (Code, String)> {
        SmtpProvider::verify(self)
            .await
            .map_err(|f| (f.code, f.reply))
    }

    /// connect, TLS, greeting, EHLO, STARTTLS, EHLO, token, AUTH; MAIL, RCPT each, DATA,
    /// the body, the final reply, RSET; QUIT.
    fn attempt_once(&self, d: &Delivery) -> Duration {
        let t = self.timeout;
        let rcpts = u32::try_from(d.rcpts.len()).unwrap_or(u32::MAX);
        t * 8 * 2
            + t * (4 + rcpts)
            + super::stage::body_bound(t, d.body.len() as usize)
            + CLOSE_WAIT * 2
    }

    fn oauth(&self) -> Option<&TokenSource> {
        SmtpProvider::oauth(self)
    }

    async fn keep_idle(&self, keep: usize) {
        SmtpProvider::keep_idle(self, keep).await;
    }

    async fn drop_idle(&self) {
        SmtpProvider::drop_idle(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_body_normalises_and_strips_one_crlf() {
        assert_eq!(&*wire_body(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(&*wire_body(b"a\r\nb\r\n\r\n"), b"a\r\nb\r\n");
        assert_eq!(&*wire_body(b"a\nb\rc\r\n"), b"a\r\nb\r\nc");
        assert!(matches!(
            wire_body(b"a\r\nb\r\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
