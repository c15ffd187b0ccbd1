//! Routes and fallback (SPEC "Routes and fallback"), against the binary over real
//! sockets: a chain's next provider takes the mail when the first cannot (refused
//! connection, failed sign-in, a retired auth method), never after a 5xx refusal; the
//! circuit opens, skips, probes and closes; recipients under different routes go out as
//! one envelope per chain with the same bytes and one record; a route wins over a user's
//! chain, which wins over the default one.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::msgraph::MockMicrosoft;
use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, cli, queued_id, send_once, write};

async fn submit(d: &DaemonProcess, from: &str, rcpts: &[&str]) -> String {
    let reply = send_once(
        d.smtp,
        from,
        rcpts,
        b"Subject: routes\r\nMessage-ID: <routes@erp.local>\r\n\r\nhello\r\n",
    )
    .await;
    queued_id(&reply).unwrap_or_else(|| panic!("not accepted: {reply}"))
}

use common::provider_in as provider;

fn circuit(status: &serde_json::Value, name: &str) -> String {
    provider(status, name)["circuit"]
        .as_str()
        .unwrap_or_else(|| panic!("no circuit for {name}: {status:#}"))
        .to_string()
}

/// The (provider, diagnosis code) of every attempt of a record.
fn attempts(r: &serde_json::Value) -> Vec<(String, String)> {
    r["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["provider"].as_str().unwrap().to_string(),
                a["diagnosis"]["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A message to `to` from the ERP, finished: its record, after asserting that the
/// first provider failed with `code` and the second took it.
async fn went_second_after(d: &DaemonProcess, to: &str, code: &str) -> serde_json::Value {
    let id = submit(d, "app@erp.local", &[to]).await;
    let r = d.finished(&id).await;
    assert_eq!(
        attempts(&r),
        [
            ("first".into(), code.to_string()),
            ("second".into(), String::new())
        ],
        "{r:#}"
    );
    r
}

fn smtp_provider(name: &str, port: u16, extra: &str) -> String {
    format!(
        "{}timeout = \"5s\"\n{extra}\n",
        common::plain_smtp(name, port)
    )
}

fn accepting(user: &str, pass: &str) -> Script {
    Script {
        offer_auth: true,
        credentials: Some((user.into(), pass.into())),
        ..Script::default()
    }
}

/// The first provider refuses connections, then fails AUTH, then says Basic auth is
/// retired: each time the mail arrives through the second, once, and the record names
/// both attempts. After three such failures the circuit opens and the first is not even
/// tried; after the cool-down one message probes it and closes it; opened again,
/// `mailgate verify` closes it. A 550 from the first does not move the mail on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_provider_takes_the_mail_when_the_first_cannot_and_the_circuit_opens_and_closes() {
    let first_port = common::free_port();
    let second = Upstream::start(Script::default()).await;
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}{}[distributor]\ndefault_providers = [\"first\", \"second\"]\n",
            smtp_provider(
                "first",
                first_port,
                "username = \"relay@contoso.com\"\npassword = \"right\"\ncircuit_open_after = 3\ncircuit_cooldown = \"2s\"",
            ),
            smtp_provider("second", second.addr.port(), ""),
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    let st = d.get_json("/status").await;
    assert_eq!(circuit(&st, "first"), "closed");

    // 1. Nothing listens at the first: refused, so the second takes it.
    let r1 = went_second_after(&d, "a@example.com", "connection-failed").await;
    assert_eq!(r1["status"], "sent", "{r1:#}");
    assert_eq!(r1["recipients"][0]["provider"], "second", "{r1:#}");
    assert_eq!(r1["provider"], "second");
    assert_eq!(second.messages().len(), 1, "delivered once");

    // 2. The first comes up but refuses the password: auth-failed, the second takes it.
    let first = Upstream::start_at(first_port, accepting("relay@contoso.com", "other")).await;
    went_second_after(&d, "b@example.com", "auth-failed").await;
    assert_eq!(second.messages().len(), 2);

    // 3. Basic auth retired (held for a configuration reason): the second takes it, and
    // this third failure in a row opens the first's circuit.
    first.set_script(accepting("relay@contoso.com", "right").reply(
        "auth",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
    ));
    went_second_after(&d, "c@example.com", "basic-auth-retired").await;
    assert_eq!(second.messages().len(), 3);
    assert!(first.messages().is_empty());
    let st = d.get_json("/status").await;
    assert_eq!(circuit(&st, "first"), "open", "{st:#}");
    assert!(
        provider(&st, "first")["circuit_open_until"].is_string(),
        "{st:#}"
    );
    let page = d.get_text("/").await;
    assert!(
        page.contains("<td class=\"circuit\" data-provider=\"first\"><span class=\"badge circuit-open\">open</span> <span class=\"muted\">skipped after repeated failures until"),
        "the dashboard shows the open circuit: {page}"
    );
    let m = d.get_text("/metrics").await;
    assert!(
        m.contains("mailgate_provider_circuit_open{provider=\"first\"} 1"),
        "{m}"
    );

    // 4. While open, the first is not even tried.
    let working = Script {
        // No connection is kept for the next message: each sees the script of its time.
        one_message_per_connection: true,
        ..accepting("relay@contoso.com", "right").reply(
            "rcpt:gone@example.com",
            "550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown",
        )
    };
    first.set_script(working.clone());
    let tried = first.connections.load(Ordering::SeqCst);
    let m4 = submit(&d, "app@erp.local", &["d@example.com"]).await;
    let r4 = d.finished(&m4).await;
    assert_eq!(attempts(&r4), [("second".into(), String::new())], "{r4:#}");
    assert_eq!(first.connections.load(Ordering::SeqCst), tried);
    assert_eq!(second.messages().len(), 4);
    let m = d.get_text("/metrics").await;
    assert!(
        m.contains("mailgate_failovers_total{from=\"first\",to=\"second\"} 4"),
        "three failures and one skip: {m}"
    );

    // 5. After the cool-down one message probes the first; it works and closes the
    // circuit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while circuit(&d.get_json("/status").await, "first") != "half-open" {
        assert!(Instant::now() < deadline, "the cool-down ends");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m5 = submit(&d, "app@erp.local", &["e@example.com"]).await;
    let r5 = d.finished(&m5).await;
    assert_eq!(attempts(&r5), [("first".into(), String::new())], "{r5:#}");
    assert_eq!(first.messages().len(), 1);
    assert_eq!(first.messages()[0].rcpts, ["e@example.com"]);
    assert_eq!(circuit(&d.get_json("/status").await, "first"), "closed");
    assert!(
        d.get_text("/metrics")
            .await
            .contains("mailgate_provider_circuit_open{provider=\"first\"} 0")
    );

    // 6. Three failures open it again; `mailgate verify` proves it healthy and closes it.
    first.set_script(accepting("relay@contoso.com", "right").reply(
        "auth",
        "550 5.7.30 Basic authentication is not supported for Client Submission.",
    ));
    for n in 0..3 {
        let id = submit(&d, "app@erp.local", &[&format!("f{n}@example.com")]).await;
        d.finished(&id).await;
    }
    assert_eq!(second.messages().len(), 7);
    assert_ne!(circuit(&d.get_json("/status").await, "first"), "closed");
    first.set_script(working);
    let out = common::cli_ok(&env, &["verify", "--provider", "first"]);
    common::assert_has(&out, &["first: ok", "first: its circuit was open; closed"]);
    assert_eq!(circuit(&d.get_json("/status").await, "first"), "closed");
    let m8 = submit(&d, "app@erp.local", &["g@example.com"]).await;
    let r8 = d.finished(&m8).await;
    assert_eq!(attempts(&r8), [("first".into(), String::new())], "{r8:#}");

    // 7. A 550 refuses the recipient: failed, never moved on.
    let m6 = submit(&d, "app@erp.local", &["gone@example.com"]).await;
    let r6 = d.finished(&m6).await;
    assert_eq!(r6["status"], "failed", "{r6:#}");
    assert_eq!(
        attempts(&r6),
        [("first".into(), "recipient-unknown".into())],
        "{r6:#}"
    );
    assert_eq!(second.messages().len(), 7, "the second never saw it");
}

/// `[[route]]`: a message to a@contoso.com and b@example.com, with a route for contoso,
/// goes out as two envelopes through two upstreams with the same bytes, and one record
/// keeps each recipient's provider. A user's chain wins over the default one, a route
/// over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_under_different_routes_go_out_once_per_chain_with_the_same_bytes() {
    let internal = Upstream::start(Script::default()).await;
    let external = Upstream::start(Script::default()).await;
    let erp = Upstream::start(Script::default()).await;
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}{}{}[distributor]\ndefault_providers = [\"external\"]\n\
             [[user]]\nname = \"erp\"\nmatch_senders = [\"erp@erp.local\"]\nproviders = [\"erp\", \"external\"]\n\
             [[route]]\nname = \"internal\"\nrecipients = [\"*@contoso.com\"]\nproviders = [\"internal\", \"external\"]\n",
            smtp_provider("internal", internal.addr.port(), ""),
            smtp_provider("external", external.addr.port(), ""),
            smtp_provider("erp", erp.addr.port(), ""),
        ),
    );
    let d = DaemonProcess::start(&env.config_path);

    let id = submit(&d, "app@erp.local", &["a@contoso.com", "b@example.com"]).await;
    let r = d.finished(&id).await;
    assert_eq!(r["status"], "sent", "{r:#}");
    let (i, e) = (internal.wait_for(1).await, external.wait_for(1).await);
    assert_eq!(i.len(), 1);
    assert_eq!(e.len(), 1);
    assert_eq!(i[0].rcpts, ["a@contoso.com"]);
    assert_eq!(e[0].rcpts, ["b@example.com"]);
    assert_eq!(
        i[0].data, e[0].data,
        "the envelope differs, the bytes do not"
    );
    assert_eq!(i[0].from, e[0].from);
    let providers: Vec<(&str, &str, &str)> = r["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["address"].as_str().unwrap(),
                x["provider"].as_str().unwrap(),
                x["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        providers,
        [
            ("a@contoso.com", "internal", "sent"),
            ("b@example.com", "external", "sent")
        ]
    );
    let mut used: Vec<String> = attempts(&r).into_iter().map(|(p, _)| p).collect();
    used.sort();
    assert_eq!(used, ["external", "internal"], "{r:#}");
    // `show` and the message's page name each recipient's provider.
    let (code, out, err) = cli(&env, &["show", &id]);
    assert_eq!(code, 0, "{err}");
    common::assert_has(
        &out,
        &[
            "sent     a@contoso.com via internal",
            "sent     b@example.com via external",
        ],
    );
    let page = d.get_text(&format!("/messages/{id}")).await;
    assert!(
        page.contains("<td>a@contoso.com</td><td><span class=\"badge sent\">sent</span></td><td class=\"provider\">internal</td>"),
        "{page}"
    );

    // The erp user's chain wins over the default one; the route wins over both.
    let id = submit(&d, "erp@erp.local", &["x@example.com", "y@contoso.com"]).await;
    let r = d.finished(&id).await;
    assert_eq!(r["status"], "sent", "{r:#}");
    let e = erp.wait_for(1).await;
    assert_eq!(e[0].rcpts, ["x@example.com"]);
    let i = internal.wait_for(2).await;
    assert_eq!(i[1].rcpts, ["y@contoso.com"]);
    assert_eq!(
        external.messages().len(),
        1,
        "the default chain was not used"
    );

    // The dashboard shows the chains.
    let page = d.get_text("/").await;
    common::assert_has(&page, &["internal → external", "*@contoso.com"]);
}

/// `check-config` refuses a chain naming an unknown provider, a provider twice in one
/// chain, a route without recipients or providers, and `provider` with `providers`.
#[test]
fn check_config_refuses_broken_chains() {
    let env = TestEnv::new("", "");
    let cases = [
        (
            "[distributor]\ndefault_providers = [\"outbox\", \"nowhere\"]\n",
            "no provider named \"nowhere\"",
        ),
        (
            "[distributor]\ndefault_providers = [\"outbox\", \"outbox\"]\n",
            "provider \"outbox\" is named twice in one chain",
        ),
        (
            "[[route]]\nname = \"r\"\nproviders = [\"outbox\"]\n",
            "route \"r\" has no recipients",
        ),
        (
            "[[route]]\nname = \"r\"\nrecipients = [\"*@contoso.com\"]\nproviders = []\n",
            "route \"r\" providers is empty",
        ),
        (
            "[[route]]\nname = \"r\"\nrecipients = [\"contoso.com\"]\nproviders = [\"outbox\"]\n",
            "neither an address (user@domain) nor *@domain",
        ),
        (
            "[[user]]\nname = \"u\"\nprovider = \"outbox\"\nproviders = [\"outbox\"]\n",
            "user \"u\": set provider or providers, not both",
        ),
    ];
    for (extra, words) in cases {
        env.write_config("", extra);
        let (code, out, err) = cli(&env, &["check-config"]);
        assert_ne!(code, 0, "{extra}: {out}");
        assert!(err.contains(words), "{extra}: {err}");
        assert!(
            err.contains("mailgate.toml:"),
            "names the file and line: {err}"
        );
    }
    env.write_config(
        "",
        "[distributor]\ndefault_providers = [\"outbox\"]\n[[route]]\nname = \"r\"\nrecipients = [\"*@contoso.com\", \"boss@example.com\"]\nproviders = [\"outbox\"]\n",
    );
    let _ = common::cli_ok(&env, &["check-config"]);
}

/// Fallback between kinds: a Graph provider that refuses (403, held for a configuration
/// reason) hands the mail to an smtp provider, and an smtp provider that cannot be
/// reached hands it to Graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_falls_back_to_smtp_and_smtp_to_graph() {
    let ms = MockMicrosoft::start().await;
    ms.with(|s| {
        s.graph_reply = Some((
            403,
            None,
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied. Check credentials and try again."}}"#.into(),
        ));
    });
    let up = Upstream::start(Script::default()).await;
    let dead = common::free_port();
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}{}{}\
             [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app-123\"\ntoken_url = \"{}\"\nclient_secret = \"s\"\n\
             [[user]]\nname = \"a\"\nmatch_senders = [\"a@erp.local\"]\nproviders = [\"graph\", \"smtp\"]\n\
             [[user]]\nname = \"b\"\nmatch_senders = [\"b@erp.local\"]\nproviders = [\"dead\", \"graph\"]\n",
            smtp_provider("smtp", up.addr.port(), ""),
            smtp_provider("dead", dead, ""),
            common::graph_at("graph", ms.graph_url()),
            ms.token_url("contoso"),
        ),
    );
    let d = DaemonProcess::start(&env.config_path);

    let id = submit(&d, "a@erp.local", &["x@example.com"]).await;
    let r = d.finished(&id).await;
    assert_eq!(r["status"], "sent", "{r:#}");
    assert_eq!(
        attempts(&r),
        [
            ("graph".into(), "graph-forbidden".into()),
            ("smtp".into(), String::new())
        ],
        "{r:#}"
    );
    assert_eq!(up.wait_for(1).await[0].rcpts, ["x@example.com"]);
    assert!(ms.with(|s| s.sent.is_empty()), "Graph refused it");

    ms.with(|s| s.graph_reply = None);
    let id = submit(&d, "b@erp.local", &["y@example.com"]).await;
    let r = d.finished(&id).await;
    assert_eq!(
        attempts(&r),
        [
            ("dead".into(), "connection-failed".into()),
            ("graph".into(), String::new())
        ],
        "{r:#}"
    );
    assert_eq!(r["recipients"][0]["provider"], "graph");
    let sent = ms.with(|s| s.sent.clone());
    assert_eq!(sent.len(), 1);
    assert!(
        String::from_utf8_lossy(&sent[0].mime).contains("Subject: routes"),
        "Graph got the message"
    );
    assert_eq!(
        up.messages().len(),
        1,
        "the smtp upstream saw only the first"
    );
}

/// A reload changes where waiting mail goes: a message deferred on its only provider
/// takes the fallback the new configuration adds, and a new route applies at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_chain_changes_to_waiting_and_new_mail() {
    let one = Upstream::start(Script::default()).await;
    let two = Upstream::start(Script::default()).await;
    let dead = common::free_port();
    let env = TestEnv::new("", "");
    let providers = format!(
        "{}{}{}",
        smtp_provider("dead", dead, ""),
        smtp_provider("one", one.addr.port(), ""),
        smtp_provider("two", two.addr.port(), "")
    );
    write(
        &env,
        &format!("{providers}[distributor]\ndefault_provider = \"dead\"\n"),
    );
    let d = DaemonProcess::start(&env.config_path);
    let held = submit(&d, "app@erp.local", &["a@example.com"]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = d.get_json(&format!("/api/messages/{held}")).await;
        if r["status"] == "deferred" {
            assert_eq!(r["waiting"]["reason"], "connection-failed", "{r:#}");
            break;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    write(
        &env,
        &format!(
            "{providers}[distributor]\ndefault_providers = [\"dead\", \"one\"]\n\
             [[route]]\nname = \"contoso\"\nrecipients = [\"*@contoso.com\"]\nproviders = [\"two\"]\n"
        ),
    );
    let resp = common::post_action(format!("http://{}/api/reload", d.status)).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let _ = common::cli_ok(&env, &["retry", &held]);
    let r = d.finished(&held).await;
    assert_eq!(r["status"], "sent", "{r:#}");
    assert_eq!(
        attempts(&r).last().unwrap(),
        &("one".to_string(), String::new())
    );
    assert_eq!(one.wait_for(1).await[0].rcpts, ["a@example.com"]);

    let id = submit(&d, "app@erp.local", &["b@contoso.com"]).await;
    let r = d.finished(&id).await;
    assert_eq!(attempts(&r), [("two".into(), String::new())], "{r:#}");
    assert_eq!(two.wait_for(1).await[0].rcpts, ["b@contoso.com"]);
}
