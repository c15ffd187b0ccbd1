//! Notices to the sender (SPEC "Telling people: bounces and alerts"), against the binary
//! over real sockets: a failed message bounces to its rewritten sender as an RFC 3464
//! report that Python's `email` package reads field by field; a partial one bounces only
//! its failed recipient; a message that waited `delay_warning` gets one delay notice;
//! nothing for a null sender, an `Auto-Submitted` message, a test email, or a notice that
//! fails itself (one hop, then nothing). Notices are messages of their own in the
//! history, linked both ways.

mod common;

use std::time::{Duration, Instant};

use common::upstream::{Received, Script, Upstream};
use common::{DaemonProcess, TestEnv, cli, queued_id, send_once, write};

async fn submit(d: &DaemonProcess, from: &str, rcpts: &[&str], extra: &str) -> String {
    let body = format!(
        "From: ERP <erp@erp.local>\r\nSubject: Statement 4711\r\nMessage-ID: <st-4711@erp.local>\r\n{extra}\r\nYour statement.\r\n"
    );
    let reply = send_once(d.smtp, from, rcpts, body.as_bytes()).await;
    queued_id(&reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
}

/// What Python's `email` package reads in each notice.
fn parsed(env: &TestEnv, notices: &[Received]) -> Vec<serde_json::Value> {
    let files: Vec<String> = notices
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = env.dir.path().join(format!("notice-{i}.eml"));
            std::fs::write(&p, &m.data).unwrap();
            p.display().to_string()
        })
        .collect();
    let out = common::succeeded(
        std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/dsn.py"))
            .args(&files),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The messages the upstream received for `rcpt`, waiting (bounded) for `n`.
async fn to(up: &Upstream, rcpt: &str, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<Received> = up
            .messages()
            .into_iter()
            .filter(|m| m.rcpts.iter().any(|r| r == rcpt))
            .collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{n} messages for {rcpt} expected, {} came",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A daemon whose upstream runs [`refusing`], erp's mail rewritten to
/// billing@contoso.com, notices from postmaster@contoso.com, and `extra` in `[notify]`.
async fn refused(extra: &str) -> (Upstream, TestEnv, DaemonProcess) {
    let up = Upstream::start(refusing()).await;
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}\
             [distributor]\ndefault_provider = \"up\"\nretry_initial = \"1s\"\n\
             [[user]]\nname = \"erp\"\nmatch_senders = [\"erp@erp.local\"]\nemail = \"billing@contoso.com\"\n\
             [notify]\nfrom = \"postmaster@contoso.com\"\n{extra}",
            common::plain_smtp("up", up.addr.port())
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    (up, env, d)
}

fn refusing() -> Script {
    Script::default()
        .reply(
            "rcpt:gone@example.com",
            "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown",
        )
        .reply(
            "rcpt:bounce-refused@example.com",
            "550 5.1.1 <bounce-refused@example.com>: User unknown",
        )
        .reply(
            "rcpt:slow@example.com",
            "451 4.3.0 <slow@example.com>: mailbox busy, try again later",
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_bounces_to_its_sender_as_a_delivery_status_report() {
    let (up, env, d) = refused("").await;

    // Failed: one report, through the provider, to the rewritten sender.
    let failed = submit(&d, "erp@erp.local", &["gone@example.com"], "").await;
    let r = d.finished(&failed).await;
    assert_eq!(r["status"], "failed");
    let bounces = to(&up, "billing@contoso.com", 1).await;
    assert_eq!(bounces[0].from, "postmaster@contoso.com");
    let p = &parsed(&env, &bounces)[0];
    assert_eq!(p["content_type"], "multipart/report", "{p:#}");
    assert_eq!(p["report_type"], "delivery-status");
    assert_eq!(p["auto_submitted"], "auto-replied");
    assert_eq!(p["to"], "billing@contoso.com");
    assert_eq!(
        p["parts"],
        serde_json::json!([
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ])
    );
    assert_eq!(p["defects"], serde_json::json!([]), "{p:#}");
    assert_eq!(p["per_message"]["Reporting-MTA"], "dns; mailgate.test");
    assert!(
        p["per_message"]["Arrival-Date"]
            .as_str()
            .unwrap()
            .ends_with("+0000")
    );
    let rc = &p["recipients"];
    assert_eq!(rc.as_array().unwrap().len(), 1, "{p:#}");
    assert_eq!(rc[0]["Final-Recipient"], "rfc822; gone@example.com");
    assert_eq!(rc[0]["Action"], "failed");
    assert_eq!(rc[0]["Status"], "5.1.1");
    assert!(
        rc[0]["Diagnostic-Code"]
            .as_str()
            .unwrap()
            .starts_with("smtp; 550 5.1.1 <gone@example.com>"),
        "{p:#}"
    );
    assert!(rc[0]["Last-Attempt-Date"].is_string());
    let text = p["text"].as_str().unwrap();
    common::assert_has(
        text,
        &[
            "could not be delivered to 1 of its 1 recipients",
            "Statement 4711",
            "What happened (recipient-unknown)",
            "What to do:",
        ],
    );
    // The fix names the command in plain words (recipient-unknown's fix has one).
    assert!(text.contains("mailgate retry ID"), "{text}");
    assert!(
        !text.contains('`'),
        "no literal backticks in a bounce: {text}"
    );
    assert!(
        p["original_headers"]
            .as_str()
            .unwrap()
            .contains("Message-ID: <st-4711@erp.local>"),
        "{p:#}"
    );

    // Linked both ways in the history; the notice is a message of its own, sent.
    let links = r["notices"].as_array().unwrap();
    assert_eq!(links.len(), 1, "{r:#}");
    assert_eq!(links[0]["kind"], "bounce");
    let notice = d.finished(links[0]["id"].as_str().unwrap()).await;
    assert_eq!(notice["status"], "sent", "{notice:#}");
    assert_eq!(notice["notice_of"]["id"], failed.as_str());
    assert_eq!(notice["recipients"][0]["address"], "billing@contoso.com");
    let (code, out, _) = cli(&env, &["show", &failed]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("bounce {}", links[0]["id"].as_str().unwrap())),
        "{out}"
    );

    let page = d.get_text(&format!("/messages/{failed}")).await;
    let nid = links[0]["id"].as_str().unwrap();
    assert!(
        page.contains(&format!(
            "<a class=\"notice\" href=\"/messages/{nid}\">bounce notice {nid}</a>"
        )),
        "{page}"
    );
    let page = d.get_text(&format!("/messages/{nid}")).await;
    assert!(
        page.contains(&format!(
            "<a class=\"notice-of\" href=\"/messages/{failed}\">{failed}</a>"
        )),
        "{page}"
    );

    // Partial: only the failed recipient is reported.
    let partial = submit(
        &d,
        "erp@erp.local",
        &["ok@example.com", "gone@example.com"],
        "",
    )
    .await;
    assert_eq!(d.finished(&partial).await["status"], "partial");
    let bounces = to(&up, "billing@contoso.com", 2).await;
    let p = &parsed(&env, &bounces[1..])[0];
    let rc = p["recipients"].as_array().unwrap();
    assert_eq!(rc.len(), 1, "{p:#}");
    assert_eq!(rc[0]["Final-Recipient"], "rfc822; gone@example.com");
    assert!(
        p["text"]
            .as_str()
            .unwrap()
            .contains("could not be delivered to 1 of its 2 recipients")
    );

    // Never for a null sender, an Auto-Submitted message or a test email: the outcome
    // and its notice are one commit, so a finished record without one has none.
    let null = submit(&d, "", &["gone@example.com"], "").await;
    let auto = submit(
        &d,
        "erp@erp.local",
        &["gone@example.com"],
        "Auto-Submitted: auto-generated\r\n",
    )
    .await;
    let test = submit(
        &d,
        "erp@erp.local",
        &["gone@example.com"],
        "X-Mailgate-Test: yes\r\n",
    )
    .await;
    for id in [&null, &auto, &test] {
        let r = d.finished(id).await;
        assert_eq!(r["status"], "failed");
        assert!(r.get("notices").is_none(), "{r:#}");
    }

    // A notice that fails itself is not answered: one hop, then nothing.
    let all_before = d.get_json("/api/messages?limit=500").await;
    let before = all_before.as_array().unwrap().len();
    up.set_script(refusing().reply(
        "rcpt:billing@contoso.com",
        "550 5.1.1 <billing@contoso.com>: User unknown",
    ));
    let looped = submit(&d, "erp@erp.local", &["gone@example.com"], "").await;
    let r = d.finished(&looped).await;
    let notice = d.finished(r["notices"][0]["id"].as_str().unwrap()).await;
    assert_eq!(notice["status"], "failed", "{notice:#}");
    assert!(notice.get("notices").is_none(), "{notice:#}");
    let all = d.get_json("/api/messages?limit=500").await;
    assert_eq!(
        all.as_array().unwrap().len(),
        before + 2,
        "the message and its one notice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_waits_gets_one_delay_notice() {
    let (up, env, d) = refused("delay_warning = \"1s\"\n").await;
    let id = submit(&d, "erp@erp.local", &["slow@example.com"], "").await;
    let notices = to(&up, "billing@contoso.com", 1).await;
    let p = &parsed(&env, &notices)[0];
    assert_eq!(p["content_type"], "multipart/report", "{p:#}");
    assert!(
        p["subject"]
            .as_str()
            .unwrap()
            .starts_with("Delayed mail (still being retried): Statement 4711")
    );
    let rc = &p["recipients"][0];
    assert_eq!(rc["Action"], "delayed", "{p:#}");
    assert_eq!(rc["Status"], "4.3.0");
    assert!(rc["Will-Retry-Until"].is_string(), "{p:#}");
    // It keeps being retried, and no second notice comes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = d.get_json(&format!("/api/messages/{id}")).await;
        if r["attempts"].as_array().unwrap().len() >= 4 {
            assert_eq!(r["notices"].as_array().unwrap().len(), 1, "{r:#}");
            assert_eq!(r["notices"][0]["kind"], "delay");
            break;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let notices = up
        .messages()
        .into_iter()
        .filter(|m| m.rcpts == ["billing@contoso.com"])
        .count();
    assert_eq!(notices, 1);
}

/// A daemon with no `[[user]]` rule and no `notify.from` (the shipped configuration's
/// shape), an upstream that refuses gone@example.com, and `extra` config.
fn plain_env(up: &Upstream, extra: &str) -> TestEnv {
    common::env_sending_to(up.addr.port(), extra)
}

async fn failed_record(d: &DaemonProcess, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: serde_json::Value =
            common::json_at(format!("http://{}/api/messages/{id}", d.status)).await;
        if r["status"] == "failed" {
            return r;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_for_a_sender_in_a_local_domain_goes_to_someone_who_reads_mail() {
    let refuse = || {
        Script::default().reply(
            "rcpt:gone@example.com",
            "550 5.1.1 <gone@example.com>: User unknown",
        )
    };

    // No rule, no notify.from, no admin_address: nobody can be told; the page and the
    // log say so, and nothing goes to app@erp.local.
    let up = Upstream::start(refuse()).await;
    let env = plain_env(&up, "");
    let mut d = DaemonProcess::start(&env.config_path);
    let id = submit(&d, "app@erp.local", &["gone@example.com"], "").await;
    failed_record(&d, &id).await;
    let line = d.wait_message_starting("no one could be told", Duration::from_secs(10));
    assert_eq!(line["id"], id.as_str(), "{line}");
    let page = d.get_text(&format!("/messages/{id}")).await;
    assert!(
        page.contains("no bounce was sent: the sender app@erp.local cannot receive mail"),
        "{page}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        up.messages()
            .iter()
            .all(|m| !m.rcpts.iter().any(|r| r == "app@erp.local")),
        "a bounce went to a sender in a local domain"
    );
    drop(d);

    // With admin_address: the administrator gets it.
    let up = Upstream::start(refuse()).await;
    let env = plain_env(&up, "[sendmail]\nadmin_address = \"it@contoso.com\"\n");
    let d = DaemonProcess::start(&env.config_path);
    submit(&d, "scanner@printers", &["gone@example.com"], "").await;
    let got = to(&up, "it@contoso.com", 1).await;
    let bounce = String::from_utf8_lossy(&got[0].data);
    assert!(
        bounce.contains("gone@example.com"),
        "the bounce names the failed recipient"
    );
    assert!(
        bounce.contains("\r\nTo: <it@contoso.com>\r\n")
            || bounce.contains("\r\nTo: it@contoso.com\r\n"),
        "its To is who it goes to: {bounce}"
    );
    drop(d);

    // A rule that rewrites to a routable sender: the bounce goes there (admin or not).
    let up = Upstream::start(refuse()).await;
    let env = plain_env(
        &up,
        "[sendmail]\nadmin_address = \"it@contoso.com\"\n\
         [[user]]\nname = \"erp\"\nmatch_senders = [\"*@erp.local\"]\nemail = \"billing@contoso.com\"\n",
    );
    let d = DaemonProcess::start(&env.config_path);
    submit(&d, "app@erp.local", &["gone@example.com"], "").await;
    to(&up, "billing@contoso.com", 1).await;
    drop(d);

    // A routable sender keeps getting its own bounce.
    let up = Upstream::start(refuse()).await;
    let env = plain_env(&up, "[sendmail]\nadmin_address = \"it@contoso.com\"\n");
    let d = DaemonProcess::start(&env.config_path);
    submit(&d, "app@contoso.com", &["gone@example.com"], "").await;
    to(&up, "app@contoso.com", 1).await;
    assert!(
        up.messages()
            .iter()
            .all(|m| !m.rcpts.iter().any(|r| r == "it@contoso.com"))
    );
}
