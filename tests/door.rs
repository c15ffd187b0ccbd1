//! The door under abuse, against the daemon binary: clients that trickle bytes, strangers
//! that take every slot, a process out of file descriptors, control characters in EHLO,
//! quoted local parts, an empty admin token, and a reload of `store.min_free_space`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::{DaemonProcess, Smtp, TestEnv, bin, run_cli};

/// Reads one reply line (the last line of a multi-line reply).
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return String::new();
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.trim_end().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_command_line_is_cut_at_idle_timeout_from_its_first_byte() {
    let env = TestEnv::edited(
        "idle_timeout = \"60s\"",
        "idle_timeout = \"2s\"\nmin_data_rate = \"1KB\"",
    );
    let d = DaemonProcess::start(&env.config_path);

    let (r, mut w) = TcpStream::connect(d.smtp).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert!(reply(&mut r).await.starts_with("220"));
    let started = Instant::now();
    let trickle = async {
        for b in b"EHLO slow.example.com".iter().cycle().take(40) {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let got = tokio::select! {
        r = reply(&mut r) => r,
        _ = trickle => String::new(),
    };
    assert!(got.starts_with("421 4.4.2"), "{got:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "cut after {took:?}, not kept alive byte by byte"
    );

    // DATA below min_data_rate is cut too.
    let (r, mut w) = TcpStream::connect(d.smtp).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    reply(&mut r).await;
    for cmd in [
        "EHLO c",
        "MAIL FROM:<a@erp.local>",
        "RCPT TO:<b@contoso.com>",
        "DATA",
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
        reply(&mut r).await;
    }
    let started = Instant::now();
    let trickle = async {
        for _ in 0..40 {
            if w.write_all(b"0123456789").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let got = tokio::select! {
        r = reply(&mut r) => r,
        _ = trickle => String::new(),
    };
    assert_eq!(got, "421 4.4.2 Data arrives too slowly, closing connection");
    assert!(started.elapsed() < Duration::from_secs(4));
}

async fn connect_from(
    src: &str,
    to: std::net::SocketAddr,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let (r, w) = sock.connect(to).await.unwrap().into_split();
    (BufReader::new(r), w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_take_every_slot_from_local_clients() {
    let env = TestEnv::new(
        "allowed_networks = [\"127.0.0.2/32\"]\nmax_connections = 6\nmax_connections_per_address = 3",
        "",
    );
    let d = DaemonProcess::start(&env.config_path);
    let mut strangers = Vec::new();
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.1", d.smtp).await;
        assert!(reply(&mut c.0).await.starts_with("220"));
        strangers.push(c);
    }
    let mut fourth = connect_from("127.0.0.1", d.smtp).await;
    let r = reply(&mut fourth.0).await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    // A local client still finds a slot.
    let mut local = connect_from("127.0.0.2", d.smtp).await;
    assert!(reply(&mut local.0).await.starts_with("220"));
    // One stranger leaves: its address gets a slot again.
    drop(strangers.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from("127.0.0.1", d.smtp).await;
        let r = reply(&mut again.0).await;
        if r.starts_with("220") {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_and_recovers() {
    let env = TestEnv::new("max_connections = 1000", "");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\"", bin()]);
    let mut d = DaemonProcess::start_with(&env.config_path, cmd);
    d.wait_message_starting("the open-file limit is too small", Duration::from_secs(5));
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(d.smtp).await {
            held.push(s);
        }
    }
    d.wait_log(
        |v| v["message"] == "accept failed; backing off",
        Duration::from_secs(10),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warnings = d.count_logged("accept failed; backing off");
    assert!(
        warnings <= 5,
        "{warnings} accept warnings in 2 s: it must not spin"
    );
    drop(held);
    // Descriptors free again: new clients are served.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Ok((_, greeting))) =
            tokio::time::timeout(Duration::from_secs(2), Smtp::connect(d.smtp)).await
            && greeting.starts_with("220")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon serves again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_ehlo_and_quoted_local_parts() {
    let env = TestEnv::new("", "");
    let mut d = DaemonProcess::start(&env.config_path);
    let (mut s, _) = Smtp::connect(d.smtp).await.unwrap();
    s.expect("EHLO a\0b", "501 5.5.4").await;
    s.expect("HELO a\x01b", "501 5.5.4").await;
    s.expect("EHLO good.example", "250").await;
    let r = s
        .send(
            "\"john doe\"@erp.local",
            &["\"a b\"@example.com"],
            b"Subject: q\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    let id = common::queued_id(&r).unwrap_or_else(|| panic!("{r}"));
    d.wait_sent(std::slice::from_ref(&id), Duration::from_secs(30));
    let eml = String::from_utf8(env.eml(&id)).unwrap();
    assert!(
        eml.starts_with("Received: from good.example (127.0.0.1)"),
        "{eml}"
    );
    let v: serde_json::Value =
        common::json_at(format!("http://{}/api/messages/{id}", d.status)).await;
    assert_eq!(v["recipients"][0]["address"], "\"a b\"@example.com");
    assert_eq!(v["original_sender"], "\"john doe\"@erp.local");
    s.expect("RSET", "250").await;
    s.expect("MAIL FROM:<a@erp.local>", "250").await;
    s.expect("RCPT TO:<a b@example.com>", "501 5.1.3").await;
    // A sender in a single-label domain is what cron and scripts send: accepted; a
    // malformed one is 501 5.1.7.
    s.expect("RSET", "250").await;
    s.expect("MAIL FROM:<root@localhost>", "250 2.1.0").await;
    s.expect("RSET", "250").await;
    s.expect("MAIL FROM:<root@-bad-.example>", "501 5.1.7")
        .await;
}

#[test]
fn an_empty_admin_token_is_refused_by_check_config() {
    let env = TestEnv::new("", "");
    let token = env.dir.path().join("admin.token");
    for content in ["", "  \n"] {
        std::fs::write(&token, content).unwrap();
        let text = std::fs::read_to_string(&env.config_path).unwrap();
        let text = text.replace(
            "[status]\nlisten = \"127.0.0.1:0\"\n",
            &format!(
                "[status]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
        );
        let cfg = env.dir.path().join("open.toml");
        std::fs::write(&cfg, text).unwrap();
        let o = run_cli(&["--config", cfg.to_str().unwrap(), "check-config"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("status.token_file")
                && String::from_utf8_lossy(&o.stderr).contains("is empty")
        );
    }
    env.edit_config(
        "[status]\nlisten = \"127.0.0.1:0\"\n",
        "[status]\nlisten = \"0.0.0.0:0\"\ntoken = \"\"\n",
    );
    assert!(common::check_config_refuses(&env.config_path).contains("status.token is empty"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_min_free_space_with_the_stores_growth() {
    let env = TestEnv::new("", "");
    let mut d = DaemonProcess::start(&env.config_path);
    let (mut s, _) = Smtp::connect(d.smtp).await.unwrap();
    s.cmd("EHLO c").await.unwrap();
    s.expect("MAIL FROM:<a@erp.local>", "250").await;
    s.cmd("RSET").await.unwrap();
    env.edit_config("min_free_space = 0", "min_free_space = 1000000000000000000");
    Command::new("kill")
        .args(["-HUP", &d.child.id().to_string()])
        .status()
        .unwrap();
    let reloaded = d.wait_log(
        |v| v["message"] == "configuration reloaded",
        Duration::from_secs(10),
    );
    assert!(
        !reloaded["needs_restart"].to_string().contains("min_free"),
        "{reloaded}"
    );
    let r = s.cmd("MAIL FROM:<a@erp.local>").await.unwrap();
    assert!(r.starts_with("452 4.3.1"), "{r}");
    let st: serde_json::Value = common::json_at(format!("http://{}/status", d.status)).await;
    let file = st["store"]["file_bytes"].as_u64().unwrap();
    assert!(file > 0);
    assert_eq!(
        st["store"]["needed_free_bytes"].as_u64().unwrap(),
        1_000_000_000_000_000_000 + file,
        "{st}"
    );
    let h = common::get(format!("http://{}/healthz", d.status))
        .await
        .unwrap();
    assert_eq!(h.status(), 503);
    assert!(h.text().await.unwrap().contains("free disk space"));
}
