//! Fleet mode with a real Redis (Debian's redis-server, started by each test on a free
//! port, no persistence) and three daemon binaries sending as one mailbox to one capture
//! upstream: the shared per-minute window, fleet-wide connection leases, and Redis going
//! away and coming back empty.

mod common;

use common::Fetch;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::fleet::{Redis, fleet_list, fleet_secret, page_of, viewing_node};
use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, submit_to};

use common::WAIT;
use common::submit_short;

/// One node of the fleet: a daemon with the shared provider `o365` and `[fleet]`.
fn node(redis: &Redis, up: &Upstream, name: &str, provider: &str) -> (TestEnv, DaemonProcess) {
    node_with(
        redis,
        name,
        &format!(
            "{}{provider}\n\
             [distributor]\ndefault_provider = \"o365\"\n",
            common::plain_smtp("o365", up.addr.port()),
        ),
    )
}

/// One node of the fleet with these providers and `[distributor]`.
/// Every node holds the same fleet secret (its heartbeats signed), as a fleet should.
fn node_with(redis: &Redis, name: &str, providers: &str) -> (TestEnv, DaemonProcess) {
    let env = TestEnv::new("", "");
    let secret = fleet_secret(env.dir.path(), "fleet.secret", "the-test-fleet ");
    env.write_config(
        "",
        &format!(
            "{providers}[fleet]\nredis_url = \"redis://127.0.0.1:{}/0\"\nnode = \"{name}\"\nkey_prefix = \"t:\"\nexpected_nodes = 3\nsecret_file = \"{}\"\n",
            redis.port,
            secret.display()
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    (env, d)
}

/// Nodes named `names` with the same provider lines.
fn fleet_of(
    redis: &Redis,
    up: &Upstream,
    names: &[&str],
    provider: &str,
) -> Vec<(TestEnv, DaemonProcess)> {
    names.iter().map(|n| node(redis, up, n, provider)).collect()
}

/// Redis, an upstream and nodes named `names` with the same provider lines (None when
/// redis-server is missing and the test may skip).
async fn fleet(
    names: &[&str],
    provider: &str,
) -> Option<(Redis, Upstream, Vec<(TestEnv, DaemonProcess)>)> {
    let redis = Redis::start()?;
    let up = Upstream::start(Script::default()).await;
    let nodes = fleet_of(&redis, &up, names, provider);
    Some((redis, up, nodes))
}

/// Stops every node; each must exit cleanly.
fn stop_all(nodes: &mut [(TestEnv, DaemonProcess)]) {
    for (_, d) in nodes {
        assert_eq!(d.terminate().code(), Some(0));
    }
}

/// `per_node` messages to each node, subjects tagged with the node's index.
async fn submit_each(nodes: &[(TestEnv, DaemonProcess)], per_node: usize, tag: &str) {
    for (i, (_, d)) in nodes.iter().enumerate() {
        for m in 0..per_node {
            let body = format!("Subject: {tag}{i} m{m}\r\n\r\nx\r\n");
            submit_to(d.smtp, "erp@erp.local", &["a@contoso.com"], body.as_bytes()).await;
        }
    }
}

async fn status(d: &DaemonProcess) -> serde_json::Value {
    common::json_at(format!("http://{}/status", d.status)).await
}

/// The fleet-wide figures of one provider in a node's `/status`.
fn fleet_provider(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["fleet"]["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no fleet figures for {name}: {status}"))
}

/// Waits (bounded) until these nodes together have logged `message` `n` times.
async fn until_logged(ds: &mut [&mut DaemonProcess], message: &str, n: usize, what: &str) {
    tokio::time::timeout(WAIT, async {
        while ds
            .iter_mut()
            .map(|d| d.count_logged(message))
            .sum::<usize>()
            < n
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_one_per_minute_window() {
    let Some((_redis, up, mut nodes)) = fleet(
        &["n1", "n2", "n3"],
        "per_minute_limit = 6\nmax_connections = 4",
    )
    .await
    else {
        return;
    };
    submit_each(&nodes, 5, "n").await;
    // Six go out in this minute (exactly six: the budget is used), the other nine wait.
    up.wait_for(6).await;
    let mut ds: Vec<_> = nodes.iter_mut().map(|(_, d)| d).collect();
    until_logged(&mut ds, "throttled", 9, "the nine others are throttled").await;
    assert_eq!(up.messages().len(), 6, "the mailbox's 6 a minute, not 18");
    let s = status(&nodes[0].1).await;
    let fleet = &s["fleet"];
    assert_eq!(fleet["store"], "up", "{s}");
    assert_eq!(fleet["node"], "n1");
    let p = fleet_provider(&s, "o365");
    assert_eq!(p["sent_last_minute"], 6, "{fleet}");
    // Heartbeats: every node is listed.
    tokio::time::timeout(WAIT, async {
        loop {
            if status(&nodes[0].1).await["fleet"]["nodes"]
                .as_array()
                .map_or(0, |n| n.len())
                == 3
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("three heartbeats");
    let metrics = common::text_at(format!("http://{}/metrics", nodes[0].1.status)).await;
    common::assert_has(
        &metrics,
        &["mailgate_fleet_store_up 1", "mailgate_fleet_nodes 3"],
    );
    // Each answered call's round trip is timed: at least one per message sent.
    let timed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mailgate_fleet_call_duration_seconds_count "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(timed >= 2, "{metrics}");
    stop_all(&mut nodes);
}

/// Exactness under load: three nodes offered 200 messages a second in all, for two
/// minutes, against a mailbox limit of 100 a minute. The upstream never counts more than
/// 100 in any rolling minute (by the time it accepted each), and the fleet uses its
/// budget: the first 100 at once, the next 100 as the first minute's slide out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_a_second_against_a_hundred_a_minute_for_two_minutes() {
    let Some((_redis, up, mut nodes)) = fleet(
        &["x1", "x2", "x3"],
        "per_minute_limit = 100\nmax_connections = 4",
    )
    .await
    else {
        return;
    };
    let run = Duration::from_secs(120);
    let start = std::time::Instant::now();
    // Four sessions per node, each paced at 200 / 12 a second (a late one catches up):
    // on a loaded two-core machine one session's transaction can take longer than the
    // 30 ms two sessions per node would leave it.
    let mut senders = tokio::task::JoinSet::new();
    for (i, (_, d)) in nodes.iter().enumerate() {
        for c in 0..4 {
            let addr = d.smtp;
            senders.spawn(async move {
                let (mut s, _) = common::Smtp::connect(addr).await.unwrap();
                s.cmd("EHLO load.test").await.unwrap();
                let mut tick = tokio::time::interval(Duration::from_micros(60_000));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut n = 0usize;
                while start.elapsed() < run {
                    tick.tick().await;
                    let data = format!("Subject: load {i}-{c}-{n}\r\n\r\nx\r\n");
                    let r = s
                        .send("erp@erp.local", &["a@contoso.com"], data.as_bytes())
                        .await
                        .unwrap();
                    assert!(r.starts_with("250"), "{r}");
                    n += 1;
                }
                n
            });
        }
    }
    let mut offered = 0;
    while let Some(n) = senders.join_next().await {
        offered += n.unwrap();
    }
    let rate = offered as f64 / start.elapsed().as_secs_f64();
    assert!(
        rate >= 190.0,
        "offered {offered} in two minutes: {rate:.0}/s"
    );
    // What is due by the end of the two minutes has arrived a moment later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut times: Vec<std::time::Instant> = up.messages().iter().map(|m| m.at).collect();
    times.sort();
    let minute = Duration::from_secs(60);
    let busiest = (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t < times[i] + minute)
                .count()
        })
        .max()
        .unwrap_or(0);
    let in_run = times.iter().filter(|t| **t < start + run).count();
    assert!(
        busiest <= 100,
        "the upstream counted {busiest} in one rolling minute"
    );
    assert!(
        in_run >= 195,
        "the fleet used its budget: {in_run} sent in two minutes of 200"
    );
    // Two minutes with the store up and nobody asking /status: no node says the store is
    // unreachable.
    for (_, d) in &mut nodes {
        d.drain();
        let false_alarm = d
            .seen
            .iter()
            .find(|v| v["message"] == "alert condition" && v["event"] == "fleet");
        assert!(false_alarm.is_none(), "{false_alarm:?}");
    }
    stop_all(&mut nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_hold_two_connections_between_them() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start(Script {
        delay_ms: 150,
        ..Script::default()
    })
    .await;
    let mut nodes = fleet_of(
        &redis,
        &up,
        &["c1", "c2", "c3"],
        "per_minute_limit = 0\nmax_connections = 2",
    );
    submit_each(&nodes, 3, "c").await;
    up.wait_for(9).await;
    let most = up.max_active.load(Ordering::SeqCst);
    assert!(
        most <= 2,
        "{most} upstream sessions at once; the mailbox allows 2"
    );
    assert_eq!(most, 2, "both leases were used");
    stop_all(&mut nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_node_keeps_its_share_and_comes_back_without_a_burst() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let up = Upstream::start(Script::default()).await;
    let mut nodes = fleet_of(
        &redis,
        &up,
        &["r1", "r2", "r3"],
        "per_minute_limit = 6\nmax_connections = 4",
    );
    redis.down();
    // Accepting never waits for Redis (every node answers 250); each node sends its share,
    // 6 / 3 = 2 this minute, so the three together stay within the mailbox's 6.
    submit_each(&nodes, 4, "r").await;
    up.wait_for(6).await;
    for (_, d) in &mut nodes {
        d.wait_message_starting("fleet store unreachable", WAIT);
        until_logged(
            &mut [&mut *d],
            "throttled",
            2,
            "the other two of each node wait",
        )
        .await;
        let s = status(d).await;
        assert_eq!(s["fleet"]["store"], "down", "{s}");
        let metrics = common::text_at(format!("http://{}/metrics", d.status)).await;
        assert!(metrics.contains("mailgate_fleet_store_up 0"), "{metrics}");
    }
    assert_eq!(
        up.messages().len(),
        6,
        "each node kept to its share while Redis was away"
    );
    // Redis comes back empty: the six sends made meanwhile are added to the shared window,
    // so the minute after the outage is no burst.
    redis.up();
    for (_, d) in &mut nodes {
        d.wait_message_starting("fleet: sends made while the store was away", WAIT);
    }
    let s = status(&nodes[0].1).await;
    assert_eq!(s["fleet"]["store"], "up", "{s}");
    let p = fleet_provider(&s, "o365");
    assert_eq!(
        p["sent_last_minute"], 6,
        "the shared window knows the six: {p}"
    );
    // A new message now waits: the mailbox's minute is used.
    let before = nodes[1].1.count_logged("throttled");
    submit_short(nodes[1].1.smtp, "erp@erp.local", "a@contoso.com", "after").await;
    until_logged(
        &mut [&mut nodes[1].1],
        "throttled",
        before + 1,
        "no burst after the outage",
    )
    .await;
    assert_eq!(up.messages().len(), 6);
    stop_all(&mut nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_recipient_limit_is_shared_too() {
    let Some((_redis, up, mut nodes)) = fleet(
        &["d1", "d2", "d3"],
        "per_minute_limit = 0\nper_day_recipient_limit = 4",
    )
    .await
    else {
        return;
    };
    submit_each(&nodes, 3, "d").await;
    up.wait_for(4).await;
    let mut ds: Vec<_> = nodes.iter_mut().map(|(_, d)| d).collect();
    until_logged(
        &mut ds,
        "daily quota reached",
        2,
        "the others wait for the daily quota",
    )
    .await;
    assert_eq!(
        up.messages().len(),
        4,
        "4 recipients a day between the three nodes"
    );
    stop_all(&mut nodes);
}

/// A chain in a fleet: the first provider's daily quota is fleet-wide, and once the
/// fleet has spent it every node's mail takes the second provider at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_chain_the_fleet_wide_quota_of_the_first_moves_the_rest_to_the_second() {
    let Some(redis) = Redis::start() else { return };
    let first = Upstream::start(Script::default()).await;
    let second = Upstream::start(Script::default()).await;
    let providers = format!(
        "{}per_minute_limit = 0\nper_day_recipient_limit = 4\n\
         {}per_minute_limit = 0\n\
         [distributor]\ndefault_providers = [\"o365\", \"backup\"]\n",
        common::plain_smtp("o365", first.addr.port()),
        common::plain_smtp("backup", second.addr.port())
    );
    let mut nodes: Vec<_> = ["c1", "c2", "c3"]
        .iter()
        .map(|n| node_with(&redis, n, &providers))
        .collect();
    submit_each(&nodes, 3, "c").await;
    second.wait_for(5).await;
    assert_eq!(
        first.messages().len(),
        4,
        "4 recipients a day through o365 between the three nodes"
    );
    assert_eq!(
        second.messages().len(),
        5,
        "the rest through backup, once each"
    );
    let st = status(&nodes[0].1).await;
    assert_eq!(
        fleet_provider(&st, "o365")["recipients_last_day"],
        4,
        "{st:#}"
    );
    // Counted where it happened: the failovers of the nodes add up to the five.
    let mut failovers = 0;
    for (_, d) in &nodes {
        let m = common::text_at(format!("http://{}/metrics", d.status)).await;
        failovers += m
            .lines()
            .find_map(|l| l.strip_prefix("mailgate_failovers_total{from=\"o365\",to=\"backup\"} "))
            .map_or(0, |n| n.parse::<u64>().unwrap());
    }
    assert_eq!(failovers, 5);
    stop_all(&mut nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_skewed_clock_gets_no_more_than_its_share() {
    let Some(redis) = Redis::start() else { return };
    let Some(libfaketime) = common::libfaketime() else {
        common::skip("Debian's faketime is not installed (.ci/run installs it)");
        return;
    };
    let up = Upstream::start(Script::default()).await;
    let (_e1, mut honest) = node(&redis, &up, "honest", "per_minute_limit = 4");
    for m in 0..4 {
        let body = format!("Subject: h{m}\r\n\r\nx\r\n");
        submit_to(
            honest.smtp,
            "erp@erp.local",
            &["a@contoso.com"],
            body.as_bytes(),
        )
        .await;
    }
    up.wait_for(4).await;
    // A node whose wall clock is two hours ahead: the window is Redis's clock, not its own.
    let env = TestEnv::new(
        "",
        &format!(
            "{}per_minute_limit = 4\n\
             [distributor]\ndefault_provider = \"o365\"\n\
             [fleet]\nredis_url = \"redis://127.0.0.1:{}/0\"\nnode = \"skewed\"\nkey_prefix = \"t:\"\nexpected_nodes = 2\n",
            common::plain_smtp("o365", up.addr.port()),
            redis.port
        ),
    );
    let mut cmd = Command::new(common::bin());
    cmd.env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "+2h")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let mut skewed = DaemonProcess::start_with(&env.config_path, cmd);
    for m in 0..2 {
        let body = format!("Subject: s{m}\r\n\r\nx\r\n");
        submit_to(
            skewed.smtp,
            "erp@erp.local",
            &["a@contoso.com"],
            body.as_bytes(),
        )
        .await;
    }
    until_logged(
        &mut [&mut skewed],
        "throttled",
        2,
        "the skewed node waits like everyone",
    )
    .await;
    assert_eq!(
        up.messages().len(),
        4,
        "no fresh window for a clock two hours ahead"
    );
    assert_eq!(skewed.terminate().code(), Some(0));
    assert_eq!(honest.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_a_killed_node_expires_and_the_others_use_it() {
    let Some(redis) = Redis::start() else { return };
    // The upstream says nothing at first: the first node's delivery hangs on its lease.
    let up = Upstream::start(Script {
        silent: true,
        ..Script::default()
    })
    .await;
    let (_e1, mut a) = node(
        &redis,
        &up,
        "a",
        "per_minute_limit = 0\nmax_connections = 1\ntimeout = \"120s\"",
    );
    submit_short(a.smtp, "erp@erp.local", "a@contoso.com", "held").await;
    tokio::time::timeout(WAIT, async {
        while up.connections.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("node a holds the only lease");
    a.kill();
    up.set_script(Script::default());
    let (_e2, mut b) = node(
        &redis,
        &up,
        "b",
        "per_minute_limit = 0\nmax_connections = 1",
    );
    let id = submit_short(b.smtp, "erp@erp.local", "a@contoso.com", "after").await;
    // The dead node's lease expires by itself (LEASE_TTL, 15 s), then b sends.
    b.wait_sent(std::slice::from_ref(&id), Duration::from_secs(40));
    assert_eq!(up.messages().len(), 1);
    assert_eq!(b.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailgate_fleet_shows_the_nodes_and_the_shared_use() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start(Script::default()).await;
    let (env, mut d) = node(&redis, &up, "cli1", "per_minute_limit = 30");
    // The CLI reads the same file: point it at the port the daemon bound.
    env.edit_config(
        "[status]\nlisten = \"127.0.0.1:0\"",
        &format!("[status]\nlisten = \"{}\"", d.status),
    );
    submit_short(d.smtp, "erp@erp.local", "a@contoso.com", "one").await;
    up.wait_for(1).await;
    d.wait_log(
        |v| v["message"] == "fleet store reachable: shared limits in force",
        WAIT,
    );
    let cfg = env.config_path.to_str().unwrap().to_string();
    let out = tokio::time::timeout(WAIT, async {
        loop {
            let c = cfg.clone();
            let o = tokio::task::spawn_blocking(move || {
                Command::new(common::bin())
                    .args(["--config", &c, "fleet"])
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            if o.status.success() && out.contains("node cli1") {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("mailgate fleet lists the node");
    assert!(
        out.starts_with("fleet store: up (this node: cli1)"),
        "{out}"
    );
    assert!(
        out.contains("provider o365")
            && out.contains("sent in the last minute 1, recipients in the last day 1"),
        "{out}"
    );
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_redis_is_used_with_password_file_and_refused_without() {
    let Some(redis) = Redis::start_with_password("fleet-s3cret") else {
        return;
    };
    let up = Upstream::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis.pass");
    std::fs::write(&pw, "fleet-s3cret\n").unwrap();
    let env = TestEnv::new("", "");
    for (name, extra, want_up) in [
        (
            "with-pw",
            format!("password_file = \"{}\"\n", pw.display()),
            true,
        ),
        ("without-pw", String::new(), false),
    ] {
        env.write_config(
            "",
            &format!(
                "{}per_minute_limit = 30\n\
                 [distributor]\ndefault_provider = \"o365\"\n\
                 [fleet]\nredis_url = \"redis://127.0.0.1:{}/0\"\nnode = \"{name}\"\nkey_prefix = \"t:\"\nexpected_nodes = 3\n{extra}",
                common::plain_smtp("o365", up.addr.port()),
                redis.port
            ),
        );
        let mut d = DaemonProcess::start(&env.config_path);
        submit_short(d.smtp, "erp@erp.local", "a@contoso.com", "pw").await;
        let want = if want_up {
            "fleet store reachable: shared limits in force"
        } else {
            "fleet store unreachable: keeping to this node's share of every limit (limit / expected_nodes) until it is back"
        };
        d.wait_log(|v| v["message"] == want, WAIT);
        let s = status(&d).await;
        assert_eq!(
            s["fleet"]["store"],
            if want_up { "up" } else { "down" },
            "{name}: {s}"
        );
        d.drain();
        let log = serde_json::to_string(&d.seen).unwrap();
        assert!(
            !log.contains("fleet-s3cret"),
            "the password never reaches the log"
        );
        assert_eq!(d.terminate().code(), Some(0));
    }
}

/// `rediss://` against a redis-server speaking TLS only, with a certificate from a CA made
/// here: trusted through `ca_file`, refused (store down, said why) without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_is_used_through_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::upstream::TestCa::new("redis CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    for (name, pem) in [
        ("ca.pem", &ca.pem),
        ("redis.crt", &cert),
        ("redis.key", &key),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let Some(redis) = Redis::start_tls(dir.path()) else {
        return;
    };
    let port = redis.port;
    let p = |n: &str| dir.path().join(n).display().to_string();
    let up = Upstream::start(Script::default()).await;
    let config = |ca_line: &str| {
        TestEnv::new(
            "",
            &format!(
                "{}per_minute_limit = 5\n\
                 [distributor]\ndefault_provider = \"o365\"\n\
                 [fleet]\nredis_url = \"rediss://127.0.0.1:{port}/0\"\nnode = \"tls-node\"\nkey_prefix = \"tls:\"\n{ca_line}\n",
                common::plain_smtp("o365", up.addr.port())
            ),
        )
    };
    let trusted = config(&format!("ca_file = \"{}\"", p("ca.pem")));
    let mut d = DaemonProcess::start(&trusted.config_path);
    submit_short(d.smtp, "erp@erp.local", "a@contoso.com", "over TLS").await;
    up.wait_for(1).await;
    let s = status(&d).await;
    assert_eq!(s["fleet"]["store"], "up", "{s}");
    let o365 = fleet_provider(&s, "o365");
    assert_eq!(
        o365["sent_last_minute"], 1,
        "counted in the shared window: {s}"
    );
    d.terminate();
    // Without the CA the server's certificate is not trusted: the store is down, the node
    // keeps its own share and says why.
    let untrusted = config("");
    let mut d = DaemonProcess::start(&untrusted.config_path);
    submit_short(d.smtp, "erp@erp.local", "a@contoso.com", "no CA").await;
    up.wait_for(2).await;
    let line = d.wait_message_starting("fleet store unreachable", WAIT);
    assert!(
        line.to_string().to_lowercase().contains("certificate"),
        "{line}"
    );
    assert_eq!(status(&d).await["fleet"]["store"], "down");
    // ca_file with a plain redis:// is refused by check-config.
    let wrong = TestEnv::new("", "");
    wrong.write_config(
        "",
        "[fleet]\nredis_url = \"redis://127.0.0.1:6379/0\"\nca_file = \"/etc/ssl/redis-ca.pem\"\n",
    );
    assert!(
        common::check_config_refuses(&wrong.config_path)
            .contains("fleet.ca_file is for a TLS connection")
    );
}

/// One view of the fleet (API): a message accepted on one node is found from another by
/// subject and sender, tagged with its node; paging across three nodes returns every
/// record exactly once; a node with another token, and a node that stopped, are named
/// unreachable while the rest still show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_for_the_fleets_history() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = common::token_file(dir.path(), "fleet-secret-0123456789");
    let secret = fleet_secret(dir.path(), "fleet.secret", "shared-by-a-b-and-c ");
    let mut nodes: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| viewing_node(&redis, n, &token, &secret))
        .collect();
    let mut all = Vec::new();
    let invoice = submit_short(
        nodes[0].1.smtp,
        "billing@a.example",
        "customer@example.com",
        "Invoice 4711",
    )
    .await;
    all.push(invoice.clone());
    // 200 records in all, spread unevenly: A 1 + 40 (+ 1 held below), B 66, C 92.
    let per_node = [40, 66, 92];
    for (i, (_, d)) in nodes.iter().enumerate() {
        for m in 0..per_node[i] {
            let body = format!("Subject: batch {i}-{m}\r\n\r\nx\r\n");
            all.push(submit_to(d.smtp, "erp@erp.local", &["a@contoso.com"], body.as_bytes()).await);
        }
    }
    let b = &nodes[1].1;
    let key = "fleet-secret-0123456789";
    // (once every node's first heartbeat is in the fleet store)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let found = loop {
        let found = fleet_list(b, key, "q=Invoice%204711").await;
        if found["nodes"].as_array().unwrap().len() == 3 {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "{found:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let msgs = found["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{found:#}");
    assert_eq!(msgs[0]["id"], invoice.as_str());
    assert_eq!(msgs[0]["node"], "a");
    assert_eq!(found["nodes"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(found["unreachable"], serde_json::json!([]));
    let by_sender = fleet_list(b, key, "q=billing%40a.example").await;
    assert_eq!(by_sender["messages"][0]["id"], invoice.as_str());

    // Detail, raw download, retry and cancel of a message on A, asked of B, act on A.
    let http = common::http();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = http
            .get(format!("http://{}/api/messages/{invoice}", b.status))
            .bearer_auth(key)
            .answers(200)
            .await;
        assert_eq!(r.headers()["x-mailgate-node"], "a");
        let rec: serde_json::Value = r.json().await.unwrap();
        assert_eq!(rec["id"], invoice.as_str());
        if rec["status"] == "sent" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{rec:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let eml = http
        .get(format!("http://{}/api/messages/{invoice}/eml", b.status))
        .bearer_auth(key)
        .fetch_text()
        .await;
    assert!(eml.contains("Subject: Invoice 4711"), "{eml}");
    for action in ["retry", "cancel"] {
        let r = http
            .post(format!(
                "http://{}/api/messages/{invoice}/{action}",
                b.status
            ))
            .bearer_auth(key)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409, "{action}: A answers for its sent message");
        assert_eq!(r.headers()["x-mailgate-node"], "a");
    }
    // A message waiting on A (A's sending paused): B's retry and cancel change A's record.
    let a = &nodes[0].1;
    http.post(format!("http://{}/api/distributor/pause", a.status))
        .bearer_auth(key)
        .json(&serde_json::json!({}))
        .answers(200)
        .await;
    let held = submit_short(
        a.smtp,
        "billing@a.example",
        "customer@example.com",
        "Reminder 5150",
    )
    .await;
    all.push(held.clone());
    let r = http
        .post(format!("http://{}/api/messages/{held}/retry", b.status))
        .bearer_auth(key)
        .json(&serde_json::json!({}))
        .answers(200)
        .await;
    assert_eq!(r.headers()["x-mailgate-node"], "a");
    let r = http
        .post(format!("http://{}/api/messages/{held}/cancel", b.status))
        .bearer_auth(key)
        .json(&serde_json::json!({ "by": "ops on node b" }))
        .answers(200)
        .await;
    assert_eq!(r.headers()["x-mailgate-node"], "a");
    let on_a: serde_json::Value = http
        .get(format!("http://{}/api/messages/{held}", a.status))
        .bearer_auth(key)
        .fetch()
        .await;
    assert_eq!(on_a["status"], "cancelled", "{on_a:#}");
    assert!(
        on_a["cancelled"]["by"]
            .as_str()
            .unwrap()
            .starts_with("ops on node b"),
        "{on_a:#}"
    );

    // Paging 23 at a time across the three nodes: each of the 200 records exactly once,
    // newest first.
    let mut seen: Vec<String> = Vec::new();
    let mut before = String::new();
    for _ in 0..20 {
        let page = fleet_list(b, key, &format!("limit=23{before}")).await;
        let ids: Vec<String> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        if ids.is_empty() {
            break;
        }
        before = format!("&before={}", ids.last().unwrap());
        seen.extend(ids);
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(seen, sorted, "newest first across pages");
    let mut want = all.clone();
    want.sort_by(|x, y| y.cmp(x));
    assert_eq!(seen.len(), 200);
    assert_eq!(seen, want, "every record of the fleet, each once");

    // The history page's "Whole fleet" view on B: A's message, with its node, linked
    // to its page on B (shown through B).
    let page = page_of(b, key, "/messages?fleet=1&q=Invoice%204711").await;
    assert!(page.contains("<td class=\"node\">a</td>"), "{page}");
    assert!(
        page.contains(&format!("href=\"/messages/{invoice}\"")),
        "{page}"
    );

    // B's dashboard lists the nodes with their queues.
    let dash = page_of(b, key, "/").await;
    for n in ["a", "b", "c"] {
        assert!(
            dash.contains(&format!(
                "<tr class=\"node\" data-node=\"{n}\"><td>{n}</td>"
            )),
            "{dash}"
        );
    }

    // An id no node holds: 404 at once, never passed round the fleet.
    http.get(format!(
        "http://{}/api/messages/01ZZZZZZZZZZZZZZZZZZZZZZZZ",
        b.status
    ))
    .bearer_auth(key)
    .answers(404)
    .await;

    // Without the token, the API refuses as always.
    let r = common::get(format!("http://{}/api/messages?fleet=1", b.status))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // A node with another fleet secret is named as rejected, with why; the others still
    // show, and the refusal is counted.
    let other = fleet_secret(dir.path(), "other.secret", "not-the-fleets-secret ");
    let (_env_d, mut d) = viewing_node(&redis, "d", &token, &other);
    // (once its first heartbeat is in the fleet store)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = fleet_list(b, key, "limit=500").await;
        if !view["unreachable"].as_array().unwrap().is_empty() {
            break view;
        }
        assert!(std::time::Instant::now() < deadline, "{view:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let unreachable = view["unreachable"].as_array().unwrap();
    assert_eq!(unreachable.len(), 1, "{view:#}");
    assert_eq!(unreachable[0]["node"], "d");
    assert!(
        unreachable[0]["error"]
            .as_str()
            .unwrap()
            .contains("rejected: the signature does not verify"),
        "{view:#}"
    );
    assert_eq!(view["messages"].as_array().unwrap().len(), all.len());
    let metrics = common::text_at(format!("http://{}/metrics", b.status)).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mailgate_fleet_rejected_total{what=\"heartbeat\"} ")),
        "{metrics}"
    );
    // ... and the node with the other secret ignores the fleet's heartbeats, saying so.
    let _ = common::get(format!("http://{}/status", d.status)).await;
    d.wait_message_starting(
        "ignored a fleet heartbeat that does not verify",
        Duration::from_secs(5),
    );

    // A stops: named unreachable, B's and C's records still listed.
    assert_eq!(nodes[0].1.terminate().code(), Some(0));
    let view = fleet_list(&nodes[1].1, key, "limit=500").await;
    let names: Vec<&str> = common::strs(&view["unreachable"], "node");
    assert!(names.contains(&"a"), "{view:#}");
    let from_a = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["node"] == "a")
        .count();
    assert_eq!(from_a, 0);
    assert_eq!(
        view["messages"].as_array().unwrap().len(),
        all.len() - (1 + per_node[0] + 1)
    );
    let page = page_of(&nodes[1].1, key, "/messages?fleet=1&limit=500").await;
    common::assert_has(
        &page,
        &[
            "id=\"unreachable\"",
            "<li class=\"unreachable\">a: ",
            "<td class=\"node\">c</td>",
        ],
    );
    for (_, d) in nodes.iter_mut().skip(1) {
        assert_eq!(d.terminate().code(), Some(0));
    }
}

/// One view of the fleet in a real browser: signed in on B, a message waiting on A is
/// found with the "Whole fleet" switch and a search, its page opens on B (naming A), its
/// raw download comes through B, and B's Retry and Cancel buttons act on A's record.
/// With A stopped, B's page names A unreachable and still lists B's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_in_a_browser() {
    use common::browser::{Driver, click, shot, text};
    use fantoccini::Locator;
    let Some(redis) = Redis::start() else { return };
    let Some(driver) = Driver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    let key = "fleet-browser-0123456789";
    std::fs::write(&token, format!("{key}\n")).unwrap();
    let secret = fleet_secret(dir.path(), "fleet.secret", "browser-fleet ");
    let (_ea, mut a) = viewing_node(&redis, "a", &token, &secret);
    let (_eb, mut b) = viewing_node(&redis, "b", &token, &secret);
    let http = common::http();
    http.post(format!("http://{}/api/distributor/pause", a.status))
        .bearer_auth(key)
        .json(&serde_json::json!({}))
        .answers(200)
        .await;
    let on_a = submit_to(
        a.smtp,
        "billing@a.example",
        &["customer@example.com"],
        b"Subject: Statement 4711\r\n\r\nYour statement is attached.\r\n",
    )
    .await;
    submit_short(b.smtp, "erp@erp.local", "a@contoso.com", "Order 17").await;
    // (once both heartbeats are in the fleet store)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fleet_list(&b, key, "q=Statement%204711").await["messages"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "A never showed on B");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let c = driver.browser().await;
    let base = format!("http://{}", b.status);
    c.goto(&format!("{base}/messages")).await.unwrap();
    common::browser::submit_token(&c, key).await;
    c.goto(&format!("{base}/messages")).await.unwrap();
    c.find(Locator::Css("#search"))
        .await
        .unwrap()
        .send_keys("Statement 4711")
        .await
        .unwrap();
    // The box sits beside its label, on the label's line (not above it).
    let beside = c
        .execute(
            "const cb = document.getElementById('whole-fleet'); const a = cb.getBoundingClientRect(); const b = cb.closest('label').getBoundingClientRect(); return Math.abs((a.top + a.bottom) / 2 - (b.top + b.bottom) / 2) < 4 && a.right < b.right - 20;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        beside,
        serde_json::json!(true),
        "the Whole fleet box is not beside its label"
    );
    c.find(Locator::Css("#whole-fleet"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click(&c, "#apply").await;
    shot(&c, "fleet-history").await;
    let rows = text(&c, "table.history tbody").await;
    assert!(rows.contains("Statement 4711"), "{rows}");
    assert!(!rows.contains("Order 17"), "{rows}");
    assert_eq!(text(&c, "td.node").await, "a");
    click(&c, "td.subject a").await;
    assert_eq!(
        c.current_url().await.unwrap().as_str(),
        format!("{base}/messages/{on_a}"),
        "A's message opens on B"
    );
    shot(&c, "fleet-message").await;
    assert!(text(&c, "#held").await.contains("Held by fleet node a"));
    assert!(
        text(&c, "main")
            .await
            .contains("Your statement is attached.")
    );
    assert_eq!(text(&c, "#status").await, "queued");

    // The raw download through B, in the same session.
    let cookie = c.get_named_cookie("mailgate_session").await.unwrap();
    let raw = http
        .get(format!("{base}/messages/{on_a}/raw"))
        .header("cookie", format!("mailgate_session={}", cookie.value()))
        .answers(200)
        .await;
    assert_eq!(raw.headers()["x-mailgate-node"], "a");
    assert!(
        raw.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("{on_a}.eml"))
    );
    assert!(
        raw.text()
            .await
            .unwrap()
            .contains("Subject: Statement 4711")
    );

    // Cancel on B's page: A's record is cancelled, naming B's page.
    click(&c, "#cancel").await;
    assert_eq!(
        c.current_url().await.unwrap().as_str(),
        format!("{base}/messages/{on_a}")
    );
    assert_eq!(text(&c, "#status").await, "cancelled");
    assert!(
        text(&c, "#cancelled")
            .await
            .contains("the Email history page of node b"),
        "{}",
        text(&c, "#cancelled").await
    );
    let rec: serde_json::Value = http
        .get(format!("http://{}/api/messages/{on_a}", a.status))
        .bearer_auth(key)
        .fetch()
        .await;
    assert_eq!(rec["status"], "cancelled", "{rec:#}");

    // A stops: B's fleet view names A and still lists B's own.
    assert_eq!(a.terminate().code(), Some(0));
    c.goto(&format!("{base}/messages?fleet=1")).await.unwrap();
    shot(&c, "fleet-unreachable").await;
    assert!(
        text(&c, "#unreachable").await.contains("a: "),
        "{}",
        text(&c, "main").await
    );
    let rows = text(&c, "table.history tbody").await;
    assert!(rows.contains("Order 17"), "{rows}");
    assert!(!rows.contains("Statement 4711"), "{rows}");
    // Its page is gone with it: B says no message, never a stale copy.
    c.goto(&format!("{base}/messages/{on_a}")).await.unwrap();
    assert!(
        text(&c, "body")
            .await
            .contains(&format!("no message {on_a}"))
    );
    c.close().await.unwrap();
    assert_eq!(b.terminate().code(), Some(0));
}
