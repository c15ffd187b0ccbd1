//! The smtp provider: relays the stored bytes to a submission server with lettre's async
//! connection, speaking MAIL, RCPT and DATA itself so every recipient gets its own
//! answer. STARTTLS is required when configured (never a plain-text fallback); a
//! provider with a username must authenticate (AUTH PLAIN or LOGIN); without one it never
//! does. Connections are pooled (at most `max_connections`) and reused across messages.
//! Every failure is decided here, once, into an [`Outcome`] with a diagnosis.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::{ClientId, Extension};
use tokio::sync::{Mutex, Semaphore};

mod failure;
pub mod tls;

use super::diagnosis::Code;
use super::oauth2::TokenSource;
use super::stage::{self, CLOSE_WAIT};
use super::{Delivery, Fate, Outcome, RcptResult};
use crate::config::{ProviderConfig, TlsMode};
use crate::secrets::{SecretError, SecretStore, provider_password};
use crate::store::Body;
pub use failure::Failure;
use failure::{error_chain, no_answer, response_text, timed};

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
    config: ProviderConfig,
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
    pub fn new(config: &ProviderConfig, hostname: &str, secrets: SecretStore) -> SmtpProvider {
        let port = config.smtp_port();
        SmtpProvider {
            host: config.host.clone().unwrap_or_default(),
            port,
            timeout: config.step_timeout(),
            hello: ClientId::Domain(hostname.to_string()),
            oauth: config
                .oauth2
                .as_ref()
                .map(|_| TokenSource::new(config, secrets.clone())),
            secrets,
            pool: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.max_connections.max(1))),
            opened: AtomicU64::new(0),
            last_tls: std::sync::Mutex::new(None),
            reuse: true,
            config: config.clone(),
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

    /// The TLS verifier and client configuration (ca_file read now, so a fixed file takes
    /// effect at the next connection).
    fn tls_setup(&self) -> Result<(Arc<tls::Trust>, Arc<rustls::ClientConfig>), Failure> {
        let config_err = |m: String| Failure::local(Code::ProviderConfig, m);
        let pem = match &self.config.ca_file {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read(path)
                    .map_err(|e| config_err(format!("ca_file {}: {e}", path.display())))?,
            )),
            None => None,
        };
        let pin = match &self.config.tls_fingerprint {
            Some(f) => Some(crate::config::parse_fingerprint(f).map_err(config_err)?),
            None => None,
        };
        let trust = Arc::new(
            tls::Trust::new(pem.as_ref().map(|(n, p)| (n.as_str(), p.as_slice())), pin)
                .map_err(config_err)?,
        );
        let cc = tls::client_config(trust.clone())
            .map_err(|e| config_err(format!("TLS settings: {e}")))?;
        Ok((trust, cc))
    }

    /// The TLS handshake over `tcp`, verified by [`tls::Trust`]; a refused certificate is
    /// `tls-certificate` with its cause, subject, issuer, fingerprint and fix.
    async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        prefix: Vec<u8>,
    ) -> Result<tls::Wire, Failure> {
        let target = format!("{}:{}", self.host, self.port);
        let (trust, cc) = self.tls_setup()?;
        let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
            Failure::local(
                Code::ProviderConfig,
                format!("host {:?} is not a valid TLS server name: {e}", self.host),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(cc);
        stage::enter("TLS handshake");
        match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => {
                let wire = tls::Wire::tls(s, prefix);
                let sess = wire.session();
                let seen = trust.take_seen();
                if let Ok(mut g) = self.last_tls.lock() {
                    *g = Some(format!(
                        "{}, {}; certificate {}",
                        sess.version,
                        sess.cipher,
                        seen.summary.unwrap_or_default()
                    ));
                }
                Ok(wire)
            }
            Ok(Err(e)) => match trust.take_seen().refusal {
                Some(why) => Err(Failure::local(
                    Code::TlsCertificate,
                    format!("TLS certificate of {target} refused: {why}"),
                )),
                None => Err(Failure::local(
                    Code::ConnectionFailed,
                    format!("TLS handshake with {target} failed: {}", error_chain(&e)),
                )),
            },
            Err(_) => Err(no_answer(
                &format!("TLS handshake with {target}"),
                self.timeout,
            )),
        }
    }

    /// The part of STARTTLS before the handshake, done by hand on the TCP stream (lettre
    /// cannot be given our verifier): greeting, EHLO, STARTTLS, 220. Each step is bounded
    /// by the provider's `timeout`.
    async fn plain_starttls(&self, tcp: &mut tokio::net::TcpStream) -> Result<(), Failure> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let target = format!("{}:{}", self.host, self.port);
        let t = self.timeout;
        let (r, mut w) = tcp.split();
        let mut r = BufReader::new(r);
        // One step: optionally a command, then the (multi-line) reply.
        let mut step =
            async |name: &'static str, command: Option<String>| -> Result<Vec<String>, Failure> {
                stage::enter(name);
                let exchange = async {
                    if let Some(c) = command {
                        w.write_all(c.as_bytes()).await?;
                    }
                    let mut lines = Vec::new();
                    loop {
                        let mut line = String::new();
                        // A reply line longer than 4 KB is not SMTP.
                        if (&mut r).take(4096).read_line(&mut line).await? == 0 {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "the server closed the connection",
                            ));
                        }
                        let last = line.as_bytes().get(3) != Some(&b'-');
                        lines.push(line.trim_end().to_string());
                        if last || lines.len() > 100 {
                            return Ok(lines);
                        }
                    }
                };
                match tokio::time::timeout(t, exchange).await {
                    Ok(Ok(lines)) => Ok(lines),
                    Ok(Err(e)) => Err(Failure::local(
                        Code::ConnectionFailed,
                        format!("{target}: {name}: {e}"),
                    )),
                    Err(_) => Err(no_answer(&format!("{target}: {name}"), t)),
                }
            };
        let greeting = step("greeting", None).await?;
        if !greeting.last().is_some_and(|l| l.starts_with("220")) {
            return Err(failure::from_text(&greeting.join(" "), "greeting"));
        }
        let ehlo = step("EHLO", Some(format!("EHLO {}\r\n", self.hello))).await?;
        if !ehlo.iter().any(|l| {
            l.get(4..)
                .is_some_and(|c| c.eq_ignore_ascii_case("STARTTLS"))
        }) {
            return Err(Failure::local(
                Code::StarttlsUnavailable,
                format!("{target} did not offer STARTTLS"),
            ));
        }
        let go = step("STARTTLS", Some("STARTTLS\r\n".into())).await?;
        if !go.last().is_some_and(|l| l.starts_with("220")) {
            return Err(failure::from_text(&go.join(" "), "STARTTLS"));
        }
        Ok(())
    }

    /// Opens a connection and signs in. With OAuth2, a token the server rejects is
    /// dropped and a fresh one tried once.
    async fn connect(&self) -> Result<Conn, Failure> {
        match self.connect_once().await {
            Err(f) if self.oauth.is_some() && f.code == Code::AuthFailed => {
                if let Some(o) = &self.oauth {
                    o.invalidate();
                }
                self.connect_once().await
            }
            other => other,
        }
    }

    /// Opens a connection: TCP (TCP_NODELAY), TLS as configured, EHLO, AUTH when a
    /// username is set (XOAUTH2 with `[provider.oauth2]`, else PLAIN or LOGIN).
    async fn connect_once(&self) -> Result<Conn, Failure> {
        let t = self.timeout;
        let target = format!("{}:{}", self.host, self.port);
        stage::enter("connect");
        let mut tcp = match tokio::time::timeout(
            t,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Failure::local(
                    Code::ConnectionFailed,
                    format!("cannot connect to {target}: {e}"),
                ));
            }
            Err(_) => {
                return Err(Failure::local(
                    Code::ConnectionFailed,
                    format!(
                        "connect: connection to {target} timed out after {}",
                        stage::words(t)
                    ),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        let heard: tls::Heard = Arc::new(std::sync::Mutex::new(Some(Vec::new())));
        let wire = match self.config.tls {
            TlsMode::None => tls::Wire::plain(tcp),
            TlsMode::Tls => self.handshake(tcp, Vec::new()).await?,
            TlsMode::Starttls => {
                self.plain_starttls(&mut tcp).await?;
                // lettre starts by reading a greeting; after STARTTLS the server sends
                // none, so the stream begins with one of ours.
                self.handshake(tcp, b"220 TLS established\r\n".to_vec())
                    .await?
            }
        };
        let stream: Box<dyn lettre::transport::smtp::client::AsyncTokioStream> =
            Box::new(wire.heard_by(heard.clone()));
        // After STARTTLS the greeting is ours: what lettre waits for is the EHLO reply.
        let hello_stage = if self.config.tls == TlsMode::Starttls {
            "EHLO"
        } else {
            "greeting and EHLO"
        };
        let smtp = timed(
            t,
            hello_stage,
            AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
        )
        .await?;
        // What the server said so far (greeting, EHLO reply); the wire records no more.
        let start = heard
            .lock()
            .ok()
            .and_then(|mut h| h.take())
            .unwrap_or_default();
        let mut conn = Conn {
            smtp,
            pipelining: offers_pipelining(&start),
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        if let Some((user, oauth)) = self
            .oauth
            .as_ref()
            .and_then(|o| Some((o.username()?.to_string(), o)))
        {
            stage::enter("OAuth2 token");
            let token = match oauth.token().await {
                Ok(t) => t,
                Err(e) => {
                    close(conn).await;
                    return Err(Failure::local(e.code, e.reply));
                }
            };
            if !conn
                .server_info()
                .supports_auth_mechanism(Mechanism::Xoauth2)
            {
                close(conn).await;
                return Err(Failure::local(
                    Code::AuthNotSupported,
                    format!("{target} does not offer AUTH XOAUTH2, which [provider.oauth2] needs"),
                ));
            }
            let creds = Credentials::new(user, token.expose().to_string());
            timed(t, "AUTH", conn.auth(&[Mechanism::Xoauth2], &creds))
                .await
                .map_err(Failure::ends_session)?;
        } else if let Some(user) = &self.config.username {
            let password = match provider_password(&self.config, &self.secrets) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    close(conn).await;
                    return Err(Failure::local(
                        Code::ProviderConfig,
                        "username is set but no password is configured (password, password_file, password_env or `mailgate password set`)",
                    ));
                }
                Err(SecretError::Undecryptable(p)) => {
                    close(conn).await;
                    return Err(Failure::local(
                        Code::PasswordUndecryptable,
                        format!(
                            "the stored password of provider {p:?} cannot be decrypted with this installation's key"
                        ),
                    ));
                }
                Err(e) => {
                    close(conn).await;
                    return Err(Failure::local(Code::ProviderConfig, e.to_string()));
                }
            };
            let info = conn.server_info();
            let offers_auth = [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
                .into_iter()
                .any(|m| info.supports_auth_mechanism(m));
            if !offers_auth {
                close(conn).await;
                return Err(Failure::local(
                    Code::AuthNotSupported,
                    format!("{target} offered no AUTH mechanism, but username is set"),
                ));
            }
            let creds = Credentials::new(user.clone(), password.expose().to_string());
            timed(
                t,
                "AUTH",
                conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
            )
            .await
            .map_err(Failure::ends_session)?;
        }
        Ok(conn)
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
        let used = match (oauth_user, &self.config.username) {
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
            _ => "no sign-in (no username)".to_string(),
        };
        quit(conn).await;
        let tls = match self.config.tls {
            TlsMode::Starttls | TlsMode::Tls => {
                let how = if self.config.tls == TlsMode::Tls {
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
        Ok(format!(
            "{}:{}: connected; {tls}; AUTH offered: {offered}; {used}",
            self.host, self.port
        ))
    }

    async fn checkout(&self) -> Result<(Conn, bool), Failure> {
        {
            let mut pool = self.pool.lock().await;
            while let Some(idle) = pool.pop() {
                if idle.since.elapsed() < IDLE_REUSE && !idle.conn.has_broken() {
                    return Ok((idle.conn, true));
                }
                tokio::spawn(close(idle.conn));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Closes the idle connections (their sign-in no longer holds).
    pub async fn drop_idle(&self) {
        let idle: Vec<Idle> = self.pool.lock().await.drain(..).collect();
        for i in idle {
            tokio::spawn(close(i.conn));
        }
    }

    /// Ends the idle connections beyond the newest `keep`, all at once, each QUIT
    /// awaited at most [`CLOSE_WAIT`] (so a fleet lease given back after this covers no
    /// open connection, and the caller waits no longer than one close).
    pub async fn keep_idle(&self, keep: usize) {
        let mut closing = tokio::task::JoinSet::new();
        {
            let mut pool = self.pool.lock().await;
            let over = pool.len().saturating_sub(keep);
            for i in pool.drain(..over) {
                closing.spawn(quit(i.conn));
            }
        }
        closing.join_all().await;
    }

    /// Whether connections are kept for reuse.
    pub fn set_reuse(&mut self, reuse: bool) {
        self.reuse = reuse;
    }

    async fn checkin(&self, conn: Conn) {
        if !self.reuse {
            quit(conn).await;
            return;
        }
        if !conn.has_broken() {
            self.pool.lock().await.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
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

    /// MAIL, RCPT per recipient, DATA. `Err` when the whole attempt failed before any
    /// recipient-level answer (or at MAIL/DATA).
    async fn transact(&self, conn: &mut Conn, d: &Delivery) -> Result<Outcome, Failure> {
        let t = self.timeout;
        let info = conn.server_info();
        // What goes after DATA: the stored body without its last CRLF. A file body is
        // read in pieces as it goes out; only an old stored message with bare LFs is
        // copied (`wire_body`).
        let legacy;
        let (body, end): (&Body, u64) = match &*d.body {
            Body::Memory(v) => match wire_body(v) {
                std::borrow::Cow::Borrowed(b) => (&*d.body, b.len() as u64),
                std::borrow::Cow::Owned(o) => {
                    legacy = Body::Memory(o);
                    (&legacy, legacy.len())
                }
            },
            file => {
                let len = file.len();
                let tail = file.read_at(len.saturating_sub(2), 2).map_err(unreadable)?;
                (file, if *tail == *b"\r\n" { len - 2 } else { len })
            }
        };
        let mut params = String::new();
        if info.supports_feature(Extension::EightBitMime) && !body.is_ascii().map_err(unreadable)? {
            params.push_str(" BODY=8BITMIME");
        }
        let utf8 = !d.from.is_ascii() || d.rcpts.iter().any(|r| !r.is_ascii());
        if utf8 {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::permanent(
                    Code::Unknown,
                    "the message has non-ASCII addresses but the server does not offer SMTPUTF8",
                ));
            }
            params.push_str(" SMTPUTF8");
        }
        let mail = format!("MAIL FROM:<{}>{params}\r\n", d.from);
        let (mut results, accepted) = if conn.pipelining {
            pipelined_envelope(conn, mail, &d.rcpts, t).await?
        } else {
            timed(t, "MAIL", conn.command(mail)).await?;
            let mut results = Vec::new();
            for rcpt in &d.rcpts {
                let reply = timed(t, "RCPT", conn.command(format!("RCPT TO:<{rcpt}>\r\n"))).await;
                results.push(rcpt_result(rcpt, reply)?);
            }
            let accepted = results.iter().filter(|r| r.fate == Fate::Sent).count();
            if accepted > 0 {
                timed(t, "DATA", conn.command("DATA\r\n")).await?;
            }
            (results, accepted)
        };
        if accepted == 0 {
            // A connection whose RSET went unanswered is closed, never reused.
            if !reset(conn, t).await {
                close_in_place(conn).await;
            }
            return Ok(Outcome::PerRecipient {
                reply: results.first().map(|r| r.reply.clone()).unwrap_or_default(),
                results,
            });
        }
        let reply = send_body(conn, body, end, t).await?;
        let reply = response_text(&reply);
        for r in results.iter_mut().filter(|r| r.fate == Fate::Sent) {
            r.reply = reply.clone();
        }
        if accepted == d.rcpts.len() {
            Ok(Outcome::Sent { reply })
        } else {
            Ok(Outcome::PerRecipient { reply, results })
        }
    }
}

/// One recipient's answer to RCPT; `Err` when the connection broke.
fn rcpt_result(
    rcpt: &str,
    reply: Result<lettre::transport::smtp::response::Response, Failure>,
) -> Result<RcptResult, Failure> {
    match reply {
        Ok(_) => Ok(RcptResult {
            address: rcpt.to_string(),
            fate: Fate::Sent,
            reply: String::new(),
            code: None,
        }),
        Err(f) if f.is_broken() => Err(f),
        Err(f) => Ok(RcptResult {
            address: rcpt.to_string(),
            fate: if f.is_transient() {
                Fate::Transient
            } else {
                Fate::Permanent
            },
            reply: f.reply,
            code: Some(f.code),
        }),
    }
}

/// MAIL, every RCPT and DATA in one write (RFC 2920), their replies read in order: the
/// recipients' answers and how many were taken. `Err` when MAIL was refused, DATA was
/// refused although a recipient was taken, or the connection broke. When the server
/// opened DATA with nothing to deliver (MAIL or every RCPT refused), the data is ended
/// empty at once and its refusal read, so the connection stays in step.
async fn pipelined_envelope(
    conn: &mut Conn,
    mut batch: String,
    rcpts: &[String],
    t: Duration,
) -> Result<(Vec<RcptResult>, usize), Failure> {
    use std::fmt::Write as _;
    for rcpt in rcpts {
        let _ = write!(batch, "RCPT TO:<{rcpt}>\r\n");
    }
    batch.push_str("DATA\r\n");
    let mail = timed(t, "MAIL", conn.command(batch)).await;
    if let Err(f) = &mail
        && f.is_broken()
    {
        return Err(f.clone());
    }
    let mut results = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        let reply = timed(t, "RCPT", conn.read_response()).await;
        results.push(rcpt_result(rcpt, reply)?);
    }
    let accepted = results.iter().filter(|r| r.fate == Fate::Sent).count();
    let data = timed(t, "DATA", conn.read_response()).await;
    match &data {
        Err(f) if f.is_broken() => return Err(f.clone()),
        Ok(_) if mail.is_err() || accepted == 0 => {
            let end = conn.message_iter(std::iter::empty::<&[u8]>());
            if let Err(f) = timed(t, "end of DATA", end).await
                && f.is_broken()
            {
                return Err(f);
            }
        }
        _ => {}
    }
    mail?;
    if accepted > 0 {
        data?;
    }
    Ok((results, accepted))
}

/// How much of the body has gone out, and when the server last took some.
#[derive(Debug)]
struct BodyProgress {
    started: tokio::time::Instant,
    /// Bytes handed to the connection.
    sent: AtomicU64,
    /// ms after `started` when the last piece was taken.
    last_ms: AtomicU64,
    /// Every piece taken: now only the final reply is awaited.
    done: std::sync::atomic::AtomicBool,
    /// Why a piece of the body could not be read (the message was abandoned).
    unreadable: std::sync::Mutex<Option<String>>,
}

impl BodyProgress {
    fn since_last(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The stored body cannot be read (a file body's disk): the attempt is deferred.
fn unreadable(e: std::io::Error) -> Failure {
    Failure::local(
        Code::StoreDamaged,
        format!("the stored message body cannot be read: {e}"),
    )
}

/// The body in pieces (64 KB, read from its file for a large one); each piece pulled
/// means the one before was written. A piece that cannot be read abandons the message
/// (see [`tls::abandon_body`]): it is never ended with a dot.
struct Pieces<'a> {
    pieces: crate::store::body::Pieces<'a>,
    progress: &'a BodyProgress,
    /// A file body's recorded checksum, and the bytes after `end` (its last CRLF): what
    /// went out is checked against it before the message is ended.
    check: Option<(u32, &'static [u8])>,
    crc: u32,
}

impl Pieces<'_> {
    fn abandon(&self, why: String) {
        if let Ok(mut slot) = self.progress.unreadable.lock() {
            *slot = Some(why);
        }
        tls::abandon_body();
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = std::borrow::Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let p = self.progress;
        p.last_ms.store(
            crate::time::duration_ms(p.started.elapsed()),
            Ordering::Relaxed,
        );
        match self.pieces.next() {
            Some(Ok(c)) => {
                p.sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                if self.check.is_some() {
                    self.crc = crc32c::crc32c_append(self.crc, &c);
                }
                Some(c)
            }
            Some(Err(e)) => {
                self.abandon(e.to_string());
                None
            }
            None if self
                .check
                .is_some_and(|(want, tail)| crc32c::crc32c_append(self.crc, tail) != want) =>
            {
                self.abandon(
                    "the body file changed on disk after it was checked: it fails its checksum"
                        .into(),
                );
                None
            }
            None => {
                p.done.store(true, Ordering::Relaxed);
                stage::enter("end of DATA");
                None
            }
        }
    }
}

/// Sends the body after `354` and reads the final reply. A server that takes no data for
/// `t` fails at once ("stopped reading"); the whole body may take `t` plus its size at
/// 64 KB/s; the final reply comes within `t` of the last byte.
async fn send_body(
    conn: &mut AsyncSmtpConnection,
    body: &Body,
    end: u64,
    t: Duration,
) -> Result<lettre::transport::smtp::response::Response, Failure> {
    stage::enter("message body");
    let progress = BodyProgress {
        started: tokio::time::Instant::now(),
        sent: AtomicU64::new(0),
        last_ms: AtomicU64::new(0),
        done: std::sync::atomic::AtomicBool::new(false),
        unreadable: std::sync::Mutex::new(None),
    };
    let ceiling = stage::body_bound(t, end as usize);
    let check = match body {
        Body::File {
            crc: Some(c), len, ..
        } => Some((*c, if end < *len { &b"\r\n"[..] } else { &b""[..] })),
        _ => None,
    };
    let pieces = Pieces {
        pieces: body.pieces(0..end),
        progress: &progress,
        check,
        crc: 0,
    };
    let send = tls::BODY_ABANDONED.scope(std::cell::Cell::new(false), async {
        let r = conn.message_iter(pieces).await;
        match progress.unreadable.lock().ok().and_then(|mut u| u.take()) {
            Some(why) => Err(why),
            None => Ok(r),
        }
    });
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200).min(t)).await;
            if progress.since_last() >= t {
                return;
            }
            if !progress.done.load(Ordering::Relaxed) && progress.started.elapsed() >= ceiling {
                return;
            }
        }
    };
    tokio::select! {
        r = send => match r {
            Ok(r) => r.map_err(|e| failure::classify(&e, "end of DATA")),
            Err(why) => Err(Failure::local(
                Code::StoreDamaged,
                format!(
                    "message body: the stored body could not be read after {} of {} ({why}); the message was not ended, so the server discards what it got",
                    crate::text::size(progress.sent.load(Ordering::Relaxed)),
                    crate::text::size(end)
                ),
            )),
        },
        () = watch => Err(if progress.done.load(Ordering::Relaxed) {
            no_answer("end of DATA", t)
        } else if progress.since_last() >= t {
            Failure::local(
                Code::ConnectionFailed,
                format!(
                    "message body: the server stopped reading: it took no data for {} after {} of {}",
                    stage::words(t),
                    crate::text::size(progress.sent.load(Ordering::Relaxed)),
                    crate::text::size(end)
                ),
            )
        } else {
            Failure::local(
                Code::ConnectionFailed,
                format!(
                    "message body: only {} of {} taken within {} (at least 64 KB/s are needed)",
                    crate::text::size(progress.sent.load(Ordering::Relaxed)),
                    crate::text::size(end),
                    stage::words(ceiling)
                ),
            )
        }),
    }
}

/// RSET within `t`; false when the server did not answer it well (the connection must
/// not be reused then).
async fn reset(conn: &mut AsyncSmtpConnection, t: Duration) -> bool {
    timed(t, "RSET", conn.command("RSET\r\n")).await.is_ok()
}

/// Ends a connection after a failure: QUIT (and the TLS close) get [`CLOSE_WAIT`], then
/// the socket is dropped whatever the peer does. The connection counts as broken after.
async fn close_in_place(conn: &mut AsyncSmtpConnection) {
    stage::enter("QUIT");
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.abort()).await;
}

/// [`close_in_place`], and the connection dropped.
async fn close(mut conn: Conn) {
    close_in_place(&mut conn).await;
}

/// Ends a connection that worked: QUIT, its reply awaited at most [`CLOSE_WAIT`].
async fn quit(mut conn: Conn) {
    stage::enter("QUIT");
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.quit()).await;
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
