//! mailgate-load: an SMTP load generator for the benchmark. Opens C concurrent sessions
//! to a target, sends N messages of S bytes (pipelining MAIL, RCPT and DATA when the
//! server offers PIPELINING), and prints messages/second and the submission latency
//! percentiles: the time from the end of DATA (`.`) to the `250`. Bounded: it stops
//! after N messages or at --timeout. Loopback targets only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(name = "mailgate-load", about = "SMTP load generator (loopback only)")]
struct Args {
    /// Target address (must be loopback).
    #[arg(long)]
    target: SocketAddr,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Hold this many idle connections open (after their greeting) instead of sending.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// How long to hold idle connections.
    #[arg(long, default_value = "5s")]
    hold: humantime::Duration,
    /// Give up after this long.
    #[arg(long, default_value = "600s")]
    timeout: humantime::Duration,
    /// Do not pipeline, even when offered.
    #[arg(long)]
    no_pipelining: bool,
}

struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    pipelining: bool,
}

impl Conn {
    async fn reply(&mut self) -> std::io::Result<String> {
        loop {
            let mut l = String::new();
            if self.r.read_line(&mut l).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                return Ok(l);
            }
            if l[4..].trim().eq_ignore_ascii_case("PIPELINING") {
                self.pipelining = true;
            }
        }
    }

    async fn open(addr: SocketAddr, no_pipelining: bool) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::new(r),
            w,
            pipelining: false,
        };
        expect(&c.reply().await?, "220")?;
        c.w.write_all(b"EHLO mailgate-load\r\n").await?;
        expect(&c.reply().await?, "250")?;
        if no_pipelining {
            c.pipelining = false;
        }
        Ok(c)
    }

    /// One transaction; returns the latency from the end of DATA to the final reply.
    async fn send(&mut self, n: usize, body: &[u8]) -> std::io::Result<Duration> {
        let env =
            format!("MAIL FROM:<load@bench.local>\r\nRCPT TO:<sink{n}@bench.example>\r\nDATA\r\n");
        if self.pipelining {
            self.w.write_all(env.as_bytes()).await?;
            for code in ["250", "250", "354"] {
                expect(&self.reply().await?, code)?;
            }
        } else {
            for (line, code) in env.split_inclusive("\r\n").zip(["250", "250", "354"]) {
                self.w.write_all(line.as_bytes()).await?;
                expect(&self.reply().await?, code)?;
            }
        }
        let mut data =
            format!("Subject: load {n}\r\nMessage-ID: <load{n}@bench.local>\r\n\r\n").into_bytes();
        data.extend_from_slice(body);
        data.extend_from_slice(b".\r\n");
        self.w.write_all(&data).await?;
        let t = Instant::now();
        expect(&self.reply().await?, "250")?;
        Ok(t.elapsed())
    }
}

fn expect(reply: &str, code: &str) -> std::io::Result<()> {
    if reply.starts_with(code) {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "expected {code}, got {}",
            reply.trim_end()
        )))
    }
}

/// A body of about `size` bytes in 76-character lines.
fn body(size: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopqrs\r\n";
    let mut b = Vec::with_capacity(size + line.len());
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !args.target.ip().is_loopback() {
        eprintln!("mailgate-load only targets loopback addresses");
        std::process::exit(2);
    }
    if args.idle > 0 {
        // Connect them all at once; a server that does not greet every connection at
        // once (a process limit) still holds them in its backlog.
        let mut tasks = Vec::new();
        for _ in 0..args.idle {
            let target = args.target;
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(target).await.ok()?;
                let mut buf = [0u8; 256];
                let greeted = tokio::time::timeout(Duration::from_secs(3), async {
                    use tokio::io::AsyncReadExt;
                    s.read(&mut buf).await
                })
                .await
                .is_ok_and(|r| r.is_ok_and(|n| buf[..n].starts_with(b"220")));
                Some((s, greeted))
            }));
        }
        let mut held = Vec::new();
        let mut greeted = 0;
        for t in tasks {
            if let Ok(Some((s, g))) = t.await {
                greeted += usize::from(g);
                held.push(s);
            }
        }
        println!(
            "idle={} greeted={greeted} held_for={}",
            held.len(),
            args.hold
        );
        tokio::time::sleep(*args.hold).await;
        return;
    }
    let body = Arc::new(body(args.size));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + *args.timeout;
    let mut tasks = Vec::new();
    for _ in 0..args.sessions {
        let (body, next) = (body.clone(), next.clone());
        let (target, total, nopipe) = (args.target, args.messages, args.no_pipelining);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut conn: Option<Conn> = None;
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total || Instant::now() > deadline {
                    break;
                }
                if conn.is_none() {
                    conn = Conn::open(target, nopipe).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    errors += 1;
                    continue;
                };
                match c.send(n, &body).await {
                    Ok(d) => lat.push(d),
                    Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            if let Some(mut c) = conn {
                let _ = c.w.write_all(b"QUIT\r\n").await;
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            lat.extend(l);
            errors += e;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "messages={} errors={errors} sessions={} size={} seconds={secs:.3} rate={:.1} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        lat.len(),
        args.sessions,
        args.size,
        lat.len() as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        percentile(&lat, 0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
}
