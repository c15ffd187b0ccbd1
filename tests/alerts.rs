//! Alerts (SPEC "Telling people: bounces and alerts"), against the binary with a real
//! HTTP receiver: one `failed` digest for a burst of failures, `held` firing then
//! resolved after a fix and a reload, Teams and Slack bodies in their documented shapes,
//! `queue-stuck` delivered once although the receiver was down and the daemon restarted
//! in between, `sign-in-expiring` for a certificate that ends in ten days, an email alert
//! through another provider than the one it is about, and `mailgate alert test`.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use common::send_short;
use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, cli, queued_id, send_once, write};
use serde_json::Value;

/// A webhook receiver: records every POST body by path; answers 503 while `down`.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    down: Arc<AtomicBool>,
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let r = Receiver::default();
        let app = axum::Router::new()
            .route(
                "/{path}",
                axum::routing::post(
                    |State(r): State<Receiver>,
                     Path(path): Path<String>,
                     body: axum::Json<Value>| async move {
                        if r.down.load(Ordering::SeqCst) {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        r.got.lock().unwrap().push((path, body.0));
                        StatusCode::OK
                    },
                ),
            )
            .with_state(r.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (r, addr)
    }

    fn bodies(&self, path: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Waits (bounded) for a body on `path` matching `pred`.
    async fn wait(&self, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(v) = self.bodies(path).into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not arrive on /{path}; got {:#?}",
                self.got.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn is(event: &str, state: &str) -> impl Fn(&Value) -> bool {
    let (event, state) = (event.to_string(), state.to_string());
    move |v: &Value| v["event"] == event.as_str() && v["state"] == state.as_str()
}

async fn submit(d: &DaemonProcess, from: &str, rcpt: &str) -> String {
    let reply = send_once(d.smtp, from, &[rcpt], b"Subject: alerts\r\n\r\nhello\r\n").await;
    queued_id(&reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
}

fn provider(name: &str, up: &Upstream, extra: &str) -> String {
    format!(
        "{}per_minute_limit = 0\n{extra}\n",
        common::plain_smtp(name, up.addr.port())
    )
}

/// A self-signed certificate (openssl) that ends in `days` days, and its key.
fn certificate(env: &TestEnv, days: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        env.dir.path().join("app.crt"),
        env.dir.path().join("app.key"),
    );
    let _made = common::succeeded(
        std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=app",
            ])
            .args(["-days", &days.to_string()])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}

/// An alert's summary line.
fn summary(alert: &serde_json::Value) -> &str {
    alert["summary"].as_str().unwrap()
}

/// An upstream that takes relay@contoso.com's password.
fn takes_the_password() -> Script {
    Script {
        offer_auth: true,
        credentials: Some(("relay@contoso.com".into(), "pw".into())),
        ..Script::default()
    }
}

/// An upstream that says Basic authentication is retired.
fn retired() -> Script {
    takes_the_password().reply(
        "auth",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_summed_held_fires_and_resolves_in_three_formats() {
    let (rx, addr) = Receiver::start().await;
    let up = Upstream::replying(
        "rcpt:gone@example.com",
        "550 5.1.1 <gone@example.com>: User unknown",
    )
    .await;
    let held = Upstream::start(retired()).await;
    let env = TestEnv::new("", "");
    let config = |held_extra: &str| {
        format!(
            "{}{}[distributor]\ndefault_provider = \"up\"\n[notify]\nbounce = \"off\"\n\
             [[user]]\nname = \"h\"\nmatch_senders = [\"h@erp.local\"]\nprovider = \"held\"\n\
             [[alert]]\nname = \"ops\"\nwebhook_url = \"http://{addr}/json\"\nmin_interval = \"3s\"\n\
             [[alert]]\nname = \"teams\"\nwebhook_url = \"http://{addr}/teams\"\nformat = \"teams\"\nevents = [\"held\"]\n\
             [[alert]]\nname = \"slack\"\nwebhook_url = \"http://{addr}/slack\"\nformat = \"slack\"\nevents = [\"held\"]\n",
            provider("up", &up, ""),
            provider(
                "held",
                &held,
                &format!("username = \"relay@contoso.com\"\n{held_extra}"),
            ),
        )
    };
    write(&env, &config("password = \"pw\""));
    let d = DaemonProcess::start(&env.config_path);

    // Fifty failures in a burst: one alert, count 50, the first 20 ids.
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(submit(&d, "app@erp.local", "gone@example.com").await);
    }
    let digest = rx
        .wait("json", "the failed digest", is("failed", "firing"))
        .await;
    assert_eq!(digest["count"], 50, "{digest:#}");
    let listed = digest["messages"].as_array().unwrap();
    assert_eq!(listed.len(), 20);
    assert!(ids.contains(&listed[0]["id"].as_str().unwrap().to_string()));
    assert_eq!(listed[0]["diagnosis"], "recipient-unknown");
    // The node is the name the fleet uses: here (no [fleet]) the host name, not smtp.hostname.
    assert_eq!(digest["node"], host_name());
    assert!(digest["since"].as_str().unwrap().ends_with('Z'));
    // ... resolved once three seconds pass without a failure; still only one firing.
    rx.wait("json", "the failed resolution", is("failed", "resolved"))
        .await;
    let failed: Vec<Value> = rx
        .bodies("json")
        .into_iter()
        .filter(|v| v["event"] == "failed" && v["state"] == "firing")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");

    // A provider that holds mail for a configuration reason: held fires, in all three
    // formats, and shows in /status and on the dashboard.
    submit(&d, "h@erp.local", "a@example.com").await;
    let fired = rx.wait("json", "held", is("held", "firing")).await;
    assert_eq!(fired["provider"], "held");
    assert!(summary(&fired).contains("basic-auth-retired"), "{fired:#}");
    let teams = rx.wait("teams", "the Teams card", |_| true).await;
    assert_eq!(teams["type"], "message");
    let att = &teams["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(att["content"]["type"], "AdaptiveCard");
    assert_eq!(
        att["content"]["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert!(att["content"]["version"].is_string());
    let blocks = att["content"]["body"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "TextBlock");
    assert!(
        blocks[0]["text"]
            .as_str()
            .unwrap()
            .contains("FIRING held: provider held holds mail")
    );
    assert_eq!(blocks[1]["type"], "FactSet");
    let slack = rx.wait("slack", "the Slack message", |_| true).await;
    assert!(slack["text"].as_str().unwrap().contains("FIRING held"));
    assert_eq!(slack["blocks"][0]["type"], "section");
    assert_eq!(slack["blocks"][0]["text"]["type"], "mrkdwn");
    let st = d.get_json("/status").await;
    let open = st["alerts"].as_array().unwrap();
    assert!(
        open.iter()
            .any(|a| a["event"] == "held" && a["provider"] == "held"),
        "{st:#}"
    );
    let page = d.get_text("/").await;
    assert!(
        page.contains("<li class=\"alert\" data-event=\"held\">"),
        "{page}"
    );

    // The fix: the server takes the password again; a reload releases the held mail,
    // it goes, and held resolves.
    held.set_script(takes_the_password());
    let resp = common::post_action(format!("http://{}/api/reload", d.status)).await;
    assert_eq!(resp.status(), 200);
    held.wait_for(1).await;
    rx.wait("json", "held resolved", is("held", "resolved"))
        .await;
    rx.wait("teams", "held resolved (Teams)", |v| {
        v["attachments"][0]["content"]["body"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("RESOLVED held"))
    })
    .await;
    let m = d.get_text("/metrics").await;
    assert!(
        m.contains("mailgate_alerts_sent_total{alert=\"ops\",event=\"failed\"} 2"),
        "firing and resolved: {m}"
    );
    assert!(m.contains("mailgate_alerts_sent_total{alert=\"teams\",event=\"held\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_the_receiver_missed_arrives_later_once_across_a_restart() {
    let (rx, addr) = Receiver::start().await;
    rx.down.store(true, Ordering::SeqCst);
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "[distributor]\nenabled = false\nstuck_after = \"1s\"\n\
             [[alert]]\nname = \"ops\"\nwebhook_url = \"http://{addr}/json\"\nevents = [\"queue-stuck\"]\n"
        ),
    );
    let mut d = DaemonProcess::start(&env.config_path);
    submit(&d, "app@erp.local", "a@example.com").await;
    // The condition starts; the receiver refuses; the failure is counted.
    d.wait_log(
        |v| v["message"] == "cannot deliver an alert; trying again later",
        Duration::from_secs(20),
    );
    let m = d.get_text("/metrics").await;
    assert!(
        m.contains("mailgate_alert_failures_total{alert=\"ops\"} 1"),
        "{m}"
    );
    // A restart in between: the condition is still open, the alert still owed.
    assert_eq!(d.terminate().code(), Some(0));
    let d = DaemonProcess::start(&env.config_path);
    rx.down.store(false, Ordering::SeqCst);
    let got = rx
        .wait("json", "queue-stuck", is("queue-stuck", "firing"))
        .await;
    assert!(summary(&got).contains("has waited"), "{got:#}");
    // Nothing more comes: once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rx.bodies("json").len(), 1, "{:#?}", rx.bodies("json"));
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_alert_avoids_the_provider_it_is_about_and_alert_test_reports() {
    let (rx, addr) = Receiver::start().await;
    let first = Upstream::start(retired()).await;
    let second = Upstream::start(Script::default()).await;
    let env = TestEnv::new("", "");
    // A certificate that ends in ten days: sign-in-expiring.
    let (cert, key) = certificate(&env, 10);
    write(
        &env,
        &format!(
            "{}{}[[provider]]\nname = \"graph\"\nkind = \"graph\"\n\
             [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app\"\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"\n\
             [distributor]\ndefault_providers = [\"first\", \"second\"]\n[notify]\nbounce = \"off\"\n\
             [[alert]]\nname = \"mail\"\nemail = \"it@contoso.com\"\nevents = [\"held\"]\n\
             [[alert]]\nname = \"hook\"\nwebhook_url = \"http://{addr}/json\"\nevents = [\"sign-in-expiring\"]\n",
            provider(
                "first",
                &first,
                "username = \"relay@contoso.com\"\npassword = \"pw\""
            ),
            provider("second", &second, ""),
            cert.display(),
            key.display()
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    let expiring = rx
        .wait("json", "sign-in-expiring", is("sign-in-expiring", "firing"))
        .await;
    assert_eq!(expiring["provider"], "graph");
    assert!(
        summary(&expiring).contains("the client certificate expires"),
        "{expiring:#}"
    );

    // The first holds mail (Basic auth retired): the message falls back to the second,
    // and so does the alert email about the first.
    submit(&d, "app@erp.local", "a@example.com").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let alert = loop {
        if let Some(m) = second
            .messages()
            .into_iter()
            .find(|m| m.rcpts == ["it@contoso.com"])
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no alert email through the second"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = String::from_utf8_lossy(&alert.data);
    common::assert_has(
        &text,
        &[
            "FIRING held: provider first holds mail",
            "Auto-Submitted: auto-generated",
        ],
    );
    assert!(first.messages().is_empty());

    // `mailgate alert test`: each alert gets a test; a receiver that refuses fails it.
    let out = common::cli_ok(&env, &["alert", "test", "--alert", "hook"]);
    assert!(
        out.contains(&format!("hook: sent to http://{addr}/json")),
        "{out}"
    );
    let test = rx
        .wait("json", "the test alert", |v| v["test"] == true)
        .await;
    assert_eq!(test["event"], "test");
    rx.down.store(true, Ordering::SeqCst);
    let (code, out, _) = cli(&env, &["alert", "test", "--alert", "hook"]);
    assert_eq!(code, 1, "{out}");
    common::assert_has(&out, &["hook: FAILED:", "503"]);
    let (code, _, err) = cli(&env, &["alert", "test", "--alert", "nope"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no alert named \"nope\" (its alerts: mail, hook)"),
        "{err}"
    );
}

/// `packaging/prometheus/mailgate.rules.yml`: every mailgate metric its rules use is one
/// the daemon exports, and promtool (Debian's `prometheus` package) finds the rules valid
/// and their unit tests passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_rules_use_exported_metrics_and_pass_promtool() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/prometheus");
    let rules = std::fs::read_to_string(format!("{dir}/mailgate.rules.yml")).unwrap();
    // A site with a failing upstream, a delegated provider and one with a certificate,
    // so that every family the rules use has a series.
    let up = Upstream::replying(
        "rcpt:gone@example.com",
        "550 5.1.1 <gone@example.com>: User unknown",
    )
    .await;
    let env = TestEnv::new("", "");
    let (cert, key) = certificate(&env, 300);
    write(
        &env,
        &format!(
            "{}[distributor]\ndefault_provider = \"up\"\n[notify]\nbounce = \"off\"\n\
             [[provider]]\nname = \"graph\"\nkind = \"graph\"\n\
             [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app\"\ncertificate_file = \"{}\"\nprivate_key_file = \"{}\"\n\
             [[provider]]\nname = \"outlook\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nusername = \"me@outlook.com\"\n\
             [provider.oauth2]\nflow = \"device_code\"\ntenant_id = \"consumers\"\nclient_id = \"app\"\n",
            provider("up", &up, ""),
            cert.display(),
            key.display()
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    let failed = submit(&d, "app@erp.local", "gone@example.com").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::json_at::<Value>(format!("http://{}/api/messages/{failed}", d.status)).await["status"]
        != "failed"
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exported = d.get_text("/metrics").await;
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("mailgate_"))
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 8, "{used:?}");
    for name in used {
        // A counter is exported as NAME_total, described as NAME.
        let family = name.strip_suffix("_total").unwrap_or(name);
        // The fleet families are exported with [fleet] only (tests/fleet.rs has them).
        let fleet_only = family.starts_with("mailgate_fleet_");
        assert!(
            fleet_only || exported.contains(&format!("# TYPE {family} ")),
            "the rules use {name}, which /metrics does not export"
        );
    }
    if !common::have("promtool") {
        common::skip("promtool: Debian's prometheus is not installed (.ci/run installs it)");
        return;
    }
    for args in [
        ["check", "rules", "mailgate.rules.yml"],
        ["test", "rules", "mailgate.rules.test.yml"],
    ] {
        common::succeeded(
            std::process::Command::new("promtool")
                .args(args)
                .current_dir(dir),
        );
    }
}

/// `store`: free space under `store.min_free_space` fires it and the same key lowered by
/// a reload clears it; a disk that fills up (every commit failing) fires it again until
/// the writes succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_alert_fires_when_space_runs_short_and_resolves() {
    let (rx, addr) = Receiver::start().await;
    let env = TestEnv::new("", "");
    let alert = format!(
        "[[alert]]\nname = \"ops\"\nwebhook_url = \"http://{addr}/json\"\nevents = [\"store\"]\n"
    );
    write(&env, &alert);
    let short = std::fs::read_to_string(&env.config_path)
        .unwrap()
        .replace("min_free_space = 0", "min_free_space = \"1000000GB\"");
    std::fs::write(&env.config_path, &short).unwrap();
    // While this file exists every write to the store fails as on a full disk.
    let full = env.dir.path().join("disk-full");
    let mut cmd = std::process::Command::new(common::bin());
    cmd.env("MAILGATE_FAULT_STORE_WRITES", &full);
    let d = DaemonProcess::start_with(&env.config_path, cmd);
    let fired = rx.wait("json", "store", is("store", "firing")).await;
    assert!(
        summary(&fired).contains("the store needs attention"),
        "{fired:#}"
    );
    std::fs::write(
        &env.config_path,
        short.replace("min_free_space = \"1000000GB\"", "min_free_space = 0"),
    )
    .unwrap();
    let resp = common::post_action(format!("http://{}/api/reload", d.status)).await;
    assert_eq!(resp.status(), 200);
    rx.wait("json", "store resolved", is("store", "resolved"))
        .await;

    // The disk fills: the next commit fails (the submission gets 451 and nothing is
    // acknowledged), the alert fires again; space comes back, it clears.
    std::fs::write(&full, b"").unwrap();
    // The store looks at the flag every 50 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = send_short(d.smtp, "app@erp.local", "a@example.com", "full").await;
    assert!(reply.starts_with("451"), "{reply}");
    let again = rx
        .wait("json", "store (commits failing)", |v| {
            is("store", "firing")(v) && v["since"] != fired["since"]
        })
        .await;
    assert!(summary(&again).contains("commit"), "{again:#}");
    std::fs::remove_file(&full).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while rx
        .bodies("json")
        .iter()
        .filter(|v| is("store", "resolved")(v))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:#?}", rx.bodies("json"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A stored sign-in of `account` at `provider`, made at `at` and last used at `used`.
fn signed_in(
    secrets: &mailgate::secrets::SecretStore,
    provider: &str,
    account: &str,
    at: u64,
    used: u64,
) {
    use mailgate::provider::oauth2::signin::{self, SignIn};
    signin::save(
        secrets,
        &secrets.lock().unwrap(),
        provider,
        &SignIn {
            refresh_token: format!("rt-{provider}"),
            previous: None,
            account: Some(account.into()),
            signed_in_ms: at,
            last_used_ms: used,
            renewed_ms: at,
            refused: None,
        },
    )
    .unwrap();
}

/// `sign-in-expiring` for a delegated sign-in unused for 80 days (Microsoft's refresh
/// tokens age out after 90 days of inactivity) whose renewal cannot reach the platform,
/// and for a Google app in "Testing" whose refresh tokens end 7 days after issue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_idle_for_80_days_fires_sign_in_expiring() {
    let (rx, addr) = Receiver::start().await;
    let dead = common::free_port();
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "[[provider]]\nname = \"outlook\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {dead}\nusername = \"me@outlook.com\"\n\
             [provider.oauth2]\nflow = \"device_code\"\ntenant_id = \"consumers\"\nclient_id = \"app\"\n\
             token_url = \"http://127.0.0.1:{dead}/token\"\ndevice_code_url = \"http://127.0.0.1:{dead}/devicecode\"\n\
             [[provider]]\nname = \"gmail\"\nkind = \"smtp\"\nhost = \"smtp.gmail.com\"\nport = {dead}\nusername = \"me@gmail.com\"\n\
             [provider.oauth2]\nflow = \"authorization_code\"\nclient_id = \"app\"\nclient_secret = \"s\"\nrefresh_token_lifetime = \"7d\"\n\
             token_url = \"http://127.0.0.1:{dead}/token\"\n\
             [[alert]]\nname = \"ops\"\nwebhook_url = \"http://{addr}/json\"\nevents = [\"sign-in-expiring\"]\n"
        ),
    );
    let config = env.config();
    let secrets = mailgate::secrets::SecretStore::beside(&config.store.path);
    let day = 86_400_000;
    let idle_since = mailgate::time::now_ms() - 80 * day;
    signed_in(
        &secrets,
        "outlook",
        "me@outlook.com",
        idle_since,
        idle_since,
    );
    // A Google app in Testing: its refresh token ends 7 days after it was issued,
    // although it was used an hour ago.
    let issued = mailgate::time::now_ms() - 2 * day;
    signed_in(
        &secrets,
        "gmail",
        "me@gmail.com",
        issued,
        mailgate::time::now_ms() - 3_600_000,
    );
    let _d = DaemonProcess::start(&env.config_path);
    let gmail = rx
        .wait("json", "sign-in-expiring (gmail)", |v| {
            v["event"] == "sign-in-expiring" && v["provider"] == "gmail"
        })
        .await;
    let ends = mailgate::time::rfc3339(issued + 7 * day);
    assert!(
        gmail["summary"].as_str().unwrap().contains(&ends[..10]),
        "{gmail:#}"
    );
    let fired = rx
        .wait("json", "sign-in-expiring", |v| {
            v["event"] == "sign-in-expiring" && v["provider"] == "outlook"
        })
        .await;
    assert_eq!(fired["provider"], "outlook");
    let summary = fired["summary"].as_str().unwrap();
    assert!(
        summary.contains("the delegated sign-in ages out on "),
        "{summary}"
    );
    let ages_out = mailgate::time::rfc3339(idle_since + 90 * day);
    assert!(summary.contains(&ages_out[..10]), "{summary} / {ages_out}");
}

/// The machine's host name, as the kernel has it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The provider's entry in `/status`.
async fn provider_status(d: &DaemonProcess, name: &str) -> Value {
    let st = d.get_json("/status").await;
    st["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no provider {name}: {st:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_provider_stays_held_across_three_restarts_and_resolves_only_on_a_delivery() {
    let (rx, addr) = Receiver::start().await;
    let held = Upstream::start(retired()).await;
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}[distributor]\ndefault_provider = \"held\"\n[notify]\nbounce = \"off\"\n\
             [[alert]]\nname = \"ops\"\nwebhook_url = \"http://{addr}/json\"\nevents = [\"held\"]\n",
            provider(
                "held",
                &held,
                "username = \"relay@contoso.com\"\npassword = \"pw\"\ncircuit_open_after = 1\ncircuit_cooldown = \"2s\"",
            ),
        ),
    );
    let mut d = DaemonProcess::start(&env.config_path);
    let id = submit(&d, "app@erp.local", "a@example.com").await;
    let fired = rx.wait("json", "held", is("held", "firing")).await;
    let since = fired["since"].clone();
    let before = provider_status(&d, "held").await;
    assert!(
        before["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("5.7.30")),
        "{before:#}"
    );
    let count = |state: &str| {
        rx.bodies("json")
            .iter()
            .filter(|v| v["event"] == "held" && v["state"] == state)
            .count()
    };
    let mut last_at = before["last_error_at"].clone();
    for round in 0..3 {
        if round == 1 {
            // Nothing queued for the provider any more: no delivery can settle it.
            let _ = common::cli_ok(&env, &["cancel", &id]);
        }
        assert_eq!(d.terminate().code(), Some(0));
        d = DaemonProcess::start(&env.config_path);
        // What the dashboard knew is still known: held, the last error, the circuit.
        let p = provider_status(&d, "held").await;
        assert_eq!(
            p["last_error"], before["last_error"],
            "round {round}: {p:#}"
        );
        if round > 0 {
            // Nothing was tried since: the time is the one from before the restart.
            assert_eq!(p["last_error_at"], last_at, "round {round}: {p:#}");
        }
        assert!(
            p["circuit"] == "open" || p["circuit"] == "half-open",
            "round {round}: {p:#}"
        );
        // Past the point where a false `resolved` came (2 ms) and a new `firing` (2 s).
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            count("resolved"),
            0,
            "round {round}: {:#?}",
            rx.bodies("json")
        );
        assert_eq!(
            count("firing"),
            1,
            "round {round}: {:#?}",
            rx.bodies("json")
        );
        let st = d.get_json("/status").await;
        let open: Vec<&Value> = st["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["event"] == "held")
            .collect();
        assert_eq!(open.len(), 1, "{st:#}");
        let m = d.get_text("/metrics").await;
        assert!(
            m.contains("mailgate_provider_held{provider=\"held\"} 1"),
            "{m}"
        );
        last_at = provider_status(&d, "held").await["last_error_at"].clone();
    }
    // The fix, and a delivery that is not held: now it clears, once, in words that say so.
    held.set_script(takes_the_password());
    submit(&d, "app@erp.local", "b@example.com").await;
    held.wait_for(1).await;
    let resolved = rx
        .wait("json", "held resolved", is("held", "resolved"))
        .await;
    assert!(
        summary(&resolved).contains("no longer holds mail"),
        "{resolved:#}"
    );
    assert!(
        resolved["details"]
            .as_str()
            .unwrap()
            .contains("holds mail: basic-auth-retired"),
        "{resolved:#}"
    );
    assert_eq!(resolved["since"], since, "{resolved:#}");
    assert_eq!(resolved["node"], host_name());
    assert_eq!(provider_status(&d, "held").await["circuit"], "closed");
}
