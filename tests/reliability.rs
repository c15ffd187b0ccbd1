//! The reliability suite: a crash loop with SIGKILL, upstream faults, storage faults and
//! hostile clients. After each, a fresh client is served, and no message was split,
//! injected or lost.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::upstream::{Script, TestCa, Upstream, server_tls};
use common::{DaemonProcess, Smtp, TestEnv, queued_id};
use mailgate::Daemon;
use mailgate::history::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::WAIT;

/// A small deterministic generator (xorshift), seeded from the clock, for kill moments.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        println!("crash loop seed {seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn relay_to(env: &TestEnv, up: &Upstream) {
    env.write_config(
        "",
        &format!(
            "{}max_connections = 8\n[distributor]\ndefault_provider = \"sink\"\nretry_initial = \"200ms\"\nretry_max = \"1s\"\n",
            common::plain_smtp("sink", up.addr.port())),
    );
}

fn token_of(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.split("Subject: ")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_loses_nothing_acknowledged() {
    let up = Upstream::start(Script::default()).await;
    let env = TestEnv::new("", "");
    relay_to(&env, &up);
    let mut rng = Rng::new();
    let acked: common::Acked = Default::default();
    for round in 0..10 {
        let mut daemon = DaemonProcess::start(&env.config_path);
        let addr = daemon.smtp;
        let kill_after = 5 + rng.below(40) as usize;
        let (clients, count) = common::burst(addr, 8, 300, &format!("R{round}"), &acked);
        common::until_count(&count, kill_after).await;
        daemon.kill();
        for c in clients {
            c.await.unwrap();
        }
    }
    // The last start delivers whatever is left.
    let acked = acked.lock().unwrap().clone();
    let mut daemon = DaemonProcess::start(&env.config_path);
    let delivered_tokens = || -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in up.messages() {
            *m.entry(token_of(&r.data)).or_insert(0) += 1;
        }
        m
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let notified = up.arrived.notified();
            let got = delivered_tokens();
            if acked.keys().all(|t| got.contains_key(t)) {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("every acknowledged message is delivered");
    let got = delivered_tokens();
    let lost = acked.keys().filter(|t| !got.contains_key(*t)).count();
    let duplicates: usize = got.values().map(|n| n - 1).sum();
    println!(
        "acknowledged={} delivered={} lost={lost} duplicates={duplicates}",
        acked.len(),
        acked.keys().filter(|t| got.contains_key(*t)).count()
    );
    assert_eq!(lost, 0);
    assert!(acked.len() >= 50, "ten rounds of load: {}", acked.len());
    assert_eq!(daemon.terminate().code(), Some(0));
}

async fn submit(daemon: &Daemon, token: &str) -> String {
    let data = format!("Subject: {token}\r\n\r\n{token}\r\n");
    common::submit_to(
        daemon.smtp_addrs[0],
        "app@erp.local",
        &["a@contoso.com"],
        data.as_bytes(),
    )
    .await
}

use common::next_record as next_outcome;

/// One fault: the first attempt fails with `code`, the upstream recovers, and the
/// message is then delivered exactly once.
async fn fault_then_recovery(broken: Script, code: &str) {
    let up = Upstream::start(broken).await;
    let env = TestEnv::new("", "");
    relay_to(&env, &up);
    env.edit_config("tls = \"none\"", "tls = \"none\"\ntimeout = \"1s\"");
    let daemon = Daemon::start(env.config()).await.unwrap();
    let mut events = daemon.distributor.subscribe();
    let id = submit(&daemon, "fault").await;
    let rec = next_outcome(&daemon, &mut events, &id).await;
    assert_eq!(rec.status, Status::Deferred, "{code}: {rec:#?}");
    assert_eq!(
        rec.attempts[0].diagnosis.as_ref().unwrap().code.as_str(),
        code
    );
    up.set_script(Script::default());
    let rec = loop {
        let rec = next_outcome(&daemon, &mut events, &id).await;
        if rec.status != Status::Deferred {
            break rec;
        }
    };
    assert_eq!(rec.status, Status::Sent, "{code}");
    let got = up.messages();
    assert_eq!(got.len(), 1, "{code}: delivered once");
    assert_eq!(token_of(&got[0].data), "fault");
    daemon.shutdown().await;
}

#[tokio::test]
async fn upstream_drops_the_connection_in_data() {
    fault_then_recovery(
        Script {
            drop_in_data: true,
            ..Script::default()
        },
        "connection-failed",
    )
    .await;
}

#[tokio::test]
async fn upstream_answers_421_and_closes() {
    fault_then_recovery(
        Script::default().reply("mail", "421 4.3.2 Service shutting down"),
        "upstream-throttled",
    )
    .await;
}

#[tokio::test]
async fn upstream_accepts_tcp_then_says_nothing() {
    fault_then_recovery(
        Script {
            silent: true,
            ..Script::default()
        },
        "connection-failed",
    )
    .await;
}

#[tokio::test]
async fn upstream_tls_handshake_fails() {
    let ca = TestCa::new("faults CA");
    let (cert, key) = ca.issue(&["127.0.0.1"]);
    let up = Upstream::start(Script {
        starttls: true,
        tls: Some(server_tls(&cert, &key)),
        tls_garbage: true,
        ..Script::default()
    })
    .await;
    let env = TestEnv::new("", "");
    std::fs::write(env.dir.path().join("ca.pem"), &ca.pem).unwrap();
    env.write_config(
        "",
        &format!(
            "{}timeout = \"2s\"\n[distributor]\ndefault_provider = \"sink\"\nretry_initial = \"200ms\"\nretry_max = \"1s\"\n",
            common::tls_smtp("sink", up.addr.port(), &env.dir.path().join("ca.pem"))
        ),
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    let mut events = daemon.distributor.subscribe();
    let id = submit(&daemon, "tls").await;
    let rec = next_outcome(&daemon, &mut events, &id).await;
    assert_eq!(rec.status, Status::Deferred);
    assert_eq!(
        rec.attempts[0].diagnosis.as_ref().unwrap().code.as_str(),
        "connection-failed",
        "{rec:#?}"
    );
    up.set_script(Script {
        starttls: true,
        tls: Some(server_tls(&cert, &key)),
        ..Script::default()
    });
    let rec = loop {
        let rec = next_outcome(&daemon, &mut events, &id).await;
        if rec.status != Status::Deferred {
            break rec;
        }
    };
    assert_eq!(rec.status, Status::Sent);
    assert!(up.messages()[0].tls);
    daemon.shutdown().await;
}

#[tokio::test]
async fn slow_upstream_still_delivers() {
    let up = Upstream::start(Script {
        delay_ms: 150,
        ..Script::default()
    })
    .await;
    let env = TestEnv::new("", "");
    relay_to(&env, &up);
    let daemon = Daemon::start(env.config()).await.unwrap();
    let mut events = daemon.distributor.subscribe();
    let id = submit(&daemon, "slow").await;
    assert_eq!(
        next_outcome(&daemon, &mut events, &id).await.status,
        Status::Sent
    );
    assert_eq!(up.messages().len(), 1);
    daemon.shutdown().await;
}

#[tokio::test]
async fn store_that_cannot_write_answers_451_and_recovers() {
    let (env, daemon) = common::started("", "").await;
    let store = daemon.pipeline.store().clone();
    let mut events = daemon.distributor.subscribe();
    let ok1 = submit(&daemon, "before").await;
    store.fail_writes(true);
    let (mut s, _) = Smtp::connect(daemon.smtp_addrs[0]).await.unwrap();
    s.cmd("EHLO disk").await.unwrap();
    let reply = s
        .send(
            "a@erp.local",
            &["x@contoso.com"],
            b"Subject: during\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    let health = common::get(format!("http://{}/healthz", daemon.status_addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    store.fail_writes(false);
    let reply = s
        .send(
            "a@erp.local",
            &["x@contoso.com"],
            b"Subject: after\r\n\r\nx\r\n",
        )
        .await
        .unwrap();
    let ok2 = queued_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    for id in [&ok1, &ok2] {
        loop {
            if daemon.pipeline.store().record(id).unwrap().unwrap().status == Status::Sent {
                break;
            }
            tokio::time::timeout(WAIT, events.recv())
                .await
                .unwrap()
                .unwrap();
        }
    }
    let subjects: Vec<String> = env
        .outbox_ids()
        .iter()
        .map(|id| token_of(&env.eml(id)))
        .collect();
    assert_eq!(subjects.len(), 2);
    assert!(
        !subjects.contains(&"during".to_string()),
        "what was not acknowledged was not delivered"
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn low_disk_waits_at_the_door_with_452() {
    let env = TestEnv::edited("min_free_space = 0", "min_free_space = \"1000000GB\"");
    let daemon = Daemon::start(env.config()).await.unwrap();
    let (mut s, _) = Smtp::connect(daemon.smtp_addrs[0]).await.unwrap();
    s.cmd("EHLO c").await.unwrap();
    assert_eq!(
        s.cmd("MAIL FROM:<a@erp.local>").await.unwrap(),
        "452 4.3.1 Insufficient system storage"
    );
    daemon.shutdown().await;
}

/// A fresh client can still submit, and exactly `n` messages are stored.
async fn fresh_client_served(daemon: &Daemon, n: usize) {
    let id = submit(daemon, "fresh").await;
    assert!(daemon.pipeline.store().record(&id).unwrap().is_some());
    assert_eq!(
        daemon
            .pipeline
            .store()
            .list(10_000, |_| true)
            .unwrap()
            .len(),
        n
    );
}

#[tokio::test]
async fn a_thousand_connections_past_the_limit() {
    let (_env, daemon) = common::started("max_connections = 50", "").await;
    let addr = daemon.smtp_addrs[0];
    let mut conns = Vec::new();
    let mut refused = 0;
    let mut greeted = 0;
    for _ in 0..1000 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).await.unwrap();
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if line.starts_with("421 4.3.2") {
            refused += 1;
        } else {
            assert!(line.starts_with("220 "), "{line}");
            greeted += 1;
            conns.push(c);
        }
    }
    assert_eq!(greeted, 50);
    assert_eq!(refused, 950);
    // Free one place: a fresh client is served.
    drop(conns.pop());
    let served = tokio::time::timeout(WAIT, async {
        loop {
            let (mut s, g) = Smtp::connect(addr).await.unwrap();
            if g.starts_with("220 ") {
                s.cmd("EHLO fresh").await.unwrap();
                return s
                    .send(
                        "a@erp.local",
                        &["x@contoso.com"],
                        b"Subject: fresh\r\n\r\nx\r\n",
                    )
                    .await
                    .unwrap();
            }
        }
    })
    .await
    .unwrap();
    assert!(served.starts_with("250 2.0.0"), "{served}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn slowloris_is_closed_at_idle_timeout() {
    let env = TestEnv::edited("idle_timeout = \"60s\"", "idle_timeout = \"1s\"");
    let daemon = Daemon::start(env.config()).await.unwrap();
    let mut c = TcpStream::connect(daemon.smtp_addrs[0]).await.unwrap();
    // One byte of a command, then nothing.
    c.write_all(b"E").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.ends_with("421 4.4.2 Idle timeout, closing connection\r\n"),
        "{text}"
    );
    fresh_client_served(&daemon, 1).await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn binary_garbage_and_ten_megabytes_without_a_newline() {
    let (_env, daemon) = common::started("", "").await;
    // Garbage: replies are errors, the daemon stays up.
    let mut c = TcpStream::connect(daemon.smtp_addrs[0]).await.unwrap();
    let mut garbage = Vec::new();
    let mut rng = Rng::new();
    for _ in 0..20_000 {
        garbage.push(rng.below(256) as u8);
    }
    c.write_all(&garbage).await.unwrap();
    c.write_all(b"\r\nQUIT\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("220 "));
    assert!(
        text.lines()
            .skip(1)
            .all(|l| l.starts_with('5') || l.starts_with("221")),
        "{text}"
    );
    // 10 MB without a newline: one 500, memory bounded, the session goes on.
    let mut c = TcpStream::connect(daemon.smtp_addrs[0]).await.unwrap();
    let chunk = vec![b'A'; 1 << 20];
    let writer = async {
        for _ in 0..10 {
            c.write_all(&chunk).await.unwrap();
        }
        c.write_all(b"\r\nNOOP\r\nQUIT\r\n").await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        out
    };
    let out = tokio::time::timeout(WAIT, writer).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1..],
        [
            "500 5.5.2 Error: line too long",
            "250 2.0.0 OK",
            "221 2.0.0 Bye"
        ],
        "{text}"
    );
    fresh_client_served(&daemon, 1).await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn smuggling_over_a_real_socket_stays_one_message() {
    let (_env, daemon) = common::started("", "").await;
    for variant in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\r\n", b"\r\n.\n"] {
        let mut c = TcpStream::connect(daemon.smtp_addrs[0]).await.unwrap();
        let mut input = b"EHLO x\r\nMAIL FROM:<a@erp.local>\r\nRCPT TO:<b@contoso.com>\r\nDATA\r\nSubject: legit\r\n\r\nhello".to_vec();
        input.extend_from_slice(variant);
        input.extend_from_slice(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@contoso.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nowned\r\n.\r\nQUIT\r\n");
        c.write_all(&input).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text.matches("250 2.0.0 OK queued").count(),
            1,
            "{variant:?}: {text}"
        );
    }
    let records = daemon.pipeline.store().list(100, |_| true).unwrap();
    assert_eq!(records.len(), 4);
    assert!(
        records
            .iter()
            .all(|r| r.original_sender == "a@erp.local" && r.recipients.len() == 1)
    );
    fresh_client_served(&daemon, 5).await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn connection_rate_per_address_outside_allowed_networks() {
    // 127.0.0.1 outside allowed_networks: the fourth connection in a minute is refused.
    let (_env, daemon) = common::started(
        "connection_rate_limit = 3\nallowed_networks = [\"10.0.0.0/8\"]",
        "",
    )
    .await;
    let mut greetings = Vec::new();
    for _ in 0..4 {
        let (_s, g) = Smtp::connect(daemon.smtp_addrs[0]).await.unwrap();
        greetings.push(g);
    }
    assert!(
        greetings[..3].iter().all(|g| g.starts_with("220 ")),
        "{greetings:?}"
    );
    assert_eq!(
        greetings[3],
        "421 4.7.0 Too many connections from your address, try again later"
    );
    daemon.shutdown().await;
    // Inside allowed_networks there is no such limit.
    let (_env, daemon) = common::started("connection_rate_limit = 3", "").await;
    for _ in 0..10 {
        let (_s, g) = Smtp::connect(daemon.smtp_addrs[0]).await.unwrap();
        assert!(g.starts_with("220 "), "{g}");
    }
    daemon.shutdown().await;
}
