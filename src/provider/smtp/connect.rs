//! Connecting: TCP, implicit TLS or STARTTLS (never a plain-text fallback), EHLO and
//! AUTH (PLAIN, LOGIN or XOAUTH2), each step bounded.

use super::*;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl SmtpProvider {
    /// The TLS verifier and client configuration (ca_file read now, so a fixed file takes
    /// effect at the next connection).
    pub(super) fn tls_setup(
        &self,
    ) -> Result<(Arc<tls::Trust>, Arc<rustls::ClientConfig>), Failure> {
        let config_err = |m: String| Failure::local(Code::ProviderConfig, m);
        let pem = match &self.settings.ca_file {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read(path)
                    .map_err(|e| config_err(format!("ca_file {}: {e}", path.display())))?,
            )),
            None => None,
        };
        let pin = match &self.settings.tls_fingerprint {
            Some(f) => Some(crate::config::parse_fingerprint(f).map_err(config_err)?),
            None => None,
        };
        let trust = Arc::new(
            tls::Trust::new(pem.as_ref().map(|(n, p)| (n.as_str(), p.as_slice())), pin)
                .map_err(config_err)?,
        );
        let identity = match &self.settings.tls_client_cert {
            Some(path) => {
                let cert = std::fs::read(path)
                    .map_err(|e| config_err(format!("tls_client_cert {}: {e}", path.display())))?;
                let key = match provider_password(
                    &crate::secrets::tls_key_entry(&self.name),
                    &self.settings.client_key_source(),
                    &self.secrets,
                ) {
                    Ok(Some(k)) => k,
                    Ok(None) => {
                        return Err(config_err(format!(
                            "tls_client_cert is set but no key: set tls_client_key_file (or tls_client_key, tls_client_key_env), or run `mailgate password set --provider {} --tls-client-key`",
                            self.name
                        )));
                    }
                    Err(SecretError::Undecryptable(_)) => {
                        return Err(Failure::local(
                            Code::PasswordUndecryptable,
                            format!(
                                "the stored TLS client key of provider {:?} cannot be decrypted with this installation's key: run `mailgate password set --provider {} --tls-client-key` again",
                                self.name, self.name
                            ),
                        ));
                    }
                    Err(e) => return Err(config_err(e.to_string())),
                };
                Some(
                    tls::identity(&path.display().to_string(), &cert, key.expose().as_bytes())
                        .map_err(config_err)?,
                )
            }
            None => None,
        };
        let cc = tls::client_config(trust.clone(), identity)
            .map_err(|e| config_err(format!("TLS settings: {e}")))?;
        Ok((trust, cc))
    }

    /// The TLS handshake over `tcp`, verified by [`tls::Trust`]; a refused certificate is
    /// `tls-certificate` with its cause, subject, issuer, fingerprint and fix.
    pub(super) async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        prefix: Vec<u8>,
    ) -> Result<wire::Wire, Failure> {
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
                let wire = wire::Wire::tls(s, prefix);
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
                None => Err(self.client_cert_refused(Failure::local(
                    Code::ConnectionFailed,
                    format!("TLS handshake with {target} failed: {}", error_chain(&e)),
                ))),
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
    pub(super) async fn plain_starttls(
        &self,
        tcp: &mut tokio::net::TcpStream,
    ) -> Result<(), Failure> {
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
    pub(super) async fn connect(&self) -> Result<Conn, Failure> {
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
    pub(super) async fn connect_once(&self) -> Result<Conn, Failure> {
        let t = self.timeout;
        let target = format!("{}:{}", self.host, self.port);
        let mut tcp = self.tcp(&target).await?;
        let _ = tcp.set_nodelay(true);
        let heard: wire::Heard = Arc::new(std::sync::Mutex::new(Some(Vec::new())));
        let wire = match self.settings.tls {
            TlsMode::None => wire::Wire::plain(tcp),
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
        let hello_stage = if self.settings.tls == TlsMode::Starttls {
            "EHLO"
        } else {
            "greeting and EHLO"
        };
        // In TLS 1.3 a server refuses a client certificate after the handshake: the
        // refusal is what the first read after it meets.
        let smtp = timed(
            t,
            hello_stage,
            AsyncSmtpConnection::connect_with_transport(stream, &self.hello),
        )
        .await
        .map_err(|f| self.client_cert_refused(f))?;
        // What the server said so far (greeting, EHLO reply); the wire records no more.
        let start = heard
            .lock()
            .ok()
            .and_then(|mut h| h.take())
            .unwrap_or_default();
        let conn = Conn {
            smtp,
            pipelining: offers_pipelining(&start),
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        self.sign_in(conn, &target).await
    }

    /// A failure that is a TLS alert about certificates becomes `tls-certificate`, saying
    /// what the server made of mailgate's client certificate (or its absence).
    fn client_cert_refused(&self, f: Failure) -> Failure {
        let presented = self.settings.tls_client_cert.is_some();
        match tls::client_cert_refusal(&f.reply, presented) {
            Some(why) => Failure::local(
                Code::TlsCertificate,
                format!("{}:{}: {why} ({})", self.host, self.port, f.reply),
            ),
            None => f,
        }
    }

    /// The TCP connection, within the provider's `timeout`.
    async fn tcp(&self, target: &str) -> Result<tokio::net::TcpStream, Failure> {
        let t = self.timeout;
        stage::enter("connect");
        match tokio::time::timeout(
            t,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Failure::local(
                Code::ConnectionFailed,
                format!("cannot connect to {target}: {e}"),
            )),
            Err(_) => Err(Failure::local(
                Code::ConnectionFailed,
                format!(
                    "connect: connection to {target} timed out after {}",
                    stage::words(t)
                ),
            )),
        }
    }

    /// AUTH: XOAUTH2 with a token of `[provider.oauth2]`, or PLAIN/LOGIN with the
    /// password, or none without a username; a connection that cannot sign in is closed.
    async fn sign_in(&self, mut conn: Conn, target: &str) -> Result<Conn, Failure> {
        let t = self.timeout;
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
        } else if let Some(user) = &self.settings.username {
            let password = match provider_password(
                &self.name,
                &self.settings.password_source(),
                &self.secrets,
            ) {
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
}
