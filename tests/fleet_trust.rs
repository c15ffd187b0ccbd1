//! Fleet trust (SPEC "Trust boundaries", the fleet), each boundary written as the attack:
//! whoever writes to the fleet's Redis adds a node of their own, points a node's calls at
//! an internal address, replays or stretches a peer call, or vandalises the shared
//! windows and leases. Real redis-server, real daemons, real sockets; the signatures the
//! tests make follow the wire format in `src/fleet/sign.rs`, written here again from its
//! description.

mod common;

use common::Fetch;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::fleet::{Redis, fleet_list, fleet_secret, viewing_node};
use common::submit_short;
use common::upstream::{Script, TestCa, Upstream};
use common::{DaemonProcess, TestEnv, free_port, submit_to};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The secret as a node reads it (surrounding whitespace trimmed).
fn secret_of(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap().trim_ascii().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A heartbeat as a node holding `secret` stores it.
fn sealed_beat(secret: &[u8], json: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = b"mailgate-heartbeat-v1\n".to_vec();
    msg.extend_from_slice(json.as_bytes());
    let tag = ring::hmac::sign(&key, &msg);
    format!("v1.{}.{json}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The headers of a peer call signed with `secret`, at `time` (Unix seconds).
fn signed_headers(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    body: &[u8],
    time: u64,
    nonce: &str,
) -> Vec<(&'static str, String)> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let body_hash = ring::digest::digest(&ring::digest::SHA256, body);
    let text = format!(
        "mailgate-peer-call-v1\n{method}\n{path_and_query}\n{time}\n{nonce}\nintruder\n{}",
        hex(body_hash.as_ref())
    );
    let tag = ring::hmac::sign(&key, text.as_bytes());
    vec![
        ("x-mailgate-fleet-node", "intruder".into()),
        ("x-mailgate-fleet-time", time.to_string()),
        ("x-mailgate-fleet-nonce", nonce.into()),
        (
            "x-mailgate-fleet-signature",
            URL_SAFE_NO_PAD.encode(tag.as_ref()),
        ),
    ]
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn unix_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn redis_conn(redis: &Redis) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{}/0", redis.port))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// A listener that records every request it gets (whole, headers and body) and answers
/// each with `answer` as `text/javascript`.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start(answer: &'static str) -> Recorder {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(0);
                    s.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/javascript\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let _ = c.write_all(reply.as_bytes()).await;
                });
            }
        });
        Recorder { port, seen }
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The heartbeat JSON of a node named `node` published at `url`.
fn beat_json(node: &str, url: &str) -> String {
    serde_json::json!({
        "node": node, "version": "0.1.0", "queue": {}, "at_ms": unix_ms(),
        "status_url": url, "alerts": [],
    })
    .to_string()
}

/// Adds a node to the fleet store the way a Redis writer would: two commands.
fn add_node(redis: &Redis, prefix: &str, node: &str, value: &str) {
    let mut c = redis_conn(redis);
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}node:{node}"))
        .arg(value)
        .arg("PX")
        .arg(600_000)
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("SADD")
        .arg(format!("{prefix}nodes"))
        .arg(node)
        .query(&mut c)
        .unwrap();
}

async fn metric(d: &DaemonProcess, line_start: &str) -> f64 {
    let text = common::text_at(format!("http://{}/metrics", d.status)).await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A Redis writer adds nodes of their own: one pointing at a listener of theirs, one
/// with a made-up signature; and a signed heartbeat points at an internal path with a
/// fragment. No node calls any of
/// them (the listener sees no request, so no token and no SSRF), the fleet view names
/// each as rejected, and the refusals are counted. Then a node whose heartbeat is signed
/// with the fleet's secret but that records every request it gets: what the asking node
/// sends it carries a signature and never the admin token, and what comes back is passed
/// on with the asking node's content type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_through_redis_is_never_called_and_no_call_carries_the_token() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    let admin = "the-admin-token-that-must-never-leave-0123456789";
    std::fs::write(&token, format!("{admin}\n")).unwrap();
    let secret = fleet_secret(dir.path(), "fleet.secret", "trusted-fleet ");
    let (_ea, a) = viewing_node(&redis, "a", &token, &secret);
    let (_eb, b) = viewing_node(&redis, "b", &token, &secret);
    let held = submit_short(a.smtp, "billing@a.example", "customer@example.com", "on A").await;

    let attacker = Recorder::start("[]").await;
    let url = format!("http://127.0.0.1:{}", attacker.port);
    add_node(&redis, "v:", "evil", &beat_json("evil", &url));
    // (signed, as by a node of the fleet misconfigured or taken over: its URL with a
    // path is still never called)
    add_node(
        &redis,
        "v:",
        "ssrf",
        &sealed_beat(
            &secret_of(&secret),
            &beat_json("ssrf", &format!("{url}/internal/path#")),
        ),
    );
    add_node(
        &redis,
        "v:",
        "forged",
        &format!(
            "v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.{}",
            beat_json("forged", &url)
        ),
    );

    // The whole-fleet history and a message held by A, both asked of B.
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = fleet_list(&b, admin, "limit=500").await;
        if view["nodes"].as_array().unwrap().len() == 2
            && view["unreachable"].as_array().unwrap().len() == 3
        {
            break view;
        }
        assert!(Instant::now() < deadline, "{view:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut rejected: Vec<&str> = view["unreachable"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|u| {
            assert!(
                u["error"].as_str().unwrap().starts_with("rejected: "),
                "{view:#}"
            );
        })
        .map(|u| u["node"].as_str().unwrap())
        .collect();
    rejected.sort_unstable();
    assert_eq!(rejected, ["evil", "forged", "ssrf"], "{view:#}");
    assert!(
        view["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == held.as_str() && m["node"] == "a"),
        "{view:#}"
    );
    let r = reqwest::Client::new()
        .get(format!("http://{}/api/messages/{held}/eml", b.status))
        .bearer_auth(admin)
        .answers(200)
        .await;
    assert_eq!(r.headers()["x-mailgate-node"], "a");
    assert_eq!(r.headers()["content-type"], "message/rfc822");
    for _ in 0..3 {
        reqwest::Client::new()
            .get(format!(
                "http://{}/api/messages/01ZZZZZZZZZZZZZZZZZZZZZZZZ",
                b.status
            ))
            .bearer_auth(admin)
            .answers(404)
            .await;
    }
    assert!(
        attacker.requests().is_empty(),
        "a node added through Redis was called: {:?}",
        attacker.requests()
    );
    assert!(metric(&b, "mailgate_fleet_rejected_total{what=\"heartbeat\"} ").await >= 2.0);

    // A node that does hold the secret (its heartbeat is signed) but records what it
    // gets: a signed call, no admin token anywhere in it.
    let spy = Recorder::start("alert(document.cookie)").await;
    let spy_url = format!("http://127.0.0.1:{}", spy.port);
    add_node(
        &redis,
        "v:",
        "spy",
        &sealed_beat(&secret_of(&secret), &beat_json("spy", &spy_url)),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while spy.requests().is_empty() {
        let _ = fleet_list(&b, admin, "limit=5").await;
        assert!(Instant::now() < deadline, "the signed node was never asked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A message no other node holds: the spy answers 200 with a script; B passes it on
    // as JSON, never as the spy's content type.
    let r = reqwest::Client::new()
        .get(format!(
            "http://{}/api/messages/01YYYYYYYYYYYYYYYYYYYYYYYY",
            b.status
        ))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_ne!(r.headers()["content-type"], "text/javascript");
    let requests = spy.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    for req in &requests {
        let lower = req.to_ascii_lowercase();
        assert!(!req.contains(admin), "the admin token left the node: {req}");
        assert!(!lower.contains("authorization:"), "{req}");
        assert!(lower.contains("x-mailgate-fleet-signature: "), "{req}");
        assert!(lower.contains("x-mailgate-fleet-node: b"), "{req}");
    }
    // Nothing else the test ran left the node with the token either: A's own log of
    // the calls it answered names node b, signed.
    drop(a);
    drop(b);
}

/// A peer call is checked: one signed with the secret lists without any token, the same
/// again (a replay), one a few minutes old, and one signed with another secret are
/// refused 401; the fleet signature used to send mail, reload, pause or retry everything
/// is refused 403 and changes nothing; each refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_call_is_refused_when_replayed_stale_forged_or_beyond_its_rights() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let token = common::token_file(dir.path(), "admin-token-0123456789");
    let secret_file = fleet_secret(dir.path(), "fleet.secret", "peer-calls ");
    let secret = secret_of(&secret_file);
    let (env, a) = viewing_node(&redis, "a", &token, &secret_file);
    let id = submit_short(a.smtp, "erp@erp.local", "x@contoso.com", "s").await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", a.status);
    let call = |method: &str, path: &str, body: &[u8], time: u64, nonce: &str, key: &[u8]| {
        let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
        for (k, v) in signed_headers(key, method, path, body, time, nonce) {
            req = req.header(k, v);
        }
        req.header("content-type", "application/json")
            .body(body.to_vec())
    };

    // Signed, fresh: the list and the record, without any admin token.
    let r = call(
        "GET",
        "/api/messages?limit=5",
        b"",
        unix_now(),
        "n-1",
        &secret,
    )
    .answers(200)
    .await;
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list[0]["id"], id.as_str());
    let path = format!("/api/messages/{id}");
    call("GET", &path, b"", unix_now(), "n-2", &secret)
        .answers(200)
        .await;

    // The same call again: a replay.
    let r = call("GET", &path, b"", unix_now(), "n-2", &secret)
        .answers(401)
        .await;
    assert!(r.text().await.unwrap().contains("replay"));
    // Five minutes old, or five minutes ahead.
    for t in [unix_now() - 300, unix_now() + 300] {
        call("GET", &path, b"", t, &format!("n-{t}"), &secret)
            .answers(401)
            .await;
    }
    // Signed with another secret.
    call(
        "GET",
        &path,
        b"",
        unix_now(),
        "n-3",
        b"not-the-fleet-secret-but-32-bytes-long",
    )
    .answers(401)
    .await;
    // Signed for one path, sent to another.
    let mut req = http.get(format!("{base}/api/messages/{id}/eml"));
    for (k, v) in signed_headers(&secret, "GET", &path, b"", unix_now(), "n-4") {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 401);

    // What a fleet node may never do.
    let send = serde_json::json!({
        "user": "erp", "to": ["someone@outside.example"], "subject": "from the CEO", "body": "pay this",
        "from": "ceo@contoso.com",
    })
    .to_string();
    for (i, (method, path, body)) in [
        ("POST", "/api/send", send.as_bytes()),
        ("POST", "/api/reload", b"{}".as_slice()),
        ("POST", "/api/distributor/pause", b"{}".as_slice()),
        ("POST", "/api/retry-all", b"{}".as_slice()),
        ("POST", "/api/alerts/test", b"{}".as_slice()),
    ]
    .into_iter()
    .enumerate()
    {
        let r = call(
            method,
            path,
            body,
            unix_now(),
            &format!("deny-{i}"),
            &secret,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
    }
    let status: serde_json::Value = reqwest::get(format!("{base}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["distributor"]["paused"], false, "{status:#}");
    assert_eq!(
        status["totals"]["accepted"], 1,
        "nothing was sent: {status:#}"
    );
    assert!(
        !env.outbox_ids().iter().any(|o| *o != id),
        "{:?}",
        env.outbox_ids()
    );
    assert!(metric(&a, "mailgate_fleet_rejected_total{what=\"peer-call\"} ").await >= 10.0);
}

/// One node of a fleet sending to `up` as provider `o365` with these limits, key prefix
/// `t:`.
fn sending_node(redis: &Redis, up: &Upstream, limits: &str) -> (TestEnv, DaemonProcess) {
    let env = TestEnv::new(
        "",
        &format!(
            "{}{limits}\n\
             [distributor]\ndefault_provider = \"o365\"\n\
             [fleet]\nredis_url = \"redis://127.0.0.1:{}/0\"\nnode = \"n1\"\nkey_prefix = \"t:\"\n",
            common::plain_smtp("o365", up.addr.port()),
            redis.port
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    (env, d)
}

/// The fleet store vandalised the ways a Redis writer can: the day's recipient sum set
/// to a billion, entries dated a year ahead in both windows, twenty far-future members
/// in the lease set. Mail still flows within one lease TTL (15 s), never held for a
/// day; the repairs are logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vandalised_fleet_store_holds_mail_back_at_most_a_lease_ttl() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start(Script::default()).await;
    let mut c = redis_conn(&redis);
    let year = unix_ms() + 365 * 86_400_000;
    let _: () = redis::cmd("SET")
        .arg("t:daysum:o365")
        .arg(999_999_999)
        .query(&mut c)
        .unwrap();
    for i in 0..20 {
        for (key, member) in [
            ("t:leases:o365", format!("evil:{i}")),
            ("t:minute:o365", format!("evil:{i}")),
            ("t:day:o365", format!("evil:{i}:1")),
        ] {
            let _: () = redis::cmd("ZADD")
                .arg(key)
                .arg(year)
                .arg(member)
                .query(&mut c)
                .unwrap();
        }
    }
    let (_env, mut d) = sending_node(
        &redis,
        &up,
        "per_minute_limit = 10\nper_day_recipient_limit = 100\nmax_connections = 2",
    );
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = format!("Subject: through vandalism {i}\r\n\r\nx\r\n");
        ids.push(submit_to(d.smtp, "erp@erp.local", &["a@contoso.com"], body.as_bytes()).await);
    }
    let got = tokio::time::timeout(Duration::from_secs(15), up.wait_for(5))
        .await
        .expect("mail held back longer than one lease TTL by a vandalised fleet store");
    assert_eq!(got.len(), 5);
    assert!(started.elapsed() < Duration::from_secs(15));
    for id in &ids {
        let r = d.finished(id).await;
        assert_eq!(r["status"], "sent", "{r:#}");
    }
    // The sum is the entries' again: the five sends.
    let sum: i64 = redis::cmd("GET")
        .arg("t:daysum:o365")
        .query(&mut c)
        .unwrap();
    assert_eq!(sum, 5);
    assert!(metric(&d, "mailgate_fleet_rejected_total{what=\"value\"} ").await >= 21.0);
    d.wait_message_starting(
        "the fleet store held values no node writes",
        Duration::from_secs(5),
    );
}

/// A negative day sum (or one that is not a number) must not make room beyond the
/// limit: with `per_day_recipient_limit = 3` and the sum set to minus a million, three
/// messages go and the rest wait with `daily-quota`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_day_sum_pushes_no_limit_over() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start(Script::default()).await;
    let mut c = redis_conn(&redis);
    let _: () = redis::cmd("SET")
        .arg("t:daysum:o365")
        .arg(-1_000_000)
        .query(&mut c)
        .unwrap();
    let (_env, d) = sending_node(
        &redis,
        &up,
        "per_minute_limit = 0\nper_day_recipient_limit = 3\nmax_connections = 2",
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = format!("Subject: quota {i}\r\n\r\nx\r\n");
        ids.push(submit_to(d.smtp, "erp@erp.local", &["a@contoso.com"], body.as_bytes()).await);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), up.wait_for(3)).await;
    // Time for any fourth to arrive if the limit were pushed over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(up.messages().len(), 3);
    let mut quota = 0;
    for id in &ids {
        let r = d.get_json(&format!("/api/messages/{id}")).await;
        if r["waiting"]["reason"] == "daily-quota" {
            quota += 1;
        }
    }
    assert_eq!(quota, 2);
}

/// A message waiting for a connection lease other nodes hold says so
/// (`waiting.reason = "fleet-lease"`), and goes once the leases end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_by_a_fleet_lease_says_so() {
    let Some(redis) = Redis::start() else { return };
    let up = Upstream::start(Script::default()).await;
    let mut c = redis_conn(&redis);
    // Another node holds the only connection for the next eight seconds (within the
    // lease TTL: a lease as a node takes it).
    let _: () = redis::cmd("ZADD")
        .arg("t:leases:o365")
        .arg(unix_ms() + 8_000)
        .arg("other:o365:0")
        .query(&mut c)
        .unwrap();
    let (_env, d) = sending_node(&redis, &up, "per_minute_limit = 0\nmax_connections = 1");
    let id = submit_short(d.smtp, "erp@erp.local", "a@contoso.com", "lease").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = d.get_json(&format!("/api/messages/{id}")).await;
        if r["waiting"]["reason"] == "fleet-lease" {
            break;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = d.finished(&id).await;
    assert_eq!(r["status"], "sent");
    assert!(
        r.get("waiting").is_none_or(serde_json::Value::is_null),
        "{r:#}"
    );
}

/// Nodes over HTTPS: each status listener with its own certificate from the fleet's CA,
/// `status_url = "https://..."` and `status_ca_file`; the fleet view and a message's
/// raw download work across them, and plain HTTP to a TLS listener gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_over_https_between_nodes() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("fleet CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let token = common::token_file(dir.path(), "tls-admin-token-0123456789");
    let secret = fleet_secret(dir.path(), "fleet.secret", "over-tls ");
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let (cert, key) = ca.issue(&["127.0.0.1"]);
        let (cf, kf) = (
            dir.path().join(format!("{name}.crt")),
            dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&cf, cert).unwrap();
        std::fs::write(&kf, key).unwrap();
        let port = free_port();
        let env = TestEnv::new(
            "",
            &format!(
                "[fleet]\nredis_url = \"redis://127.0.0.1:{}/0\"\nnode = \"{name}\"\nkey_prefix = \"s:\"\nstatus_url = \"https://127.0.0.1:{port}\"\nsecret_file = \"{}\"\nstatus_ca_file = \"{}\"\n",
                redis.port,
                secret.display(),
                ca_file.display()
            ),
        );
        env.edit_config(
            "[status]\nlisten = \"127.0.0.1:0\"\n",
            &format!(
                "[status]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                token.display(),
                cf.display(),
                kf.display()
            ),
        );
        let d = DaemonProcess::start(&env.config_path);
        nodes.push((env, d));
    }
    let id = submit_short(
        nodes[0].1.smtp,
        "erp@erp.local",
        "x@contoso.com",
        "over TLS",
    )
    .await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let b = nodes[1].1.status;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: serde_json::Value = https
            .get(format!("https://{b}/api/messages?fleet=1"))
            .bearer_auth("tls-admin-token-0123456789")
            .fetch()
            .await;
        if v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str())
        {
            assert_eq!(v["unreachable"], serde_json::json!([]), "{v:#}");
            break;
        }
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let eml = https
        .get(format!("https://{b}/api/messages/{id}/eml"))
        .bearer_auth("tls-admin-token-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(eml.headers()["x-mailgate-node"], "a");
    assert!(eml.text().await.unwrap().contains("Subject: over TLS"));
    // Plain HTTP to the TLS listener: no HTTP answer.
    common::plain_http_refused(&format!("http://{b}/healthz")).await;
}

/// `check-config` refuses what would open the fleet: a `status_url` over plain HTTP to
/// another host or with a path, no `secret_file` with `status_url`, a short or
/// world-readable secret, the admin token as the fleet secret; and warns about a Redis
/// on another host without a password or TLS.
#[test]
fn check_config_refuses_an_open_fleet_and_warns_about_an_open_redis() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new("", "");
    let dir = env.dir.path();
    let good = fleet_secret(dir, "good.secret", "long-enough-secret ");
    let short = dir.join("short.secret");
    std::fs::write(&short, "too short\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let open = fleet_secret(dir, "open.secret", "readable-by-all ");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token = dir.join("admin.token");
    std::fs::copy(&good, &token).unwrap();
    let check = |fleet: &str, status: &str| {
        env.write_config("", &format!("[fleet]\n{fleet}\n"));
        if !status.is_empty() {
            env.edit_config("[status]\nlisten = \"127.0.0.1:0\"\n", status);
        }
        common::cli(&env, &["check-config"])
    };
    let redis = "redis_url = \"redis://127.0.0.1:6379/0\"";
    let cases = [
        (
            format!(
                "{redis}\nstatus_url = \"http://10.0.0.5:8525\"\nsecret_file = \"{}\"",
                good.display()
            ),
            "must be https://",
        ),
        (
            format!(
                "{redis}\nstatus_url = \"https://app01:8525/internal#\"\nsecret_file = \"{}\"",
                good.display()
            ),
            "without a path",
        ),
        (
            format!("{redis}\nstatus_url = \"https://app01:8525\""),
            "needs fleet.secret_file",
        ),
        (
            format!(
                "{redis}\nstatus_url = \"https://app01:8525\"\nsecret_file = \"{}\"",
                short.display()
            ),
            "it needs at least 32",
        ),
        (
            format!(
                "{redis}\nstatus_url = \"https://app01:8525\"\nsecret_file = \"{}\"",
                open.display()
            ),
            "readable by every local user",
        ),
    ];
    for (fleet, want) in &cases {
        let (code, out, err) = check(fleet, "");
        assert_eq!(code, 2, "{fleet}: {out}{err}");
        assert!(err.contains(want), "{fleet}: {err}");
    }
    let (code, out, err) = check(
        &format!(
            "{redis}\nstatus_url = \"https://app01:8525\"\nsecret_file = \"{}\"",
            good.display()
        ),
        &format!(
            "[status]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("holds the admin token"), "{err}");
    // Fine, with warnings: Redis on another host, no password, no TLS.
    let (code, out, err) = check(
        &format!(
            "redis_url = \"redis://10.0.0.9:6379/0\"\nstatus_url = \"https://app01:8525\"\nsecret_file = \"{}\"",
            good.display()
        ),
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    common::assert_has(
        &out,
        &[
            "warning: fleet.redis_url leaves this host without fleet.password_file",
            "warning: fleet.redis_url leaves this host without TLS",
        ],
    );
    // A status listener beyond loopback without TLS or a proxy in front.
    let (code, _, err) = check(
        redis,
        &format!(
            "[status]\nlisten = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("set status.tls_cert and status.tls_key"),
        "{err}"
    );
}
