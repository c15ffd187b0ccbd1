//! The admin surface over real HTTP against a running daemon: `/status` fields and
//! types, `/metrics` parsed by a Prometheus text parser with counters that move, the
//! bearer token, and config reload (SIGHUP and the API).

mod common;

use common::Fetch;
use std::time::Duration;

use common::upstream::{Script, Upstream};
use common::{DaemonProcess, Smtp, TestEnv, queued_id};
use mailgate::Daemon;
use serde_json::Value;

use common::WAIT;
use common::submit_short;

async fn get(url: &str) -> reqwest::Response {
    common::http().get(url).send().await.unwrap()
}

async fn submit(addr: std::net::SocketAddr, from: &str, rcpts: &[&str], data: &str) -> String {
    let (mut s, _) = Smtp::connect(addr).await.unwrap();
    s.cmd("EHLO admin-test").await.unwrap();
    s.send(from, rcpts, data.as_bytes()).await.unwrap()
}

async fn wait_event(daemon: &Daemon, events: &mut common::Events, id: &str) {
    common::next_record(daemon, events, id).await;
}

/// The samples of a metric, parsed with prometheus-parse.
fn samples(text: &str) -> Vec<prometheus_parse::Sample> {
    // prometheus-parse reads the Prometheus text format; OpenMetrics adds `# EOF`.
    let lines = text
        .lines()
        .filter(|l| *l != "# EOF")
        .map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .expect("valid exposition")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn status_metrics_and_counters_that_move() {
    // An upstream that refuses one recipient for good and another for now.
    let up = Upstream::start(
        Script::default()
            .reply("rcpt:gone@contoso.com", "550 5.1.1 User unknown")
            .reply("rcpt:busy@contoso.com", "451 4.3.0 Try later"),
    )
    .await;
    let env = TestEnv::new("max_message_size = 2000", "");
    env.write_config(
        "max_message_size = 2000",
        &format!(
            "{}per_minute_limit = 100\n\
             [[user]]\nname = \"ops\"\nemail = \"ops@contoso.com\"\nmatch_senders = [\"*@ops.local\"]\nprovider = \"up\"\n[notify]\nbounce = \"off\"\n",
            common::plain_smtp("up", up.addr.port())),
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    let base = format!("http://{}", daemon.status_addr);
    let mut events = daemon.distributor.subscribe();
    let smtp = daemon.smtp_addrs[0];

    // Each is submitted and its first attempt waited for: sent, failed, deferred.
    let mut ids = Vec::new();
    for (from, to, subject) in [
        ("a@erp.local", "x@contoso.com", "ok"),
        ("a@ops.local", "gone@contoso.com", "f"),
        ("a@ops.local", "busy@contoso.com", "d"),
    ] {
        let body = format!("Subject: {subject}\r\n\r\nx\r\n");
        let id = queued_id(&submit(smtp, from, &[to], &body).await).unwrap();
        wait_event(&daemon, &mut events, &id).await;
        ids.push(id);
    }
    let [_sent, _failed, deferred] = <[String; 3]>::try_from(ids).unwrap();
    let big = "y".repeat(3000);
    let r = submit(
        smtp,
        "a@erp.local",
        &["x@contoso.com"],
        &format!("Subject: big\r\n\r\n{big}\r\n"),
    )
    .await;
    assert!(r.starts_with("552 5.3.4"));

    let s: Value = get(&format!("{base}/status")).await.json().await.unwrap();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].is_u64());
    assert_eq!(s["distributor"]["enabled"], true);
    assert_eq!(s["distributor"]["paused"], false);
    assert_eq!(s["queue"]["queued"], 0);
    assert_eq!(s["queue"]["deferred"], 1);
    assert!(s["queue"]["sending"].is_u64());
    assert!(s["queue"]["oldest_age_seconds"].is_u64());
    assert_eq!(s["queue"]["oldest_id"], deferred.as_str());
    assert_eq!(s["totals"]["accepted"], 3);
    assert_eq!(s["totals"]["rejected"], 1);
    assert_eq!(s["totals"]["sent"], 1);
    assert_eq!(s["totals"]["partial"], 0);
    assert_eq!(s["totals"]["failed"], 1);
    let providers = s["providers"].as_array().unwrap();
    let p = providers.iter().find(|p| p["name"] == "up").unwrap();
    assert_eq!(p["kind"], "smtp");
    assert_eq!(p["per_minute_limit"], 100);
    assert_eq!(
        p["sent_last_minute"], 0,
        "nothing reached 'up' in full: one failed, one deferred"
    );
    assert_eq!(p["throttle_deferrals"], 0);
    assert!(
        p["last_error"].as_str().unwrap().starts_with("451 4.3.0"),
        "{p}"
    );
    let outbox = providers.iter().find(|p| p["name"] == "outbox").unwrap();
    assert_eq!(outbox["sent_last_minute"], 1);
    assert!(outbox["last_error"].is_null());

    let text = get(&format!("{base}/metrics")).await.text().await.unwrap();
    let m = samples(&text);
    assert_eq!(value(&m, "mailgate_messages_accepted_total", &[]), 3.0);
    assert_eq!(
        value(
            &m,
            "mailgate_messages_rejected_total",
            &[("reason", "size")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "mailgate_messages_sent_total",
            &[("provider", "outbox")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "mailgate_messages_failed_total",
            &[("provider", "up"), ("diagnosis", "recipient-unknown")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "mailgate_deliveries_deferred_total",
            &[("provider", "up"), ("diagnosis", "unknown")]
        ),
        1.0
    );
    assert_eq!(
        value(&m, "mailgate_queue_messages", &[("status", "deferred")]),
        1.0
    );
    assert_eq!(
        value(&m, "mailgate_queue_messages", &[("status", "sent")]),
        1.0
    );
    assert_eq!(value(&m, "mailgate_smtp_sessions_active", &[]), 0.0);
    assert!(
        m.iter()
            .any(|s| s.metric == "mailgate_delivery_duration_seconds_count"
                || s.metric == "mailgate_delivery_duration_seconds")
    );
    assert!(m.iter().any(|s| {
        s.metric
            .starts_with("mailgate_store_commit_duration_seconds")
    }));
    assert_eq!(
        value(
            &m,
            "mailgate_throttle_deferrals_total",
            &[("provider", "up")]
        ),
        0.0
    );
    assert!(
        m.iter()
            .any(|s| s.metric == "mailgate_throttle_deferrals_total"
                && s.labels.get("provider") == Some("outbox"))
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn api_needs_the_token_health_and_metrics_do_not() {
    let env = TestEnv::new("", "");
    let token_file = env.dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cr3t-token\n").unwrap();
    env.edit_config(
        "[status]\n",
        &format!("[status]\ntoken_file = \"{}\"\n", token_file.display()),
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    let base = format!("http://{}", daemon.status_addr);
    let http = reqwest::Client::new();
    // (method, path, bearer token, expected status)
    let cases = [
        ("GET", "/api/messages", None, 401),
        ("GET", "/api/messages", Some("wrong"), 401),
        ("POST", "/api/distributor/pause", None, 401),
        ("GET", "/api/messages", Some("s3cr3t-token"), 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/status", None, 200),
    ];
    for (method, path, token, want) in cases {
        let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
        if method == "POST" {
            req = req.json(&serde_json::json!({}));
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            want,
            "{method} {path} {token:?}"
        );
    }
    assert!(
        !daemon.distributor.is_paused(),
        "the refused pause did nothing"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn history_queries_use_filters() {
    let (_env, daemon) = common::started(
        "",
        "[[user]]\nname = \"erp\"\nemail = \"erp@contoso.com\"\nmatch_senders = [\"*@erp.local\"]\n",
    ).await;
    let base = format!("http://{}", daemon.status_addr);
    let mut events = daemon.distributor.subscribe();
    let a = queued_id(
        &submit(
            daemon.smtp_addrs[0],
            "x@erp.local",
            &["q@contoso.com"],
            "Subject: 1\r\n\r\nx\r\n",
        )
        .await,
    )
    .unwrap();
    let b = queued_id(
        &submit(
            daemon.smtp_addrs[0],
            "x@other.local",
            &["q@contoso.com"],
            "Subject: 2\r\n\r\nx\r\n",
        )
        .await,
    )
    .unwrap();
    wait_event(&daemon, &mut events, &a).await;
    let list = |q: &str| {
        let url = format!("{base}/api/messages{q}");
        async move { get(&url).await.json::<Vec<Value>>().await.unwrap() }
    };
    let all = list("").await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["id"], b.as_str(), "newest first");
    let erp = list("?user=erp").await;
    assert_eq!(erp.len(), 1);
    assert_eq!(erp[0]["id"], a.as_str());
    assert_eq!(list("?limit=1").await.len(), 1);
    // Both filters, with a limit smaller than what the status index holds: the user's
    // record is still found (filters apply before the limit).
    for id in [&a, &b] {
        while daemon.pipeline.store().record(id).unwrap().unwrap().status
            != mailgate::history::Status::Sent
        {
            tokio::time::timeout(WAIT, events.recv())
                .await
                .unwrap()
                .unwrap();
        }
    }
    let both = list("?status=sent&user=erp&limit=1").await;
    assert_eq!(both.len(), 1);
    assert_eq!(both[0]["id"], a.as_str());
    assert_eq!(list("?since=1h").await.len(), 2);
    assert_eq!(
        list(&format!(
            "?since={}",
            mailgate::time::rfc3339(mailgate::time::now_ms() + 3_600_000)
        ))
        .await
        .len(),
        0
    );
    let r = get(&format!("{base}/api/messages?since=yesterday-ish")).await;
    assert_eq!(r.status(), 400);
    daemon.shutdown().await;
}

#[tokio::test]
async fn reload_by_api_applies_new_users_and_refuses_broken_config() {
    let (env, daemon) = common::started(
        "",
        "[[user]]\nname = \"erp\"\nemail = \"erp@contoso.com\"\nsender_email = \"old@contoso.com\"\nmatch_senders = [\"*@erp.local\"]\n",
    ).await;
    daemon.set_config_path(env.config_path.clone());
    let base = format!("http://{}", daemon.status_addr);
    let http = common::http();
    let mut events = daemon.distributor.subscribe();

    std::fs::write(&env.config_path, "[smtp]\nthis is not toml").unwrap();
    let r = http
        .post(format!("{base}/api/reload"))
        .json(&serde_json::json!({}))
        .answers(400)
        .await;
    let v: Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("mailgate.toml:2:"),
        "{v}"
    );
    let id = queued_id(
        &submit(
            daemon.smtp_addrs[0],
            "x@erp.local",
            &["q@contoso.com"],
            "From: x@erp.local\r\n\r\nx\r\n",
        )
        .await,
    )
    .unwrap();
    wait_event(&daemon, &mut events, &id).await;
    assert!(
        String::from_utf8(env.eml(&id))
            .unwrap()
            .contains("\r\nFrom: old@contoso.com\r\n"),
        "the old config still runs"
    );

    env.write_config("", "[[user]]\nname = \"erp\"\nemail = \"erp@contoso.com\"\nsender_email = \"new@contoso.com\"\nmatch_senders = [\"*@erp.local\"]\n");
    let v: Value = http
        .post(format!("{base}/api/reload"))
        .json(&serde_json::json!({}))
        .fetch()
        .await;
    assert_eq!(v["reloaded"], true);
    assert_eq!(
        v["needs_restart"],
        serde_json::json!([]),
        "only users changed"
    );
    let id = queued_id(
        &submit(
            daemon.smtp_addrs[0],
            "x@erp.local",
            &["q@contoso.com"],
            "From: x@erp.local\r\n\r\nx\r\n",
        )
        .await,
    )
    .unwrap();
    wait_event(&daemon, &mut events, &id).await;
    assert!(
        String::from_utf8(env.eml(&id))
            .unwrap()
            .contains("\r\nFrom: new@contoso.com\r\n")
    );
    daemon.shutdown().await;
}

#[test]
fn sighup_reload_releases_mail_held_for_a_wrong_password() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(Upstream::start(Script {
        offer_auth: true,
        credentials: Some(("relay@contoso.com".into(), "right".into())),
        ..Script::default()
    }));
    let env = TestEnv::new("", "");
    let provider = |pw: &str, sender: &str| {
        format!(
            "{}username = \"relay@contoso.com\"\npassword = \"{pw}\"\n\
             [distributor]\ndefault_provider = \"up\"\n\
             [[user]]\nname = \"erp\"\nemail = \"erp@contoso.com\"\nsender_email = \"{sender}\"\nmatch_senders = [\"*@erp.local\"]\n",
            common::plain_smtp("up", up.addr.port())
        )
    };
    env.write_config("", &provider("wrong", "billing@contoso.com"));
    let mut daemon = DaemonProcess::start(&env.config_path);
    let id = rt
        .block_on(submit(
            daemon.smtp,
            "x@erp.local",
            &["q@contoso.com"],
            "From: x@erp.local\r\n\r\nx\r\n",
        ))
        .strip_prefix("250 2.0.0 OK queued as ")
        .unwrap()
        .to_string();
    let line = daemon.wait_log(
        |v| v["message"] == "delivery" && v["id"] == id.as_str(),
        WAIT,
    );
    assert_eq!(line["diagnosis"], "auth-failed");
    // Fix the password and change the sender, then SIGHUP.
    env.write_config("", &provider("right", "accounts@contoso.com"));
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    daemon.wait_log(|v| v["message"] == "configuration reloaded", WAIT);
    daemon.wait_log(
        |v| v["message"] == "delivery" && v["id"] == id.as_str() && v["status"] == "sent",
        WAIT,
    );
    let got = rt.block_on(up.wait_for(1));
    assert!(
        String::from_utf8_lossy(&got[0].data).contains("\r\nFrom: billing@contoso.com\r\n"),
        "the held message keeps the From it was stored with"
    );
    // The next message carries the new From.
    let reply = rt.block_on(submit(
        daemon.smtp,
        "x@erp.local",
        &["q@contoso.com"],
        "From: x@erp.local\r\n\r\ny\r\n",
    ));
    assert!(reply.starts_with("250 2.0.0"));
    let got = rt.block_on(up.wait_for(2));
    assert!(String::from_utf8_lossy(&got[1].data).contains("\r\nFrom: accounts@contoso.com\r\n"));
    assert_eq!(got[1].from, "accounts@contoso.com");
    // A broken file on SIGHUP leaves the running one.
    std::fs::write(&env.config_path, "nonsense = = =").unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    daemon.wait_log(
        |v| v["message"] == "reload refused; the running configuration stays",
        WAIT,
    );
    let reply = rt.block_on(submit(
        daemon.smtp,
        "x@erp.local",
        &["q@contoso.com"],
        "From: x@erp.local\r\n\r\nz\r\n",
    ));
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(daemon.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_does_not_hold_the_shutdown() {
    let env = TestEnv::new("", "[distributor]\nenabled = false\n");
    let mut d = common::DaemonProcess::start(&env.config_path);
    let id = submit_short(d.smtp, "a@erp.local", "x@contoso.com", "w").await;
    let url = format!("http://{}/api/messages/{id}?wait=600s", d.status);
    let poll = tokio::spawn(async move { common::get(url).await.map(|r| r.status().as_u16()) });
    // The poll is waiting (the message cannot go out: sending is off).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    let started = std::time::Instant::now();
    let code = tokio::task::spawn_blocking(move || d.terminate().code())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    // shutdown_timeout is 5 s in the test config; the poll must not hold it for 10 minutes.
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    let answered = tokio::time::timeout(Duration::from_secs(5), poll).await;
    assert!(answered.is_ok(), "the long poll ended with the daemon");
}
