//! Never wedge: an upstream that stops answering (or trickles a byte at a time) at any
//! step of the exchange costs one attempt, bounded by the provider's `timeout`, never the
//! provider's connection slot. Against the binary, over real sockets (and real TLS for
//! the STARTTLS steps).

mod common;

use common::Fetch;
use std::time::{Duration, Instant};

use common::send_short;
use common::upstream::{Script, TestCa, Upstream};
use common::{DaemonProcess, TestEnv, queued_id, send_once};

/// The provider's per-step timeout in these tests.
const STEP: Duration = Duration::from_secs(2);

struct Stalled {
    /// The daemon's config and store, kept for its life.
    _env: TestEnv,
    upstream: Upstream,
    daemon: DaemonProcess,
    /// The script the upstream returns to when it behaves again.
    good: Script,
}

/// A daemon whose default provider "up" is the test upstream (timeout 2s,
/// `max_connections` as given, STARTTLS trusting `ca` when given, `extra` provider
/// lines), the upstream starting with `script`.
async fn stalled(
    script: Script,
    good: Script,
    ca: Option<&TestCa>,
    max_connections: u32,
    extra: &str,
) -> Stalled {
    let upstream = Upstream::start(script).await;
    let env = TestEnv::new("", "");
    let tls_line = if let Some(ca) = ca {
        let path = env.dir.path().join("ca.pem");
        std::fs::write(&path, &ca.pem).unwrap();
        format!("tls = \"starttls\"\nca_file = \"{}\"", path.display())
    } else {
        "tls = \"none\"".to_string()
    };
    env.write_config(
        "",
        &format!(
            "[[provider]]\nname = \"up\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\n{tls_line}\ntimeout = \"2s\"\nmax_connections = {max_connections}\n{extra}\n\
             [distributor]\ndefault_provider = \"up\"\nretry_initial = \"10m\"\n[notify]\nbounce = \"off\"\n",
            upstream.addr.port()
        ),
    );
    let daemon = DaemonProcess::start(&env.config_path);
    Stalled {
        _env: env,
        upstream,
        daemon,
        good,
    }
}

impl Stalled {
    async fn submit(&self, body_size: usize) -> String {
        let mut data = b"Subject: stall test\r\n\r\n".to_vec();
        while data.len() < body_size {
            data.extend_from_slice(&[b'x'; 76]);
            data.extend_from_slice(b"\r\n");
        }
        let reply = send_once(self.daemon.smtp, "app@erp.local", &["a@contoso.com"], &data).await;
        queued_id(&reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
    }

    /// The delivery log line of `id` with this status.
    fn outcome(&mut self, id: &str, status: &str, within: Duration) -> serde_json::Value {
        self.daemon.wait_log(
            |v| v["message"] == "delivery" && v["id"] == id && v["status"] == status,
            within,
        )
    }

    /// The upstream behaves again; the next message on the provider is delivered.
    async fn next_goes(&mut self) {
        self.upstream.set_script(self.good.clone());
        let before = self.upstream.messages().len();
        let id = self.submit(0).await;
        self.outcome(&id, "sent", Duration::from_secs(15));
        assert_eq!(self.upstream.wait_for(before + 1).await.len(), before + 1);
    }
}

/// One message meets an upstream stalled at `step`: deferred with `connection-failed`
/// within the step's bound, the reply naming the step; then the next message goes.
async fn stall_case(
    script: Script,
    good: Script,
    ca: Option<&TestCa>,
    extra: &str,
    body: usize,
    names: &str,
) {
    let mut s = stalled(script, good, ca, 1, extra).await;
    // The bound of one step, plus the time to hand over the body and a margin for a
    // busy machine; far below what an unbounded wait would take.
    let bound = STEP * 3 + Duration::from_secs(5);
    let started = Instant::now();
    let id = s.submit(body).await;
    let line = s.outcome(&id, "deferred", bound);
    let took = started.elapsed();
    assert_eq!(line["diagnosis"], "connection-failed", "{line}");
    let reply = line["reply"].as_str().unwrap();
    assert!(
        reply.contains(names),
        "the reply names the step {names:?}: {reply}"
    );
    assert!(took < bound, "took {took:?}");
    s.next_goes().await;
}

/// [`stall_case`] over plain SMTP without AUTH.
async fn one_stall(script: Script, body: usize, names: &str) {
    stall_case(script, plain(), None, "", body, names).await;
}

/// [`stall_case`] over STARTTLS: `stall` makes a good script stall somewhere.
async fn tls_stall(stall: impl FnOnce(Script) -> Script, names: &str) {
    let ca = TestCa::new("stall CA");
    let good = Script::over_starttls(&ca);
    let stalling = stall(good.clone());
    stall_case(stalling, good, Some(&ca), "", 0, names).await;
}

fn plain() -> Script {
    Script::default()
}

/// One test per stall: a name and the case that runs it.
macro_rules! stalls {
    ($($(#[$doc:meta])* $name:ident: $case:expr;)*) => {$(
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $case.await;
        }
    )*};
}

stalls! {
    a_silent_greeting_is_bounded: one_stall(plain().stall("greeting"), 0, "greeting");
    a_trickled_greeting_is_bounded:
        one_stall(plain().trickle("greeting", 700), 0, "greeting");
    a_silent_ehlo_is_bounded: one_stall(plain().stall("ehlo"), 0, "EHLO");
    a_silent_mail_is_bounded: one_stall(plain().stall("mail"), 0, "MAIL: no answer");
    a_trickled_mail_reply_is_bounded:
        one_stall(plain().trickle("mail", 500), 0, "MAIL: no answer");
    a_silent_rcpt_is_bounded: one_stall(plain().stall("rcpt"), 0, "RCPT: no answer");
    a_silent_data_is_bounded: one_stall(plain().stall("data"), 0, "DATA: no answer");
    /// The case: `354`, then the server reads nothing more. A body of 6 MB cannot
    /// fit in the socket buffers, so our write blocks until the stall is noticed.
    a_server_that_stops_reading_the_body_is_bounded: one_stall(
        plain().stall("body"),
        6 * 1024 * 1024,
        "message body: the server stopped reading",
    );
    a_silent_final_reply_is_bounded:
        one_stall(plain().stall("end"), 0, "end of DATA: no answer");
    a_trickled_final_reply_is_bounded:
        one_stall(plain().trickle("end", 500), 0, "end of DATA: no answer");
    a_silent_starttls_is_bounded: tls_stall(|s| s.stall("starttls"), "STARTTLS: no answer");
    a_tls_handshake_that_never_starts_is_bounded: tls_stall(|s| s.stall("tls"), "TLS handshake");
    /// The first EHLO is answered; the one inside TLS is not.
    a_silent_ehlo_after_tls_is_bounded: tls_stall(
        |s| Script { offer_auth: false, ..s }.stall("ehlo-tls"),
        "EHLO: no answer",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_auth_is_bounded() {
    let good = Script {
        offer_auth: true,
        credentials: Some(("relay@contoso.com".into(), "pw".into())),
        ..plain()
    };
    let stalling = good.clone().stall("auth");
    let auth = "username = \"relay@contoso.com\"\npassword = \"pw\"";
    stall_case(stalling, good, None, auth, 0, "AUTH: no answer").await;
}

/// A refusal is followed by RSET; a server that never answers it costs the connection
/// (never reused), not the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_rset_costs_the_connection_not_the_provider() {
    let refusing = plain()
        .reply("mail", "550 5.7.1 not this sender")
        .stall("rset");
    let mut s = stalled(refusing, plain(), None, 1, "").await;
    let id = s.submit(0).await;
    let line = s.outcome(&id, "failed", STEP * 3 + Duration::from_secs(5));
    assert!(line["reply"].as_str().unwrap().contains("550"), "{line}");
    let connections = s
        .upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    s.next_goes().await;
    assert_eq!(
        s.upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        connections + 1,
        "the connection whose RSET went unanswered is not reused"
    );
}

/// With `max_connections = 1`, five stalls in a row leave the provider working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_stalls_in_a_row_do_not_stop_the_provider() {
    let mut s = stalled(plain().stall("end"), plain(), None, 1, "").await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(s.submit(0).await);
    }
    for id in &ids {
        let line = s.outcome(id, "deferred", STEP * 5 * 2 + Duration::from_secs(10));
        assert_eq!(line["diagnosis"], "connection-failed", "{line}");
    }
    assert!(
        started.elapsed() < STEP * 5 + Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        s.upstream
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        5,
        "one connection per stalled attempt, one at a time"
    );
    s.next_goes().await;
}

/// While an attempt is stuck, `/status` and `/metrics` show it with its stage and age;
/// SIGTERM ends the daemon within `smtp.shutdown_timeout` (5 s here) all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_attempt_is_visible_and_sigterm_still_ends_the_daemon() {
    let upstream = Upstream::start(plain().stall("end")).await;
    let env = TestEnv::new(
        "",
        &format!(
            "{}timeout = \"60s\"\n\
             [distributor]\ndefault_provider = \"up\"\n",
            common::plain_smtp("up", upstream.addr.port())
        ),
    );
    let mut daemon = DaemonProcess::start(&env.config_path);
    let reply = send_short(daemon.smtp, "app@erp.local", "a@contoso.com", "s").await;
    let id = queued_id(&reply).unwrap();
    let http = common::http();
    let base = format!("http://{}", daemon.status);
    let deadline = Instant::now() + Duration::from_secs(10);
    let attempt = loop {
        let st = http
            .get(format!("{base}/status"))
            .fetch::<serde_json::Value>()
            .await;
        let up = common::provider_in(&st, "up").clone();
        if let Some(a) = up["in_flight"].as_array().and_then(|a| a.first()).cloned()
            && a["stage"] == "end of DATA"
            && up["oldest_in_flight_seconds"].as_f64().unwrap() >= 1.0
        {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no stuck attempt in /status: {st:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(attempt["id"], id.as_str());
    let metrics = http.get(format!("{base}/metrics")).fetch_text().await;
    let oldest: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mailgate_delivery_oldest_inflight_seconds{provider=\"up\"} "))
        .unwrap_or_else(|| panic!("metric missing: {metrics}"))
        .parse()
        .unwrap();
    assert!(oldest >= 1.0, "{oldest}");
    let started = Instant::now();
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5 + 2),
        "took {:?}",
        started.elapsed()
    );
}
