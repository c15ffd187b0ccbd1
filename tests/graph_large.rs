//! Large messages through Microsoft Graph (the draft path), the daemon binary against a
//! local stand-in speaking Graph's documented wire format (tests/common/msgraph.rs): a
//! message over Graph's 4 MB request goes as a draft with its large attachment uploaded
//! in chunks, and Python's email package finds the same parts at the other end; a chunk
//! refused mid-way is resumed from where the session is; an expired session is started
//! again; a message over the mailbox's limit fails with `message-too-large` and leaves no
//! draft; `save_to_sent_items = false` marks the draft to be deleted after submission.

mod common;

use std::process::Command;

use common::msgraph::MockMicrosoft;
use common::{DaemonProcess, TestEnv, submit_to};

fn graph_node(ms: &MockMicrosoft, extra: &str) -> (TestEnv, DaemonProcess) {
    let env = TestEnv::new(
        "max_message_size = \"60MB\"",
        &format!(
            "{}{extra}\n\
             [provider.oauth2]\ntenant_id = \"contoso\"\nclient_id = \"app-123\"\ntoken_url = \"{}\"\nclient_secret = \"s\"\n\
             [distributor]\ndefault_provider = \"exchange\"\n",
            common::graph_at("exchange", ms.graph_url()),
            ms.token_url("contoso")
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    (env, d)
}

/// A message made by Python's email package: text and HTML bodies, an inline PNG and a
/// PDF of `pdf` bytes.
fn made(dir: &std::path::Path, name: &str, pdf: usize) -> (std::path::PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let _out = common::succeeded(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/graph_large.py"
            ))
            .args(["make", path.to_str().unwrap(), &pdf.to_string()]),
    );
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// Python's email package compares the original with what the stand-in got: the draft's
/// MIME plus the uploaded attachments of draft `n`.
fn same_parts(ms: &MockMicrosoft, dir: &std::path::Path, original: &std::path::Path, n: usize) {
    let draft = ms.with(|s| s.drafts[n].clone());
    let draft_path = dir.join(format!("draft-{n}.eml"));
    std::fs::write(&draft_path, &draft.mime).unwrap();
    let mut uploaded = Vec::new();
    for (i, (item, bytes)) in draft.attachments.iter().enumerate() {
        let file = dir.join(format!("draft-{n}-att-{i}"));
        std::fs::write(&file, bytes).unwrap();
        uploaded.push(serde_json::json!({"item": item, "file": file}));
    }
    let list = dir.join(format!("draft-{n}.json"));
    std::fs::write(&list, serde_json::to_vec(&uploaded).unwrap()).unwrap();
    let out = common::succeeded(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/data/graph_large.py"
            ))
            .args(["compare"])
            .args([original, &draft_path, &list]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("same parts: 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_goes_as_a_draft_with_its_attachment_uploaded_in_chunks() {
    let ms = MockMicrosoft::start().await;
    let (_env, mut d) = graph_node(&ms, "");
    let dir = tempfile::tempdir().unwrap();
    // 9 MB of PDF: a 12 MB message, three times what one Graph request takes.
    let (path, raw) = made(dir.path(), "statement.eml", 9_000_000);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let idle = common::mem(d.child.id(), "VmRSS");
    let id = submit_to(d.smtp, "erp@contoso.com", &["a@contoso.com"], &raw).await;
    let rec = d.finished(&id).await;
    assert_eq!(rec["status"], "sent", "{rec:#}");
    // The message read once, its attachment decoded once (moved, not copied, out of the
    // parse): measured at about twice its size above idle (allocator slack included);
    // a copy more would pass 2.5x.
    let above = common::mem(d.child.id(), "VmHWM").saturating_sub(idle);
    eprintln!(
        "Graph draft path: {:.2}x the message's size above idle",
        above as f64 / raw.len() as f64
    );
    assert!(
        (above as f64) < 2.5 * raw.len() as f64,
        "{} MB above idle for a {} MB message",
        above >> 20,
        raw.len() >> 20
    );
    assert!(
        common::first_reply(&rec).contains("draft with 1 attachment uploaded"),
        "{rec:#}"
    );
    ms.with(|s| {
        assert!(s.sent.is_empty(), "not through sendMail");
        assert_eq!(s.drafts.len(), 1);
        let draft = &s.drafts[0];
        assert!(draft.sent && !draft.deleted);
        assert_eq!(draft.sender, "erp@contoso.com");
        assert!(
            draft.patches.is_empty(),
            "Sent Items keeps it (the default)"
        );
        // The draft fits one request; the PDF came in 3.2 MB chunks, multiples of
        // 320 KiB but the last, none with a bearer token.
        assert!(draft.mime.len() * 4 / 3 < 4 << 20);
        assert_eq!(draft.attachments.len(), 1);
        assert_eq!(draft.attachments[0].0["name"], "statement-4711.pdf");
        assert_eq!(draft.attachments[0].0["contentType"], "application/pdf");
        assert_eq!(draft.attachments[0].0["isInline"], false);
        assert_eq!(s.puts.len(), 3);
        for (i, (range, len, auth)) in s.puts.iter().enumerate() {
            assert!(!auth);
            assert!(*len <= 4 << 20);
            if i < 2 {
                assert!(len.is_multiple_of(320 * 1024), "{range}");
            }
        }
        assert_eq!(s.puts[0].0, "bytes 0-3276799/9000000");
        assert_eq!(s.puts[2].0, "bytes 6553600-8999999/9000000");
    });
    same_parts(&ms, dir.path(), &path, 0);
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_chunk_is_resumed_and_an_expired_session_started_again() {
    let ms = MockMicrosoft::start().await;
    let (_env, mut d) = graph_node(&ms, "");
    let dir = tempfile::tempdir().unwrap();
    let (path, raw) = made(dir.path(), "statement.eml", 9_000_000);

    // The second chunk is refused (503) once: the session's state says where to go on.
    ms.with(|s| s.fail_put = Some(1));
    let id = submit_to(d.smtp, "erp@contoso.com", &["a@contoso.com"], &raw).await;
    let rec = d.finished(&id).await;
    assert_eq!(rec["status"], "sent", "{rec:#}");
    ms.with(|s| {
        let ranges: Vec<&str> = s.puts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            ranges,
            [
                "bytes 0-3276799/9000000",
                "bytes 3276800-6553599/9000000",
                "bytes 3276800-6553599/9000000",
                "bytes 6553600-8999999/9000000"
            ]
        );
        assert_eq!(s.sessions.len(), 1);
    });
    same_parts(&ms, dir.path(), &path, 0);

    // The session expires after its first chunk: a new one takes the whole attachment.
    ms.with(|s| {
        s.fail_put = None;
        s.expire_after = Some(1);
        s.puts.clear();
    });
    let id = submit_to(d.smtp, "erp@contoso.com", &["a@contoso.com"], &raw).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let rec = loop {
        let rec = d.get_json(&format!("/api/messages/{id}")).await;
        if rec["status"] == "deferred" {
            break rec;
        }
        assert!(std::time::Instant::now() < deadline, "{rec:#}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Every session expires after one chunk here: given up for now after three
    // sessions (to be tried again later), and the draft deleted.
    assert!(
        common::first_reply(&rec).contains("expired 3 times"),
        "{rec:#}"
    );
    let r = common::post_action(format!("http://{}/api/messages/{id}/cancel", d.status)).await;
    assert_eq!(r.status(), 200);
    ms.with(|s| {
        assert_eq!(s.sessions.len(), 1 + 3);
        assert!(s.drafts[1].deleted && !s.drafts[1].sent);
    });
    // The next one's first session expires after two chunks of three: a new session
    // takes the whole attachment again and the message goes.
    ms.with(|s| s.expire_only = Some(4));
    let id = submit_to(d.smtp, "erp@contoso.com", &["a@contoso.com"], &raw).await;
    let rec = d.finished(&id).await;
    assert_eq!(rec["status"], "sent", "{rec:#}");
    ms.with(|s| {
        // Two chunks in its first session, then it expired: all three in a new one.
        assert_eq!(s.sessions.len(), 4 + 2);
        assert!(s.drafts[2].sent);
    });
    same_parts(&ms, dir.path(), &path, 2);
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_mailboxs_limit_fails_as_message_too_large_and_leaves_no_draft() {
    let ms = MockMicrosoft::start().await;
    ms.with(|s| s.mailbox_limit = Some(35 << 20));
    let (_env, mut d) = graph_node(&ms, "");
    let dir = tempfile::tempdir().unwrap();
    // 30 MB of PDF: a 40 MB message.
    let (_, raw) = made(dir.path(), "big.eml", 30_000_000);
    assert!(raw.len() > 40_000_000);
    let id = submit_to(d.smtp, "erp@contoso.com", &["a@contoso.com"], &raw).await;
    let rec = d.finished(&id).await;
    assert_eq!(rec["status"], "failed", "{rec:#}");
    let attempt = &rec["attempts"][0];
    assert_eq!(attempt["diagnosis"]["code"], "message-too-large", "{rec:#}");
    assert!(
        attempt["reply"]
            .as_str()
            .unwrap()
            .contains("ErrorMessageSizeExceeded"),
        "{rec:#}"
    );
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 1, "not retried");
    ms.with(|s| {
        assert!(s.puts.is_empty());
        assert!(s.drafts[0].deleted && !s.drafts[0].sent);
    });
    assert_eq!(d.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_to_sent_items_false_marks_the_draft_to_be_deleted_after_submission() {
    let ms = MockMicrosoft::start().await;
    let (_env, mut d) = graph_node(&ms, "save_to_sent_items = false");
    let id = submit_to(
        d.smtp,
        "erp@contoso.com",
        &["a@contoso.com"],
        b"From: erp@contoso.com\r\nTo: a@contoso.com\r\nSubject: no copy\r\n\r\nx\r\n",
    )
    .await;
    let rec = d.finished(&id).await;
    assert_eq!(rec["status"], "sent", "{rec:#}");
    ms.with(|s| {
        assert!(s.sent.is_empty(), "sendMail with MIME cannot say it");
        let draft = &s.drafts[0];
        assert!(draft.sent);
        assert_eq!(
            draft.patches,
            [serde_json::json!({
                "singleValueExtendedProperties": [{"id": "Boolean 0x0E01", "value": "true"}]
            })]
        );
        assert!(String::from_utf8_lossy(&draft.mime).contains("Subject: no copy"));
    });
    assert_eq!(d.terminate().code(), Some(0));
}

/// Exchange Online allows four concurrent requests per mailbox: with ten deliveries at
/// once allowed, one mailbox still gets at most four requests at a time, and two
/// mailboxes four each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_four_requests_at_once_per_mailbox() {
    let ms = MockMicrosoft::start().await;
    ms.with(|s| s.send_delay_ms = 300);
    let (_env, mut d) = graph_node(&ms, "max_connections = 10");
    let mut ids = Vec::new();
    for sender in ["erp@contoso.com", "billing@contoso.com"] {
        for n in 0..8 {
            let body = format!("From: {sender}\r\nTo: a@contoso.com\r\nSubject: {n}\r\n\r\nx\r\n");
            ids.push(submit_to(d.smtp, sender, &["a@contoso.com"], body.as_bytes()).await);
        }
    }
    for id in &ids {
        assert_eq!(d.finished(id).await["status"], "sent");
    }
    ms.with(|s| {
        assert_eq!(s.sent.len(), 16);
        for sender in ["erp@contoso.com", "billing@contoso.com"] {
            assert_eq!(s.max_in_flight[sender], 4, "{:?}", s.max_in_flight);
        }
    });
    assert_eq!(d.terminate().code(), Some(0));
}
