//! Modern auth upstream: OAuth2 client credentials (secret and certificate), XOAUTH2 on
//! SMTP, and the Graph provider, against local servers speaking the documented wire
//! formats of the Microsoft identity platform and Microsoft Graph.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::TestEnv;
use common::msgraph::MockMicrosoft;
use common::upstream::{Script, Upstream};
use mailgate::Daemon;
use mailgate::history::{Record, Status};

use common::WAIT;

fn graph_provider(ms: &MockMicrosoft, secret_lines: &str) -> String {
    format!(
        "{}\
         [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app-123\"\ntoken_url = \"{}\"\n{secret_lines}\n\
         [distributor]\ndefault_provider = \"exchange\"\n",
        common::graph_at("exchange", ms.graph_url()),
        ms.token_url("contoso")
    )
}

/// A daemon sending through Graph at `ms` with the client secret `secret`, and
/// `extra_smtp` in its `[smtp]`.
async fn graph_daemon(ms: &MockMicrosoft, extra_smtp: &str, secret: &str) -> (TestEnv, Daemon) {
    let secret = format!("client_secret = \"{secret}\"");
    let env = TestEnv::new(extra_smtp, &graph_provider(ms, &secret));
    let daemon = start(&env).await;
    (env, daemon)
}

async fn start(env: &TestEnv) -> Daemon {
    Daemon::start(env.config()).await.unwrap()
}

async fn send_one(daemon: &Daemon, rcpts: &[&str], body: &str) -> Record {
    let data =
        format!("From: erp@contoso.com\r\nTo: a@contoso.com\r\nSubject: t\r\n\r\n{body}\r\n");
    common::send_and_wait(daemon, "erp@contoso.com", rcpts, data.as_bytes()).await
}

fn diag(r: &Record) -> String {
    r.attempts
        .last()
        .and_then(|a| a.diagnosis.as_ref())
        .map(|d| d.code.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn graph_sends_the_stored_mime_with_one_cached_token() {
    let ms = MockMicrosoft::start().await;
    let (_env, daemon) = graph_daemon(&ms, "", "app-secret-value").await;
    let a = send_one(&daemon, &["a@contoso.com"], "one").await;
    let b = send_one(&daemon, &["a@contoso.com", "hidden@contoso.com"], "two").await;
    let c = send_one(&daemon, &["a@contoso.com"], "three").await;
    for r in [&a, &b, &c] {
        assert_eq!(r.status, Status::Sent, "{r:#?}");
    }
    ms.with(|s| {
        assert_eq!(s.grants.len(), 1, "one token serves every message");
        let g = &s.grants[0];
        assert_eq!(g["grant_type"], "client_credentials");
        assert_eq!(g["client_id"], "app-123");
        assert_eq!(g["client_secret"], "app-secret-value");
        assert_eq!(g["scope"], "https://graph.microsoft.com/.default");
        assert_eq!(s.sent.len(), 3);
        for m in &s.sent {
            assert_eq!(m.sender, "erp@contoso.com");
            assert_eq!(m.authorization, "Bearer tok-1");
            assert_eq!(m.content_type, "text/plain");
        }
    });
    let stored = |id: &str| daemon.pipeline.store().message(id).unwrap().unwrap();
    ms.with(|s| {
        assert_eq!(s.sent[0].mime, stored(&a.id), "Graph got the stored bytes");
        let mut with_bcc = b"Bcc: hidden@contoso.com\r\n".to_vec();
        with_bcc.extend(stored(&b.id));
        assert_eq!(s.sent[1].mime, with_bcc, "a blind recipient travels as Bcc");
    });
    // The record knew it from intake: Graph took it from there.
    let blind: Vec<Option<bool>> = b.recipients.iter().map(|r| r.blind).collect();
    assert_eq!(blind, [Some(false), Some(true)]);
    // /status shows the token.
    let st: serde_json::Value =
        common::json_at(format!("http://{}/status", daemon.status_addr)).await;
    let p = common::provider_in(&st, "exchange").clone();
    assert_eq!(p["oauth2"]["token_valid"], true);
    assert!(
        p["oauth2"]["token_expires_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(p["oauth2"]["last_token_error"].is_null());
    // The secret is in no log line, record or status.
    let all = serde_json::to_string(&daemon.pipeline.store().list(100, |_| true).unwrap()).unwrap();
    assert!(!all.contains("app-secret-value") && !st.to_string().contains("app-secret-value"));
    daemon.shutdown().await;
}

#[tokio::test]
async fn tokens_are_renewed_before_they_expire() {
    // Renewed five minutes before expiry, or at half-life for a shorter token: a 2-second
    // token serves for one second.
    let ms = MockMicrosoft::start().await;
    ms.with(|s| s.expires_in = 2);
    let (_env, daemon) = graph_daemon(&ms, "", "s").await;
    for i in 0..3 {
        if i == 2 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        assert_eq!(
            send_one(&daemon, &["a@contoso.com"], &format!("m{i}"))
                .await
                .status,
            Status::Sent
        );
    }
    ms.with(|s| {
        assert_eq!(s.grants.len(), 2);
        let tokens: Vec<&str> = s.sent.iter().map(|m| m.authorization.as_str()).collect();
        assert_eq!(tokens, ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]);
    });
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_rejected_token_is_refreshed_once_then_deferred() {
    let ms = MockMicrosoft::start().await;
    ms.with(|s| s.revoked = vec!["tok-1".into(), "tok-2".into()]);
    let (_env, daemon) = graph_daemon(&ms, "", "s").await;
    let r = send_one(&daemon, &["a@contoso.com"], "x").await;
    assert_eq!(r.status, Status::Deferred);
    assert_eq!(diag(&r), "graph-unauthorized");
    assert_eq!(ms.with(|s| s.grants.len()), 2, "one refresh, not more");
    // Once Graph accepts tokens again, retry sends it with a fresh one.
    ms.with(|s| s.revoked.clear());
    let mut events = daemon.distributor.subscribe();
    let resp = common::post_action(format!(
        "http://{}/api/messages/{}/retry",
        daemon.status_addr, r.id
    ))
    .await;
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(WAIT, async {
        while events.recv().await.unwrap().id != r.id {}
    })
    .await
    .unwrap();
    assert_eq!(
        daemon
            .pipeline
            .store()
            .record(&r.id)
            .unwrap()
            .unwrap()
            .status,
        Status::Sent
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn graph_statuses_map_to_outcomes() {
    let cases: [(u16, Option<u64>, &str, Status, &str); 7] = [
        (
            403,
            None,
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}"#,
            Status::Deferred,
            "graph-forbidden",
        ),
        (
            404,
            None,
            r#"{"error":{"code":"ErrorInvalidUser","message":"The requested user is invalid."}}"#,
            Status::Deferred,
            "graph-mailbox-not-found",
        ),
        (
            429,
            Some(120),
            r#"{"error":{"code":"ApplicationThrottled","message":"Too many requests"}}"#,
            Status::Deferred,
            "upstream-throttled",
        ),
        (503, Some(30), "", Status::Deferred, "upstream-throttled"),
        (500, None, "", Status::Deferred, "unknown"),
        (502, None, "", Status::Deferred, "unknown"),
        (
            400,
            None,
            r#"{"error":{"code":"ErrorMimeContentInvalidBase64String","message":"Invalid base64 string for MIME content."}}"#,
            Status::Failed,
            "unknown",
        ),
    ];
    for (status, retry_after, body, want, code) in cases {
        let ms = MockMicrosoft::start().await;
        ms.with(|s| s.graph_reply = Some((status, retry_after, body.to_string())));
        let (_env, daemon) = graph_daemon(&ms, "", "s").await;
        let r = send_one(&daemon, &["a@contoso.com"], "x").await;
        assert_eq!(r.status, want, "HTTP {status}");
        assert_eq!(diag(&r), code, "HTTP {status}");
        assert!(
            r.attempts[0].reply.starts_with(&format!("HTTP {status}")),
            "{}",
            r.attempts[0].reply
        );
        if let Some(secs) = retry_after {
            let next = r.next_attempt_at.unwrap().ms();
            let at = r.attempts[0].at.ms();
            let waited = next.saturating_sub(at) / 1000;
            assert!(
                waited >= secs - 1 && waited <= secs + 1,
                "Retry-After {secs}s honoured: {waited}s"
            );
        }
        daemon.shutdown().await;
    }
}

#[tokio::test]
async fn graph_refuses_messages_over_4_mb() {
    let ms = MockMicrosoft::start().await;
    let (_env, daemon) = graph_daemon(&ms, "max_message_size = \"10MB\"", "s").await;
    let big = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789\r\n"
        .repeat(45_000);
    let r = send_one(&daemon, &["a@contoso.com"], &big).await;
    assert_eq!(r.status, Status::Failed);
    assert_eq!(diag(&r), "message-too-large");
    assert!(common::first_fix(&r).contains("smtp provider"));
    assert!(ms.with(|s| s.sent.is_empty()));
    daemon.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_errors_defer_with_a_diagnosis() {
    let cases = [
        (
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.","error_codes":[7000215]}"#,
            "oauth-invalid-client",
        ),
        (
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS65001: The user or administrator has not consented to use the application with ID 'app-123'.","error_codes":[65001]}"#,
            "oauth-consent-required",
        ),
        (
            400,
            r#"{"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier 'app-123' was not found in the directory 'contoso'.","error_codes":[700016]}"#,
            "oauth-invalid-client",
        ),
    ];
    for (status, body, code) in cases {
        let ms = MockMicrosoft::start().await;
        ms.with(|s| s.token_error = Some((status, body.to_string())));
        let (_env, daemon) = graph_daemon(&ms, "", "s").await;
        let r = send_one(&daemon, &["a@contoso.com"], "x").await;
        assert_eq!(r.status, Status::Deferred, "{code}");
        assert_eq!(diag(&r), code);
        assert!(
            r.attempts[0].reply.contains("AADSTS"),
            "{}",
            r.attempts[0].reply
        );
        let st: serde_json::Value =
            common::json_at(format!("http://{}/status", daemon.status_addr)).await;
        let p = &common::provider_in(&st, "exchange")["oauth2"];
        assert_eq!(p["token_valid"], false);
        assert!(p["last_token_error"].as_str().unwrap().contains("AADSTS"));
        daemon.shutdown().await;
    }
    // Nobody answers at the token URL.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = TestEnv::new(
        "",
        &format!(
            "[[provider]]\nname = \"exchange\"\nkind = \"graph\"\n[provider.oauth2]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\ntoken_url = \"http://{dead}/t/oauth2/v2.0/token\"\n[distributor]\ndefault_provider = \"exchange\"\n"
        ),
    );
    let daemon = start(&env).await;
    let r = send_one(&daemon, &["a@contoso.com"], "x").await;
    assert_eq!(diag(&r), "oauth-endpoint-unreachable");
    daemon.shutdown().await;
}

/// An RSA key (openssl) and a self-signed certificate for it (rcgen), as PEM files.
fn rsa_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let key_path = dir.join("app.key");
    let key_pem = common::openssl_rsa_key(&key_path);
    let key = rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["mailgate-app".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mailgate app");
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join("app.crt");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    (cert_path, key_path, cert.der().to_vec())
}

#[tokio::test]
async fn client_certificate_assertion_is_a_signed_jwt() {
    let ms = MockMicrosoft::start().await;
    let env = TestEnv::new("", "");
    let (cert, key, cert_der) = rsa_certificate(env.dir.path());
    env.write_config(
        "",
        &graph_provider(
            &ms,
            &format!(
                "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
                cert.display(),
                key.display()
            ),
        ),
    );
    let daemon = start(&env).await;
    assert_eq!(
        send_one(&daemon, &["a@contoso.com"], "x").await.status,
        Status::Sent
    );
    let grant = ms.with(|s| s.grants[0].clone());
    assert_eq!(
        grant["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert!(!grant.contains_key("client_secret"));
    let jwt = &grant["client_assertion"];
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert_der);
    assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(sha1.as_ref()));
    assert_eq!(claims["aud"], ms.token_url("contoso"));
    assert_eq!(claims["iss"], "app-123");
    assert_eq!(claims["sub"], "app-123");
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    let (nbf, exp) = (
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert!(exp > nbf && exp - nbf <= 600);
    // The signature verifies with the certificate's public key.
    let cert_der = rustls::pki_types::CertificateDer::from(cert_der);
    let ee = webpki::EndEntityCert::try_from(&cert_der).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    ee.verify_signature(
        webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        format!("{}.{}", parts[0], parts[1]).as_bytes(),
        &sig,
    )
    .expect("RS256 signature by the certificate's key");
    daemon.shutdown().await;
}

fn smtp_oauth_provider(up: &Upstream, ms: &MockMicrosoft) -> String {
    format!(
        "{}username = \"relay@contoso.com\"\n\
         [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app-123\"\nclient_secret = \"s\"\ntoken_url = \"{}\"\n\
         [distributor]\ndefault_provider = \"o365\"\n",
        common::plain_smtp("o365", up.addr.port()),
        ms.token_url("contoso")
    )
}

#[tokio::test]
async fn xoauth2_on_smtp() {
    let ms = MockMicrosoft::start().await;
    let up = Upstream::start(Script {
        offer_auth: true,
        auth_mechs: Some("LOGIN XOAUTH2".into()),
        credentials: Some(("relay@contoso.com".into(), "tok-1".into())),
        ..Script::default()
    })
    .await;
    let env = TestEnv::new("", &smtp_oauth_provider(&up, &ms));
    let daemon = start(&env).await;
    let r = send_one(&daemon, &["a@contoso.com"], "x").await;
    assert_eq!(r.status, Status::Sent, "{r:#?}");
    assert_eq!(
        up.messages()[0].auth_user.as_deref(),
        Some("relay@contoso.com")
    );
    assert_eq!(
        ms.with(|s| s.grants[0]["scope"].clone()),
        "https://outlook.office365.com/.default"
    );
    daemon.shutdown().await;

    // A token the server does not accept: one refresh, then 535 and the diagnosis.
    up.set_script(Script {
        offer_auth: true,
        auth_mechs: Some("LOGIN XOAUTH2".into()),
        credentials: Some(("relay@contoso.com".into(), "tok-999".into())),
        ..Script::default()
    });
    up.xoauth2_tokens.lock().unwrap().clear();
    let daemon = start(&env).await;
    let r = send_one(&daemon, &["a@contoso.com"], "y").await;
    assert_eq!(r.status, Status::Deferred);
    assert_eq!(diag(&r), "auth-failed");
    assert_eq!(r.attempts[0].reply, "535 5.7.3 Authentication unsuccessful");
    assert_eq!(
        *up.xoauth2_tokens.lock().unwrap(),
        ["tok-2", "tok-3"],
        "the rejected token was replaced once"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn moving_from_password_to_oauth2_releases_held_mail() {
    let ms = MockMicrosoft::start().await;
    let script = Script {
        offer_auth: true,
        auth_mechs: Some("LOGIN PLAIN XOAUTH2".into()),
        credentials: Some(("relay@contoso.com".into(), "tok-1".into())),
        ..Script::default()
    }
    .reply(
        "auth:LOGIN",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
    )
    .reply(
        "auth:PLAIN",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
    );
    let up = Upstream::start(script).await;
    let env = TestEnv::new(
        "",
        &format!(
            "{}username = \"relay@contoso.com\"\npassword = \"old-password\"\n[distributor]\ndefault_provider = \"o365\"\n",
            common::plain_smtp("o365", up.addr.port())
        ),
    );
    let daemon = start(&env).await;
    daemon.set_config_path(env.config_path.clone());
    let r = send_one(&daemon, &["a@contoso.com"], "held").await;
    assert_eq!(r.status, Status::Deferred);
    assert_eq!(diag(&r), "basic-auth-retired");
    assert!(common::first_fix(&r).contains("[provider.oauth2]"));
    // The administrator switches the provider to OAuth2 and reloads.
    env.write_config("", &smtp_oauth_provider(&up, &ms));
    let report = daemon.reload().await.unwrap();
    assert_eq!(report.released, 1);
    let got = up.wait_for(1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("held"));
    daemon.shutdown().await;
}
