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
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::extension::{ClientId, Extension};
use tokio::sync::{Mutex, Semaphore};

mod failure;

use super::diagnosis::Code;
use super::oauth2::{TokenSource, TokenStatus};
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
            secrets,
            oauth: config
                .oauth2
                .as_ref()
                .map(|o| TokenSource::new(o, crate::config::ProviderKind::Smtp)),
            pool: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.max_connections.max(1))),
            opened: AtomicU64::new(0),
            config: config.clone(),
        }
    }

    /// The OAuth2 token's state, when the provider uses XOAUTH2.
    pub fn token_status(&self) -> Option<TokenStatus> {
        self.oauth.as_ref().map(TokenSource::status)
    }

    /// Connections opened since start (connection reuse is visible here).
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    fn tls_parameters(&self) -> Result<TlsParameters, Failure> {
        let mut b =
            TlsParameters::builder(self.host.clone()).certificate_store(CertificateStore::Default);
        if let Some(path) = &self.config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Failure::local(
                    Code::ProviderConfig,
                    format!("ca_file {}: {e}", path.display()),
                )
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                Failure::local(
                    Code::ProviderConfig,
                    format!("ca_file {}: not a PEM certificate: {e}", path.display()),
                )
            })?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| {
            Failure::local(
                Code::ProviderConfig,
                format!("TLS settings: {}", error_chain(&e)),
            )
        })
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
        let mut conn = match self.config.tls {
            TlsMode::Tls => {
                let params = self.tls_parameters()?;
                timed(
                    t,
                    "connect",
                    AsyncSmtpConnection::connect_tokio1(
                        (self.host.as_str(), self.port),
                        Some(t),
                        &self.hello,
                        Some(params),
                        None,
                    ),
                )
                .await?
            }
            TlsMode::Starttls | TlsMode::None => {
                let tcp = match tokio::time::timeout(
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
                timed(
                    t,
                    "greeting",
                    AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello),
                )
                .await?
            }
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        if self.config.tls == TlsMode::Starttls {
            if !conn.server_info().supports_feature(Extension::StartTls) {
                conn.abort().await;
                return Err(Failure::local(
                    Code::StarttlsUnavailable,
                    format!("{target} did not offer STARTTLS"),
                ));
            }
            let params = self.tls_parameters()?;
            timed(t, "STARTTLS", conn.starttls(params, &self.hello)).await?;
        }
        if let (Some(user), Some(oauth)) = (&self.config.username, &self.oauth) {
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
            let creds = Credentials::new(user.clone(), token.expose().to_string());
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
        let info = conn.server_info().to_string();
        let _ = tokio::time::timeout(self.timeout, conn.quit()).await;
        let auth = if self.config.username.is_some() {
            "authenticated"
        } else {
            "no authentication (no username)"
        };
        let tls = match self.config.tls {
            TlsMode::Starttls => "STARTTLS",
            TlsMode::Tls => "implicit TLS",
            TlsMode::None => "no TLS",
        };
        Ok(format!(
            "{}:{}: {tls}, {auth}; server {info}",
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

    async fn checkin(&self, conn: AsyncSmtpConnection) {
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
