//! A hostile TCP peer for the "never wedge" tests: it accepts connections and then, as
//! told, says nothing at all, trickles its answer one byte at a time, or answers
//! properly (an HTTP response given by the test, or nothing for a Redis that hangs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the peer does with each new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accept and never answer (the connection stays open).
    Silent,
    /// Read the request, then send the answer one byte every this many ms.
    Trickle(u64),
    /// Read the request and send the answer at once, then close.
    Answer,
}

#[derive(Clone)]
pub struct Hostile {
    pub addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    answer: Arc<Vec<u8>>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
}

impl Hostile {
    /// A peer whose proper answer is `answer` (the whole response, bytes as sent).
    pub async fn start(mode: Mode, answer: Vec<u8>) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = Hostile {
            addr: listener.local_addr().unwrap(),
            mode: Arc::new(Mutex::new(mode)),
            answer: Arc::new(answer),
            connections: Arc::default(),
        };
        let peer = h.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                peer.connections.fetch_add(1, Ordering::SeqCst);
                let mode = *peer.mode.lock().unwrap();
                let answer = peer.answer.clone();
                tokio::spawn(async move {
                    if mode == Mode::Silent {
                        let _hold = stream;
                        return std::future::pending::<()>().await;
                    }
                    read_request(&mut stream).await;
                    match mode {
                        Mode::Trickle(ms) => {
                            for b in answer.iter() {
                                if stream.write_all(&[*b]).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                            }
                        }
                        _ => {
                            let _ = stream.write_all(&answer).await;
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        h
    }

    /// An HTTP peer answering `status` with a JSON `body`.
    pub async fn http(mode: Mode, status: &str, body: &str) -> Hostile {
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        Hostile::start(mode, answer.into_bytes()).await
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Reads an HTTP request's head and its Content-Length body (whatever arrives within
/// a second, for other protocols).
async fn read_request(stream: &mut tokio::net::TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
    }
}
