//! End to end: who sent it. Users identified by envelope sender and by header From, and
//! unidentified mail with and without `rewrite.default_sender`, each arriving at its
//! provider with the expected From, Sender and envelope. (Identification by AUTH login is
//! in `listener_tls.rs`.)

mod common;

use common::TestEnv;
use common::upstream::{Script, Upstream};
use mailgate::Daemon;
use mailgate::history::Record;

async fn setup(default_sender: Option<&str>) -> (TestEnv, Upstream, Daemon) {
    let up = Upstream::start(Script::default()).await;
    let env = TestEnv::new("", "");
    let rewrite = default_sender.map_or(String::new(), |s| {
        format!("[rewrite]\ndefault_sender = \"{s}\"\nreply_to_original = true\n")
    });
    env.write_config(
        "",
        &format!(
            "{}\
             {rewrite}\
             [[user]]\nname = \"erp\"\nemail = \"erp@contoso.com\"\nsender_email = \"billing@contoso.com\"\nmatch_senders = [\"noreply@erp.local\", \"*@legacy.local\"]\n\
             [[user]]\nname = \"scanner\"\nemail = \"scanner@contoso.com\"\nsend_mode = \"on-behalf-of\"\nprovider = \"up\"\n",
            common::plain_smtp("up", up.addr.port())),
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    (env, up, daemon)
}

async fn send(daemon: &Daemon, from: &str, data: &str) -> Record {
    common::send_and_wait(daemon, from, &["customer@example.com"], data.as_bytes()).await
}

fn header_block(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.split("\r\n\r\n").next().unwrap().to_string()
}

#[tokio::test]
async fn identified_by_envelope_sender() {
    let (env, _up, daemon) = setup(None).await;
    let rec = send(
        &daemon,
        "noreply@erp.local",
        "From: ERP <noreply@erp.local>\r\nSubject: a\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(rec.user.as_deref(), Some("erp"));
    assert_eq!(rec.original_sender, "noreply@erp.local");
    assert_eq!(rec.sender, "billing@contoso.com");
    assert_eq!(rec.provider, "outbox");
    let h = header_block(&env.eml(&rec.id));
    assert!(
        h.contains(
            "\r\nFrom: ERP <billing@contoso.com>\r\nX-Original-From: ERP <noreply@erp.local>\r\n"
        ),
        "{h}"
    );
    assert!(!h.contains("Sender:"));
    daemon.shutdown().await;
}

#[tokio::test]
async fn identified_by_header_from_domain_pattern() {
    let (env, _up, daemon) = setup(None).await;
    let rec = send(
        &daemon,
        "bounce@mailer.internal",
        "From: \"Legacy, App\" <app@LEGACY.local>\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(rec.user.as_deref(), Some("erp"));
    assert_eq!(rec.sender, "billing@contoso.com");
    let h = header_block(&env.eml(&rec.id));
    assert!(
        h.contains("From: \"Legacy, App\" <billing@contoso.com>\r\n"),
        "{h}"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn on_behalf_of_user_routed_to_its_provider() {
    let (_env, up, daemon) = setup(None).await;
    let rec = send(
        &daemon,
        "scan@printer.local",
        "From: scanner@contoso.com\r\nSubject: scan\r\n\r\npdf\r\n",
    )
    .await;
    assert_eq!(rec.user.as_deref(), Some("scanner"));
    assert_eq!(rec.provider, "up");
    // No account on the provider: the envelope is the target.
    let got = up.wait_for(1).await;
    assert_eq!(got[0].from, "scanner@contoso.com");
    let h = header_block(&got[0].data);
    assert!(h.contains("\r\nFrom: scanner@contoso.com\r\n"), "{h}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn on_behalf_of_names_the_provider_account() {
    let up = Upstream::start(Script {
        offer_auth: true,
        credentials: Some(("relay@contoso.com".into(), "pw".into())),
        ..Script::default()
    })
    .await;
    let env = TestEnv::new(
        "",
        &format!(
            "{}username = \"relay@contoso.com\"\npassword = \"pw\"\n\
             [[user]]\nname = \"scanner\"\nemail = \"scanner@contoso.com\"\nsend_mode = \"on-behalf-of\"\nprovider = \"up\"\nmatch_senders = [\"*@printer.local\"]\n",
            common::plain_smtp("up", up.addr.port())
        ),
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    let rec = send(
        &daemon,
        "scan@printer.local",
        "From: Scanner <scan@printer.local>\r\n\r\npdf\r\n",
    )
    .await;
    assert_eq!(rec.sender, "relay@contoso.com");
    let got = up.wait_for(1).await;
    assert_eq!(
        got[0].from, "relay@contoso.com",
        "envelope names the account"
    );
    let h = header_block(&got[0].data);
    assert!(h.contains("\r\nFrom: Scanner <scanner@contoso.com>\r\nX-Original-From: Scanner <scan@printer.local>\r\nSender: <relay@contoso.com>\r\n"), "{h}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn unidentified_without_default_sender_goes_as_submitted() {
    let (env, _up, daemon) = setup(None).await;
    let data = "From: Someone <someone@else.example>\r\nSubject: as is\r\nMessage-ID: <m1@else.example>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n";
    let rec = send(&daemon, "someone@else.example", data).await;
    assert_eq!(rec.user, None);
    assert_eq!(rec.sender, "someone@else.example");
    let eml = String::from_utf8(env.eml(&rec.id)).unwrap();
    let after_received = &eml[eml.find("From: Someone").unwrap()..];
    assert_eq!(after_received, data, "only the Received header was added");
    daemon.shutdown().await;
}

#[tokio::test]
async fn unidentified_with_default_sender() {
    let (env, _up, daemon) = setup(Some("noreply@contoso.com")).await;
    let rec = send(
        &daemon,
        "someone@else.example",
        "From: Someone <someone@else.example>\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(rec.user, None);
    assert_eq!(rec.sender, "noreply@contoso.com");
    let h = header_block(&env.eml(&rec.id));
    assert!(h.contains("\r\nFrom: Someone <noreply@contoso.com>\r\nX-Original-From: Someone <someone@else.example>\r\nReply-To: Someone <someone@else.example>\r\n"), "{h}");
    daemon.shutdown().await;
}
