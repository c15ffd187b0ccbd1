//! Never wedge, beyond SMTP: a token endpoint, a Graph endpoint and a Redis that accept
//! the connection and then never answer, or trickle their answer a byte at a time, cost
//! one attempt bounded by the provider's `timeout` (Redis: its 500 ms call bound), and
//! mail goes on. Against the binary, over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::hostile::{Hostile, Mode};
use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, queued_id, send_once};

const TOKEN: &str = r#"{"access_token":"tok-1","token_type":"Bearer","expires_in":3600}"#;

async fn submit(d: &DaemonProcess) -> String {
    let reply = send_once(
        d.smtp,
        "relay@contoso.com",
        &["a@contoso.com"],
        b"From: relay@contoso.com\r\nTo: a@contoso.com\r\nSubject: s\r\n\r\nx\r\n",
    )
    .await;
    queued_id(&reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
}

fn outcome(d: &mut DaemonProcess, id: &str, status: &str, within: Duration) -> serde_json::Value {
    d.wait_log(
        |v| v["message"] == "delivery" && v["id"] == id && v["status"] == status,
        within,
    )
}

/// A daemon with `providers` (the default one hostile through `hostile`): the first
/// message is deferred within the bound with `diagnosis` and a reply containing `names`;
/// once `hostile` answers, the next message is sent.
async fn stalls_then_recovers(providers: &str, hostile: &Hostile, diagnosis: &str, names: &str) {
    let env = TestEnv::new("", providers);
    let mut d = DaemonProcess::start(&env.config_path);
    let started = Instant::now();
    let id = submit(&d).await;
    let line = outcome(&mut d, &id, "deferred", Duration::from_secs(10));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(line["diagnosis"], diagnosis, "{line}");
    assert!(line["reply"].as_str().unwrap().contains(names), "{line}");
    hostile.set(Mode::Answer);
    let id = submit(&d).await;
    outcome(&mut d, &id, "sent", Duration::from_secs(10));
}

/// An smtp provider signing in with XOAUTH2, its token endpoint hostile as `mode`.
async fn token_endpoint_case(mode: Mode) {
    let token = Hostile::http(mode, "200 OK", TOKEN).await;
    let valid = std::sync::Arc::new(std::sync::Mutex::new(vec!["tok-1".to_string()]));
    let up =
        Upstream::start(Script::default().xoauth2("XOAUTH2", "relay@contoso.com", valid)).await;
    let providers = format!(
        "{}username = \"relay@contoso.com\"\ntimeout = \"2s\"\nmax_connections = 1\n\
         [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app-123\"\nclient_secret = \"s\"\ntoken_url = \"{}\"\n\
         [distributor]\ndefault_provider = \"o365\"\nretry_initial = \"10m\"\n",
        common::plain_smtp("o365", up.addr.port()),
        token.url("/contoso/oauth2/v2.0/token")
    );
    // The endpoint answers again: the next message signs in and goes.
    stalls_then_recovers(
        &providers,
        &token,
        "oauth-endpoint-unreachable",
        "no answer within 2s",
    )
    .await;
    assert_eq!(up.wait_for(1).await.len(), 1);
}

/// A graph provider whose Graph endpoint is hostile as `mode` (its token endpoint
/// answers).
async fn graph_case(mode: Mode) {
    let token = Hostile::http(Mode::Answer, "200 OK", TOKEN).await;
    let graph = Hostile::http(mode, "202 Accepted", "").await;
    let providers = format!(
        "{}timeout = \"2s\"\nmax_connections = 1\n\
         [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app-123\"\nclient_secret = \"s\"\ntoken_url = \"{}\"\n\
         [distributor]\ndefault_provider = \"exchange\"\nretry_initial = \"10m\"\n",
        common::graph_at("exchange", graph.url("")),
        token.url("/contoso/oauth2/v2.0/token")
    );
    stalls_then_recovers(
        &providers,
        &graph,
        "connection-failed",
        "Graph sendMail: no answer",
    )
    .await;
}

/// `[fleet]` with a Redis that accepts and never answers (or trickles): every node keeps
/// to its share, mail goes, and `/status` says the fleet store is down.
async fn redis_case(mode: Mode) {
    let redis = Hostile::start(mode, b"+OK\r\n".to_vec()).await;
    let env = TestEnv::new(
        "",
        &format!(
            "[fleet]\nredis_url = \"redis://{}/0\"\nnode = \"n1\"\nexpected_nodes = 1\n",
            redis.addr
        ),
    );
    let mut d = DaemonProcess::start(&env.config_path);
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(submit(&d).await);
    }
    for id in &ids {
        outcome(&mut d, id, "sent", Duration::from_secs(30));
    }
    // Ten messages cost no more than a few Redis bounds, not ten or twenty.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let status: serde_json::Value = common::json_at(format!("http://{}/status", d.status)).await;
    assert_eq!(status["fleet"]["store"], "down", "{status:#}");
    assert!(redis.connections.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

/// One test for each hostile mode of each endpoint: a name and its case.
macro_rules! hostile_endpoints {
    ($($name:ident: $case:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $case.await;
        }
    )*};
}

hostile_endpoints! {
    a_silent_token_endpoint_is_bounded: token_endpoint_case(Mode::Silent);
    a_trickling_token_endpoint_is_bounded: token_endpoint_case(Mode::Trickle(200));
    a_silent_graph_endpoint_is_bounded: graph_case(Mode::Silent);
    a_trickling_graph_endpoint_is_bounded: graph_case(Mode::Trickle(200));
    a_silent_redis_costs_no_mail: redis_case(Mode::Silent);
    a_trickling_redis_costs_no_mail: redis_case(Mode::Trickle(300));
}
