//! End to end, in-process: the real daemon on 127.0.0.1:0 with a temp store, real
//! sockets, lettre as the client, the .eml outbox as the destination.

mod common;

use common::Fetch;
use common::{Smtp, TestEnv, queued_id};
use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use mailgate::Daemon;
use mailgate::history::Status;

use common::WAIT;
use common::submit_short;

async fn wait_sent(
    daemon: &Daemon,
    rx: &mut tokio::sync::broadcast::Receiver<mailgate::distributor::DeliveryEvent>,
    id: &str,
) {
    if daemon
        .pipeline
        .store()
        .record(id)
        .unwrap()
        .is_some_and(|r| r.status == Status::Sent)
    {
        return;
    }
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = rx.recv().await.unwrap();
            if ev.id == id {
                assert_eq!(ev.status, Status::Sent);
                return;
            }
        }
    })
    .await
    .expect("delivered in time");
}

fn lettre_client(addr: std::net::SocketAddr) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            "erp01.test".into(),
        ))
        .build()
}

#[tokio::test]
async fn lettre_submission_lands_in_the_outbox_byte_for_byte() {
    let (env, daemon) = common::started("", "").await;
    let mut events = daemon.distributor.subscribe();
    let client = lettre_client(daemon.smtp_addrs[0]);
    let envelope = Envelope::new(
        Some("app@erp.local".parse().unwrap()),
        vec![
            "a@contoso.com".parse().unwrap(),
            "b@contoso.com".parse().unwrap(),
        ],
    )
    .unwrap();
    // Complete headers: mailgate adds only its Received header.
    let sent = "From: ERP <app@erp.local>\r\nTo: a@contoso.com\r\nSubject: Invoice 1001\r\n\
                Message-ID: <inv1001@erp.local>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\n\
                Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                Grüße\r\n.leading dot\r\n\r\nlast line";
    let response = client.send_raw(&envelope, sent.as_bytes()).await.unwrap();
    let text: Vec<String> = response.message().map(String::from).collect();
    assert_eq!(response.code().to_string(), "250");
    assert!(text[0].starts_with("2.0.0 OK queued as "), "{text:?}");
    let id = text[0].rsplit(' ').next().unwrap().to_string();
    wait_sent(&daemon, &mut events, &id).await;

    let eml = env.eml(&id);
    let text = String::from_utf8(eml.clone()).unwrap();
    let (received, rest) = text.split_at(text.find("From: ERP").unwrap());
    assert!(received.starts_with(
        "Received: from erp01.test (127.0.0.1)\r\n\tby mailgate.test (mailgate) with ESMTP id "
    ));
    assert!(received.contains(&id));
    assert!(received.ends_with(" +0000\r\n"));
    assert_eq!(
        received.matches("\r\n").count(),
        2,
        "Received is folded over two lines: {received:?}"
    );
    // lettre terminates the data with CRLF . CRLF after the last line.
    assert_eq!(rest, format!("{sent}\r\n"));

    let record = daemon.pipeline.store().record(&id).unwrap().unwrap();
    assert_eq!(record.status, Status::Sent);
    assert_eq!(record.subject.as_deref(), Some("Invoice 1001"));
    assert_eq!(record.message_id.as_deref(), Some("<inv1001@erp.local>"));
    assert_eq!(record.size, eml.len() as u64);
    assert_eq!(record.helo, "erp01.test");
    assert!(record.recipients.iter().all(|r| r.status == Status::Sent));
    assert_eq!(record.attempts.len(), 1);
    daemon.shutdown().await;
}

#[tokio::test]
async fn missing_message_id_and_date_are_added() {
    let (env, daemon) = common::started("", "").await;
    let mut events = daemon.distributor.subscribe();
    let reply = common::send_once(
        daemon.smtp_addrs[0],
        "a@erp.local",
        &["x@contoso.com"],
        b"Subject: bare\r\n\r\nhi\r\n",
    )
    .await;
    let id = queued_id(&reply).unwrap();
    wait_sent(&daemon, &mut events, &id).await;
    let text = String::from_utf8(env.eml(&id)).unwrap();
    let headers = text.split("\r\n\r\n").next().unwrap();
    assert!(
        headers.contains(&format!(
            "\r\nSubject: bare\r\nMessage-ID: <{id}@mailgate.test>\r\nDate: "
        )),
        "{headers}"
    );
    assert!(text.ends_with("\r\n\r\nhi\r\n"));
    daemon.shutdown().await;
}

#[tokio::test]
async fn concurrent_submissions_share_one_commit() {
    // Sending paused: a delivery's outcome would be another commit while the replies
    // are read.
    let (_env, daemon) = common::started("", "[distributor]\nenabled = false\n").await;
    let store = daemon.pipeline.store().clone();
    const N: usize = 10;
    // The start's own write (retention's first run) is done before the writer is held,
    // so the held group holds only the messages.
    tokio::time::timeout(WAIT, async {
        while store.commits() < 1 || store.waiting_writes() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the start's writes are done");
    // Hold the writer: the first submission is taken and waits; the others queue behind it.
    store.hold_commits(true);
    let before = store.commits();
    let addr = daemon.smtp_addrs[0];
    let clients: Vec<_> = (0..N)
        .map(|i| {
            tokio::spawn(async move {
                let (mut s, _) = Smtp::connect(addr).await.unwrap();
                s.cmd("EHLO c").await.unwrap();
                s.send(
                    "a@erp.local",
                    &["x@contoso.com"],
                    format!("Subject: {i}\r\n\r\n{i}\r\n").as_bytes(),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    tokio::time::timeout(WAIT, async {
        while store.waiting_writes() < N as u64 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("all submissions reach the writer");
    assert_eq!(store.commits(), before, "nothing committed while held");
    store.hold_commits(false);
    let mut ids = Vec::new();
    for c in clients {
        let reply = c.await.unwrap();
        ids.push(queued_id(&reply).unwrap_or_else(|| panic!("{reply}")));
    }
    assert_eq!(store.commits(), before + 1, "{N} messages, one commit");
    for id in &ids {
        assert!(store.record(id).unwrap().is_some());
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_421() {
    let (_env, daemon) = common::started("max_connections = 2", "").await;
    let addr = daemon.smtp_addrs[0];
    let (_a, g1) = Smtp::connect(addr).await.unwrap();
    let (_b, g2) = Smtp::connect(addr).await.unwrap();
    assert!(g1.starts_with("220 ") && g2.starts_with("220 "));
    let (_c, g3) = Smtp::connect(addr).await.unwrap();
    assert_eq!(g3, "421 4.3.2 Too many connections, try again later");
    drop(_a);
    // The permit comes back when the session ends; a new client is served again.
    let served = tokio::time::timeout(WAIT, async {
        loop {
            let (_d, g) = Smtp::connect(addr).await.unwrap();
            if g.starts_with("220 ") {
                return g;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert!(served.starts_with("220 mailgate.test"));
    daemon.shutdown().await;
}

#[tokio::test]
async fn listens_on_ipv4_and_ipv6() {
    let env = TestEnv::edited(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"[::1]:0\"]",
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    assert_eq!(daemon.smtp_addrs.len(), 2);
    assert!(daemon.smtp_addrs[1].is_ipv6());
    for addr in daemon.smtp_addrs.clone() {
        let r = common::send_once(
            addr,
            "a@erp.local",
            &["x@contoso.com"],
            b"Subject: v\r\n\r\nx\r\n",
        )
        .await;
        assert!(queued_id(&r).is_some(), "{addr}: {r}");
    }
    daemon.shutdown().await;
}

#[tokio::test]
async fn admin_api_serves_records_and_health() {
    let (env, daemon) = common::started("", "").await;
    let mut events = daemon.distributor.subscribe();
    let id = submit_short(
        daemon.smtp_addrs[0],
        "app@erp.local",
        "a@contoso.com",
        "Invoice 7",
    )
    .await;
    wait_sent(&daemon, &mut events, &id).await;
    let base = format!("http://{}", daemon.status_addr);
    let http = common::http();
    let health = http.get(format!("{base}/healthz")).answers(200).await;
    assert_eq!(health.text().await.unwrap(), "ok");

    let rec = http
        .get(format!("{base}/api/messages/{id}"))
        .fetch::<serde_json::Value>()
        .await;
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(rec["status"], "sent");
    assert_eq!(rec["helo"], "test-client");
    assert_eq!(rec["original_sender"], "app@erp.local");
    assert_eq!(rec["sender"], "app@erp.local");
    assert_eq!(rec["recipients"][0]["address"], "a@contoso.com");
    assert_eq!(rec["recipients"][0]["status"], "sent");
    assert_eq!(rec["subject"], "Invoice 7");
    assert_eq!(rec["provider"], "outbox");
    assert_eq!(rec["deferrals"], 0);
    // A client on this host is named by the Unix user that owns its socket.
    let me = mailgate::unix::user_name(mailgate::unix::real_uid().unwrap());
    assert_eq!(rec["client"], format!("local:{me}").as_str());
    assert!(rec["received_at"].as_str().unwrap().ends_with('Z'));
    assert!(rec["sent_at"].as_str().unwrap().ends_with('Z'));
    assert!(rec["size"].as_u64().unwrap() > 0);
    assert!(rec["attempts"][0]["at"].is_string());

    let list: Vec<serde_json::Value> = http
        .get(format!("{base}/api/messages?status=sent&limit=5"))
        .fetch()
        .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    let none: Vec<serde_json::Value> = http
        .get(format!("{base}/api/messages?status=failed"))
        .fetch()
        .await;
    assert!(none.is_empty());
    http.get(format!("{base}/api/messages/NOPE"))
        .answers(404)
        .await;
    let eml = http
        .get(format!("{base}/api/messages/{id}/eml"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(eml.as_ref(), env.eml(&id).as_slice());

    // A store that cannot write makes /healthz say so.
    daemon.pipeline.store().fail_writes(true);
    http.get(format!("{base}/healthz")).answers(503).await;
    daemon.pipeline.store().fail_writes(false);
    http.get(format!("{base}/healthz")).answers(200).await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn paused_distributor_queues_and_resume_sends() {
    let (env, daemon) = common::started("", "[distributor]\nenabled = false\n").await;
    let mut events = daemon.distributor.subscribe();
    let id = submit_short(daemon.smtp_addrs[0], "a@erp.local", "x@contoso.com", "p").await;
    assert_eq!(
        daemon.pipeline.store().record(&id).unwrap().unwrap().status,
        Status::Queued
    );
    assert!(env.outbox_ids().is_empty());
    daemon.distributor.resume();
    wait_sent(&daemon, &mut events, &id).await;
    assert_eq!(env.outbox_ids(), vec![id]);
    daemon.shutdown().await;
}
