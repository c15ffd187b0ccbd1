//! The smtp provider against the scriptable test upstream (real sockets, real TLS): one
//! test per outcome and per diagnosis code SMTP can produce, byte identity, connection
//! reuse, and the auth soft bounce.

mod common;

use common::TestEnv;
use common::upstream::{Script, TestCa, Upstream, server_tls};
use mailgate::Daemon;
use mailgate::history::{Record, Status};
use std::sync::atomic::Ordering;

const USER: &str = "relay@contoso.com";
const PASS: &str = "s3cret-Passw0rd";

struct Relay {
    env: TestEnv,
    ca: TestCa,
    upstream: Upstream,
}

/// A STARTTLS + AUTH upstream with a certificate for localhost and 127.0.0.1.
fn tls_script(ca: &TestCa) -> Script {
    Script {
        offer_auth: true,
        credentials: Some((USER.into(), PASS.into())),
        ..Script::over_starttls(ca)
    }
}

impl Relay {
    async fn new(script: impl FnOnce(&TestCa) -> Script, provider: &str) -> Relay {
        let ca = TestCa::new("mailgate test CA");
        let upstream = Upstream::start(script(&ca)).await;
        let env = TestEnv::new("", "");
        std::fs::write(env.dir.path().join("ca.pem"), &ca.pem).unwrap();
        let r = Relay { env, ca, upstream };
        r.configure(provider);
        r
    }

    /// Rewrites the config: provider "up" pointing at the test upstream, as default.
    fn configure(&self, provider: &str) {
        let extra = format!(
            "{}timeout = \"5s\"\n{provider}\n\
             [distributor]\ndefault_provider = \"up\"\nretry_initial = \"1m\"\n",
            common::tls_smtp(
                "up",
                self.upstream.addr.port(),
                &self.env.dir.path().join("ca.pem")
            ),
        );
        self.env.write_config("", &extra);
    }

    async fn start(&self) -> Daemon {
        Daemon::start(self.env.config()).await.unwrap()
    }
}

const AUTH: &str = "username = \"relay@contoso.com\"\npassword = \"s3cret-Passw0rd\"";

async fn submit(daemon: &Daemon, rcpts: &[&str], body: &str) -> String {
    let data = format!("Subject: relay test\r\n\r\n{body}\r\n");
    common::submit_to(
        daemon.smtp_addrs[0],
        "app@erp.local",
        rcpts,
        data.as_bytes(),
    )
    .await
}

/// Submits one message and returns its record after the first attempt.
async fn first_attempt(daemon: &Daemon, rcpts: &[&str]) -> Record {
    let mut events = daemon.distributor.subscribe();
    let id = submit(daemon, rcpts, "hello").await;
    next_attempt(daemon, &mut events, &id).await
}

/// A relay on `script` with these provider lines, its daemon, and the record of one
/// message to a@contoso.com after its first attempt.
async fn one_attempt(
    script: impl FnOnce(&TestCa) -> Script,
    provider: &str,
) -> (Relay, Daemon, Record) {
    let relay = Relay::new(script, provider).await;
    let daemon = relay.start().await;
    let rec = first_attempt(&daemon, &["a@contoso.com"]).await;
    (relay, daemon, rec)
}

use common::next_record as next_attempt;

fn diag(r: &Record) -> &str {
    r.attempts
        .last()
        .unwrap()
        .diagnosis
        .as_ref()
        .map_or("", |d| d.code.as_str())
}

#[tokio::test]
async fn starttls_auth_delivers_the_stored_bytes() {
    let relay = Relay::new(tls_script, AUTH).await;
    let daemon = relay.start().await;
    let rec = first_attempt(&daemon, &["a@contoso.com", "b@contoso.com"]).await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    let got = relay.upstream.messages();
    assert_eq!(got.len(), 1);
    let stored = daemon.pipeline.store().message(&rec.id).unwrap().unwrap();
    assert_eq!(got[0].data, stored, "upstream bytes equal the stored bytes");
    assert_eq!(got[0].from, "app@erp.local");
    assert_eq!(got[0].rcpts, ["a@contoso.com", "b@contoso.com"]);
    assert_eq!(got[0].auth_user.as_deref(), Some(USER));
    assert!(got[0].tls, "sent inside STARTTLS");
    assert!(rec.recipients.iter().all(|r| r.status == Status::Sent && r.reply.as_deref() == Some("250 2.0.0 Ok: queued")));
    assert!(rec.attempts[0].diagnosis.is_none());
    daemon.shutdown().await;
}

#[tokio::test]
async fn auth_login_only_server_like_office_365() {
    let (relay, daemon, rec) = one_attempt(
        |ca| Script {
            auth_mechs: Some("LOGIN XOAUTH2".into()),
            ..tls_script(ca)
        },
        AUTH,
    )
    .await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    assert_eq!(
        relay.upstream.messages()[0].auth_user.as_deref(),
        Some(USER)
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn without_username_never_authenticates() {
    let (relay, daemon, rec) = one_attempt(
        |ca| Script {
            credentials: None,
            ..tls_script(ca)
        },
        "",
    )
    .await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    assert_eq!(relay.upstream.messages()[0].auth_user, None);
    daemon.shutdown().await;
}

#[tokio::test]
async fn username_but_no_auth_offered_is_auth_not_supported() {
    let (relay, daemon, rec) = one_attempt(
        |ca| Script {
            offer_auth: false,
            credentials: None,
            ..tls_script(ca)
        },
        AUTH,
    )
    .await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "auth-not-supported");
    let d = rec.attempts[0].diagnosis.as_ref().unwrap();
    assert!(d.fix.contains("If your SMTP server doesn't support authentication, please clear the SMTP user name and password"));
    assert!(relay.upstream.messages().is_empty());
    assert!(rec.next_attempt_at.is_some());
    daemon.shutdown().await;
}

#[tokio::test]
async fn starttls_required_never_falls_back_to_plain_text() {
    let (relay, daemon, rec) = one_attempt(
        |ca| Script {
            starttls: false,
            ..tls_script(ca)
        },
        AUTH,
    )
    .await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "starttls-unavailable");
    assert!(relay.upstream.messages().is_empty());
    daemon.shutdown().await;
}

#[tokio::test]
async fn untrusted_certificate_is_tls_certificate() {
    let (relay, daemon, rec) = one_attempt(
        |_| {
            let other = TestCa::new("somebody else");
            let (cert, key) = other.issue(&["localhost", "127.0.0.1"]);
            Script {
                starttls: true,
                tls: Some(server_tls(&cert, &key)),
                offer_auth: true,
                credentials: Some((USER.into(), PASS.into())),
                ..Script::default()
            }
        },
        AUTH,
    )
    .await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "tls-certificate", "{rec:#?}");
    assert!(relay.upstream.messages().is_empty());
    daemon.shutdown().await;
}

#[tokio::test]
async fn certificate_for_another_name_is_tls_certificate() {
    let (_relay, daemon, rec) = one_attempt(
        |ca| {
            let (cert, key) = ca.issue(&["mail.example.org"]);
            Script {
                starttls: true,
                tls: Some(server_tls(&cert, &key)),
                ..Script::default()
            }
        },
        "",
    )
    .await;
    assert_eq!(diag(&rec), "tls-certificate", "{rec:#?}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn implicit_tls() {
    let (relay, daemon, rec) = one_attempt(
        |ca| Script {
            starttls: false,
            implicit_tls: true,
            ..tls_script(ca)
        },
        &format!("tls = \"tls\"\n{AUTH}"),
    )
    .await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    assert!(relay.upstream.messages()[0].tls);
    daemon.shutdown().await;
}

#[tokio::test]
async fn connection_refused_is_connection_failed_and_retried_until_it_works() {
    let relay = Relay::new(tls_script, AUTH).await;
    // Point the provider at a port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&relay.env.config_path)
        .unwrap()
        .replace(
            &format!("port = {}", relay.upstream.addr.port()),
            &format!("port = {dead}"),
        )
        .replace("retry_initial = \"1m\"", "retry_initial = \"300ms\"");
    std::fs::write(&relay.env.config_path, &text).unwrap();
    let daemon = relay.start().await;
    let mut events = daemon.distributor.subscribe();
    let id = submit(&daemon, &["a@contoso.com"], "x").await;
    let rec = next_attempt(&daemon, &mut events, &id).await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "connection-failed");
    assert!(
        rec.attempts[0].reply.contains("cannot connect"),
        "{}",
        rec.attempts[0].reply
    );
    assert_eq!(rec.deferrals, 1);
    // Retried with backoff: a second attempt comes by itself, and fails the same way.
    let rec = next_attempt(&daemon, &mut events, &id).await;
    assert_eq!(rec.attempts.len(), 2);
    assert_eq!(rec.deferrals, 2);
    daemon.shutdown().await;
}

#[tokio::test]
async fn upstream_that_comes_back_gets_the_mail() {
    let relay = Relay::new(tls_script, AUTH).await;
    let text = std::fs::read_to_string(&relay.env.config_path)
        .unwrap()
        .replace("retry_initial = \"1m\"", "retry_initial = \"200ms\"");
    std::fs::write(&relay.env.config_path, &text).unwrap();
    relay.upstream.set_script(
        tls_script(&relay.ca).reply("mail", "421 4.3.2 Service not available, try again later"),
    );
    let daemon = relay.start().await;
    let mut events = daemon.distributor.subscribe();
    let id = submit(&daemon, &["a@contoso.com"], "x").await;
    let rec = next_attempt(&daemon, &mut events, &id).await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "upstream-throttled");
    relay.upstream.set_script(tls_script(&relay.ca));
    let rec = loop {
        let rec = next_attempt(&daemon, &mut events, &id).await;
        if rec.status != Status::Deferred {
            break rec;
        }
    };
    assert_eq!(rec.status, Status::Sent);
    assert_eq!(relay.upstream.messages().len(), 1);
    daemon.shutdown().await;
}

/// Replies at a stage and what they must become, the same whether the upstream offers
/// PIPELINING (MAIL, RCPT and DATA sent in one write) or not (each awaited).
async fn case(stage: &str, reply: &str, rcpts: &[&str], status: Status, code: &str) -> Record {
    let mut got = Vec::new();
    for pipelining in [false, true] {
        let relay = Relay::new(
            |ca| Script {
                pipelining,
                ..tls_script(ca).reply(stage, reply)
            },
            AUTH,
        )
        .await;
        let daemon = relay.start().await;
        let rec = first_attempt(&daemon, rcpts).await;
        assert_eq!(
            rec.status, status,
            "{stage} {reply}, pipelining {pipelining}: {rec:#?}"
        );
        assert_eq!(diag(&rec), code, "{stage} {reply}, pipelining {pipelining}");
        let attempt = rec.attempts.last().unwrap();
        assert!(!attempt.diagnosis.as_ref().unwrap().fix.is_empty());
        let batched = relay.upstream.pipelined.load(Ordering::SeqCst);
        if pipelining {
            // Past AUTH, the envelope went in one write.
            assert!(
                stage == "auth" || batched == 1,
                "{stage} {reply}: {batched} pipelined"
            );
        } else {
            assert_eq!(batched, 0, "pipelined although the server did not offer it");
        }
        daemon.shutdown().await;
        got.push(rec);
    }
    let outcome = |r: &Record| {
        let a = r.attempts.last().unwrap();
        let rcpts: Vec<_> = r
            .recipients
            .iter()
            .map(|x| (x.status, x.reply.clone()))
            .collect();
        (r.status, a.reply.clone(), diag(r).to_string(), rcpts)
    };
    assert_eq!(
        outcome(&got[0]),
        outcome(&got[1]),
        "{stage} {reply}: with and without PIPELINING"
    );
    got.pop().unwrap()
}

/// With PIPELINING, the replies are read in step whatever they say: after a refused
/// recipient, after every recipient refused (DATA then refused too) and after a refused
/// MAIL (every RCPT and DATA then refused), the same connection carries the next message.
#[tokio::test]
async fn pipelined_replies_keep_the_connection_in_step() {
    let script = |ca: &TestCa| Script {
        pipelining: true,
        ..tls_script(ca).reply("rcpt:b@contoso.com", "550 5.1.1 User unknown")
    };
    let relay = Relay::new(script, &format!("{AUTH}\nmax_connections = 1")).await;
    let daemon = relay.start().await;
    let mut events = daemon.distributor.subscribe();
    let mut send = async |rcpts: &[&str], body: &str| {
        let id = submit(&daemon, rcpts, body).await;
        next_attempt(&daemon, &mut events, &id).await
    };
    let rec = send(&["a@contoso.com", "b@contoso.com", "c@contoso.com"], "one").await;
    assert_eq!(rec.status, Status::Partial, "{rec:#?}");
    let fates: Vec<_> = rec.recipients.iter().map(|r| r.status).collect();
    assert_eq!(fates, [Status::Sent, Status::Failed, Status::Sent]);
    assert_eq!(
        rec.recipients[1].reply.as_deref(),
        Some("550 5.1.1 User unknown")
    );
    let rec = send(&["b@contoso.com"], "two").await;
    assert_eq!(rec.status, Status::Failed, "{rec:#?}");
    assert_eq!(diag(&rec), "recipient-unknown");
    let rec = send(&["a@contoso.com"], "three").await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    relay.upstream.set_script(Script {
        pipelining: true,
        ..tls_script(&relay.ca).reply("mail", "452 4.3.1 Insufficient system storage")
    });
    let rec = send(&["a@contoso.com"], "four").await;
    assert_eq!(rec.status, Status::Deferred, "{rec:#?}");
    assert_eq!(
        rec.attempts[0].reply,
        "452 4.3.1 Insufficient system storage"
    );
    relay.upstream.set_script(script(&relay.ca));
    let rec = send(&["c@contoso.com"], "five").await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    // The refusals' bounces to the sender went the same way.
    let all = relay.upstream.messages();
    let got: Vec<_> = all
        .iter()
        .filter(|m| m.rcpts != ["app@erp.local"])
        .collect();
    let seen: Vec<(Vec<String>, bool)> = got
        .iter()
        .map(|m| (m.rcpts.clone(), m.data.ends_with(b"\r\n")))
        .collect();
    assert_eq!(
        seen,
        [
            (
                vec!["a@contoso.com".to_string(), "c@contoso.com".to_string()],
                true
            ),
            (vec!["a@contoso.com".to_string()], true),
            (vec!["c@contoso.com".to_string()], true),
        ]
    );
    for (m, body) in got.iter().zip(["one", "three", "five"]) {
        assert!(
            m.data.ends_with(format!("\r\n\r\n{body}\r\n").as_bytes()),
            "{m:?}"
        );
    }
    assert_eq!(
        relay.upstream.pipelined.load(Ordering::SeqCst),
        5 + all.len() - got.len(),
        "every envelope in one write"
    );
    assert_eq!(
        relay.upstream.connections.load(Ordering::SeqCst),
        1,
        "one connection carried them all"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn auth_failures_are_deferred_with_their_diagnosis() {
    let cases = [
        ("535 5.7.8 Error: authentication failed", "auth-failed"),
        ("535 5.7.3 Authentication unsuccessful", "auth-failed"),
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
            "smtp-auth-disabled",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, the request did not meet the criteria to be authenticated successfully. Contact your administrator.",
            "auth-mfa-required",
        ),
        (
            "550 5.7.30 Basic authentication is not supported for Client Submission.",
            "basic-auth-retired",
        ),
    ];
    for (reply, code) in cases {
        let rec = case("auth", reply, &["a@contoso.com"], Status::Deferred, code).await;
        assert_eq!(rec.attempts[0].reply, reply);
    }
}

#[tokio::test]
async fn message_level_replies() {
    case(
        "mail",
        "530 5.7.57 Client not authenticated to send mail",
        &["a@contoso.com"],
        Status::Deferred,
        "not-authenticated",
    )
    .await;
    case(
        "mail",
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
        &["a@contoso.com"],
        Status::Deferred,
        "send-as-denied",
    )
    .await;
    case(
        "end",
        "554 5.2.0 STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied",
        &["a@contoso.com"],
        Status::Deferred,
        "send-as-denied",
    )
    .await;
    case(
        "end",
        "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
        &["a@contoso.com"],
        Status::Deferred,
        "daily-quota",
    )
    .await;
    case(
        "end",
        "552 5.3.4 Message size exceeds fixed maximum message size",
        &["a@contoso.com"],
        Status::Failed,
        "message-too-large",
    )
    .await;
    case(
        "mail",
        "421 4.7.0 Too many connections, slow down",
        &["a@contoso.com"],
        Status::Deferred,
        "upstream-throttled",
    )
    .await;
    case(
        "data",
        "451 4.3.0 Temporary local problem",
        &["a@contoso.com"],
        Status::Deferred,
        "unknown",
    )
    .await;
    case(
        "mail",
        "550 5.1.8 Sender address rejected",
        &["a@contoso.com"],
        Status::Failed,
        "sender-refused",
    )
    .await;
}

#[tokio::test]
async fn per_recipient_replies() {
    // 5xx to some recipients: sent to the others, status partial.
    let rec = case(
        "rcpt:b@contoso.com",
        "550 5.1.1 User unknown",
        &["a@contoso.com", "b@contoso.com"],
        Status::Partial,
        "recipient-unknown",
    )
    .await;
    assert_eq!(rec.recipients[0].status, Status::Sent);
    assert_eq!(rec.recipients[1].status, Status::Failed);
    assert_eq!(
        rec.recipients[1].reply.as_deref(),
        Some("550 5.1.1 User unknown")
    );
    assert!(rec.sent_at.is_some());
    // The attempt's words describe this attempt: accepted for one, refused for the other.
    let attempt = &rec.attempts[0];
    assert!(attempt.reply.starts_with("250"), "{}", attempt.reply);
    let d = attempt.diagnosis.as_ref().unwrap();
    assert!(
        d.explanation.starts_with(
            "The upstream accepted the message for 1 of 2 recipients and refused 1: b@contoso.com (550 5.1.1 User unknown)."
        ),
        "{}",
        d.explanation
    );
    assert!(
        !d.explanation.contains("refused the message"),
        "{}",
        d.explanation
    );
    assert!(d.fix.contains("Correct the address"), "{}", d.fix);
    // One recipient, unknown: failed at once, with the code and its fix.
    let rec = case(
        "rcpt:a@contoso.com",
        "550 5.1.1 <a@contoso.com>: Recipient address rejected: User unknown in local recipient table",
        &["a@contoso.com"],
        Status::Failed,
        "recipient-unknown",
    )
    .await;
    assert!(rec.attempts[0].reply.contains("User unknown"));
    case(
        "rcpt:full@contoso.com",
        "552 5.2.2 Mailbox full",
        &["a@contoso.com", "full@contoso.com"],
        Status::Partial,
        "mailbox-full",
    )
    .await;
    case(
        "rcpt:b@contoso.com",
        "550 5.1.2 single label domains not accepted",
        &["a@contoso.com", "b@contoso.com"],
        Status::Partial,
        "single-label-domain",
    )
    .await;
    // 5xx to every recipient: failed.
    let relay = Relay::new(
        |ca| {
            tls_script(ca)
                .reply("rcpt:a@contoso.com", "550 5.1.1 User unknown")
                .reply(
                    "rcpt:b@contoso.com",
                    "550 5.1.2 single label domains not accepted",
                )
        },
        AUTH,
    )
    .await;
    let daemon = relay.start().await;
    let rec = first_attempt(&daemon, &["a@contoso.com", "b@contoso.com"]).await;
    assert_eq!(rec.status, Status::Failed);
    assert!(relay.upstream.messages().is_empty());
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_4xx_recipient_is_retried_alone() {
    let relay = Relay::new(
        |ca| {
            tls_script(ca).reply(
                "rcpt:later@contoso.com",
                "450 4.2.1 Mailbox busy, try again later",
            )
        },
        AUTH,
    )
    .await;
    let text = std::fs::read_to_string(&relay.env.config_path)
        .unwrap()
        .replace("retry_initial = \"1m\"", "retry_initial = \"200ms\"");
    std::fs::write(&relay.env.config_path, &text).unwrap();
    let daemon = relay.start().await;
    let mut events = daemon.distributor.subscribe();
    let id = submit(&daemon, &["now@contoso.com", "later@contoso.com"], "x").await;
    let rec = next_attempt(&daemon, &mut events, &id).await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(rec.recipients[0].status, Status::Sent);
    assert_eq!(rec.recipients[1].status, Status::Deferred);
    relay.upstream.set_script(tls_script(&relay.ca));
    let rec = next_attempt(&daemon, &mut events, &id).await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    let got = relay.upstream.messages();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].rcpts, ["now@contoso.com"]);
    assert_eq!(
        got[1].rcpts,
        ["later@contoso.com"],
        "only the waiting recipient is retried"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn connections_are_reused_up_to_max_connections() {
    let relay = Relay::new(tls_script, &format!("{AUTH}\nmax_connections = 2")).await;
    let daemon = relay.start().await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(submit(&daemon, &["a@contoso.com"], &format!("m{i}")).await);
    }
    relay.upstream.wait_for(8).await;
    let opened = relay
        .upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(opened <= 2, "8 messages used {opened} connections");
    daemon.shutdown().await;
}

#[tokio::test]
async fn wrong_password_holds_mail_until_the_config_is_fixed() {
    let (relay, daemon, rec) = one_attempt(
        tls_script,
        "username = \"relay@contoso.com\"\npassword = \"wrong\"",
    )
    .await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "auth-failed");
    daemon.shutdown().await;
    // Fix the password, restart: the held message goes at once (no backoff wait).
    relay.configure(AUTH);
    let daemon = relay.start().await;
    let got = relay.upstream.wait_for(1).await;
    assert_eq!(got[0].auth_user.as_deref(), Some(USER));
    let rec = daemon.pipeline.store().record(&rec.id).unwrap().unwrap();
    daemon.shutdown().await;
    assert!(got[0].data == daemon_message(&relay, &rec.id));
}

fn daemon_message(relay: &Relay, id: &str) -> Vec<u8> {
    let store = mailgate::store::Store::open(&relay.env.config().store.path).unwrap();
    store.message(id).unwrap().unwrap()
}

#[tokio::test]
async fn give_up_after_fails_the_message() {
    let relay = Relay::new(
        tls_script,
        "username = \"relay@contoso.com\"\npassword = \"wrong\"",
    )
    .await;
    let text = std::fs::read_to_string(&relay.env.config_path)
        .unwrap()
        .replace(
            "retry_initial = \"1m\"",
            "retry_initial = \"1m\"\ngive_up_after = \"1ms\"",
        );
    std::fs::write(&relay.env.config_path, &text).unwrap();
    let daemon = relay.start().await;
    let rec = first_attempt(&daemon, &["a@contoso.com"]).await;
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(diag(&rec), "auth-failed");
    daemon.shutdown().await;
}

#[tokio::test]
async fn stored_password_from_another_installation_is_undecryptable() {
    let relay = Relay::new(tls_script, "username = \"relay@contoso.com\"").await;
    // A secrets file sealed by another installation's key.
    let other = tempfile::tempdir().unwrap();
    let store = mailgate::secrets::SecretStore::beside(&other.path().join("x.redb"));
    store
        .set("up", &mailgate::secrets::Secret::new(PASS))
        .unwrap();
    let data = relay.env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(other.path().join("secrets.json"), data.join("secrets.json")).unwrap();
    let daemon = relay.start().await;
    let rec = first_attempt(&daemon, &["a@contoso.com"]).await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "password-undecryptable");
    assert!(common::first_fix(&rec).contains("mailgate password set"));
    daemon.shutdown().await;
    // Set on this installation, it works.
    mailgate::secrets::SecretStore::beside(&relay.env.config().store.path)
        .set("up", &mailgate::secrets::Secret::new(PASS))
        .unwrap();
    let daemon = relay.start().await;
    relay.upstream.wait_for(1).await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn silent_upstream_times_out() {
    let relay = Relay::new(
        |_| Script {
            silent: true,
            ..Script::default()
        },
        "",
    )
    .await;
    let text = std::fs::read_to_string(&relay.env.config_path)
        .unwrap()
        .replace("timeout = \"5s\"", "timeout = \"500ms\"");
    std::fs::write(&relay.env.config_path, text).unwrap();
    let daemon = relay.start().await;
    let mut events = daemon.distributor.subscribe();
    let stuck = submit(&daemon, &["a@contoso.com"], "to the silent one").await;
    let rec = next_attempt(&daemon, &mut events, &stuck).await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(diag(&rec), "connection-failed");
    assert!(
        rec.attempts[0].reply.contains("no answer from the server"),
        "{}",
        rec.attempts[0].reply
    );
    daemon.shutdown().await;
}
