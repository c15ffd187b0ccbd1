//! History retention as the daemon runs it: mail received "40 days ago" (a daemon run
//! under libfaketime) is pruned by the real binary at start, finished records with their
//! bodies, while unfinished ones stay; the CLI and the API show the result.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{DaemonProcess, TestEnv, bin, free_port, run_cli, submit_to};

fn write(env: &TestEnv, smtp: u16, status: u16, dead: u16, retention_days: u32, sending: bool) {
    let d = env.dir.path();
    let text = format!(
        "[smtp]\nlisten = [\"127.0.0.1:{smtp}\"]\nhostname = \"mailgate.test\"\nshutdown_timeout = \"5s\"\n\
         [store]\npath = \"{store}\"\nmin_free_space = 0\n\
         [status]\nlisten = \"127.0.0.1:{status}\"\n\
         [history]\nretention_days = {retention_days}\n[distributor]\nenabled = {sending}\n\
         {outbox}{dead}\
         [[user]]\nname = \"u\"\nemail = \"held@example.com\"\nprovider = \"dead\"\n",
        store = d.join("data/mailgate.redb").display(),
        outbox = common::eml_at("outbox", &d.join("outbox")),
        dead = common::plain_smtp("dead", dead),
    );
    std::fs::write(&env.config_path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_records_older_than_retention_go_with_their_bodies_at_start() {
    let Some(libfaketime) = common::libfaketime() else {
        common::skip("Debian's faketime is not installed (.ci/run installs it)");
        return;
    };
    let env = TestEnv::new("", "");
    let (smtp, status, dead) = (free_port(), free_port(), free_port());
    write(&env, smtp, status, dead, 30, true);
    let cfg = env.config_path.to_str().unwrap().to_string();

    // 40 days ago: one sent, one deferred (its upstream is down), one queued (paused).
    let mut cmd = Command::new(bin());
    cmd.env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "-40d")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut old = DaemonProcess::start_with(&env.config_path, cmd);
    // The sent one is large: its body is a file beside the store, and goes with it.
    let mut large = b"Subject: old sent\r\n\r\n".to_vec();
    for _ in 0..5000 {
        large.extend_from_slice(&[b'x'; 98]);
        large.extend_from_slice(b"\r\n");
    }
    let sent = submit_to(old.smtp, "a@example.com", &["x@example.com"], &large).await;
    let body_file = env.dir.path().join("data/mailgate.bodies").join(&sent);
    assert!(body_file.exists());
    old.wait_sent(std::slice::from_ref(&sent), Duration::from_secs(30));
    let deferred = submit_to(
        old.smtp,
        "held@example.com",
        &["x@example.com"],
        b"Subject: old deferred\r\n\r\nbody\r\n",
    )
    .await;
    old.wait_log(
        |v| v["message"] == "delivery" && v["id"] == deferred.as_str() && v["status"] == "deferred",
        Duration::from_secs(30),
    );
    assert_eq!(run_cli(&["--config", &cfg, "pause"]).status.code(), Some(0));
    let queued = submit_to(
        old.smtp,
        "a@example.com",
        &["x@example.com"],
        b"Subject: old queued\r\n\r\nbody\r\n",
    )
    .await;
    let v: serde_json::Value =
        serde_json::from_slice(&run_cli(&["--config", &cfg, "show", &sent, "--json"]).stdout)
            .unwrap();
    let received = mailgate::time::parse_rfc3339(v["received_at"].as_str().unwrap()).unwrap();
    let age_days = (mailgate::time::now_ms() - received) / 86_400_000;
    assert!(
        (39..=40).contains(&age_days),
        "the faked clock made it {age_days} days old"
    );
    assert_eq!(old.terminate().code(), Some(0));

    // A start with sending off and `retention_days`: the daemon and its retention log line.
    let keeping = |days| {
        write(&env, smtp, status, dead, days, false);
        let mut d = DaemonProcess::start(&env.config_path);
        let ran = d.wait_log(
            |v| v["message"] == "history retention ran",
            Duration::from_secs(10),
        );
        (d, ran)
    };
    // The distributor stays off from here on, so the waiting ones stay waiting (else the
    // deferred one would be given up after give_up_after and the queued one sent).
    // retention_days larger than their age keeps everything.
    let (mut d, ran) = keeping(60);
    assert_eq!(ran["deleted"], 0);
    let o = run_cli(&["--config", &cfg, "export", &sent]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("old sent"));
    assert_eq!(d.terminate().code(), Some(0));

    // retention_days = 0 means 30: the sent record and its body go within seconds of start.
    let (mut d, ran) = keeping(0);
    assert_eq!(ran["deleted"], 1, "{ran}");
    let o = run_cli(&["--config", &cfg, "show", &sent]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("no message {sent}")));
    let o = run_cli(&["--config", &cfg, "export", &sent]);
    assert_eq!(o.status.code(), Some(1), "the body is gone too");
    assert!(!body_file.exists(), "and its file");
    let api = common::get(format!("http://127.0.0.1:{status}/api/messages/{sent}"))
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    for (id, want) in [(&deferred, "deferred"), (&queued, "queued")] {
        let o = run_cli(&["--config", &cfg, "show", id, "--json"]);
        assert_eq!(o.status.code(), Some(0), "unfinished {want} record stays");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["status"], want);
        let o = run_cli(&["--config", &cfg, "export", id]);
        assert_eq!(o.status.code(), Some(0), "and its body");
    }
    assert_eq!(d.terminate().code(), Some(0));
}
