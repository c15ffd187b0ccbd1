//! The session and listener loop fed byte strings over an in-memory stream: every
//! command of a test is written at once (one "packet"), so pipelining is always on.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::harness::{FakePipeline, listener_context};
use super::listener::{ListenerContext, run_session};
use super::policy::{FixedSpace, SpaceCheck};
use super::session::Session;
use crate::config::Config;

struct Harness {
    _dir: tempfile::TempDir,
    ctx: ListenerContext,
    fake: Arc<FakePipeline>,
    peer: SocketAddr,
}

fn harness_with(extra: &str, space: Arc<dyn SpaceCheck>, peer: &str) -> Harness {
    build(
        &format!(
            "[smtp]\nhostname = \"mx.test\"\nmax_message_size = 1100\nmax_recipients = 3\n{extra}\n"
        ),
        "",
        space,
        peer,
    )
}

/// A harness over `smtp` (the `[smtp]` table) and `tail` (tables after the provider).
fn build(smtp: &str, tail: &str, space: Arc<dyn SpaceCheck>, peer: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{smtp}[store]\npath = \"{}\"\n[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"{}\"\n{tail}",
        dir.path().join("s.redb").display(),
        dir.path().join("outbox").display()
    );
    let config = Config::parse(&text, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let fake = Arc::new(FakePipeline::default());
    Harness {
        _dir: dir,
        fake: fake.clone(),
        ctx: listener_context(config, fake, space),
        peer: peer.parse().unwrap(),
    }
}

fn harness(extra: &str) -> Harness {
    harness_with(extra, Arc::new(FixedSpace(true)), "127.0.0.1:40000")
}

impl Harness {
    /// Writes `input` in one go, then reads every reply until the server closes (or the
    /// client's half is closed and the server has nothing more to say).
    async fn converse(&self, input: &[u8]) -> Vec<String> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let (_tx, rx) = watch::channel(false);
        let session = Session::new(self.ctx.policy(), self.peer);
        let ctx = &self.ctx;
        let serve = run_session(server, session, ctx, rx, true);
        let talk = async {
            client.write_all(input).await.unwrap();
            client.shutdown().await.unwrap();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            out
        };
        let (_, out) = tokio::join!(serve, talk);
        String::from_utf8(out)
            .unwrap()
            .split_inclusive("\r\n")
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// The bytes of every submission handed to the pipeline, in order.
    fn stored(&self) -> Vec<Vec<u8>> {
        self.fake
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.raw.clone())
            .collect()
    }
}

/// Final lines of each reply (what a client acts on).
fn codes(replies: &[String]) -> Vec<String> {
    replies
        .iter()
        .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
        .cloned()
        .collect()
}

/// The body of the data the pipeline got: after the header block, or all of it when the
/// data opens with an empty line or has no header field.
fn body_of(stored: &[u8]) -> String {
    let text = String::from_utf8_lossy(stored);
    if let Some(rest) = text.strip_prefix("\r\n") {
        return rest.to_string();
    }
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head
                .lines()
                .all(|l| l.contains(':') || l.starts_with([' ', '\t'])) =>
        {
            body.to_string()
        }
        _ => text.to_string(),
    }
}

const TXN: &str = "MAIL FROM:<app@erp.local>\r\nRCPT TO:<a@contoso.com>\r\nDATA\r\n";

#[tokio::test]
async fn greeting_and_ehlo_capabilities() {
    let h = harness("");
    let r = h.converse(b"EHLO client.test\r\nQUIT\r\n").await;
    assert_eq!(r[0], "220 mx.test ESMTP mailgate");
    assert_eq!(r[1], "250-mx.test Hello client.test");
    let caps: Vec<&str> = r[2..r.len() - 1].iter().map(|l| &l[4..]).collect();
    for want in [
        "PIPELINING",
        "SIZE 1100",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ] {
        assert!(caps.contains(&want), "{want} missing from {caps:?}");
    }
    assert!(
        !caps
            .iter()
            .any(|c| c.starts_with("AUTH") || *c == "STARTTLS")
    );
    assert_eq!(r.last().unwrap(), "221 2.0.0 Bye");
}

#[tokio::test]
async fn pipelined_transaction_in_one_packet() {
    let h = harness("");
    let input = format!("EHLO c\r\n{TXN}Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let r = codes(&h.converse(input.as_bytes()).await);
    assert_eq!(r[0], "220 mx.test ESMTP mailgate");
    assert!(r[1].starts_with("250 "));
    assert_eq!(r[2], "250 2.1.0 Sender OK");
    assert_eq!(r[3], "250 2.1.5 Recipient OK");
    assert!(r[4].starts_with("354 "));
    assert!(r[5].starts_with("250 2.0.0 OK queued as "), "{r:?}");
    assert_eq!(r[6], "221 2.0.0 Bye");
    assert_eq!(
        r[5], "250 2.0.0 OK queued as TEST1",
        "the id the pipeline gave"
    );
    let got = h.fake.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mail_from, "app@erp.local");
    assert_eq!(got[0].rcpts, vec!["a@contoso.com".to_string()]);
    assert_eq!(got[0].client.helo.as_deref(), Some("c"));
    assert_eq!(
        got[0].longest_line,
        Some(11),
        "the DATA reader's measurement is handed on"
    );
    assert_eq!(body_of(&h.stored()[0]), "body\r\n");
}

#[tokio::test]
async fn dot_stuffing_is_removed() {
    let h = harness("");
    let input = format!("EHLO c\r\n{TXN}\r\n..one dot\r\n...two\r\n.\r\nQUIT\r\n");
    h.converse(input.as_bytes()).await;
    assert_eq!(body_of(&h.stored()[0]), ".one dot\r\n..two\r\n");
}

#[tokio::test]
async fn size_limit_at_mail_and_in_data_and_the_session_goes_on() {
    let h = harness("");
    let big = "x".repeat(1500);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b.com> SIZE=5000\r\n{TXN}\r\n{big}\r\n.\r\n{TXN}\r\nsmall\r\n.\r\nQUIT\r\n"
    );
    let r = codes(&h.converse(input.as_bytes()).await);
    assert!(r[2].starts_with("552 5.3.4 "), "{r:?}");
    assert_eq!(r[3], "250 2.1.0 Sender OK");
    assert!(r[6].starts_with("552 5.3.4 "), "{r:?}");
    assert!(r[10].starts_with("250 2.0.0 OK queued as"), "{r:?}");
    let stored = h.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(body_of(&stored[0]), "small\r\n");
}

const SMUGGLE: [&[u8]; 4] = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n"];

fn smuggling_input(variant: &[u8]) -> Vec<u8> {
    let mut input = format!("EHLO c\r\n{TXN}Subject: s\r\n\r\nlegit").into_bytes();
    input.extend_from_slice(variant);
    input.extend_from_slice(
        b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@contoso.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nowned\r\n.\r\nQUIT\r\n",
    );
    input
}

#[tokio::test]
async fn smuggling_never_makes_a_second_message_normalize() {
    for v in SMUGGLE {
        let h = harness("bare_newlines = \"normalize\"");
        let r = codes(&h.converse(&smuggling_input(v)).await);
        assert_eq!(
            r.iter().filter(|l| l.starts_with("250 2.1.0")).count(),
            1,
            "{v:?}: {r:?}"
        );
        assert_eq!(
            r.iter()
                .filter(|l| l.starts_with("250 2.0.0 OK queued"))
                .count(),
            1,
            "{v:?}"
        );
        let stored = h.stored();
        assert_eq!(stored.len(), 1, "{v:?}");
        let body = body_of(&stored[0]);
        assert!(
            body.contains("MAIL FROM:<evil@attacker.test>\r\n"),
            "{v:?}: {body:?}"
        );
        assert!(body.ends_with("owned\r\n"), "{v:?}");
        assert!(
            !body.replace("\r\n", "").contains(['\r', '\n']),
            "bare newline kept: {body:?}"
        );
    }
}

#[tokio::test]
async fn smuggling_never_makes_a_second_message_reject() {
    for v in SMUGGLE {
        let h = harness("bare_newlines = \"reject\"");
        let r = codes(&h.converse(&smuggling_input(v)).await);
        assert_eq!(
            r.iter().filter(|l| l.starts_with("250 2.1.0")).count(),
            1,
            "{v:?}: {r:?}"
        );
        assert!(r.iter().any(|l| l.starts_with("554 5.6.0")), "{v:?}: {r:?}");
        assert!(h.stored().is_empty(), "{v:?}");
        assert_eq!(r.last().unwrap(), "221 2.0.0 Bye");
    }
}

#[tokio::test]
async fn long_command_line_is_refused_and_the_session_goes_on() {
    let h = harness("");
    let long = format!("NOOP {}\r\n", "y".repeat(600));
    let huge = format!("MAIL FROM:<{}@b.com>\r\n", "z".repeat(20_000));
    let input = format!("EHLO c\r\n{long}{huge}NOOP\r\nQUIT\r\n");
    let r = codes(&h.converse(input.as_bytes()).await);
    assert_eq!(r[2], "500 5.5.2 Error: line too long");
    assert_eq!(r[3], "500 5.5.2 Error: line too long");
    assert_eq!(r[4], "250 2.0.0 OK");
}

#[tokio::test]
async fn sequence_errors_and_simple_verbs() {
    let h = harness("");
    let input = "MAIL FROM:<a@b.com>\r\nEHLO c\r\nRCPT TO:<a@contoso.com>\r\nDATA\r\n\
                 MAIL FROM:<>\r\nMAIL FROM:<a@b.com>\r\nDATA\r\nRSET\r\nVRFY someone\r\nHELP\r\nNOOP\r\nFOO bar\r\nQUIT\r\n";
    let r = codes(&h.converse(input.as_bytes()).await);
    assert!(r[1].starts_with("503 5.5.1"), "{r:?}");
    assert!(r[3].starts_with("503 5.5.1"), "RCPT before MAIL: {r:?}");
    assert!(r[4].starts_with("503 5.5.1"), "DATA before MAIL: {r:?}");
    assert_eq!(r[5], "250 2.1.0 Sender OK", "null sender");
    assert!(r[6].starts_with("503 5.5.1"), "nested MAIL: {r:?}");
    assert!(r[7].starts_with("554 5.5.1"), "DATA without RCPT: {r:?}");
    assert_eq!(r[8], "250 2.0.0 OK");
    assert!(r[9].starts_with("252 "), "{r:?}");
    assert!(r[10].starts_with("214 "), "{r:?}");
    assert_eq!(r[11], "250 2.0.0 OK");
    assert!(r[12].starts_with("500 5.5.1"), "{r:?}");
}

#[tokio::test]
async fn recipient_policy() {
    let h = harness("");
    let input = "EHLO c\r\nMAIL FROM:<a@b.com>\r\nRCPT TO:<user@contoso>\r\nRCPT TO:<not-an-address>\r\n\
                 RCPT TO:<a@x.com>\r\nRCPT TO:<b@x.com>\r\nRCPT TO:<c@x.com>\r\nRCPT TO:<d@x.com>\r\nQUIT\r\n";
    let r = codes(&h.converse(input.as_bytes()).await);
    assert!(
        r[3].starts_with("550 5.1.2") && r[3].contains("single label domain"),
        "{r:?}"
    );
    assert!(r[4].starts_with("501 5.1.3"), "{r:?}");
    assert_eq!(&r[5..8], ["250 2.1.5 Recipient OK"; 3]);
    assert!(r[8].starts_with("452 4.5.3"), "{r:?}");
}

#[tokio::test]
async fn single_label_domains_pass_when_allowed() {
    let h = harness("reject_single_label_domains = false");
    let r = codes(
        &h.converse(b"EHLO c\r\nMAIL FROM:<a@b.com>\r\nRCPT TO:<user@contoso>\r\nQUIT\r\n")
            .await,
    );
    assert_eq!(r[3], "250 2.1.5 Recipient OK");
}

#[tokio::test]
async fn malformed_sender() {
    let h = harness("");
    let r = codes(
        &h.converse(b"EHLO c\r\nMAIL FROM:<no-at-sign>\r\nQUIT\r\n")
            .await,
    );
    assert!(r[2].starts_with("501 5.1.7"), "{r:?}");
}

#[tokio::test]
async fn outside_allowed_networks_needs_auth() {
    let h = harness_with("", Arc::new(FixedSpace(true)), "192.0.2.7:5000");
    let r = codes(
        &h.converse(format!("EHLO c\r\n{TXN}QUIT\r\n").as_bytes())
            .await,
    );
    assert_eq!(r[2], "530 5.7.0 Authentication required");
    assert!(r[3].starts_with("503"), "RCPT without MAIL: {r:?}");
    assert!(h.stored().is_empty());
    let h = harness("require_auth = true");
    let r = codes(
        &h.converse(b"EHLO c\r\nMAIL FROM:<a@b.com>\r\nQUIT\r\n")
            .await,
    );
    assert_eq!(r[2], "530 5.7.0 Authentication required");
}

#[tokio::test]
async fn low_disk_waits_at_the_door() {
    let h = harness_with("", Arc::new(FixedSpace(false)), "127.0.0.1:1");
    let r = codes(
        &h.converse(b"EHLO c\r\nMAIL FROM:<a@b.com>\r\nQUIT\r\n")
            .await,
    );
    assert_eq!(r[2], "452 4.3.1 Insufficient system storage");
}

#[tokio::test]
async fn failed_commit_is_never_acknowledged_and_the_store_recovers() {
    let h = harness("");
    h.fake.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let input = format!("EHLO c\r\n{TXN}\r\nfirst\r\n.\r\nQUIT\r\n");
    let r = codes(&h.converse(input.as_bytes()).await);
    assert!(r[5].starts_with("451 4.3.0"), "{r:?}");
    assert!(!r.iter().any(|l| l.starts_with("250 2.0.0 OK queued")));
    h.fake
        .fail
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let input = format!("EHLO c\r\n{TXN}\r\nsecond\r\n.\r\nQUIT\r\n");
    let r = codes(&h.converse(input.as_bytes()).await);
    assert!(r[5].starts_with("250 2.0.0 OK queued as"), "{r:?}");
    let stored = h.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(body_of(&stored[0]), "second\r\n");
}

#[tokio::test]
async fn bdat_chunk_is_discarded_not_parsed_as_commands() {
    let h = harness("");
    let input = b"EHLO c\r\nMAIL FROM:<a@b.com>\r\nRCPT TO:<a@contoso.com>\r\nBDAT 18 LAST\r\nRSET\r\nQUIT\r\nNOOP\r\nNOOP\r\nQUIT\r\n";
    let r = codes(&h.converse(input).await);
    assert!(r[4].starts_with("503 5.5.1"), "{r:?}");
    assert_eq!(r[5], "250 2.0.0 OK");
    assert_eq!(r.len(), 7, "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn idle_client_is_closed() {
    let mut h = harness("");
    h.ctx.idle_timeout = Duration::from_secs(300);
    let (mut client, server) = tokio::io::duplex(4096);
    let (_tx, rx) = watch::channel(false);
    let session = Session::new(h.ctx.policy(), h.peer);
    let serve = run_session(server, session, &h.ctx, rx, true);
    let talk = async {
        client.write_all(b"EHLO c\r\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    let (_, out) = tokio::join!(serve, talk);
    assert!(
        out.ends_with("421 4.4.2 Idle timeout, closing connection\r\n"),
        "{out}"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_with_421() {
    let h = harness("");
    let (mut client, server) = tokio::io::duplex(4096);
    let (tx, rx) = watch::channel(false);
    let session = Session::new(h.ctx.policy(), h.peer);
    let serve = run_session(server, session, &h.ctx, rx, true);
    let talk = async {
        let mut greeting = [0u8; 32];
        let n = client.read(&mut greeting).await.unwrap();
        assert!(greeting[..n].starts_with(b"220 "));
        tx.send(true).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    };
    let (_, out) = tokio::join!(serve, talk);
    assert_eq!(out, "421 4.3.2 Service shutting down\r\n");
}

/// A user `erp` with password `secret-pw`, and one without a login.
fn users() -> String {
    let hash = super::auth::hash_password("secret-pw").unwrap();
    format!(
        "[[user]]\nname = \"erp\"\nlogin = \"erp\"\npassword_hash = \"{hash}\"\nemail = \"billing@contoso.com\"\n"
    )
}

fn auth_harness(peer: &str) -> Harness {
    build(
        "[smtp]\nhostname = \"mx.test\"\n",
        &users(),
        Arc::new(FixedSpace(true)),
        peer,
    )
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn auth_plain_and_login_from_an_allowed_network() {
    let h = auth_harness("127.0.0.1:4000");
    let plain = b64("\0erp\0secret-pw");
    let input = format!("EHLO c\r\nAUTH PLAIN {plain}\r\nAUTH PLAIN {plain}\r\nQUIT\r\n");
    let r = h.converse(input.as_bytes()).await;
    assert!(
        r.iter()
            .any(|l| l == "250-AUTH PLAIN LOGIN" || l == "250 AUTH PLAIN LOGIN"),
        "{r:?}"
    );
    let c = codes(&r);
    assert_eq!(c[2], "235 2.7.0 Authentication successful");
    assert!(c[3].starts_with("503 5.5.1 Already authenticated"), "{c:?}");

    let input = format!(
        "EHLO c\r\nAUTH LOGIN\r\n{}\r\n{}\r\nAUTH PLAIN\r\n{plain}\r\nQUIT\r\n",
        b64("erp"),
        b64("secret-pw")
    );
    let c = codes(&h.converse(input.as_bytes()).await);
    assert_eq!(c[2], "334 VXNlcm5hbWU6");
    assert_eq!(c[3], "334 UGFzc3dvcmQ6");
    assert_eq!(c[4], "235 2.7.0 Authentication successful");
}

#[tokio::test]
async fn auth_failures_535_then_421_after_three() {
    let h = auth_harness("127.0.0.1:4000");
    let bad = b64("\0erp\0wrong");
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {bad}\r\nAUTH LOGIN {}\r\n{}\r\nAUTH PLAIN {bad}\r\nNOOP\r\n",
        b64("erp"),
        b64("nope")
    );
    let c = codes(&h.converse(input.as_bytes()).await);
    assert_eq!(c[2], "535 5.7.8 Authentication credentials invalid");
    assert_eq!(c[3], "334 UGFzc3dvcmQ6");
    assert_eq!(c[4], "535 5.7.8 Authentication credentials invalid");
    assert_eq!(
        c[5],
        "421 4.7.0 Too many authentication failures, closing connection"
    );
    assert_eq!(c.len(), 6, "closed: NOOP never answered: {c:?}");
}

#[tokio::test]
async fn brute_force_from_one_address_is_cut_off() {
    let h = auth_harness("127.0.0.1:4000");
    let bad = b64("\0erp\0guess");
    // Five failures fill the per-address quota (two sessions), the sixth blocks it.
    for _ in 0..2 {
        h.converse(
            format!("EHLO c\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN {bad}\r\n")
                .as_bytes(),
        )
        .await;
    }
    let good = b64("\0erp\0secret-pw");
    let c = codes(
        &h.converse(format!("EHLO c\r\nAUTH PLAIN {good}\r\n").as_bytes())
            .await,
    );
    assert_eq!(
        c[2],
        "421 4.7.0 Too many authentication failures from your address; try again later"
    );
}

#[tokio::test]
async fn auth_needs_tls_outside_allowed_networks_and_cancel_works() {
    let h = auth_harness("192.0.2.9:4000");
    let plain = b64("\0erp\0secret-pw");
    let input = format!("EHLO c\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@b.com>\r\nQUIT\r\n");
    let r = h.converse(input.as_bytes()).await;
    assert!(
        !r.iter().any(|l| l.contains("AUTH")),
        "AUTH is not offered in plain text: {r:?}"
    );
    let c = codes(&r);
    assert!(c[2].starts_with("538 5.7.11"), "{c:?}");
    assert_eq!(c[3], "530 5.7.0 Authentication required");
    let h = auth_harness("127.0.0.1:4000");
    let c = codes(
        &h.converse(b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH CRAM-MD5\r\nQUIT\r\n")
            .await,
    );
    assert_eq!(c[3], "501 5.7.0 Authentication cancelled");
    assert!(c[4].starts_with("504 5.5.4"), "{c:?}");
}

#[tokio::test]
async fn long_lines_rejected_when_configured() {
    let h = harness("long_lines = \"reject\"");
    let long = "x".repeat(999);
    let input = format!("EHLO c\r\n{TXN}\r\n{long}\r\n.\r\nQUIT\r\n");
    let c = codes(&h.converse(input.as_bytes()).await);
    assert!(
        c[5].starts_with("554 5.6.0 Message has a line of 999 octets"),
        "{c:?}"
    );
    assert!(h.stored().is_empty());
}

#[tokio::test]
async fn smtputf8_addresses_need_smtputf8() {
    let h = harness("");
    let c = codes(&h.converse("EHLO c\r\nMAIL FROM:<jdöe@mächine.example> SMTPUTF8\r\nRCPT TO:<ü@bücher.example>\r\nRSET\r\nMAIL FROM:<jdöe@mächine.example>\r\nQUIT\r\n".as_bytes()).await);
    assert_eq!(c[2], "250 2.1.0 Sender OK");
    assert_eq!(c[3], "250 2.1.5 Recipient OK");
    assert!(c[5].starts_with("501 5.1.7"), "{c:?}");
}
