//! The status listener over HTTPS (`status.tls_cert`, `status.tls_key`): the CLI, the API
//! and the pages' sign-in in Chromium work over it; the session cookie is `Secure`
//! exactly when the listener has TLS; a renewed certificate is served without a restart.

mod common;

use std::time::{Duration, Instant};

use common::browser::{Driver, text};
use common::upstream::TestCa;
use common::{DaemonProcess, Fetch, TestEnv, free_port};

const TOKEN: &str = "status-tls-admin-token-0123";

/// A daemon whose status listener has TLS with a certificate of `ca` for 127.0.0.1.
fn tls_daemon(ca: &TestCa) -> (TestEnv, DaemonProcess, u16) {
    let env = TestEnv::new("", "");
    let dir = env.dir.path();
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    std::fs::write(dir.join("status.crt"), cert).unwrap();
    std::fs::write(dir.join("status.key"), key).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    env.edit_config(
        "[status]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[status]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.join("admin.token").display(),
            dir.join("status.crt").display(),
            dir.join("status.key").display()
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    (env, d, port)
}

fn https(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The sign-in's whole `Set-Cookie` over `base` with `client`.
async fn signin_cookie(client: &reqwest::Client, base: &str, token: &str) -> String {
    common::signin_cookie(client, base, token).await.0
}

/// Over TLS: the CLI (`queue`) reaches the daemon, the API answers with the token, plain
/// HTTP gets nothing, the cookie is Secure; a renewed certificate is served within
/// seconds without a restart. On a plain loopback listener the cookie is not Secure (a
/// browser would drop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_the_api_and_the_cookie_over_tls() {
    let ca = TestCa::new("status CA");
    let (env, d, port) = tls_daemon(&ca);
    let base = format!("https://127.0.0.1:{port}");
    let client = https(&ca);
    client
        .get(format!("{base}/api/messages"))
        .bearer_auth(TOKEN)
        .answers(200)
        .await;
    let out = common::cli_ok(&env, &["queue"]);
    assert!(out.contains("queued"), "{out}");
    common::plain_http_refused(&format!("http://127.0.0.1:{port}/healthz")).await;
    let cookie = signin_cookie(&client, &base, TOKEN).await;
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // A renewed certificate (another CA's, so the old trust no longer holds) is served
    // without a restart.
    let renewed = TestCa::new("renewed CA");
    let (cert, key) = renewed.issue(&["127.0.0.1"]);
    let dir = env.dir.path();
    std::fs::write(dir.join("status.key"), key).unwrap();
    std::fs::write(dir.join("status.crt"), cert).unwrap();
    let client = https(&renewed);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(d);

    // Plain HTTP on loopback: no Secure.
    let env = TestEnv::new("", "");
    std::fs::write(env.dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
    env.edit_config(
        "[status]\nlisten = \"127.0.0.1:0\"\n",
        &format!(
            "[status]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            env.dir.path().join("admin.token").display()
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    let plain = common::no_redirects();
    let cookie = signin_cookie(&plain, &format!("http://{}", d.status), TOKEN).await;
    assert!(!cookie.contains("Secure"), "{cookie}");
}

/// The pages' sign-in over the TLS listener in Chromium: asked to sign in, signed in,
/// the dashboard shown, the session cookie Secure and HttpOnly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_over_tls_in_chromium() {
    let Some(driver) = Driver::start() else {
        return;
    };
    let ca = TestCa::new("status CA");
    let (_env, _d, port) = tls_daemon(&ca);
    let c = driver.browser().await;
    c.goto(&format!("https://127.0.0.1:{port}/messages"))
        .await
        .unwrap();
    common::browser::asked_to_sign_in(&c).await;
    common::browser::submit_token(&c, TOKEN).await;
    assert!(text(&c, "h1").await.contains("Batch email sending status"));
    let cookie = c.get_named_cookie("mailgate_session").await.unwrap();
    assert_eq!(cookie.secure(), Some(true));
    assert_eq!(cookie.http_only(), Some(true));
    c.close().await.unwrap();
}
