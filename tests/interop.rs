//! Interoperability with clients nobody on the project wrote: swaks and Python's smtplib
//! (plus a pipelined session from Python) submit to the built binary; the outbox must
//! hold what they sent. `.ci/run` installs swaks; python3 is on the machine.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{DaemonProcess, TestEnv, queued_id};

use common::WAIT;

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is not installed: run .ci/run (it installs the test tools) or install {name}"
    );
    Command::new(name)
}

fn id_from_swaks(out: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.contains("OK queued as"))
        .unwrap_or_else(|| panic!("no 250 in swaks output:\n{out}"));
    line.rsplit(' ').next().unwrap().trim().to_string()
}

#[test]
fn swaks_plain_and_pipelined() {
    let env = TestEnv::new("", "");
    let mut daemon = DaemonProcess::start(&env.config_path);
    let port = daemon.smtp.port().to_string();
    let mut ids = Vec::new();
    for (token, extra) in [("SWAKS-PLAIN", None), ("SWAKS-PIPE", Some("--pipeline"))] {
        let mut cmd = tool("swaks");
        cmd.args([
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--helo",
            "swaks.test",
            "--from",
            "app@erp.local",
            "--to",
            "a@contoso.com,b@contoso.com",
            "--header",
            &format!("Subject: {token}"),
            "--body",
            &format!("{token}\n.dot line\nend"),
        ]);
        if let Some(e) = extra {
            cmd.arg(e);
        }
        let o = cmd.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "swaks failed:\n{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        if extra.is_some() {
            assert!(out.contains("PIPELINING"), "{out}");
        }
        ids.push((token, id_from_swaks(&out)));
    }
    daemon.wait_sent(
        &ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        WAIT,
    );
    for (token, id) in ids {
        let eml = String::from_utf8(env.eml(&id)).unwrap();
        assert!(eml.contains(&format!("\r\nSubject: {token}\r\n")), "{eml}");
        assert!(
            eml.contains(&format!("\r\n\r\n{token}\r\n.dot line\r\nend\r\n")),
            "{eml}"
        );
        assert!(
            eml.starts_with("Received: from swaks.test (127.0.0.1)"),
            "{eml}"
        );
    }
}

#[test]
fn python_smtplib_and_a_pipelined_session() {
    let env = TestEnv::new("", "");
    let mut daemon = DaemonProcess::start(&env.config_path);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/submit.py");
    let mut results = Vec::new();
    for mode in ["smtplib", "pipelined"] {
        let o = tool("python3")
            .args([script, &daemon.smtp.port().to_string(), mode])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in String::from_utf8(o.stdout).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["code"], 250, "{v}");
            let id = queued_id(&format!("250 {}", v["reply"].as_str().unwrap())).unwrap();
            results.push((v, id));
        }
    }
    assert_eq!(results.len(), 4);
    let ids: Vec<String> = results.iter().map(|(_, id)| id.clone()).collect();
    daemon.wait_sent(&ids, WAIT);
    for (v, id) in &results {
        let token = v["token"].as_str().unwrap();
        let eml = String::from_utf8(env.eml(id)).unwrap();
        if token.starts_with("PY-") {
            // smtplib dot-stuffs; mailgate must have removed it again.
            assert!(
                eml.contains(&format!("{token}\r\n.line starting with a dot\r\n")),
                "{eml}"
            );
            assert!(eml.contains("filename=\"scan.pdf\""), "{eml}");
        } else {
            assert!(
                eml.contains(&format!("\r\n\r\n{token}\r\n.dotted\r\n")),
                "{eml}"
            );
            let all: Vec<&str> = v["all"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(
                &all[..3],
                [
                    "250 2.1.0 Sender OK",
                    "250 2.1.5 Recipient OK",
                    "354 End data with <CR><LF>.<CR><LF>"
                ]
            );
        }
    }
    // The record decodes the RFC 2047 subject smtplib wrote.
    let (_, id) = results.iter().find(|(v, _)| v["token"] == "PY-1").unwrap();
    let status = daemon.status;
    let rec: serde_json::Value =
        reqwest::blocking_get(&format!("http://{status}/api/messages/{id}"));
    assert_eq!(rec["subject"], "Grüße aus Köln");
    assert_eq!(rec["recipients"].as_array().unwrap().len(), 2);
}

mod reqwest {
    /// A tiny blocking GET for a test without an async runtime.
    pub fn blocking_get(url: &str) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { crate::common::json_at(url).await })
    }
}

/// swaks aimed at a listener.
fn swaks_to(addr: std::net::SocketAddr) -> std::process::Command {
    let mut c = tool("swaks");
    c.args(["--server", "127.0.0.1", "--port", &addr.port().to_string()]);
    c
}

/// aiosmtpd as the upstream, in a child process; its JSON lines arrive on a channel.
struct Aiosmtpd {
    child: std::process::Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Aiosmtpd {
    fn start(dir: &std::path::Path, ca: &common::upstream::TestCa, extra: &[&str]) -> Aiosmtpd {
        use std::io::BufRead;
        let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(dir.join("up.crt"), cert).unwrap();
        std::fs::write(dir.join("up.key"), key).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/upstream.py");
        let mut child = tool("python3")
            .arg(script)
            .args(["--cert", dir.join("up.crt").to_str().unwrap()])
            .args(["--key", dir.join("up.key").to_str().unwrap()])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(WAIT)
            .expect("aiosmtpd starts (pip install aiosmtpd)");
        let port = first["port"].as_u64().unwrap() as u16;
        Aiosmtpd {
            child,
            port,
            lines: rx,
        }
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_config(env: &TestEnv, ca: &common::upstream::TestCa, port: u16, auth: &str) {
    std::fs::write(env.dir.path().join("ca.pem"), &ca.pem).unwrap();
    env.write_config(
        "",
        &format!(
            "[[provider]]\nname = \"aiosmtpd\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"starttls\"\nca_file = \"{}\"\n{auth}\n\
             [distributor]\ndefault_provider = \"aiosmtpd\"\n",
            env.dir.path().join("ca.pem").display()
        ),
    );
}

fn api_get(status: std::net::SocketAddr, path: &str) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        crate::common::bytes_at(format!("http://{status}{path}"))
            .await
            .to_vec()
    })
}

#[test]
fn swaks_through_mailgate_to_aiosmtpd_with_starttls_and_auth() {
    let env = TestEnv::new("", "");
    let ca = common::upstream::TestCa::new("interop CA");
    let up = Aiosmtpd::start(
        env.dir.path(),
        &ca,
        &["--user", "relay@contoso.com", "--password", "pa55-w0rd"],
    );
    relay_config(
        &env,
        &ca,
        up.port,
        "username = \"relay@contoso.com\"\npassword_env = \"MG_TEST_PASSWORD\"",
    );
    // The password comes from the environment of the daemon.
    let mut daemon = {
        // Set for the child only.
        let mut cmd = std::process::Command::new(common::bin());
        cmd.env("MG_TEST_PASSWORD", "pa55-w0rd");
        DaemonProcess::start_with(&env.config_path, cmd)
    };
    let mut ids = Vec::new();
    for (n, auth_args) in [(0, vec![]), (1, vec!["--pipeline"])] {
        let o = swaks_to(daemon.smtp)
            .args([
                "--from",
                "scanner@printer.local",
                "--to",
                "a@contoso.com,b@contoso.com",
            ])
            .args([
                "--header",
                &format!("Subject: interop {n}"),
                "--body",
                "scan attached\n.dot",
            ])
            .args(auth_args)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{out}");
        ids.push(id_from_swaks(&out));
    }
    daemon.wait_sent(&ids, WAIT);
    for id in &ids {
        let got = up.lines.recv_timeout(WAIT).unwrap();
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD
            .decode(got["data_b64"].as_str().unwrap())
            .unwrap();
        let stored = api_get(daemon.status, &format!("/api/messages/{id}/eml"));
        assert_eq!(data, stored, "aiosmtpd received exactly the stored bytes");
        assert_eq!(got["from"], "scanner@printer.local");
        assert_eq!(
            got["rcpts"],
            serde_json::json!(["a@contoso.com", "b@contoso.com"])
        );
        assert_eq!(got["auth"], "relay@contoso.com");
        let rec: serde_json::Value =
            serde_json::from_slice(&api_get(daemon.status, &format!("/api/messages/{id}")))
                .unwrap();
        assert_eq!(rec["status"], "sent");
        assert!(
            common::first_reply(&rec).contains("queued at aiosmtpd"),
            "{rec}"
        );
    }
    // The password never reaches the log or the history.
    let log = serde_json::to_string(&daemon.seen).unwrap();
    assert!(!log.contains("pa55-w0rd"));
    let history = api_get(daemon.status, "/api/messages");
    assert!(!String::from_utf8_lossy(&history).contains("pa55-w0rd"));
}

#[test]
fn aiosmtpd_refusing_one_recipient_gives_partial_with_recipient_unknown() {
    let env = TestEnv::new("", "");
    let ca = common::upstream::TestCa::new("interop CA");
    let up = Aiosmtpd::start(env.dir.path(), &ca, &["--no-auth"]);
    relay_config(&env, &ca, up.port, "");
    let mut daemon = DaemonProcess::start(&env.config_path);
    let o = swaks_to(daemon.smtp)
        .args([
            "--from",
            "erp@erp.local",
            "--to",
            "a@contoso.com,unknown.person@contoso.com",
        ])
        .args(["--header", "Subject: partial", "--body", "x"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    let id = id_from_swaks(&out);
    daemon.wait_log(
        |v| v["message"] == "delivery" && v["id"] == id.as_str(),
        WAIT,
    );
    let got = up.lines.recv_timeout(WAIT).unwrap();
    assert_eq!(got["rcpts"], serde_json::json!(["a@contoso.com"]));
    let rec: serde_json::Value =
        serde_json::from_slice(&api_get(daemon.status, &format!("/api/messages/{id}"))).unwrap();
    assert_eq!(rec["status"], "partial", "{rec}");
    assert_eq!(rec["recipients"][0]["status"], "sent");
    assert_eq!(rec["recipients"][1]["status"], "failed");
    let attempt = &rec["attempts"][0];
    assert!(
        attempt["reply"]
            .as_str()
            .unwrap()
            .contains("queued at aiosmtpd"),
        "{rec}"
    );
    let d = &attempt["diagnosis"];
    assert_eq!(d["code"], "recipient-unknown", "{rec}");
    let why = d["explanation"].as_str().unwrap();
    assert!(
        why.starts_with("The upstream accepted the message for 1 of 2 recipients and refused 1: unknown.person@contoso.com (550 5.1.1"),
        "{why}"
    );
    assert!(
        d["fix"].as_str().unwrap().contains("Correct the address"),
        "{d}"
    );
}

#[test]
fn aiosmtpd_without_auth_gives_auth_not_supported() {
    let env = TestEnv::new("", "");
    let ca = common::upstream::TestCa::new("interop CA");
    let _up = Aiosmtpd::start(env.dir.path(), &ca, &["--no-auth"]);
    relay_config(
        &env,
        &ca,
        _up.port,
        "username = \"relay@contoso.com\"\npassword = \"secret-xyz\"",
    );
    let mut daemon = DaemonProcess::start(&env.config_path);
    let o = swaks_to(daemon.smtp)
        .args(["--from", "app@erp.local", "--to", "a@contoso.com"])
        .output()
        .unwrap();
    let id = id_from_swaks(&String::from_utf8_lossy(&o.stdout));
    let line = daemon.wait_log(
        |v| v["message"] == "delivery" && v["id"] == id.as_str(),
        WAIT,
    );
    assert_eq!(line["status"], "deferred");
    assert_eq!(line["diagnosis"], "auth-not-supported");
    let rec: serde_json::Value =
        serde_json::from_slice(&api_get(daemon.status, &format!("/api/messages/{id}"))).unwrap();
    assert_eq!(rec["status"], "deferred");
    let d = &rec["attempts"][0]["diagnosis"];
    assert_eq!(d["code"], "auth-not-supported");
    assert!(
        d["fix"]
            .as_str()
            .unwrap()
            .contains("please clear the SMTP user name and password")
    );
    let log = serde_json::to_string(&daemon.seen).unwrap();
    assert!(!log.contains("secret-xyz"));
}

#[test]
fn swaks_auth_login_over_starttls_to_the_listener() {
    let env = TestEnv::new("", "");
    let d = env.dir.path();
    let ca = common::upstream::TestCa::new("listener CA");
    let tls = env.listener_tls(&ca, &["localhost", "127.0.0.1"]);
    std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
    env.write_config(
        &format!("{tls}allowed_networks = [\"10.0.0.0/8\"]"),
        &common::login_user("scanner", "scanner-pw-7", "scanner@contoso.com"),
    );
    let mut daemon = DaemonProcess::start(&env.config_path);
    let swaks = |password: &str| {
        swaks_to(daemon.smtp)
            .args([
                "--tls",
                "--tls-verify",
                "--tls-ca-path",
                d.join("ca.pem").to_str().unwrap(),
            ])
            .args([
                "--auth",
                "LOGIN",
                "--auth-user",
                "scanner",
                "--auth-password",
                password,
            ])
            .args([
                "--from",
                "scan@printer.local",
                "--to",
                "a@contoso.com",
                "--header",
                "Subject: tls auth",
            ])
            .output()
            .unwrap()
    };
    let bad = swaks("wrong");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("535 5.7.8"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    let o = swaks("scanner-pw-7");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    assert!(out.contains("235 2.7.0 Authentication successful"), "{out}");
    let id = id_from_swaks(&out);
    daemon.wait_sent(std::slice::from_ref(&id), WAIT);
    let eml = String::from_utf8(env.eml(&id)).unwrap();
    assert!(eml.contains("with ESMTPSA id"), "{eml}");
    assert!(
        eml.contains("\r\nFrom: scanner@contoso.com\r\n")
            || eml.contains("\r\nFrom: <scanner@contoso.com>\r\n"),
        "{eml}"
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&api_get(daemon.status, &format!("/api/messages/{id}"))).unwrap();
    assert_eq!(rec["auth_login"], "scanner");
    assert_eq!(rec["user"], "scanner");
    assert_eq!(rec["sender"], "scanner@contoso.com");
}

#[test]
fn gen_cert_makes_a_certificate_swaks_verifies() {
    let env = TestEnv::new("", "");
    let d = env.dir.path().join("certs");
    let make = |extra: &[&str]| {
        std::process::Command::new(common::bin())
            .args([
                "gen-cert",
                "--name",
                "localhost",
                "--ip",
                "127.0.0.1",
                "--out-dir",
                d.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = make(&[]);
    common::exited(&o, 0);
    let mode = std::fs::metadata(d.join("mailgate.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    assert_eq!(
        make(&[]).status.code(),
        Some(1),
        "existing files are not replaced without --force"
    );
    assert_eq!(make(&["--force"]).status.code(), Some(0));
    env.write_config(
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            d.join("mailgate.crt").display(),
            d.join("mailgate.key").display()
        ),
        "",
    );
    let mut daemon = DaemonProcess::start(&env.config_path);
    let o = swaks_to(daemon.smtp)
        .args([
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            d.join("mailgate.crt").to_str().unwrap(),
        ])
        .args(["--from", "app@erp.local", "--to", "a@contoso.com"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    let id = id_from_swaks(&out);
    daemon.wait_sent(std::slice::from_ref(&id), WAIT);
    assert!(
        String::from_utf8(env.eml(&id))
            .unwrap()
            .contains("with ESMTPS id")
    );
}

/// Gmail through aiosmtpd: `mailgate oauth2 login` with flow = "authorization_code" (the
/// test plays the browser: it follows the printed URL, the stand-in of Google's
/// authorization endpoint redirects to the loopback listener with a code, and the token
/// endpoint checks PKCE S256 and the Desktop client's secret), then the daemon sends with
/// XOAUTH2 as the signed-in mailbox to aiosmtpd, which accepts only tokens the stand-in
/// issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmail_authorization_code_login_then_xoauth2_to_aiosmtpd() {
    use common::identity::Login;
    let id = common::identity::Identity::start("12345-desktop.apps.googleusercontent.com").await;
    let env = TestEnv::new("", "");
    let tokens = env.dir.path().join("valid-tokens");
    std::fs::write(&tokens, "").unwrap();
    id.with(|s| {
        s.client_secret = Some("GOCSPX-desktop-secret".into());
        s.rotate = false; // Google keeps the refresh token
        s.token_file = Some(tokens.clone());
        s.id_token_account = Some("pat.example@gmail.com".into());
    });
    let ca = common::upstream::TestCa::new("interop CA");
    let up = Aiosmtpd::start(
        env.dir.path(),
        &ca,
        &[
            "--xoauth2-user",
            "pat.example@gmail.com",
            "--xoauth2-tokens",
            tokens.to_str().unwrap(),
        ],
    );
    relay_config(
        &env,
        &ca,
        up.port,
        &format!(
            "username = \"pat.example@gmail.com\"\n[provider.oauth2]\nflow = \"authorization_code\"\n\
             client_id = \"12345-desktop.apps.googleusercontent.com\"\nclient_secret = \"GOCSPX-desktop-secret\"\n\
             scope = \"https://mail.google.com/\"\nauthorize_url = \"http://{0}/o/oauth2/v2/auth\"\ntoken_url = \"http://{0}/token\"\nrevoke_url = \"http://{0}/revoke\"",
            id.addr
        ),
    );
    let config = env.config_path.to_str().unwrap().to_string();
    let mut login = Login::start(&env.config_path, "aiosmtpd", &["--no-browser"]);
    let url = login
        .wait_line(|l| l.starts_with("http://"))
        .trim()
        .to_string();
    let parsed = ::reqwest::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["scope"], "https://mail.google.com/");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["login_hint"], "pat.example@gmail.com");
    let redirect = q["redirect_uri"].clone();
    assert!(redirect.starts_with("http://127.0.0.1:"), "{redirect}");

    // A redirect with another state (an old tab, or a forged page) is refused, and the
    // sign-in goes on waiting.
    let forged = crate::common::get(format!("{redirect}?code=stolen&state=not-this-one"))
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    // The browser: follow the printed URL, signed in at once, back to the loopback.
    let page = crate::common::get(&url).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("signed in"));
    let (code, out, err) = tokio::task::spawn_blocking(move || login.finish())
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("signed in to provider \"aiosmtpd\" as pat.example@gmail.com"),
        "{out}"
    );
    let exchange = id.grants_of("authorization_code");
    assert_eq!(exchange.len(), 1, "the forged code was never exchanged");
    assert_eq!(exchange[0]["redirect_uri"], redirect);
    assert!(
        exchange[0]["code_verifier"].len() >= 43,
        "RFC 7636 verifier"
    );

    // The daemon sends as the mailbox, with a token from the stored refresh token.
    let mut daemon = DaemonProcess::start(&env.config_path);
    let o = swaks_to(daemon.smtp)
        .args(["--from", "cron@server.local", "--to", "someone@example.com"])
        .args(["--header", "Subject: nightly backup", "--body", "ok"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}");
    let mid = id_from_swaks(&text);
    daemon.wait_sent(std::slice::from_ref(&mid), WAIT);
    let got = up.lines.recv_timeout(WAIT).unwrap();
    assert_eq!(got["auth"], "pat.example@gmail.com");
    let refresh = id.grants_of("refresh_token");
    assert_eq!(refresh.len(), 1);
    assert_eq!(refresh[0]["client_secret"], "GOCSPX-desktop-secret");
    let log = serde_json::to_string(&daemon.seen).unwrap();
    // Logout revokes the refresh token at Google, then forgets it.
    daemon.terminate();
    let logout = std::process::Command::new(common::bin())
        .args([
            "--config",
            &config,
            "oauth2",
            "logout",
            "--provider",
            "aiosmtpd",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&logout.stdout).into_owned();
    assert!(logout.status.success(), "{said}");
    assert!(
        said.contains("revoked the refresh token at the platform"),
        "{said}"
    );
    assert_eq!(id.with(|s| s.revoked.len()), 1);
    assert_eq!(
        refresh[0]["refresh_token"],
        id.with(|s| s.revoked[0].clone())
    );
    let codes = id.with(|s| s.all_codes.clone());
    assert_eq!(codes.len(), 1);
    for t in id.with(|s| s.issued.clone()).into_iter().chain(codes) {
        assert!(!log.contains(&t), "a token in the log");
        assert!(!out.contains(&t) && !err.contains(&t));
    }
}

/// Postfix's smtp-sink (it offers PIPELINING) as the upstream: mailgate sends each
/// envelope in one write, and the sink's dump of every transaction holds the envelope
/// (every recipient) and the stored bytes, dot-stuffed lines restored.
#[test]
fn pipelined_to_postfix_smtp_sink() {
    let env = TestEnv::new("", "");
    let dumps = env.dir.path().join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let port = common::free_port();
    let user = String::from_utf8(tool("id").arg("-un").output().unwrap().stdout).unwrap();
    let mut sink = tool("smtp-sink")
        .args(["-u", user.trim(), "-d"])
        .arg(format!("{}/%M.", dumps.display()))
        .args([&format!("127.0.0.1:{port}"), "10"])
        .spawn()
        .expect("smtp-sink (apt-get install postfix)");
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(&mut sink);
    env.write_config(
        "",
        &format!(
            "{}[distributor]\ndefault_provider = \"sink\"\n",
            common::plain_smtp("sink", port)
        ),
    );
    let mut daemon = DaemonProcess::start(&env.config_path);
    let mut ids = Vec::new();
    for (n, to) in [
        (0, "a@contoso.com,b@contoso.com,c@contoso.com"),
        (1, "d@contoso.com"),
    ] {
        let o = swaks_to(daemon.smtp)
            .args(["--from", "scanner@printer.local", "--to", to])
            .args([
                "--header",
                &format!("Subject: sink {n}"),
                "--body",
                "scan attached\n.dot\n..two",
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{out}");
        ids.push(id_from_swaks(&out));
    }
    daemon.wait_sent(&ids, WAIT);
    let files = || -> Vec<String> {
        std::fs::read_dir(&dumps)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while files().len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dumped = files();
    assert_eq!(dumped.len(), 2, "{dumped:#?}");
    for (id, to) in ids.iter().zip([
        vec!["a@contoso.com", "b@contoso.com", "c@contoso.com"],
        vec!["d@contoso.com"],
    ]) {
        let stored = String::from_utf8(api_get(daemon.status, &format!("/api/messages/{id}/eml")))
            .unwrap()
            .replace("\r\n", "\n");
        let subject = stored.lines().find(|l| l.starts_with("Subject: ")).unwrap();
        let dump = dumped
            .iter()
            .find(|d| d.lines().any(|l| l == subject))
            .unwrap_or_else(|| panic!("no dump with {subject}: {dumped:#?}"));
        let rcpts: Vec<&str> = dump
            .lines()
            .filter_map(|l| l.strip_prefix("X-Rcpt-Args: "))
            .collect();
        let want: Vec<String> = to.iter().map(|a| format!("<{a}>")).collect();
        assert_eq!(rcpts, want, "{dump}");
        assert!(
            dump.contains("X-Mail-Args: <scanner@printer.local>"),
            "{dump}"
        );
        // The sink's own trace header (three lines) comes before what it received.
        let at = dump.find("Received: from ").unwrap();
        let after: String = dump[at..]
            .lines()
            .skip(3)
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            after.starts_with(&stored),
            "the sink got the stored bytes:\n{after}\nstored:\n{stored}"
        );
        assert!(stored.contains("\n.dot\n..two\n"), "{stored}");
    }
}
