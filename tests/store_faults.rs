//! The store in trouble, against the daemon binary: a store that cannot record what it
//! sent (a full disk, made certain by the fault-injection switch), a damaged body, a
//! store file that is empty, not a store, or deleted under the running daemon.

mod common;

use std::process::Command;
use std::time::Duration;

use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, bin, run_cli, submit_to};

use common::WAIT;
use common::{send_short, submit_short};

fn relay_env(port: u16, enabled: bool) -> TestEnv {
    let env = TestEnv::new("", "");
    write_relay(&env, port, enabled);
    env
}

fn write_relay(env: &TestEnv, port: u16, enabled: bool) {
    env.write_config(
        "",
        &format!(
            "{}per_minute_limit = 30\n\
             [distributor]\ndefault_provider = \"up\"\nenabled = {enabled}\n[notify]\nbounce = \"off\"\n",
            common::plain_smtp("up", port)
        ),
    );
}

/// One message from the ERP to a@contoso.com; its id.
async fn send(addr: std::net::SocketAddr, data: &[u8]) -> String {
    submit_to(addr, "erp@erp.local", &["a@contoso.com"], data).await
}

async fn http(url: String) -> (u16, String) {
    let r = common::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_record_outcomes_sends_each_message_once() {
    let up = Upstream::start(Script::default()).await;
    let env = relay_env(up.addr.port(), false);
    // Ten messages queued while sending is off; then the daemon stops.
    let mut d = DaemonProcess::start(&env.config_path);
    let mut ids = Vec::new();
    for n in 0..10 {
        let body = format!("Subject: m{n}\r\n\r\nbody {n}\r\n");
        ids.push(send(d.smtp, body.as_bytes()).await);
    }
    assert_eq!(d.terminate().code(), Some(0));

    // The disk fills; the daemon starts with sending on.
    write_relay(&env, up.addr.port(), true);
    let flag = env.dir.path().join("disk-full");
    std::fs::write(&flag, b"").unwrap();
    let mut cmd = Command::new(bin());
    cmd.env("MAILGATE_FAULT_STORE_WRITES", &flag);
    let mut d = DaemonProcess::start_with(&env.config_path, cmd);
    // The deliveries that started before the first failed commit reach the upstream; their
    // outcomes are kept and their commits retried with backoff; no new delivery starts.
    let still = |v: &serde_json::Value| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the store still cannot commit"))
    };
    d.wait_count(still, 4, WAIT);
    let copies = up.messages().len();
    assert!((1..=10).contains(&copies), "{copies} copies");
    let lines = d.drain();
    assert!(lines < 100, "the retry loop is bounded: {lines} log lines");
    assert_eq!(
        up.messages().len(),
        copies,
        "nothing more went out while the store failed"
    );
    let base = format!("http://{}", d.status);
    let (code, why) = http(format!("{base}/healthz")).await;
    assert_eq!(code, 503, "{why}");
    let s: serde_json::Value =
        serde_json::from_str(&http(format!("{base}/status")).await.1).unwrap();
    assert_eq!(s["store"]["ok"], false, "{s}");
    assert!(
        s["store"]["problem"].as_str().unwrap().contains("store"),
        "{s}"
    );
    assert_eq!(s["store"]["unrecorded_outcomes"], copies, "{s}");
    let p = common::provider_in(&s, "up").clone();
    assert_eq!(
        p["sent_last_minute"], copies,
        "every copy that went out counts: {p}"
    );
    // New mail is not acknowledged while nothing can be committed.
    let r = send_short(d.smtp, "erp@erp.local", "a@contoso.com", "x").await;
    assert!(r.starts_with("451 4.3.0"), "{r}");

    // Space comes back: the outcomes are recorded by themselves, health recovers.
    std::fs::remove_file(&flag).unwrap();
    d.wait_log(
        |v| v["message"] == "the store commits again: kept delivery outcomes recorded",
        WAIT,
    );
    d.wait_sent(&ids, WAIT);
    let (code, body) = http(format!("{base}/healthz")).await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let subjects = |up: &Upstream| {
        let mut v: Vec<String> = up
            .messages()
            .iter()
            .map(|m| {
                String::from_utf8_lossy(&m.data)
                    .lines()
                    .find(|l| l.starts_with("Subject:"))
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    let got = subjects(&up);
    let mut want: Vec<String> = (0..10).map(|n| format!("Subject: m{n}")).collect();
    want.sort();
    assert_eq!(got, want, "each message exactly once");
    assert_eq!(d.terminate().code(), Some(0));

    // After a restart nothing is sent again: the store knows they went.
    let mut d = DaemonProcess::start(&env.config_path);
    d.wait_log(|v| v["message"] == "history retention ran", WAIT);
    let s: serde_json::Value =
        serde_json::from_str(&http(format!("http://{}/status", d.status)).await.1).unwrap();
    assert_eq!(s["queue"]["queued"], 0, "{s}");
    assert_eq!(s["records"]["sent"], 10, "{s}");
    assert_eq!(subjects(&up), want, "nothing sent twice after the restart");
    assert_eq!(d.terminate().code(), Some(0));
}

/// Flips one byte of `needle` wherever it stands in `file` (every copy redb keeps).
fn damage(file: &std::path::Path, needle: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut n = 0;
    let mut at = 0;
    while let Some(i) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        bytes[at + i + needle.len() / 2] ^= 0x20;
        at += i + needle.len();
        n += 1;
    }
    std::fs::write(file, bytes).unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_body_is_never_relayed_and_the_rest_goes_on() {
    let up = Upstream::start(Script::default()).await;
    let env = relay_env(up.addr.port(), false);
    let mut d = DaemonProcess::start(&env.config_path);
    // Enough mail that the damaged body sits in a leaf page below the table's root (redb
    // checks the roots' checksums itself when it opens the file).
    let filler = format!("Subject: filler\r\n\r\n{}\r\n", "f".repeat(3000));
    for _ in 0..20 {
        send(d.smtp, filler.as_bytes()).await;
    }
    let bad = send(
        d.smtp,
        b"Subject: bad\r\n\r\nTOKEN-DAMAGED-BODY-0123456789\r\n",
    )
    .await;
    for _ in 0..20 {
        send(d.smtp, filler.as_bytes()).await;
    }
    let good = send(d.smtp, b"Subject: good\r\n\r\nfine\r\n").await;
    assert_eq!(d.terminate().code(), Some(0));
    let store = env.dir.path().join("data/mailgate.redb");
    assert!(damage(&store, b"TOKEN-DAMAGED-BODY-0123456789") >= 1);

    // The check finds it.
    let cfg = env.config_path.to_str().unwrap();
    let o = run_cli(&["--config", cfg, "store", "check"]);
    let out = common::exited(&o, 1);
    assert!(
        out.contains(&format!("{bad}: the store is damaged")) && out.contains("checksum"),
        "{out}"
    );

    write_relay(&env, up.addr.port(), true);
    env.edit_config("per_minute_limit = 30", "per_minute_limit = 0");
    let mut d = DaemonProcess::start(&env.config_path);
    d.wait_sent(std::slice::from_ref(&good), WAIT);
    let line = d.wait_log(
        |v| v["message"] == "delivery" && v["id"] == bad.as_str(),
        WAIT,
    );
    assert_eq!(line["status"], "failed");
    assert_eq!(line["diagnosis"], "store-damaged");
    let msgs = up.messages();
    assert_eq!(msgs.len(), 41, "all but the damaged one went out");
    assert!(
        msgs.iter()
            .all(|m| !String::from_utf8_lossy(&m.data).contains("TOKEN-DAMAGED"))
    );
    let v: serde_json::Value = serde_json::from_str(
        &http(format!("http://{}/api/messages/{bad}", d.status))
            .await
            .1,
    )
    .unwrap();
    assert_eq!(v["status"], "failed");
    assert_eq!(v["attempts"][0]["diagnosis"]["code"], "store-damaged");
    assert!(
        v["attempts"][0]["diagnosis"]["fix"]
            .as_str()
            .unwrap()
            .contains("mailgate store salvage")
    );
    // Logged once, not in a loop.
    let n = d.drain();
    assert_eq!(
        d.seen
            .iter()
            .filter(|v| v["diagnosis"] == "store-damaged")
            .count(),
        2,
        "one error line, one delivery line"
    );
    assert!(n < 60, "{n} log lines");
    assert_eq!(d.terminate().code(), Some(0));

    // Salvage copies what is readable into a new store and says what it could not.
    let out_store = env.dir.path().join("salvaged.redb");
    let o = run_cli(&[
        "--config",
        cfg,
        "store",
        "salvage",
        out_store.to_str().unwrap(),
    ]);
    let text = common::exited(&o, 0);
    assert!(
        text.contains(
            "41 messages copied, 0 finished records kept without their body, 1 could not be read"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("lost: {bad}")), "{text}");
}

#[test]
fn a_store_file_that_is_empty_or_not_a_store_is_refused_not_replaced() {
    let env = TestEnv::new("", "");
    let store = env.dir.path().join("data/mailgate.redb");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    let cfg = env.config_path.to_str().unwrap();
    for (content, says) in [
        (&b""[..], "empty (0 bytes)"),
        (
            &b"PK\x03\x04 this is a zip file, not a store"[..],
            "not a mailgate store",
        ),
    ] {
        std::fs::write(&store, content).unwrap();
        let o = run_cli(&["--config", cfg, "serve"]);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("mailgate: cannot open the store") && last.contains(says),
            "{err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&store).unwrap(),
            content,
            "the file is left as it was"
        );
    }
}

#[test]
fn a_damaged_header_page_is_a_clear_error_at_start() {
    let env = TestEnv::new("", "");
    let cfg = env.config_path.to_str().unwrap().to_string();
    let mut d = DaemonProcess::start(&env.config_path);
    assert_eq!(d.terminate().code(), Some(0));
    let store = env.dir.path().join("data/mailgate.redb");
    let mut bytes = std::fs::read(&store).unwrap();
    for b in &mut bytes[4096..4096 + 64] {
        *b ^= 0x5a;
    }
    for b in &mut bytes[64..192] {
        *b ^= 0x5a;
    }
    std::fs::write(&store, &bytes).unwrap();
    let o = run_cli(&["--config", &cfg, "serve"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("stack backtrace") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("mailgate: cannot open the store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_deleted_under_the_daemon_stops_acknowledgements() {
    let env = TestEnv::new("", "");
    let mut d = DaemonProcess::start(&env.config_path);
    submit_short(d.smtp, "a@erp.local", "x@contoso.com", "before").await;
    std::fs::remove_file(env.dir.path().join("data/mailgate.redb")).unwrap();
    let line = d.wait_message_starting("the store file was deleted", Duration::from_secs(10));
    assert!(
        line["open_file"].as_str().unwrap().starts_with("/proc/"),
        "{line}"
    );
    let r = send_short(d.smtp, "a@erp.local", "x@contoso.com", "after").await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    let (code, why) = http(format!("http://{}/healthz", d.status)).await;
    assert_eq!(code, 503);
    assert!(why.contains("deleted"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_the_integrity_check_runs_and_is_logged() {
    let env = TestEnv::new("", "");
    let mut d = DaemonProcess::start(&env.config_path);
    let id = submit_short(d.smtp, "a@erp.local", "x@contoso.com", "c").await;
    d.kill();
    let mut d = DaemonProcess::start(&env.config_path);
    let line = d.wait_message_starting("the store was not closed cleanly", WAIT);
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("integrity check passed"),
        "{line}"
    );
    d.wait_sent(std::slice::from_ref(&id), WAIT);
    // A clean stop needs no check at the next start.
    assert_eq!(d.terminate().code(), Some(0));
    let mut d = DaemonProcess::start(&env.config_path);
    d.wait_log(|v| v["message"] == "history retention ran", WAIT);
    d.drain();
    assert!(!d.seen.iter().any(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("not closed cleanly"))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_panics_inside_the_store_is_contained_once() {
    let up = Upstream::start(Script::default()).await;
    let env = relay_env(up.addr.port(), true);
    env.edit_config("per_minute_limit = 30", "per_minute_limit = 0");
    let mut cmd = Command::new(bin());
    cmd.env("MAILGATE_FAULT_STORE_READ_PANIC", "PANIC-ON-THIS-PAGE");
    let mut d = DaemonProcess::start_with(&env.config_path, cmd);
    let bad = send(d.smtp, b"Subject: p\r\n\r\nPANIC-ON-THIS-PAGE\r\n").await;
    let good = send(d.smtp, b"Subject: fine\r\n\r\nfine\r\n").await;
    let line = d.wait_log(
        |v| v["message"] == "delivery" && v["id"] == bad.as_str(),
        WAIT,
    );
    assert_eq!(line["status"], "failed");
    assert_eq!(line["diagnosis"], "store-damaged");
    d.wait_sent(std::slice::from_ref(&good), WAIT);
    // Once, not in a loop: a few lines, not hundreds of thousands.
    let more = send(d.smtp, b"Subject: after\r\n\r\nafter\r\n").await;
    d.wait_sent(std::slice::from_ref(&more), WAIT);
    let n = d.drain();
    assert!(n < 40, "{n} log lines");
    assert_eq!(up.messages().len(), 2, "the damaged one never went out");
    let (code, _) = http(format!("http://{}/healthz", d.status)).await;
    assert_eq!(code, 200, "the daemon goes on");
    assert_eq!(d.terminate().code(), Some(0));
}
