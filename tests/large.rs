//! Large messages through the daemon as it runs: memory that does not grow with the
//! message (one copy while it is received, none while it waits or goes out), bodies in
//! files beside the store with the store's guarantees, and a body that changes on disk
//! after its check is never ended upstream.

mod common;

use std::time::Duration;

use common::upstream::{Script, Upstream};
use common::{DaemonProcess, TestEnv, mem, write};

/// A message of about `size` bytes: headers, a text part and a PDF-like attachment in
/// base64 lines of 76 (as mail programs write them).
fn message(size: usize, subject: &str) -> Vec<u8> {
    let mut m = format!(
        "From: erp@contoso.com\r\nTo: a@contoso.com\r\nSubject: {subject}\r\n\
         Date: Thu, 03 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@erp.contoso.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nThe statement is attached.\r\n\
         --b1\r\nContent-Type: application/pdf; name=\"statement.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    let mut n: u32 = 7;
    while m.len() < size - 200 {
        let line: String = (0..76)
            .map(|_| {
                n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    [(n >> 16) as usize % 64] as char
            })
            .collect();
        m.extend_from_slice(line.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--b1--\r\n");
    m
}

/// A daemon relaying to an upstream running `script`, with `extra` keys on its provider.
async fn relayed(script: Script, extra: &str) -> (Upstream, TestEnv, DaemonProcess) {
    let up = Upstream::start(script).await;
    let env = TestEnv::new("", "");
    write(
        &env,
        &format!(
            "{}timeout = \"30s\"\n{extra}\
             [distributor]\ndefault_provider = \"up\"\n",
            common::plain_smtp("up", up.addr.port())
        ),
    );
    let d = DaemonProcess::start(&env.config_path);
    (up, env, d)
}

/// One 25 MB message submitted over SMTP and relayed upstream: the daemon's peak
/// resident memory rises by at most one and a half times the message's size, the
/// upstream gets every byte, the body is a file beside the store, and `store check`
/// counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_25_mb_message_costs_at_most_one_and_a_half_times_its_size() {
    let (up, env, mut d) = relayed(Script::default(), "").await;
    let pid = d.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = mem(pid, "VmRSS");
    let data = message(25_000_000, "statement-4711");
    let (mut s, _) = common::Smtp::connect(d.smtp).await.unwrap();
    s.cmd("EHLO erp.local").await.unwrap();
    let reply = s
        .send("erp@contoso.com", &["a@contoso.com"], &data)
        .await
        .unwrap();
    let id = common::queued_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    let body_file = env.dir.path().join("data/mailgate.bodies").join(&id);
    assert_eq!(
        std::fs::metadata(&body_file).map(|m| m.len()).ok(),
        Some(
            d.get_json(&format!("/api/messages/{id}")).await["size"]
                .as_u64()
                .unwrap()
        ),
        "the body is a file beside the store, as long as the record says"
    );
    d.wait_sent(std::slice::from_ref(&id), Duration::from_secs(60));
    let peak = mem(pid, "VmHWM");
    let above = peak.saturating_sub(idle);
    assert!(
        above as f64 <= 1.5 * data.len() as f64,
        "peak {} MB, idle {} MB: {} MB above idle for a {} MB message (at most 1.5x)",
        peak >> 20,
        idle >> 20,
        above >> 20,
        data.len() / 1_000_000
    );
    eprintln!(
        "25 MB message: idle {} MB, peak {} MB, {:.2}x its size above idle",
        idle >> 20,
        peak >> 20,
        above as f64 / data.len() as f64
    );
    let got = up.messages();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].data.ends_with(&data[data.len() - 1000..]) && got[0].data.len() > data.len(),
        "the upstream got the whole message"
    );
    // Only the trace header is added (the message has its Date and Message-ID).
    let start = got[0].data.len() - data.len();
    assert!(got[0].data.starts_with(b"Received: from erp.local"));
    assert!(got[0].data[..start].ends_with(b"\r\n"));
    assert!(got[0].data[start..] == data[..], "every byte as submitted");
    // The raw download streams the stored bytes whole.
    let raw = common::get(format!("http://{}/api/messages/{id}/eml", d.status))
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    let raw = raw.bytes().await.unwrap();
    assert_eq!(
        raw.len() as u64,
        std::fs::metadata(&body_file).unwrap().len()
    );
    assert!(raw.ends_with(&data[data.len() - 1000..]));

    assert_eq!(d.terminate().code(), Some(0));
    let out = common::cli_ok(&env, &["store", "check"]);
    assert!(out.contains("1 body (1 in a file, "), "{out}");
    // A file no record refers to (a crash between the file and its commit) is named by
    // the check and removed when the daemon starts.
    let stray = env.dir.path().join("data/mailgate.bodies/01STRAY");
    std::fs::write(&stray, b"never acknowledged").unwrap();
    let (code, out, _) = common::cli(&env, &["store", "check"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("01STRAY: a body file no record refers to"),
        "{out}"
    );
    let mut d = DaemonProcess::start(&env.config_path);
    d.wait_log(
        |v| {
            v["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("removed message body files")
        },
        Duration::from_secs(5),
    );
    assert!(!stray.exists());
    assert!(body_file.exists(), "the file of a record stays");
    assert_eq!(d.terminate().code(), Some(0));
}

/// Twenty 5 MB messages submitted at once: the daemon stays under 200 MB at its peak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_5_mb_messages_at_once_stay_under_200_mb() {
    let (up, _env, mut d) = relayed(Script::default(), "max_connections = 10\n").await;
    let pid = d.child.id();
    let data = std::sync::Arc::new(message(5_000_000, "report"));
    let mut sessions = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (addr, data) = (d.smtp, data.clone());
        sessions.spawn(async move {
            let (mut s, _) = common::Smtp::connect(addr).await.unwrap();
            s.cmd("EHLO erp.local").await.unwrap();
            let r = s
                .send("erp@contoso.com", &["a@contoso.com"], &data)
                .await
                .unwrap();
            common::queued_id(&r).unwrap_or_else(|| panic!("{r}"))
        });
    }
    let ids = sessions.join_all().await;
    d.wait_sent(&ids, Duration::from_secs(60));
    assert_eq!(up.messages().len(), 20);
    let peak = mem(pid, "VmHWM");
    assert!(peak < 200 << 20, "peak {} MB", peak >> 20);
    eprintln!("twenty 5 MB messages: peak {} MB", peak >> 20);
    assert_eq!(d.terminate().code(), Some(0));
}

/// A body file changed on disk after its check, while the upstream is still taking
/// MAIL and RCPT: what went out fails the checksum at the end, the message is not
/// ended (the upstream never gets it), and the attempt says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_changed_on_disk_before_it_goes_out_is_never_ended() {
    let (up, env, mut d) = relayed(
        Script {
            delay_ms: 1500,
            ..Script::default()
        },
        "",
    )
    .await;
    let data = message(1_000_000, "changes");
    let id = common::submit_to(d.smtp, "erp@contoso.com", &["a@contoso.com"], &data).await;
    // Checked as the attempt began; the upstream now takes 1.5 s per reply.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let path = env.dir.path().join("data/mailgate.bodies").join(&id);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"CHANGED", 500_000).unwrap();
    }
    let line = d.wait_log(
        |v| v["message"] == "delivery" && v["id"] == id.as_str(),
        Duration::from_secs(30),
    );
    assert_eq!(line["status"], "deferred", "{line}");
    let r = d.get_json(&format!("/api/messages/{id}")).await;
    let last = &r["attempts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["diagnosis"]["code"], "store-damaged", "{r:#}");
    let reply = last["reply"].as_str().unwrap();
    assert!(
        reply.contains("changed on disk") && reply.contains("not ended"),
        "{reply}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        up.messages().is_empty(),
        "the upstream never got a message end"
    );
    assert_eq!(d.terminate().code(), Some(0));
    let (code, out, _) = common::cli(&env, &["store", "check"]);
    assert_ne!(code, 0);
    assert!(out.contains("fails its checksum"), "{out}");
}
