//! A scriptable upstream SMTP server for tests: real sockets, real TLS (tokio-rustls
//! with certificates made by rcgen at test time). It can offer or withhold STARTTLS and
//! AUTH, accept given credentials, answer any stage with a chosen reply, and it records
//! every transaction and connection.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A test CA that issues server certificates.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for these names (DNS names or IP literals).
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl TestCa {
    /// (certificate PEM, key PEM) of a client certificate whose subject is `CN=cn` (as
    /// Exchange Online's connectors read it), for TLS client authentication.
    pub fn issue_client(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec![cn.to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Server TLS that asks every client for a certificate issued by `client_ca` (PEM) and
/// refuses the handshake without one: Exchange Online's inbound connector by certificate.
pub fn server_tls_requiring_client(
    cert_pem: &str,
    key_pem: &str,
    client_ca: &str,
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// The subject of the certificate a TLS client presented, as `CN=...`.
fn client_subject(conn: &rustls::ServerConnection) -> Option<String> {
    let der = conn.peer_certificates()?.first()?.clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

pub fn server_tls(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    Arc::new(config)
}

/// What the upstream does.
#[derive(Clone, Default)]
pub struct Script {
    /// Offer STARTTLS (needs `tls`).
    pub starttls: bool,
    /// Speak TLS from the first byte (implicit TLS).
    pub implicit_tls: bool,
    /// Server TLS settings.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Offer AUTH (after STARTTLS when `starttls`).
    pub offer_auth: bool,
    /// The mechanisms offered; default "PLAIN LOGIN".
    pub auth_mechs: Option<String>,
    /// Accepted credentials; when set, MAIL without AUTH gets 530.
    pub credentials: Option<(String, String)>,
    /// Reply overrides by stage: "auth", "mail", "data", "end", or "rcpt:<address>".
    pub replies: HashMap<String, String>,
    /// Accept TCP and never say anything.
    pub silent: bool,
    /// Close the connection in the middle of receiving DATA.
    pub drop_in_data: bool,
    /// Wait this long before every reply (a slow server).
    pub delay_ms: u64,
    /// After "220 Ready to start TLS", send garbage instead of a TLS handshake.
    pub tls_garbage: bool,
    /// XOAUTH2: the mailbox and the access tokens valid now (shared with an identity
    /// platform stand-in); when set, MAIL without AUTH gets 530.
    pub xoauth2: Option<(String, Arc<Mutex<Vec<String>>>)>,
    /// One message per connection: close after the reply to the end of data (each
    /// delivery opens and signs in anew).
    pub one_message_per_connection: bool,
    /// Stop answering at this step, keeping the connection open and reading nothing
    /// more: "greeting", "ehlo", "starttls", "tls" (after `220 Ready`, no handshake),
    /// "ehlo-tls" (the EHLO inside TLS), "auth", "mail", "rcpt", "data", "body" (after `354`, the body is not read),
    /// "end" (the body read, no final reply), "rset", "quit".
    pub stall: Option<String>,
    /// With `stall`: trickle the reply one byte every this many ms instead of silence.
    pub trickle_ms: u64,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
}

impl Script {
    /// STARTTLS offered, with a certificate of `ca` for localhost and 127.0.0.1.
    pub fn over_starttls(ca: &TestCa) -> Script {
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        Script {
            starttls: true,
            tls: Some(server_tls(&cert, &key)),
            ..Script::default()
        }
    }

    /// AUTH `mechs` offered, XOAUTH2 accepted for `mailbox` with any token in `valid`.
    pub fn xoauth2(mut self, mechs: &str, mailbox: &str, valid: Arc<Mutex<Vec<String>>>) -> Script {
        self.offer_auth = true;
        self.auth_mechs = Some(mechs.into());
        self.xoauth2 = Some((mailbox.into(), valid));
        self
    }

    /// Goes silent at `step` (see `stall`).
    pub fn stall(mut self, step: &str) -> Script {
        self.stall = Some(step.into());
        self
    }

    /// Trickles the reply at `step` one byte every `ms`.
    pub fn trickle(mut self, step: &str, ms: u64) -> Script {
        self.stall = Some(step.into());
        self.trickle_ms = ms;
        self
    }

    fn stalls_at(&self, step: &str) -> bool {
        self.stall.as_deref() == Some(step)
    }

    pub fn reply(mut self, stage: &str, reply: &str) -> Script {
        self.replies.insert(stage.to_string(), reply.to_string());
        self
    }
}

/// One message as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    /// The data, unstuffed, including the CRLF before the final dot.
    pub data: Vec<u8>,
    pub auth_user: Option<String>,
    pub tls: bool,
    /// The subject of the TLS client certificate mailgate presented (`CN=...`).
    pub client_cert: Option<String>,
    /// When the upstream accepted it (its 250 after the data).
    pub at: std::time::Instant,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
    /// Connections open now, and the most ever open at once.
    pub active: Arc<AtomicUsize>,
    pub max_active: Arc<AtomicUsize>,
    pub script: Arc<Mutex<Script>>,
    pub arrived: Arc<Notify>,
    /// Every XOAUTH2 token presented.
    pub xoauth2_tokens: Arc<Mutex<Vec<String>>>,
    /// MAIL commands that arrived with the next commands already behind them
    /// (pipelined), whether PIPELINING was offered or not.
    pub pipelined: Arc<AtomicUsize>,
}

impl Upstream {
    pub async fn start(script: Script) -> Upstream {
        Upstream::start_at(0, script).await
    }

    /// An upstream that answers `reply` at `stage` (see [`Script::reply`]) and accepts
    /// the rest.
    pub async fn replying(stage: &str, reply: &str) -> Upstream {
        Upstream::start(Script::default().reply(stage, reply)).await
    }

    /// Starts on a given port of 127.0.0.1 (0: any free one): an upstream that was
    /// refusing connections comes up where mailgate already looks.
    pub async fn start_at(port: u16, script: Script) -> Upstream {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            connections: Arc::default(),
            active: Arc::default(),
            max_active: Arc::default(),
            script: Arc::new(Mutex::new(script)),
            arrived: Arc::new(Notify::new()),
            xoauth2_tokens: Arc::default(),
            pipelined: Arc::default(),
        };
        let u = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                u.connections.fetch_add(1, Ordering::SeqCst);
                let now = u.active.fetch_add(1, Ordering::SeqCst) + 1;
                u.max_active.fetch_max(now, Ordering::SeqCst);
                let u = u.clone();
                tokio::spawn(async move {
                    struct Leave(Arc<AtomicUsize>);
                    impl Drop for Leave {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _leave = Leave(u.active.clone());
                    let script = u.script.lock().unwrap().clone();
                    if script.silent {
                        let _hold = stream;
                        return std::future::pending::<()>().await;
                    }
                    if script.implicit_tls {
                        let acceptor = tokio_rustls::TlsAcceptor::from(script.tls.clone().unwrap());
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let subject = client_subject(tls.get_ref().1);
                            let _ = serve(Box::new(tls), true, subject, &u, &script).await;
                        }
                    } else {
                        let _ = serve(Box::new(stream), false, None, &u, &script).await;
                    }
                });
            }
        });
        up
    }

    pub fn set_script(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` messages have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                let notified = self.arrived.notified();
                if self.received.lock().unwrap().len() >= n {
                    return self.messages();
                }
                notified.await;
            }
        })
        .await
        .expect("messages arrive upstream")
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve(
    stream: Box<dyn Io>,
    tls: bool,
    mut client_cert: Option<String>,
    up: &Upstream,
    first: &Script,
) -> std::io::Result<()> {
    let mut io = BufReader::new(stream);
    if first.stalls_at("greeting") {
        return stall(&mut io, "220 upstream.test ESMTP test", first.trickle_ms).await;
    }
    io.get_mut()
        .write_all(b"220 upstream.test ESMTP test\r\n")
        .await?;
    let mut tls = tls;
    let mut auth_user: Option<String> = None;
    let mut from: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        // The script is read per command, so a test can change it between messages
        // sent over one pooled connection.
        let script = up.script.lock().unwrap().clone();
        let s = &script;
        let line = line.trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let step = match upper.split(' ').next().unwrap_or("") {
            "EHLO" | "HELO" if tls => "ehlo-tls",
            "EHLO" | "HELO" => "ehlo",
            "STARTTLS" => "starttls",
            "AUTH" => "auth",
            "MAIL" => "mail",
            "RCPT" => "rcpt",
            "DATA" => "data",
            "RSET" => "rset",
            "QUIT" => "quit",
            _ => "",
        };
        if s.stalls_at(step) {
            return stall(&mut io, "250 2.0.0 Ok", s.trickle_ms).await;
        }
        let reply = |stage: &str, default: &str| -> String {
            s.replies
                .get(stage)
                .cloned()
                .unwrap_or_else(|| default.to_string())
        };
        let out: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let mut caps = vec![
                "250-upstream.test".to_string(),
                "250-SIZE 52428800".into(),
                "250-8BITMIME".into(),
                "250-SMTPUTF8".into(),
            ];
            if s.starttls && !tls {
                caps.push("250-STARTTLS".into());
            }
            if s.pipelining {
                caps.push("250-PIPELINING".into());
            }
            if s.offer_auth && (tls || !s.starttls) {
                caps.push(format!(
                    "250-AUTH {}",
                    s.auth_mechs.as_deref().unwrap_or("PLAIN LOGIN")
                ));
            }
            caps.push("250 ENHANCEDSTATUSCODES".into());
            caps.join("\r\n")
        } else if upper == "STARTTLS" && s.starttls && !tls {
            io.get_mut()
                .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                .await?;
            if s.stalls_at("tls") {
                return stall(&mut io, "", 0).await;
            }
            if s.tls_garbage {
                io.get_mut()
                    .write_all(b"this is not a TLS server hello\r\n")
                    .await?;
                return Ok(());
            }
            let inner = io.into_inner();
            let acceptor = tokio_rustls::TlsAcceptor::from(s.tls.clone().unwrap());
            let upgraded = acceptor.accept(inner).await?;
            client_cert = client_subject(upgraded.get_ref().1);
            io = BufReader::new(Box::new(upgraded));
            tls = true;
            continue;
        } else if upper.starts_with("AUTH ") {
            let mut words = line.split_whitespace().skip(1);
            let mech = words.next().unwrap_or("").to_ascii_uppercase();
            let initial = words.next().map(String::from);
            let (user, pass) = match mech.as_str() {
                m if !s
                    .auth_mechs
                    .as_deref()
                    .unwrap_or("PLAIN LOGIN")
                    .split(' ')
                    .any(|x| x == m) =>
                {
                    io.get_mut()
                        .write_all(b"504 5.5.4 Unrecognized authentication type\r\n")
                        .await?;
                    continue;
                }
                "PLAIN" => {
                    let b64 = match initial {
                        Some(i) => i,
                        None => {
                            io.get_mut().write_all(b"334 \r\n").await?;
                            read_line(&mut io).await?
                        }
                    };
                    let raw = B64.decode(b64.trim()).unwrap_or_default();
                    let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
                    let get = |i: usize| {
                        parts
                            .get(i)
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .unwrap_or_default()
                    };
                    (get(1), get(2))
                }
                "XOAUTH2" => {
                    let raw = B64
                        .decode(initial.unwrap_or_default().trim())
                        .unwrap_or_default();
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    let mut user = String::new();
                    let mut token = String::new();
                    for part in text.split('\x01') {
                        if let Some(u) = part.strip_prefix("user=") {
                            user = u.to_string();
                        } else if let Some(t) = part.strip_prefix("auth=Bearer ") {
                            token = t.to_string();
                        }
                    }
                    up.xoauth2_tokens.lock().unwrap().push(token.clone());
                    (user, token)
                }
                "LOGIN" => {
                    io.get_mut().write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                    let u = read_line(&mut io).await?;
                    io.get_mut().write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                    let p = read_line(&mut io).await?;
                    let d = |x: &str| {
                        String::from_utf8_lossy(&B64.decode(x.trim()).unwrap_or_default())
                            .into_owned()
                    };
                    (d(&u), d(&p))
                }
                _ => (String::new(), String::new()),
            };
            if let Some(r) = s
                .replies
                .get(&format!("auth:{mech}"))
                .or_else(|| s.replies.get("auth"))
            {
                r.clone()
            } else if s.credentials.as_ref() == Some(&(user.clone(), pass.clone()))
                || (mech == "XOAUTH2"
                    && s.xoauth2.as_ref().is_some_and(|(mailbox, valid)| {
                        *mailbox == user && valid.lock().unwrap().contains(&pass)
                    }))
            {
                auth_user = Some(user);
                "235 2.7.0 Authentication successful".into()
            } else {
                if mech == "XOAUTH2" {
                    "535 5.7.3 Authentication unsuccessful".into()
                } else {
                    "535 5.7.8 Error: authentication failed".into()
                }
            }
        } else if upper.starts_with("MAIL FROM:") {
            if !io.buffer().is_empty() {
                up.pipelined.fetch_add(1, Ordering::SeqCst);
            }
            if (s.credentials.is_some() || s.xoauth2.is_some()) && auth_user.is_none() {
                "530 5.7.57 Client not authenticated to send mail".into()
            } else {
                let r = reply("mail", "250 2.1.0 Ok");
                if r.starts_with('2') {
                    from = Some(between_brackets(&line));
                    rcpts.clear();
                }
                r
            }
        } else if upper.starts_with("RCPT TO:") {
            let addr = between_brackets(&line);
            let r = reply(&format!("rcpt:{addr}"), "250 2.1.5 Ok");
            if r.starts_with('2') {
                rcpts.push(addr);
            }
            r
        } else if upper == "DATA" {
            // As Postfix answers: no transaction, or no recipient taken.
            let r = if from.is_none() {
                "503 5.5.1 Error: need MAIL command".to_string()
            } else if rcpts.is_empty() {
                "554 5.5.1 Error: no valid recipients".to_string()
            } else {
                reply("data", "354 End data with <CR><LF>.<CR><LF>")
            };
            if r.starts_with("354") {
                io.get_mut()
                    .write_all(format!("{r}\r\n").as_bytes())
                    .await?;
                if s.stalls_at("body") {
                    return stall(&mut io, "", 0).await;
                }
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    if s.drop_in_data {
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    if l.starts_with(b"..") {
                        l.remove(0);
                    }
                    data.extend_from_slice(&l);
                }
                if s.stalls_at("end") {
                    return stall(&mut io, "250 2.0.0 Ok: queued", s.trickle_ms).await;
                }
                let end = reply("end", "250 2.0.0 Ok: queued");
                if end.starts_with('2') {
                    up.received.lock().unwrap().push(Received {
                        from: from.take().unwrap_or_default(),
                        rcpts: std::mem::take(&mut rcpts),
                        data,
                        auth_user: auth_user.clone(),
                        tls,
                        client_cert: client_cert.clone(),
                        at: std::time::Instant::now(),
                    });
                    up.arrived.notify_waiters();
                }
                end
            } else {
                r
            }
        } else if upper == "RSET" {
            from = None;
            rcpts.clear();
            "250 2.0.0 Ok".into()
        } else if upper == "NOOP" {
            "250 2.0.0 Ok".into()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
            return Ok(());
        } else {
            "502 5.5.2 Error: command not recognized".into()
        };
        if s.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(s.delay_ms)).await;
        }
        io.get_mut()
            .write_all(format!("{out}\r\n").as_bytes())
            .await?;
        if out.starts_with("421") {
            return Ok(());
        }
        if s.one_message_per_connection && upper == "DATA" && out.starts_with("250") {
            return Ok(());
        }
    }
}

/// Holds the connection without reading: silent, or trickling `reply` one byte every
/// `trickle_ms` (then silent). Returns only when the client has gone.
async fn stall(
    io: &mut BufReader<Box<dyn Io>>,
    reply: &str,
    trickle_ms: u64,
) -> std::io::Result<()> {
    if trickle_ms > 0 {
        for b in format!("{reply}\r\n").bytes() {
            io.get_mut().write_all(&[b]).await?;
            io.get_mut().flush().await?;
            tokio::time::sleep(std::time::Duration::from_millis(trickle_ms)).await;
        }
    }
    std::future::pending::<()>().await;
    Ok(())
}

async fn read_line(io: &mut BufReader<Box<dyn Io>>) -> std::io::Result<String> {
    let mut l = String::new();
    io.read_line(&mut l).await?;
    Ok(l.trim_end().to_string())
}

fn between_brackets(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_string()
}
