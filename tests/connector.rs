//! Microsoft 365 through an inbound connector by certificate (no mailbox, no AUTH): the
//! provider presents `tls_client_cert` on STARTTLS to an upstream that requires a client
//! certificate issued by its CA (rustls' WebPKI client verifier, as Exchange Online
//! checks the connector's certificate). With it the message is relayed and the upstream
//! saw its subject; without it, or with one from another CA, the attempt is diagnosed and
//! the mail held; `550 5.7.64 TenantAttribution` is `connector-not-matched`; `verify`
//! prints the certificate; check-config refuses a certificate without its key.

mod common;

use common::upstream::{Script, TestCa, Upstream, server_tls_requiring_client};
use common::{TestEnv, assert_has, send_and_wait, short_message};
use mailgate::history::{Attempt, Record, Status};

const SUBJECT: &str = "relay.contoso.test";

/// A connector upstream: STARTTLS, a server certificate of `ca`, and a client
/// certificate of `ca` required; `reply` overrides one stage.
async fn connector(ca: &TestCa, reply: Option<(&str, &str)>) -> Upstream {
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let mut script = Script {
        starttls: true,
        tls: Some(server_tls_requiring_client(&cert, &key, &ca.pem)),
        ..Script::default()
    };
    if let Some((stage, text)) = reply {
        script = script.reply(stage, text);
    }
    Upstream::start(script).await
}

/// A test env whose default provider `connector` reaches `up`, trusting `ca`, with
/// `client` (certificate PEM, key PEM) as its client certificate when given.
fn env_for(up: &Upstream, ca: &TestCa, client: Option<(String, String)>) -> TestEnv {
    let env = TestEnv::new("", "");
    let dir = env.dir.path();
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    let mut provider = common::tls_smtp("connector", up.addr.port(), &dir.join("ca.pem"));
    if let Some((cert, key)) = client {
        std::fs::write(dir.join("relay.pem"), cert).unwrap();
        std::fs::write(dir.join("relay.key"), key).unwrap();
        provider.push_str(&format!(
            "tls_client_cert = \"{}\"\ntls_client_key_file = \"{}\"\n",
            dir.join("relay.pem").display(),
            dir.join("relay.key").display()
        ));
    }
    env.write_config(
        "",
        &format!(
            "{provider}timeout = \"5s\"\n[distributor]\ndefault_provider = \"connector\"\n[notify]\nbounce = \"off\"\n"
        ),
    );
    env
}

/// A scanner's message through `d`: its record after the first attempt.
async fn scan(d: &mailgate::Daemon) -> Record {
    let to = ["someone@example.com"];
    send_and_wait(d, "scanner@contoso.test", &to, &short_message("scan")).await
}

/// A daemon on `env` sends one message and stops: the message's record after its first
/// attempt.
async fn one_attempt(env: &TestEnv) -> Record {
    let d = mailgate::Daemon::start(env.config()).await.unwrap();
    let rec = scan(&d).await;
    d.shutdown().await;
    rec
}

/// The attempt of a message held (deferred, not failed: fixing the configuration sends
/// it) with the diagnosis `code`.
fn held_with<'a>(rec: &'a Record, code: &str) -> &'a Attempt {
    let attempt = &rec.attempts[0];
    let diagnosis = attempt.diagnosis.as_ref().expect("diagnosed");
    assert_eq!(diagnosis.code.as_str(), code, "{rec:#?}");
    assert_eq!(rec.status, Status::Deferred, "{rec:#?}");
    attempt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_certificate_the_message_is_relayed_and_the_upstream_saw_its_subject() {
    let ca = TestCa::new("connector test CA");
    let up = connector(&ca, None).await;
    let env = env_for(&up, &ca, Some(ca.issue_client(SUBJECT)));
    let d = mailgate::Daemon::start(env.config()).await.unwrap();
    let rec = scan(&d).await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    let got = up.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(
        got[0].client_cert.as_deref(),
        Some(&*format!("CN={SUBJECT}"))
    );
    assert_eq!(got[0].auth_user, None, "a connector takes no AUTH");
    assert_eq!(got[0].rcpts, ["someone@example.com"]);
    // The certificate's end is a credential's end: the metric the sign-in-expiring
    // alert and its Prometheus rule read is set for this provider.
    let metrics = common::text_at(format!("http://{}/metrics", d.status_addr)).await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("mailgate_oauth2_credential_expires_seconds{")
                && l.contains("provider=\"connector\"")
        })
        .unwrap_or_else(|| panic!("no credential metric for the connector:\n{metrics}"));
    let secs: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs > 86_400.0, "{line}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_or_with_a_stranger_the_failure_is_diagnosed_and_held() {
    let ca = TestCa::new("connector test CA");
    let up = connector(&ca, None).await;
    let stranger = TestCa::new("someone else's CA").issue_client(SUBJECT);
    for (client, says) in [
        (None, "presented none"),
        (Some(stranger), "refused mailgate's client certificate"),
    ] {
        let rec = one_attempt(&env_for(&up, &ca, client)).await;
        let attempt = held_with(&rec, "tls-certificate");
        assert_has(&attempt.reply, &[says, "tls_client_cert"]);
    }
    assert!(up.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_attribution_refusal_is_connector_not_matched() {
    let ca = TestCa::new("connector test CA");
    let refusal = "550 5.7.64 TenantAttribution; Relay Access Denied [SN1NAM02FT0049.eop-nam02.prod.protection.outlook.com]";
    let up = connector(&ca, Some(("mail", refusal))).await;
    let rec = one_attempt(&env_for(&up, &ca, Some(ca.issue_client(SUBJECT)))).await;
    let attempt = held_with(&rec, "connector-not-matched");
    let diagnosis = attempt.diagnosis.as_ref().unwrap();
    assert!(attempt.reply.contains("5.7.64"), "{}", attempt.reply);
    assert_has(
        &diagnosis.fix,
        &["Connectors", "tls_client_cert", "accepted domains"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_prints_the_client_certificate_and_check_config_wants_its_key() {
    let ca = TestCa::new("connector test CA");
    let up = connector(&ca, None).await;
    let env = env_for(&up, &ca, Some(ca.issue_client(SUBJECT)));
    let out = common::cli_ok(&env, &["verify", "--provider", "connector"]);
    assert_has(
        &out,
        &[
            "no sign-in (the client certificate identifies mailgate)",
            &format!("client certificate presented: subject CN={SUBJECT}"),
            "issuer CN=connector test CA",
            "valid until",
        ],
    );

    // The key as written here (mode 0644) is readable by every local user: said.
    let said = common::cli_ok(&env, &["check-config"]);
    assert_has(
        &said,
        &[
            "warning: tls_client_key_file",
            "readable by every local user",
        ],
    );

    // The key stored encrypted instead of a file: check-config takes it, and the
    // connector recognises the certificate.
    let key_pem = std::fs::read(env.dir.path().join("relay.key")).unwrap();
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    let key_line = format!(
        "tls_client_key_file = \"{}\"\n",
        env.dir.path().join("relay.key").display()
    );
    let mut set = std::process::Command::new(common::bin());
    set.args(["--config", env.config_path.to_str().unwrap()])
        .args([
            "password",
            "set",
            "--provider",
            "connector",
            "--tls-client-key",
        ]);
    let o = common::run_with_stdin(&mut set, b"not a key\n");
    assert_eq!(o.status.code(), Some(1), "a non-key is refused");
    assert_has(
        &String::from_utf8_lossy(&o.stderr),
        &["not a PEM private key", "nothing stored"],
    );
    let o = common::run_with_stdin(&mut set, &key_pem);
    assert_has(
        &common::exited(&o, 0),
        &["stored the TLS client key of provider \"connector\""],
    );
    std::fs::write(&env.config_path, text.replace(&key_line, "")).unwrap();
    std::fs::remove_file(env.dir.path().join("relay.key")).unwrap();
    common::cli_ok(&env, &["check-config"]);
    let rec = one_attempt(&env).await;
    assert_eq!(rec.status, Status::Sent, "{rec:#?}");
    assert_eq!(
        up.messages()[0].client_cert.as_deref(),
        Some(&*format!("CN={SUBJECT}"))
    );
    let said = common::cli_ok(
        &env,
        &[
            "password",
            "clear",
            "--provider",
            "connector",
            "--tls-client-key",
        ],
    );
    assert_has(&said, &["removed the stored TLS client key"]);

    // A certificate without its key, and one with tls = "none", are refused.
    let key = env.dir.path().join("relay.key").display().to_string();
    let text = std::fs::read_to_string(&env.config_path).unwrap();
    std::fs::write(
        &env.config_path,
        text.replace(&format!("tls_client_key_file = \"{key}\"\n"), ""),
    )
    .unwrap();
    let said = common::check_config_refuses(&env.config_path);
    assert_has(&said, &["tls_client_cert needs its key"]);
    std::fs::write(
        &env.config_path,
        text.replace("kind = \"smtp\"\n", "kind = \"smtp\"\ntls = \"none\"\n"),
    )
    .unwrap();
    let said = common::check_config_refuses(&env.config_path);
    assert_has(&said, &["tls_client_cert is presented in TLS"]);
}
