//! mailgate-store-bench: what the store costs on disk. Commits N finished messages of S
//! bytes through the store's real write path (the same group-committed transactions a
//! submission and its delivery record make), prints the file size and the bytes per
//! stored message, lets retention delete them all, then commits N more and prints the size
//! again: freed pages must be reused, so the second round must not grow the file by the
//! first round's size. Runs in a temporary directory; bounded by N.

use std::time::{Duration, Instant};

use clap::Parser;
use mailgate::history::{Recipient, Record, Status};
use mailgate::store::{Mutation, Store};

#[derive(Parser, Debug)]
#[command(
    name = "mailgate-store-bench",
    about = "store size per message, and after retention"
)]
struct Args {
    /// Messages per round.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1536)]
    size: usize,
    /// Messages per transaction (as group commit batches them under load).
    #[arg(long, default_value_t = 100)]
    batch: usize,
}

fn record(id: String, now: u64, size: usize) -> Record {
    Record {
        id,
        status: Status::Sent,
        received_at: mailgate::time::Stamp::at_ms(now),
        client: "127.0.0.1:52114".into(),
        helo: "erp01.contoso.local".into(),
        auth_login: None,
        user: Some("erp".into()),
        original_sender: "noreply@erp.local".into(),
        sender: "billing@contoso.com".into(),
        recipients: vec![Recipient {
            address: "customer@example.com".into(),
            status: Status::Sent,
            reply: Some("250 2.0.0 OK <queued>".into()),
            blind: Some(false),
            provider: Some("office365".into()),
            next_attempt_at: None,
        }],
        subject: Some("Invoice 1001".into()),
        message_id: Some("<01JABCDEFGHJKMNPQRSTVWXYZ0@mailgate.test>".into()),
        size: size as u64,
        provider: "office365".into(),
        pinned: false,
        deferrals: 0,
        throttle_deferrals: 0,
        throttle_counted_at: None,
        sent_at: Some(mailgate::time::Stamp::at_ms(now)),
        next_attempt_at: None,
        waiting: None,
        cancelled: None,
        notice_of: None,
        notices: Vec::new(),
        attempts: vec![mailgate::history::Attempt {
            at: mailgate::time::Stamp::at_ms(now),
            provider: "office365".into(),
            reply: "250 2.0.0 OK <queued>".into(),
            diagnosis: None,
            note: None,
        }],
    }
}

async fn round(store: &Store, args: &Args, at_ms: u64) -> Duration {
    let body = {
        let mut b = b"From: billing@contoso.com\r\nTo: customer@example.com\r\nSubject: Invoice 1001\r\n\r\n".to_vec();
        b.resize(args.size.saturating_sub(2), b'x');
        b.extend_from_slice(b"\r\n");
        b
    };
    let started = Instant::now();
    let mut n = 0;
    while n < args.messages {
        let mut m = Vec::new();
        for _ in 0..args.batch.min(args.messages - n) {
            let id = ulid::Ulid::from_parts(at_ms + n as u64, n as u128).to_string();
            let rec = record(id, at_ms, args.size);
            m.push(Mutation::Insert {
                body: mailgate::store::NewBody::Memory(body.clone()),
                record: Box::new(rec.clone()),
                due_ms: at_ms,
            });
            m.push(Mutation::Update {
                record: Box::new(rec),
                due_ms: None,
            });
            n += 1;
        }
        store.write(m).await.expect("commit");
    }
    started.elapsed()
}

/// The Email history page on this store: the daemon started on it, each page fetched
/// over HTTP ten times; the median time to the last byte.
async fn pages(path: &std::path::Path, n: u64) {
    let text = format!(
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\n[store]\npath = \"{}\"\nmin_free_space = 0\n[status]\nlisten = \"127.0.0.1:0\"\n[distributor]\nenabled = false\n[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"{}\"\n",
        path.display(),
        path.with_extension("outbox").display()
    );
    let config =
        mailgate::config::Config::parse(&text, std::path::Path::new("bench.toml")).expect("config");
    let daemon = mailgate::Daemon::start(config).await.expect("daemon");
    let counts = daemon.pipeline.store().status_counts().expect("counts");
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(total, n, "the daemon sees every record");
    let http = reqwest::Client::new();
    for (label, q) in [
        ("first page (50 newest)", "/messages"),
        ("Failed filter (status index)", "/messages?status=failed"),
        ("Sent filter, first page", "/messages?status=sent"),
        ("search q=invoice (matches at once)", "/messages?q=invoice"),
        (
            "search q=nomatch (20,000 records examined)",
            "/messages?q=nomatch",
        ),
    ] {
        let mut times = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let body = http
                .get(format!("http://{}{q}", daemon.status_addr))
                .send()
                .await
                .expect("get")
                .text()
                .await
                .expect("body");
            times.push(t.elapsed());
            assert!(body.contains("Email history"));
        }
        times.sort();
        println!(
            "page with {n} records, {label}: {:.1} ms (median of 10)",
            times[5].as_secs_f64() * 1000.0
        );
    }
    daemon.shutdown().await;
}

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("mailgate-store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("mailgate.redb");
    let store = Store::open(&path).expect("open store");
    let day: u64 = 86_400_000;
    // Recent records (the daemon started for the page timings must not prune them);
    // retention below is asked for "31 days from now".
    let t0 = mailgate::time::now_ms() - 3_600_000;

    let took = round(&store, &args, t0).await;
    let first = size(&path);
    store.close().await;
    let n = args.messages as u64;
    for t in Store::space(&path).expect("table space") {
        println!(
            "  table {:<10} {:>6} bytes/message in pages, {:>6} stored",
            t.table,
            t.page_bytes / n,
            t.stored_bytes / n
        );
    }
    pages(&path, n).await;
    let store = Store::open(&path).expect("reopen store");
    println!(
        "store: {} finished messages of {} bytes: file {:.1} MB, {} bytes per message ({:.0} msg/s committed)",
        args.messages,
        args.size,
        first as f64 / 1e6,
        first / args.messages as u64,
        args.messages as f64 / took.as_secs_f64()
    );
    let started = Instant::now();
    let deleted = store
        .prune(
            Duration::from_secs(30 * 86_400),
            mailgate::time::now_ms() + 31 * day,
        )
        .await
        .expect("prune");
    println!(
        "retention: deleted {deleted} in {:.1} s; file {:.1} MB (redb keeps the file; freed pages are reused)",
        started.elapsed().as_secs_f64(),
        size(&path) as f64 / 1e6
    );
    round(&store, &args, t0 + 1).await;
    let second = size(&path);
    println!(
        "store: {} more after retention: file {:.1} MB ({:+.1} MB against the first round)",
        args.messages,
        second as f64 / 1e6,
        (second as f64 - first as f64) / 1e6
    );
    store.close().await;
    let used: u64 = Store::space(&path)
        .expect("table space")
        .iter()
        .map(|t| t.page_bytes)
        .sum();
    println!(
        "  pages in use after the second round: {:.1} MB ({} bytes per live message)",
        used as f64 / 1e6,
        used / n
    );
    let _ = std::fs::remove_dir_all(&dir);
}
