//! What mailgate says, where a new administrator read it wrong: the queue while paused
//! and while a message is being sent, `history --help`, a test email's record, a refused
//! sender's diagnosis, and the totals with a failed bounce. The binary, its CLI and its
//! API against a scripted upstream.

mod common;

use std::time::Duration;

use common::send_short;
use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, cli, queued_id, write};
use serde_json::Value;

fn provider(up: &Upstream) -> String {
    format!(
        "{}per_minute_limit = 0\n\
         [distributor]\ndefault_provider = \"up\"\n",
        common::plain_smtp("up", up.addr.port())
    )
}

/// Waits (bounded) until `/status` satisfies `pred`.
async fn wait_status(d: &DaemonProcess, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = d.get_json("/status").await;
        if pred(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_counts_a_message_being_sent_once_and_says_paused_once() {
    // The upstream takes the message and never ends the exchange: it is being sent.
    let up = Upstream::start(Script::default().stall("end")).await;
    let env = TestEnv::new("", "");
    write(&env, &provider(&up));
    let d = DaemonProcess::start(&env.config_path);
    let r = send_short(d.smtp, "app@erp.local", "a@example.com", "s").await;
    queued_id(&r).unwrap_or_else(|| panic!("{r}"));
    let s = wait_status(&d, "a message being sent", |s| s["queue"]["sending"] == 1).await;
    assert_eq!(s["queue"]["queued"], 0, "counted as sending only: {s:#}");
    let out = common::cli_ok(&env, &["queue"]);
    common::assert_has(&out, &["queued:   0\n", "sending:  1\n"]);

    // Paused, with one more message waiting: the reason is said once.
    common::cli_ok(&env, &["pause"]);
    let r = send_short(d.smtp, "app@erp.local", "b@example.com", "t").await;
    queued_id(&r).unwrap_or_else(|| panic!("{r}"));
    let out = common::cli_ok(&env, &["queue"]);
    assert_eq!(out.matches("paused").count(), 1, "{out}");
    assert!(out.contains("mailgate resume"), "{out}");

    // history --help names every status, cancelled among them.
    let (code, out, _) = cli(&env, &["history", "--help"]);
    assert_eq!(code, 0);
    for st in [
        "queued",
        "deferred",
        "sent",
        "partial",
        "failed",
        "cancelled",
    ] {
        assert!(out.contains(st), "{st} missing: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sender_is_diagnosed_and_a_failed_bounce_is_counted_apart() {
    // The upstream refuses every sender, the bounce's null sender included.
    let up = Upstream::replying("mail", "550 5.7.1 Sender address refused").await;
    let env = TestEnv::new("", "");
    write(&env, &provider(&up));
    let d = DaemonProcess::start(&env.config_path);
    let r = send_short(d.smtp, "app@contoso.com", "a@example.com", "s").await;
    let id = queued_id(&r).unwrap_or_else(|| panic!("{r}"));
    let s = wait_status(&d, "the message and its bounce failed", |s| {
        s["totals"]["failed"] == 1 && s["totals"]["notices_failed"] == 1
    })
    .await;
    assert_eq!(s["records"]["failed"], 2, "the records hold both: {s:#}");
    let out = common::cli_ok(&env, &["show", &id]);
    common::assert_has(
        &out,
        &[
            "diagnosis: sender-refused",
            "fix:       mailgate show ID shows the sender",
        ],
    );
    assert!(!out.contains('`'), "{out}");
    let m = d.get_text("/metrics").await;
    assert!(
        m.contains("mailgate_messages_failed_total{provider=\"up\",diagnosis=\"sender-refused\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_helo_shows_none() {
    let env = TestEnv::new("", "");
    write(&env, "");
    let d = DaemonProcess::start(&env.config_path);
    // The admin API's send: no SMTP session, so no HELO.
    let (code, out, err) = cli(
        &env,
        &[
            "send",
            "--to",
            "a@example.com",
            "--subject",
            "hi",
            "--body",
            "x",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let id = out
        .split_whitespace()
        .find(|w| w.len() == 26)
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let out = common::cli_ok(&env, &["show", &id]);
    assert!(!out.contains("HELO"), "{out}");
    let page = d.get_text(&format!("/messages/{id}")).await;
    assert!(!page.contains("(HELO )"), "{page}");
}
