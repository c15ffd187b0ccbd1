//! Delegated OAuth2 end to end (SPEC.md "Delegated OAuth2"): `mailgate oauth2 login`
//! against local stand-ins of the identity platforms (device code for Outlook.com,
//! authorization code with PKCE for Gmail, a JWT-bearer grant for a Workspace service
//! account), then the daemon (the binary) relaying with XOAUTH2 as the signed-in mailbox
//! to a TLS upstream that accepts only the tokens the stand-in issued: rotation saved,
//! `oauth-not-signed-in` and `oauth-reauthorize` holding mail until a login releases it,
//! a restart keeping the sign-in, and no token in any log line.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::identity::{Identity, Login};
use common::upstream::{Script, TestCa, Upstream};
use common::{DaemonProcess, TestEnv, free_port};

use common::WAIT;
const MAILBOX: &str = "pat@outlook.com";
const CLIENT: &str = "9e5f94bc-e8a4-4e73-b8be-63364c29d753";

/// One site: the config, the identity platform stand-in and the upstream.
struct Site {
    env: TestEnv,
    id: Identity,
    up: Upstream,
    status: u16,
}

impl Site {
    /// `oauth2` is the body of `[provider.oauth2]` (URLs are filled in by `{ID}`).
    async fn new(mailbox: &str, oauth2: &str) -> Site {
        let id = Identity::start(CLIENT).await;
        let ca = TestCa::new("delegated CA");
        let up = Upstream::start(Script {
            one_message_per_connection: true,
            ..Script::over_starttls(&ca).xoauth2("LOGIN XOAUTH2", mailbox, id.access())
        })
        .await;
        let env = TestEnv::new("", "");
        std::fs::write(env.dir.path().join("ca.pem"), &ca.pem).unwrap();
        let site = Site {
            env,
            id,
            up,
            status: free_port(),
        };
        site.configure(mailbox, oauth2);
        site
    }

    fn configure(&self, mailbox: &str, oauth2: &str) {
        let extra = format!(
            "{}timeout = \"5s\"\nusername = \"{mailbox}\"\n\
             [provider.oauth2]\nclient_id = \"{CLIENT}\"\n{}\n\
             [distributor]\ndefault_provider = \"mailbox\"\nretry_initial = \"10m\"\n",
            common::tls_smtp(
                "mailbox",
                self.up.addr.port(),
                &self.env.dir.path().join("ca.pem")
            ),
            oauth2.replace("{ID}", &format!("http://{}", self.id.addr)),
        );
        self.env.write_config("", &extra);
        let text = std::fs::read_to_string(&self.env.config_path)
            .unwrap()
            .replace(
                "[status]\nlisten = \"127.0.0.1:0\"",
                &format!("[status]\nlisten = \"127.0.0.1:{}\"", self.status),
            );
        std::fs::write(&self.env.config_path, text).unwrap();
    }

    fn config(&self) -> &str {
        self.env.config_path.to_str().unwrap()
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--config", self.config()];
        all.extend(args);
        common::run_cli(&all)
    }

    fn daemon(&self) -> DaemonProcess {
        DaemonProcess::start(&self.env.config_path)
    }

    /// Starts `oauth2 login` with its output read line by line.
    fn login(&self, extra: &[&str]) -> Login {
        Login::start(&self.env.config_path, "mailbox", extra)
    }

    async fn record(
        &self,
        id: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/api/messages/{id}", self.status);
        let deadline = Instant::now() + WAIT;
        loop {
            let r: serde_json::Value = common::json_at(&url).await;
            if done(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "record never got there: {r:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The record once its first attempt is written.
    async fn first_attempt(&self, id: &str) -> serde_json::Value {
        self.record(id, |r| {
            r["attempts"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await
    }

    async fn status(&self) -> serde_json::Value {
        common::json_at(format!("http://127.0.0.1:{}/status", self.status)).await
    }

    /// Every refresh and access token the stand-in issued.
    fn issued(&self) -> Vec<String> {
        self.id.with(|s| s.issued.clone())
    }

    /// Asserts that no issued token (nor a code) appears in `text`.
    fn assert_no_token_in(&self, what: &str, text: &str) {
        for t in self.issued() {
            assert!(!text.contains(&t), "{what} shows a token: {text}");
        }
        let codes = self.id.with(|s| s.all_codes.clone());
        assert!(!codes.is_empty(), "a sign-in handed out a code");
        for code in codes {
            assert!(!text.contains(&code), "{what} shows a code");
        }
    }
}

fn message(subject: &str) -> Vec<u8> {
    format!("From: erp@contoso.com\r\nTo: a@example.com\r\nSubject: {subject}\r\n\r\nbody\r\n")
        .into_bytes()
}

async fn submit(d: &DaemonProcess, subject: &str) -> String {
    common::submit_to(
        d.smtp,
        "erp@contoso.com",
        &["a@example.com"],
        &message(subject),
    )
    .await
}

fn diagnosis(r: &serde_json::Value) -> String {
    r["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .map(|a| a["diagnosis"]["code"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn last_reply(r: &serde_json::Value) -> String {
    r["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .map(|a| a["reply"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

const OUTLOOK: &str = "flow = \"device_code\"\ntenant_id = \"consumers\"\n\
    token_url = \"{ID}/consumers/oauth2/v2.0/token\"\n\
    device_code_url = \"{ID}/consumers/oauth2/v2.0/devicecode\"";

/// Runs a device-code login to success: the person approves once the code is printed.
fn device_login(site: &Site) -> (i32, String, String) {
    let mut login = site.login(&[]);
    login.wait_line(|l| l.starts_with("user code:"));
    site.id.with(|s| s.approved = true);
    login.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_device_code_sign_in_rotation_and_restart() {
    let site = Site::new(MAILBOX, OUTLOOK).await;
    site.id.with(|s| {
        s.expires_in = 2; // every message needs a renewal: a forced refresh each time
        s.device_answers = [
            "authorization_pending",
            "slow_down",
            "authorization_pending",
        ]
        .map(String::from)
        .into();
    });
    let mut d = site.daemon();

    // Never signed in: the mail is held with oauth-not-signed-in.
    let held = submit(&d, "before the sign-in").await;
    let r = site.first_attempt(&held).await;
    assert_eq!(r["status"], "deferred", "{r:#}");
    assert_eq!(diagnosis(&r), "oauth-not-signed-in");
    assert!(
        last_reply(&r).contains("mailgate oauth2 login --provider mailbox"),
        "{r:#}"
    );
    assert!(site.up.messages().is_empty());

    // The device code flow: the platform's URL, code and message exactly, polling that
    // honours slow_down, then the sign-in.
    let mut login = site.login(&[]);
    let url = login.wait_line(|l| l.starts_with("verification URL:"));
    assert_eq!(url, "verification URL: https://microsoft.com/devicelogin");
    let code = login.wait_line(|l| l.starts_with("user code:"));
    assert_eq!(code, "user code:        HQ7T-X2PB");
    login.wait_line(|l| {
        l == "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code HQ7T-X2PB to authenticate."
    });
    login.wait_line(|l| l.contains("every 6 seconds"));
    site.id.with(|s| s.approved = true);
    let (code, out, err) = login.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!("signed in to provider \"mailbox\" as {MAILBOX}")),
        "{out}"
    );
    assert!(out.contains("1 held message released"), "{out}");
    site.assert_no_token_in("oauth2 login", &(out.clone() + &err));
    let polls: Vec<Instant> = site.id.with(|s| {
        s.grants
            .iter()
            .filter(|(_, g)| g["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code")
            .map(|(t, _)| *t)
            .collect()
    });
    assert_eq!(
        polls.len(),
        4,
        "pending, slow_down, pending, then the tokens"
    );
    assert!(
        polls[1] - polls[0] >= Duration::from_millis(900),
        "polled at the interval"
    );
    assert!(
        polls[2] - polls[1] >= Duration::from_secs(6),
        "slow_down adds 5 seconds to the 1-second interval"
    );
    let dev = site.id.with(|s| s.device_requests[0].clone());
    assert_eq!(
        dev["scope"],
        "https://outlook.office.com/SMTP.Send offline_access"
    );
    assert!(
        !dev.contains_key("client_secret"),
        "a public client sends no secret"
    );

    // The held message goes at once, as the signed-in mailbox.
    let r = site.record(&held, |r| r["status"] == "sent").await;
    assert_eq!(r["status"], "sent");
    assert_eq!(site.up.messages()[0].auth_user.as_deref(), Some(MAILBOX));

    // Two more messages, each after the 2-second access token has aged: two forced
    // refreshes in a row, each rotating the refresh token (the old one refused after).
    for n in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let id = submit(&d, &format!("renewal {n}")).await;
        let r = site.record(&id, |r| r["status"] != "queued").await;
        assert_eq!(r["status"], "sent", "{r:#}");
    }
    let refreshes = site.id.grants_of("refresh_token");
    assert!(refreshes.len() >= 3, "{refreshes:?}");
    let used: Vec<&str> = refreshes
        .iter()
        .map(|g| g["refresh_token"].as_str())
        .collect();
    let mut distinct = used.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        used.len(),
        "every refresh used the newest token: {used:?}"
    );
    assert!(site.id.with(|s| s.rotated_away.len()) >= 3);
    for g in &refreshes {
        assert!(!g.contains_key("client_secret"));
        assert_eq!(
            g["scope"],
            "https://outlook.office.com/SMTP.Send offline_access"
        );
    }
    // The sealed file holds no token in the clear.
    let secrets = std::fs::read_to_string(site.env.dir.path().join("data/secrets.json")).unwrap();
    site.assert_no_token_in("secrets.json", &secrets);

    // /status and /metrics show the sign-in and the token state.
    let s = site.status().await;
    let o = &common::provider_in(&s, "mailbox")["oauth2"];
    assert_eq!(o["flow"], "device_code");
    assert_eq!(o["signed_in"], true);
    assert_eq!(o["sign_in"]["account"], MAILBOX);
    assert!(
        o["sign_in"]["refresh_token_ages_out"].as_str().unwrap() > "2027",
        "{o:#}"
    );
    let metrics = common::text_at(format!("http://127.0.0.1:{}/metrics", site.status)).await;
    assert!(
        metrics.contains("mailgate_oauth2_signed_in{provider=\"mailbox\"} 1"),
        "{metrics}"
    );
    let ages_out: i64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("mailgate_oauth2_refresh_token_ages_out_seconds{provider=\"mailbox\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        (89 * 86_400..=90 * 86_400).contains(&ages_out),
        "{ages_out}"
    );

    // A restart keeps the sign-in (the last rotation was saved).
    d.terminate();
    let mut d = site.daemon();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = submit(&d, "after the restart").await;
    let r = site.record(&id, |r| r["status"] != "queued").await;
    assert_eq!(r["status"], "sent", "{r:#}");
    assert_eq!(site.up.messages().len(), 4);

    // `oauth2 status` tells the story in words.
    let st = site.cli(&["oauth2", "status"]);
    let text = String::from_utf8_lossy(&st.stdout).to_string();
    assert!(st.status.success(), "{text}");
    assert!(text.contains("mailbox: flow device_code"), "{text}");
    assert!(
        text.contains(&format!("signed in:     yes, as {MAILBOX}")),
        "{text}"
    );
    assert!(text.contains("access token:  valid until"), "{text}");
    site.assert_no_token_in("oauth2 status", &text);

    // No token or code in the history, the status output or any log line.
    let history = common::text_at(format!("http://127.0.0.1:{}/api/messages", site.status)).await;
    site.assert_no_token_in("the history", &history);
    site.assert_no_token_in("/status", &site.status().await.to_string());
    site.assert_no_token_in("/metrics", &metrics);
    d.terminate();
    d.drain();
    let log = d
        .seen
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    site.assert_no_token_in("the daemon's log", &log);
    assert!(log.contains("OAuth2 access token acquired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_stops_on_access_denied_and_expired_token() {
    let site = Site::new(MAILBOX, OUTLOOK).await;
    for (answer, words) in [
        ("access_denied", "The user has denied access"),
        ("expired_token", "This device code has expired"),
    ] {
        site.id
            .with(|s| s.device_answers = [answer.to_string()].into());
        let (code, out, err) = site.login(&[]).finish();
        assert_eq!(code, 1, "{out}\n{err}");
        assert!(
            err.contains(&format!("sign-in failed: {answer}: ")),
            "{err}"
        );
        assert!(err.contains(words), "the platform's words: {err}");
    }
    let st = site.cli(&["oauth2", "status"]);
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("signed in:     no"),
        "nothing stored"
    );
    // Another account than the provider's username signs in: said, with the fix.
    site.id
        .with(|s| s.id_token_account = Some("someone.else@outlook.com".into()));
    let (code, out, err) = device_login(&site);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("as someone.else@outlook.com"), "{out}");
    assert!(
        err.contains("note: the provider's username is pat@outlook.com, but someone.else@outlook.com signed in"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_holds_mail_until_a_new_login_and_logout_forgets() {
    let site = Site::new(MAILBOX, OUTLOOK).await;
    let (code, out, err) = device_login(&site);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("mailgate is not running"), "{out}");
    let d = site.daemon();

    // The platform refuses the refresh token: 90 days unused.
    site.id.with(|s| {
        s.refresh_error = Some((
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity. The token was issued on 2026-08-01T10:00:00Z and was inactive for 90.00:00:00.\r\nTrace ID: 0c6f\r\nCorrelation ID: 9d1e","error_codes":[700082]}"#.into(),
        ));
    });
    let id = submit(&d, "refused").await;
    let r = site.first_attempt(&id).await;
    assert_eq!(r["status"], "deferred", "{r:#}");
    assert_eq!(diagnosis(&r), "oauth-reauthorize");
    let reply = last_reply(&r);
    assert!(
        reply.contains(
            "invalid_grant: AADSTS700082: The refresh token has expired due to inactivity."
        ),
        "{reply}"
    );
    assert!(reply.contains("90 days without use"), "explained: {reply}");
    assert!(!reply.contains("Trace ID"));
    let fix = r["attempts"][0]["diagnosis"]["fix"].as_str().unwrap();
    assert!(
        fix.contains("mailgate oauth2 login --provider NAME"),
        "{fix}"
    );
    let st = String::from_utf8_lossy(&site.cli(&["oauth2", "status"]).stdout).to_string();
    assert!(
        st.contains("REFUSED:       token endpoint answered HTTP 400: invalid_grant: AADSTS700082"),
        "{st}"
    );

    // A new login releases the held mail.
    site.id.with(|s| {
        s.refresh_error = None;
        s.approved = false;
    });
    let (code, out, err) = device_login(&site);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("1 held message released"), "{out}");
    let r = site.record(&id, |r| r["status"] == "sent").await;
    assert_eq!(r["status"], "sent");

    // Logout: the next message waits with oauth-not-signed-in.
    let out = site.cli(&["oauth2", "logout", "--provider", "mailbox"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("the running daemon forgot the sign-in"),
        "{text}"
    );
    let id = submit(&d, "after logout").await;
    let r = site.first_attempt(&id).await;
    assert_eq!(diagnosis(&r), "oauth-not-signed-in", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_renews_the_sign_in_at_least_twice_a_day() {
    let Some(faketime) = common::libfaketime() else {
        panic!("libfaketime is missing: apt-get install faketime (.ci/run does)");
    };
    let site = Site::new(MAILBOX, OUTLOOK).await;
    let (code, out, err) = device_login(&site);
    assert_eq!(code, 0, "{out}\n{err}");
    // Started now: the sign-in is fresh, nothing to renew.
    let mut d = site.daemon();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(site.id.grants_of("refresh_token").is_empty());
    d.terminate();
    // Started 13 hours later with no mail at all: the refresh token is used at once.
    let mut cmd = Command::new(common::bin());
    cmd.env("LD_PRELOAD", &faketime).env("FAKETIME", "+13h");
    let mut d = DaemonProcess::start_with(&site.env.config_path, cmd);
    d.wait_log(
        |v| {
            v["message"] == "OAuth2 sign-in renewed while idle (refresh tokens age out when unused)"
        },
        WAIT,
    );
    assert_eq!(site.id.grants_of("refresh_token").len(), 1);
    let s = site.status().await;
    let o = &s["providers"][1]["oauth2"];
    assert_eq!(o["token_valid"], true, "{o:#}");
    assert!(site.up.messages().is_empty(), "no mail was needed");
    d.terminate();

    // Refused while idle (26 hours on): recorded once; a restart does not ask again.
    site.id.with(|s| {
        s.refresh_error = Some((
            400,
            r#"{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired due to it being revoked.","error_codes":[50173]}"#.into(),
        ))
    });
    for _ in 0..2 {
        let mut cmd = Command::new(common::bin());
        cmd.env("LD_PRELOAD", &faketime).env("FAKETIME", "+26h");
        let mut d = DaemonProcess::start_with(&site.env.config_path, cmd);
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.terminate();
    }
    assert_eq!(
        site.id.grants_of("refresh_token").len(),
        3,
        "one refused renewal (the newest token, then the one before it), then none until a new login"
    );
    let st = String::from_utf8_lossy(&site.cli(&["oauth2", "status"]).stdout).to_string();
    assert!(
        st.contains("REFUSED:") && st.contains("AADSTS50173"),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_service_account_signs_a_jwt_grant() {
    let site = Site::new(
        "ops@contoso.example",
        "flow = \"jwt_bearer\"\nservice_account_file = \"SA\"\nsubject = \"ops@contoso.example\"\ntoken_url = \"{ID}/token\"",
    )
    .await;
    // A service account key as Google Cloud offers it: an RSA key made here by openssl.
    let dir = site.env.dir.path();
    let key = dir.join("sa.key");
    let key_pem = common::openssl_rsa_key(&key);
    let der = Command::new("openssl")
        .args(["rsa", "-RSAPublicKey_out", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(der.status.success());
    site.id
        .with(|s| s.jwt_public_key = Some(der.stdout.clone()));
    let sa = serde_json::json!({
        "type": "service_account",
        "project_id": "mailgate-test",
        "private_key_id": "1f2e3d",
        "private_key": key_pem,
        "client_email": "relay@mailgate-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    std::fs::write(dir.join("sa.json"), sa.to_string()).unwrap();
    let text = std::fs::read_to_string(&site.env.config_path)
        .unwrap()
        .replace(
            "service_account_file = \"SA\"",
            &format!(
                "service_account_file = \"{}\"",
                dir.join("sa.json").display()
            ),
        )
        .replace("client_id = \"9e5f94bc-e8a4-4e73-b8be-63364c29d753\"\n", "");
    std::fs::write(&site.env.config_path, text).unwrap();
    assert!(site.cli(&["check-config"]).status.success());
    let out = site.cli(&["oauth2", "login", "--provider", "mailbox"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is nothing to sign in"));

    let d = site.daemon();
    let id = submit(&d, "from the service account").await;
    let r = site.record(&id, |r| r["status"] != "queued").await;
    assert_eq!(r["status"], "sent", "{r:#}");
    assert_eq!(
        site.up.messages()[0].auth_user.as_deref(),
        Some("ops@contoso.example")
    );
    let verified = site.id.with(|s| s.jwt_claims.clone());
    assert_eq!(verified.len(), 1, "one verified assertion");
    let c = &verified[0]["claims"];
    assert_eq!(c["iss"], "relay@mailgate-test.iam.gserviceaccount.com");
    assert_eq!(c["sub"], "ops@contoso.example");
    assert_eq!(c["scope"], "https://mail.google.com/");
    assert_eq!(
        c["aud"],
        format!("http://{}/token", site.id.addr),
        "aud is the token endpoint used"
    );
    assert_eq!(verified[0]["header"]["kid"], "1f2e3d");
    // A key the platform does not know is refused: the stand-in verifies signatures.
    let other = common::openssl_rsa_key(&dir.join("other.key"));
    let mut sa = sa;
    sa["private_key"] = other.into();
    std::fs::write(dir.join("sa.json"), sa.to_string()).unwrap();
    let out = site.cli(&["verify", "--provider", "mailbox"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success());
    assert!(text.contains("Invalid JWT Signature"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_flows_that_cannot_work() {
    let cases: [(&str, &str, &str); 5] = [
        (
            "127.0.0.1",
            "flow = \"device_code\"\ntenant_id = \"consumers\"\nclient_secret = \"x\"",
            "flow = \"device_code\" is a public client flow: remove client_secret",
        ),
        (
            "127.0.0.1",
            "flow = \"jwt_bearer\"\nservice_account_file = \"/etc/sa.json\"",
            "flow = \"jwt_bearer\" needs subject",
        ),
        (
            "smtp.gmail.com",
            "flow = \"device_code\"",
            "Google's device flow does not allow the https://mail.google.com/ scope",
        ),
        (
            "smtp.gmail.com",
            "flow = \"authorization_code\"",
            "needs the Desktop app client's client_secret",
        ),
        (
            "127.0.0.1",
            "flow = \"device_code\"",
            "flow = \"device_code\" needs tenant_id",
        ),
    ];
    for (host, lines, words) in cases {
        let env = TestEnv::new(
            "",
            &format!(
                "[[provider]]\nname = \"m\"\nkind = \"smtp\"\nhost = \"{host}\"\nusername = \"u@example.com\"\n[provider.oauth2]\nclient_id = \"c\"\n{lines}\n"
            ),
        );
        let out = common::run_cli(&[
            "--config",
            env.config_path.to_str().unwrap(),
            "check-config",
        ]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{lines}: {err}");
        assert!(err.contains(words), "{lines}: {err}");
        assert!(err.contains("mailgate.toml:"), "located: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_access_token_is_renewed_once_and_a_refused_new_refresh_token_falls_back() {
    let site = Site::new(MAILBOX, OUTLOOK).await;
    let (code, out, err) = device_login(&site);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut d = site.daemon();
    let first = submit(&d, "one").await;
    assert_eq!(
        site.record(&first, |r| r["status"] != "queued").await["status"],
        "sent"
    );
    assert_eq!(site.id.grants_of("refresh_token").len(), 1);

    // The upstream stops accepting the (unexpired, cached) access token: one renewal.
    site.id.access().lock().unwrap().clear();
    let second = submit(&d, "two").await;
    let r = site.record(&second, |r| r["status"] != "queued").await;
    assert_eq!(r["status"], "sent", "{r:#}");
    assert_eq!(
        site.id.grants_of("refresh_token").len(),
        2,
        "exactly one renewal"
    );

    // The platform refuses the newest refresh token but still knows the one before it
    // (a rotation it did not keep): mailgate falls back to the previous one.
    site.id.with(|s| {
        let previous = s.rotated_away.last().unwrap().clone();
        s.valid_refresh.clear();
        s.valid_refresh.insert(previous);
    });
    site.id.access().lock().unwrap().clear();
    let third = submit(&d, "three").await;
    let r = site.record(&third, |r| r["status"] != "queued").await;
    assert_eq!(r["status"], "sent", "{r:#}");
    d.wait_log(
        |v| v["message"] == "the identity platform refused the newest refresh token; trying the one before it",
        WAIT,
    );
    let used: Vec<String> = site
        .id
        .grants_of("refresh_token")
        .iter()
        .map(|g| g["refresh_token"].clone())
        .collect();
    assert_eq!(used.len(), 4);
    assert_eq!(
        used[3], used[1],
        "the previous token, after the newest was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_with_a_delegated_sign_in() {
    use common::msgraph::MockMicrosoft;
    let ms = MockMicrosoft::start().await;
    let id = Identity::start(CLIENT).await;
    ms.with(|s| s.also_valid = Some(id.access()));
    let env = TestEnv::new(
        "",
        &format!(
            "{}\
             [provider.oauth2]\nflow = \"device_code\"\ntenant_id = \"consumers\"\nclient_id = \"{CLIENT}\"\n\
             token_url = \"http://{1}/consumers/oauth2/v2.0/token\"\ndevice_code_url = \"http://{1}/consumers/oauth2/v2.0/devicecode\"\n\
             [distributor]\ndefault_provider = \"mailbox\"\n",
            common::graph_at("mailbox", ms.graph_url()),
            id.addr
        ),
    );
    let mut login = Login::start(&env.config_path, "mailbox", &[]);
    login.wait_line(|l| l.starts_with("user code:"));
    id.with(|s| s.approved = true);
    let (code, out, err) = login.finish();
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        id.with(|s| s.device_requests[0]["scope"].clone()),
        "https://graph.microsoft.com/Mail.Send offline_access"
    );
    let d = DaemonProcess::start(&env.config_path);
    let mid = common::submit_to(
        d.smtp,
        "pat@outlook.com",
        &["a@example.com"],
        &message("via graph"),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while ms.with(|s| s.sent.is_empty()) {
        assert!(Instant::now() < deadline, "Graph got nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ms.with(|s| {
        assert_eq!(s.sent[0].sender, "pat@outlook.com");
        let bearer = s.sent[0]
            .authorization
            .strip_prefix("Bearer ")
            .unwrap()
            .to_string();
        assert!(
            id.with(|i| i.issued.contains(&bearer)),
            "the delegated token"
        );
    });
    assert!(!mid.is_empty());
}

/// SIGKILL at any moment while refresh tokens rotate on every delivery: the sealed
/// sign-in is never torn (written to a temporary file, synced, renamed), the lock of a
/// killed holder is released with it, and after every restart mail still goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_refresh_tokens_rotate_never_loses_the_sign_in() {
    let site = Site::new(MAILBOX, OUTLOOK).await;
    site.id.with(|s| {
        s.expires_in = 1; // every delivery renews
        s.old_stays_valid = true; // like Microsoft: a kill after the platform rotated is not fatal
    });
    let (code, out, err) = device_login(&site);
    assert_eq!(code, 0, "{out}\n{err}");
    let mut rng = 7u64;
    for round in 0..6 {
        let mut d = site.daemon();
        for n in 0..4 {
            let _ = common::send_once(
                d.smtp,
                "erp@contoso.com",
                &["a@example.com"],
                &message(&format!("round {round} message {n}")),
            )
            .await;
        }
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(100 + (rng >> 33) % 500)).await;
        d.kill();
        let st = String::from_utf8_lossy(&site.cli(&["oauth2", "status"]).stdout).to_string();
        assert!(
            st.contains(&format!("signed in:     yes, as {MAILBOX}")),
            "round {round}: {st}"
        );
        let raw = std::fs::read(site.env.dir.path().join("data/secrets.json")).unwrap();
        assert!(
            serde_json::from_slice::<serde_json::Value>(&raw).is_ok(),
            "round {round}: a torn secrets file"
        );
    }
    let refreshes = site.id.grants_of("refresh_token").len();
    assert!(
        refreshes >= 6,
        "the kills landed while tokens rotated ({refreshes} renewals)"
    );
    let d = site.daemon();
    let id = submit(&d, "after the kills").await;
    let r = site.record(&id, |r| r["status"] == "sent").await;
    assert_eq!(r["status"], "sent", "{r:#}");
}
