//! STARTTLS and AUTH on the listener, over real TLS, from a client outside
//! `allowed_networks` (simulated by an allowed range that excludes 127.0.0.1): the
//! listener relays nothing for strangers, drops commands pipelined with STARTTLS, and
//! lets an authenticated user send, identified by its login.

mod common;

use std::sync::Arc;

use common::upstream::TestCa;
use common::{TestEnv, queued_id};
use mailgate::Daemon;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::WAIT;

struct Client<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn reply_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            if self.io.read_line(&mut l).await.unwrap() == 0 {
                lines.push("<closed>".into());
                return lines;
            }
            let l = l.trim_end().to_string();
            let last = l.as_bytes().get(3) != Some(&b'-');
            lines.push(l);
            if last {
                return lines;
            }
        }
    }

    async fn reply(&mut self) -> String {
        self.reply_lines().await.pop().unwrap()
    }

    async fn send(&mut self, raw: &str) {
        self.io.get_mut().write_all(raw.as_bytes()).await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }
}

struct Setup {
    env: TestEnv,
    ca: TestCa,
    daemon: Daemon,
}

async fn setup(allowed: &str) -> Setup {
    let ca = TestCa::new("listener CA");
    let env = TestEnv::new("", "");
    let tls = env.listener_tls(&ca, &["mailgate.test", "127.0.0.1"]);
    env.write_config(
        &format!("{tls}allowed_networks = [\"{allowed}\"]"),
        &format!(
            "{}sender_email = \"billing@contoso.com\"\n",
            common::login_user("erp", "erp-pass-1", "erp@contoso.com")
        ),
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    Setup { env, ca, daemon }
}

fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A plain connection that has said EHLO: the client and the EHLO reply's lines.
async fn greeted(s: &Setup) -> (Client<TcpStream>, Vec<String>) {
    let mut c = plain(s).await;
    c.send("EHLO client.test\r\n").await;
    let ehlo = c.reply_lines().await;
    (c, ehlo)
}

async fn plain(s: &Setup) -> Client<TcpStream> {
    let tcp = TcpStream::connect(s.daemon.smtp_addrs[0]).await.unwrap();
    let mut c = Client {
        io: BufReader::new(tcp),
    };
    assert!(c.reply().await.starts_with("220 "));
    c
}

async fn upgrade(
    s: &Setup,
    c: Client<TcpStream>,
) -> Client<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = c.io.into_inner();
    let tls = connector(&s.ca.pem)
        .connect(ServerName::try_from("mailgate.test").unwrap(), tcp)
        .await
        .unwrap();
    Client {
        io: BufReader::new(tls),
    }
}

#[tokio::test]
async fn strangers_get_nothing_without_auth() {
    let s = setup("10.0.0.0/8").await;
    let (mut c, ehlo) = greeted(&s).await;
    assert!(ehlo.iter().any(|l| l.ends_with("STARTTLS")), "{ehlo:?}");
    assert!(
        !ehlo.iter().any(|l| l.contains("AUTH")),
        "no AUTH in plain text: {ehlo:?}"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.com>").await,
        "530 5.7.0 Authentication required"
    );
    assert!(
        c.cmd("RCPT TO:<victim@contoso.com>")
            .await
            .starts_with("503")
    );
    assert!(c.cmd("DATA").await.starts_with("503"));
    assert!(
        c.cmd("AUTH PLAIN AGVycABlcnAtcGFzcy0x")
            .await
            .starts_with("538 5.7.11")
    );
    assert!(
        s.daemon
            .pipeline
            .store()
            .list(10, |_| true)
            .unwrap()
            .is_empty()
    );
    s.daemon.shutdown().await;
}

#[tokio::test]
async fn commands_pipelined_with_starttls_are_discarded() {
    let s = setup("10.0.0.0/8").await;
    let (mut c, _) = greeted(&s).await;
    // One packet: STARTTLS plus an injected transaction.
    c.send("STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@contoso.com>\r\n")
        .await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    let mut t = upgrade(&s, c).await;
    // Inside TLS the session starts over: no MAIL was injected, and EHLO is needed again.
    assert!(
        t.cmd("RCPT TO:<victim@contoso.com>")
            .await
            .starts_with("503 5.5.1")
    );
    t.send("EHLO x\r\n").await;
    let ehlo = t.reply_lines().await;
    assert!(
        ehlo.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")),
        "AUTH offered inside TLS: {ehlo:?}"
    );
    assert!(!ehlo.iter().any(|l| l.ends_with("STARTTLS")));
    assert!(t.cmd("STARTTLS").await.starts_with("503"));
    s.daemon.shutdown().await;
}

#[tokio::test]
async fn authenticated_user_sends_inside_tls_and_is_identified() {
    use base64::Engine;
    let s = setup("10.0.0.0/8").await;
    let mut events = s.daemon.distributor.subscribe();
    let (mut c, _) = greeted(&s).await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let mut t = upgrade(&s, c).await;
    t.send("EHLO erp01\r\n").await;
    t.reply_lines().await;
    let b64 = |x: &str| base64::engine::general_purpose::STANDARD.encode(x);
    assert_eq!(t.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(t.cmd(&b64("erp")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        t.cmd(&b64("wrong")).await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        t.cmd(&format!("AUTH PLAIN {}", b64("\0erp\0erp-pass-1")))
            .await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        t.cmd("MAIL FROM:<whatever@erp.local>").await,
        "250 2.1.0 Sender OK"
    );
    assert_eq!(
        t.cmd("RCPT TO:<customer@example.com>").await,
        "250 2.1.5 Recipient OK"
    );
    assert!(t.cmd("DATA").await.starts_with("354"));
    t.send("From: ERP System <whatever@erp.local>\r\nSubject: Invoice\r\n\r\nbody\r\n.\r\n")
        .await;
    let id = queued_id(&t.reply().await).unwrap();
    assert_eq!(t.cmd("QUIT").await, "221 2.0.0 Bye");
    tokio::time::timeout(WAIT, async {
        while events.recv().await.unwrap().id != id {}
    })
    .await
    .unwrap();
    let rec = s.daemon.pipeline.store().record(&id).unwrap().unwrap();
    assert_eq!(rec.auth_login.as_deref(), Some("erp"));
    assert_eq!(rec.user.as_deref(), Some("erp"));
    assert_eq!(rec.original_sender, "whatever@erp.local");
    assert_eq!(rec.sender, "billing@contoso.com");
    let eml = String::from_utf8(s.env.eml(&id)).unwrap();
    common::assert_has(
        &eml,
        &[
            "with ESMTPSA id",
            "\r\nFrom: ERP System <billing@contoso.com>\r\nX-Original-From: ERP System <whatever@erp.local>\r\nSubject: Invoice\r\n",
        ],
    );
    s.daemon.shutdown().await;
}

#[tokio::test]
async fn three_failures_close_the_session() {
    use base64::Engine;
    let s = setup("127.0.0.0/8").await;
    let (mut c, ehlo) = greeted(&s).await;
    assert!(
        ehlo.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")),
        "allowed network gets AUTH without TLS: {ehlo:?}"
    );
    let bad = format!(
        "AUTH PLAIN {}",
        base64::engine::general_purpose::STANDARD.encode("\0erp\0no")
    );
    assert!(c.cmd(&bad).await.starts_with("535 5.7.8"));
    assert!(c.cmd(&bad).await.starts_with("535 5.7.8"));
    assert_eq!(
        c.cmd(&bad).await,
        "421 4.7.0 Too many authentication failures, closing connection"
    );
    assert_eq!(c.reply().await, "<closed>");
    s.daemon.shutdown().await;
}
