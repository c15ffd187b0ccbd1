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
use super::{Delivery, Fate, Outcome, RcptResult};
use crate::config::{ProviderConfig, TlsMode};
use crate::secrets::{SecretError, SecretStore, provider_password};
pub use failure::Failure;
use failure::{error_chain, response_text, timed};

/// An idle connection is reused only this long; older ones are closed.
const IDLE_REUSE: Duration = Duration::from_secs(30);

struct Idle {
    conn: AsyncSmtpConnection,
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
    /// Keep connections for reuse (off in fleet mode).
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

/// Bare CR or LF become CRLF (lettre only dot-stuffs after CRLF); one trailing CRLF is
/// removed because lettre ends the data with CRLF . CRLF itself.
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
        let port = config.port.unwrap_or(match config.tls {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        });
        SmtpProvider {
            host: config.host.clone().unwrap_or_default(),
            port,
            timeout: config
                .timeout
                .map_or(Duration::from_secs(60), |d| d.0)
                .max(Duration::from_millis(1)),
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
            Some(f) => Some(tls::parse_fingerprint(f).map_err(config_err)?),
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
            Err(_) => Err(Failure::local(
                Code::ConnectionFailed,
                format!(
                    "TLS handshake with {target}: no answer from the server within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    /// The part of STARTTLS before the handshake, done by hand on the TCP stream (lettre
    /// cannot be given our verifier): greeting, EHLO, STARTTLS, 220.
    async fn plain_starttls(&self, tcp: &mut tokio::net::TcpStream) -> Result<(), Failure> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let target = format!("{}:{}", self.host, self.port);
        let lost = |what: &str, e: std::io::Error| {
            Failure::local(Code::ConnectionFailed, format!("{target}: {what}: {e}"))
        };
        let exchange = async {
            let (r, mut w) = tcp.split();
            let mut r = BufReader::new(r);
            let reply = async |r: &mut BufReader<tokio::net::tcp::ReadHalf<'_>>| -> std::io::Result<Vec<String>> {
                let mut lines = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).await? == 0 {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
                    }
                    let last = line.as_bytes().get(3) != Some(&b'-');
                    lines.push(line.trim_end().to_string());
                    if last {
                        return Ok(lines);
                    }
                }
            };
            let greeting = reply(&mut r).await.map_err(|e| lost("greeting", e))?;
            if !greeting.last().is_some_and(|l| l.starts_with("220")) {
                return Err(failure::from_text(&greeting.join(" "), "greeting"));
            }
            let hello = self.hello.to_string();
            w.write_all(format!("EHLO {hello}\r\n").as_bytes())
                .await
                .map_err(|e| lost("EHLO", e))?;
            let ehlo = reply(&mut r).await.map_err(|e| lost("EHLO", e))?;
            if !ehlo.iter().any(|l| {
                l.get(4..)
                    .is_some_and(|c| c.eq_ignore_ascii_case("STARTTLS"))
            }) {
                return Err(Failure::local(
                    Code::StarttlsUnavailable,
                    format!("{target} did not offer STARTTLS"),
                ));
            }
            w.write_all(b"STARTTLS\r\n")
                .await
                .map_err(|e| lost("STARTTLS", e))?;
            let go = reply(&mut r).await.map_err(|e| lost("STARTTLS", e))?;
            if !go.last().is_some_and(|l| l.starts_with("220")) {
                return Err(failure::from_text(&go.join(" "), "STARTTLS"));
            }
            Ok(())
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Failure::local(
                Code::ConnectionFailed,
                format!(
                    "{target}: no answer from the server within {} before STARTTLS",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    /// Opens a connection and signs in. With OAuth2, a token the server rejects is
    /// dropped and a fresh one tried once.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Failure> {
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
    async fn connect_once(&self) -> Result<AsyncSmtpConnection, Failure> {
        let t = self.timeout;
        let target = format!("{}:{}", self.host, self.port);
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
                    format!("connection to {target} timed out after {}s", t.as_secs()),
                ));
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn lettre::transport::smtp::client::AsyncTokioStream> =
            match self.config.tls {
                TlsMode::None => Box::new(tcp),
                TlsMode::Tls => Box::new(self.handshake(tcp, Vec::new()).await?),
                TlsMode::Starttls => {
                    self.plain_starttls(&mut tcp).await?;
                    // lettre starts by reading a greeting; after STARTTLS the server sends
                    // none, so the stream begins with one of ours.
                    Box::new(
                        self.handshake(tcp, b"220 TLS established\r\n".to_vec())
                            .await?,
                    )
                }
            };
        let mut conn = timed(
            t,
            "greeting",
            AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
        )
        .await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        if let Some((user, oauth)) = self
            .oauth
            .as_ref()
            .and_then(|o| Some((o.username()?.to_string(), o)))
        {
            let token = match oauth.token().await {
                Ok(t) => t,
                Err(e) => {
                    conn.abort().await;
                    return Err(Failure::local(e.code, e.reply));
                }
            };
            if !conn
                .server_info()
                .supports_auth_mechanism(Mechanism::Xoauth2)
            {
                conn.abort().await;
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
                    conn.abort().await;
                    return Err(Failure::local(
                        Code::ProviderConfig,
                        "username is set but no password is configured (password, password_file, password_env or `mailgate password set`)",
                    ));
                }
                Err(SecretError::Undecryptable(p)) => {
                    conn.abort().await;
                    return Err(Failure::local(
                        Code::PasswordUndecryptable,
                        format!(
                            "the stored password of provider {p:?} cannot be decrypted with this installation's key"
                        ),
                    ));
                }
                Err(e) => {
                    conn.abort().await;
                    return Err(Failure::local(Code::ProviderConfig, e.to_string()));
                }
            };
            let info = conn.server_info();
            let offers_auth = [Mechanism::Plain, Mechanism::Login, Mechanism::Xoauth2]
                .into_iter()
                .any(|m| info.supports_auth_mechanism(m));
            if !offers_auth {
                conn.abort().await;
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
        let mut conn = self.connect().await?;
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
        let _ = tokio::time::timeout(self.timeout, conn.quit()).await;
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

    async fn checkout(&self) -> Result<(AsyncSmtpConnection, bool), Failure> {
        {
            let mut pool = self.pool.lock().await;
            while let Some(idle) = pool.pop() {
                if idle.since.elapsed() < IDLE_REUSE && !idle.conn.has_broken() {
                    return Ok((idle.conn, true));
                }
                let mut c = idle.conn;
                tokio::spawn(async move { c.abort().await });
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Closes the idle connections (their sign-in no longer holds).
    pub async fn drop_idle(&self) {
        let idle: Vec<Idle> = self.pool.lock().await.drain(..).collect();
        for mut i in idle {
            tokio::spawn(async move { i.conn.abort().await });
        }
    }

    /// Whether connections are kept for reuse.
    pub fn set_reuse(&mut self, reuse: bool) {
        self.reuse = reuse;
    }

    async fn checkin(&self, mut conn: AsyncSmtpConnection) {
        if !self.reuse {
            let _ = tokio::time::timeout(self.timeout, conn.quit()).await;
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
            conn.abort().await;
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
    async fn finish(
        &self,
        mut conn: AsyncSmtpConnection,
        result: Result<Outcome, Failure>,
    ) -> Outcome {
        match result {
            Ok(outcome) => {
                self.checkin(conn).await;
                outcome
            }
            Err(f) if f.is_broken() => {
                conn.abort().await;
                f.into_outcome()
            }
            Err(f) => {
                let _ = tokio::time::timeout(self.timeout, conn.command("RSET\r\n")).await;
                self.checkin(conn).await;
                f.into_outcome()
            }
        }
    }

    /// MAIL, RCPT per recipient, DATA. `Err` when the whole attempt failed before any
    /// recipient-level answer (or at MAIL/DATA).
    async fn transact(
        &self,
        conn: &mut AsyncSmtpConnection,
        d: &Delivery,
    ) -> Result<Outcome, Failure> {
        let t = self.timeout;
        let info = conn.server_info();
        let body = wire_body(&d.raw);
        let mut params = String::new();
        if info.supports_feature(Extension::EightBitMime) && !body.is_ascii() {
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
        timed(t, "MAIL", conn.command(mail)).await?;
        let mut results = Vec::new();
        let mut accepted = 0;
        for rcpt in &d.rcpts {
            match timed(t, "RCPT", conn.command(format!("RCPT TO:<{rcpt}>\r\n"))).await {
                Ok(_) => {
                    accepted += 1;
                    results.push(RcptResult {
                        address: rcpt.clone(),
                        fate: Fate::Sent,
                        reply: String::new(),
                        code: None,
                    });
                }
                Err(f) if f.is_broken() => return Err(f),
                Err(f) => results.push(RcptResult {
                    address: rcpt.clone(),
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
        if accepted == 0 {
            let _ = tokio::time::timeout(t, conn.command("RSET\r\n")).await;
            return Ok(Outcome::PerRecipient {
                reply: results.first().map(|r| r.reply.clone()).unwrap_or_default(),
                results,
            });
        }
        timed(t, "DATA", conn.command("DATA\r\n")).await?;
        // Large messages get time in proportion to their size (at least 64 KB/s).
        let data_time = t + Duration::from_secs(body.len() as u64 / 65_536);
        // In 64 KB pieces: lettre dot-stuffs each into a buffer of its own size.
        let reply = timed(
            data_time,
            "end of DATA",
            conn.message_iter(body.chunks(64 * 1024)),
        )
        .await?;
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
