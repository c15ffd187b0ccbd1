//! The administrator's day, against the binary and its CLI: `test-email` waits as long as
//! asked and says why a message waits; `waiting` in the API, `show` and the pages;
//! `last_error` holds only failures; the Failed filter finds partial deliveries; cancel.

mod common;

use common::Fetch;
use std::time::{Duration, Instant};

use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, cli, queued_id, send_once, write};

async fn submit(d: &DaemonProcess, rcpts: &[&str]) -> String {
    let reply = send_once(
        d.smtp,
        "app@erp.local",
        rcpts,
        b"Subject: admin day\r\n\r\nhello\r\n",
    )
    .await;
    queued_id(&reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
}

async fn get(d: &DaemonProcess, path: &str) -> reqwest::Response {
    common::get(format!("http://{}{path}", d.status))
        .await
        .unwrap()
}

/// An eml outbox that sends one message a minute.
fn throttled_env() -> TestEnv {
    let env = TestEnv::new("", "");
    let outbox = env.outbox();
    write(
        &env,
        &format!(
            "{}per_minute_limit = 1\n[distributor]\ndefault_provider = \"slow\"\n",
            common::eml_at("slow", &outbox)
        ),
    );
    env
}

/// `test-email` with its default 60 s wait outlasts a per-minute throttle (it used to
/// fail at 30 s), and with a short wait says the real reason: the per-minute limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_email_waits_as_asked_and_says_why_a_message_waits() {
    let env = throttled_env();
    let mut d = DaemonProcess::start(&env.config_path);
    let first = submit(&d, &["a@contoso.com"]).await;
    d.wait_sent(std::slice::from_ref(&first), Duration::from_secs(10));

    // A short wait: not sent, and why.
    let (code, out, err) = cli(
        &env,
        &["test-email", "--to", "b@contoso.com", "--wait", "3s"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "not sent within 3s: held back by the provider's per-minute limit; next attempt at 20"
        ),
        "{out}{err}"
    );
    let throttled = out
        .lines()
        .find_map(|l| l.strip_prefix("queued as "))
        .unwrap()
        .trim()
        .to_string();
    // The log says how long it waits (a wait under a second is not "until now"), and a
    // delivery line names what it is, not the module that writes it.
    let line = d.wait_log(|v| v["message"] == "throttled", Duration::from_secs(5));
    let wait: f64 = line["wait"]
        .as_str()
        .and_then(|w| w.strip_suffix('s'))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(wait > 0.0 && wait <= 60.0, "{line}");
    let line = d.wait_log(|v| v["message"] == "delivery", Duration::from_secs(5));
    assert_eq!(line["target"], "mailgate::delivery", "{line}");

    // The record says it too: the API, `show`, the message page and the list.
    let rec = d.get_json(&format!("/api/messages/{throttled}")).await;
    assert_eq!(rec["waiting"]["reason"], "per-minute-limit", "{rec:#}");
    assert!(
        rec["waiting"]["until"].as_str().unwrap().starts_with("20"),
        "{rec:#}"
    );
    let (code, out, _) = cli(&env, &["show", &throttled]);
    assert_eq!(code, 0);
    assert!(
        out.contains("waiting:         held back by the provider's per-minute limit"),
        "{out}"
    );
    let (_, queue, _) = cli(&env, &["queue"]);
    assert!(
        queue.contains("waiting: held back by the provider's per-minute limit"),
        "{queue}"
    );
    let page = get(&d, &format!("/messages/{throttled}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"waiting\"><strong>Waiting:</strong> held back by the provider&#39;s per-minute limit; next attempt at 20"), "{page}");
    let list = get(&d, "/messages").await.text().await.unwrap();
    assert!(
        list.contains("<th>Waiting</th>") && list.contains("per-minute-limit until"),
        "{list}"
    );

    // The default wait (60 s) outlasts the throttle: with the waiting one cancelled, the
    // next test message takes the next minute's place and is sent.
    assert_eq!(cli(&env, &["cancel", &throttled]).0, 0);
    let started = Instant::now();
    let (code, out, err) = cli(&env, &["test-email", "--to", "c@contoso.com"]);
    assert_eq!(code, 0, "after {:?}: {out}{err}", started.elapsed());
    assert!(out.contains("status: sent"), "{out}");
}

/// After a partial delivery, `last_error` is the refusal (with its time), never the
/// success reply to the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_error_is_a_failure_never_a_success() {
    let up = Upstream::replying(
        "rcpt:bad@contoso.com",
        "550 5.1.1 <bad@contoso.com>: user unknown",
    )
    .await;
    let env = common::env_sending_to(up.addr.port(), "");
    let mut d = DaemonProcess::start(&env.config_path);
    let partial = submit(&d, &["good@contoso.com", "bad@contoso.com"]).await;
    d.wait_log(
        |v| v["message"] == "delivery" && v["id"] == partial.as_str() && v["status"] == "partial",
        Duration::from_secs(10),
    );
    let failed = submit(&d, &["bad@contoso.com"]).await;
    d.wait_log(
        |v| v["message"] == "delivery" && v["id"] == failed.as_str() && v["status"] == "failed",
        Duration::from_secs(10),
    );
    let sent = submit(&d, &["good@contoso.com"]).await;
    d.wait_sent(std::slice::from_ref(&sent), Duration::from_secs(10));

    let st: serde_json::Value = get(&d, "/status").await.json().await.unwrap();
    let p = common::provider_in(&st, "up");
    let last = p["last_error"].as_str().unwrap();
    assert!(last.contains("550 5.1.1"), "{p:#}");
    assert!(!last.starts_with("250"), "{p:#}");
    assert!(
        p["last_error_at"].as_str().unwrap().starts_with("20"),
        "{p:#}"
    );
    let dash = get(&d, "/").await.text().await.unwrap();
    assert!(
        !dash.contains("250 2.0.0 Ok: queued ("),
        "the dashboard shows no success as an error"
    );

    // The Failed filter finds the partial delivery too, in the API and on the page.
    let list: Vec<serde_json::Value> = get(&d, "/api/messages?status=failed")
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [failed.as_str(), partial.as_str()],
        "newest first, both"
    );
    let page = get(&d, "/messages?status=failed")
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(&partial) && page.contains(&failed) && !page.contains(&sent));
    // Paged one at a time, each comes exactly once.
    let one: Vec<serde_json::Value> = get(&d, "/api/messages?status=failed&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one[0]["id"], failed.as_str());
    let two: Vec<serde_json::Value> = get(
        &d,
        &format!("/api/messages?status=failed&limit=1&before={failed}"),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(two[0]["id"], partial.as_str());
}

/// `mailgate cancel`: a queued message is not sent and says who cancelled it and when;
/// a finished one is refused; one being sent is refused (409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_queued_message_and_refuses_one_in_flight() {
    let up = Upstream::start(Script::default().stall("end")).await;
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}timeout = \"30s\"\n",
            common::plain_smtp("up", up.addr.port())
        ),
    );
    let mut d = DaemonProcess::start(&env.config_path);
    // Paused: the message waits; the API says so.
    assert_eq!(cli(&env, &["pause"]).0, 0);
    let id = submit(&d, &["a@contoso.com"]).await;
    let rec = d.get_json(&format!("/api/messages/{id}")).await;
    assert_eq!(rec["waiting"]["reason"], "paused", "{rec:#}");
    let out = common::cli_ok(&env, &["cancel", &id]);
    assert!(out.contains("cancelled"), "{out}");
    let rec = d.get_json(&format!("/api/messages/{id}")).await;
    assert_eq!(rec["status"], "cancelled");
    assert!(
        rec["cancelled"]["by"]
            .as_str()
            .unwrap()
            .starts_with("mailgate cancel by "),
        "{rec:#}"
    );
    assert!(rec["cancelled"]["at"].as_str().unwrap().starts_with("20"));
    assert!(rec.get("waiting").is_none(), "{rec:#}");
    d.wait_log(
        |v| v["message"] == "cancelled" && v["id"] == id.as_str(),
        Duration::from_secs(5),
    );
    assert_eq!(cli(&env, &["resume"]).0, 0);
    // Sent to nobody: the outbox provider is the default and stays empty.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(env.outbox_ids().is_empty());
    let (code, _, err) = cli(&env, &["cancel", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("already cancelled"), "{err}");
    // Retry does not bring it back.
    let (code, _, err) = cli(&env, &["retry", &id]);
    assert_eq!(code, 1, "{err}");
    // The list finds it under its own status.
    let list: Vec<serde_json::Value> = get(&d, "/api/messages?status=cancelled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);

    // One in flight (the upstream never answers the end of data) is refused.
    write(
        &env,
        &format!(
            "{}timeout = \"30s\"\n\
             [distributor]\ndefault_provider = \"up\"\n",
            common::plain_smtp("up", up.addr.port())
        ),
    );
    common::cli_ok(&env, &["check-config"]);
    common::post_action(format!("http://{}/api/reload", d.status)).await;
    let busy = submit(&d, &["b@contoso.com"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st: serde_json::Value = get(&d, "/status").await.json().await.unwrap();
        if st["queue"]["sending"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resp = common::post_action(format!("http://{}/api/messages/{busy}/cancel", d.status)).await;
    assert_eq!(resp.status(), 409);
    assert!(resp.text().await.unwrap().contains("being sent right now"));
    let (code, _, err) = cli(&env, &["cancel", &busy]);
    assert_eq!(code, 1);
    assert!(err.contains("being sent right now"), "{err}");
}

/// The smaller rough edges, through the CLI as an administrator meets them: a bad
/// `--since` is a usage error, the history's columns hold with a long sender, a provider
/// typo names the providers there are, counts of one are singular.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_plainly() {
    let env = TestEnv::new("", "");
    write(&env, "");
    let d = DaemonProcess::start(&env.config_path);
    let long = format!("{}@erp.example.com", "a-very-long-sender-name".repeat(3));
    for (from, subject) in [(long.as_str(), "long"), ("app@erp.local", "short")] {
        let reply = send_once(
            d.smtp,
            from,
            &["x@example.com"],
            format!("Subject: {subject}\r\n\r\nhello\r\n").as_bytes(),
        )
        .await;
        queued_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    }

    let (code, _, err) = cli(&env, &["history", "--since", "banana"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid since \"banana\""), "{err}");
    let (code, _, err) = cli(&env, &["history", "--status", "sent-ish"]);
    assert_eq!(code, 2, "{err}");
    // The page says so too, instead of showing nothing.
    let page = get(&d, "/messages?since=banana")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<p class=\"error\">invalid since &#34;banana&#34;"),
        "{page}"
    );

    let (code, out, err) = cli(&env, &["history"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    // SUBJECT starts at the same column on every line; the long sender is cut with "…".
    let col = lines[0].find("SUBJECT").unwrap();
    for l in &lines[1..] {
        let subject_at = l.char_indices().nth(col).map(|(i, _)| &l[i..]).unwrap();
        assert!(
            subject_at == "long" || subject_at == "short",
            "misaligned: {out}"
        );
    }
    assert!(
        out.contains("a-very-long-sender-namea-very-long-send…"),
        "{out}"
    );

    let (code, _, err) = cli(&env, &["verify", "--provider", "outbx"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no provider named \"outbx\"") && err.contains("its providers: outbox"),
        "{err}"
    );
    drop(d);
}

/// Bytes are final at intake: a message handed to the admin API with bare LF line ends
/// is stored, and relayed, with CRLF, as one through SMTP would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_stores_crlf_like_every_door() {
    use base64::Engine;
    let env = TestEnv::new("", "");
    write(&env, "");
    let mut d = DaemonProcess::start(&env.config_path);
    let raw = b"From: app@erp.local\nTo: x@example.com\nSubject: lf only\n\nline one\nline two\n";
    let r: serde_json::Value = common::http()
        .post(format!("http://{}/api/send", d.status))
        .json(&serde_json::json!({
            "to": ["x@example.com"],
            "raw": base64::engine::general_purpose::STANDARD.encode(raw),
        }))
        .fetch()
        .await;
    let id = r["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_string();
    d.wait_sent(std::slice::from_ref(&id), Duration::from_secs(10));
    let eml = env.eml(&id);
    let text = String::from_utf8_lossy(&eml);
    assert!(text.contains("Subject: lf only\r\n"), "{text:?}");
    assert!(
        text.ends_with("\r\n\r\nline one\r\nline two\r\n"),
        "{text:?}"
    );
    assert!(
        !eml.windows(2)
            .enumerate()
            .any(|(i, w)| w[1] == b'\n' && w[0] != b'\r' || (i == 0 && w[0] == b'\n')),
        "a bare LF: {text:?}"
    );
}
