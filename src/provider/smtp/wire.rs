//! The stream lettre talks over: TCP or TLS (rustls, after the handshake mailgate does
//! itself), with the bytes read ahead of it, and a body abandoned in the middle never
//! ended with a dot.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The stream lettre talks over: TCP or TLS, with bytes to read first (the greeting
/// after a STARTTLS done by hand: lettre starts a connection by reading one).
#[derive(Debug)]
pub struct Wire {
    prefix: Vec<u8>,
    at: usize,
    inner: Inner,
    heard: Option<Heard>,
}

/// What the server said at the start of a connection (its greeting and EHLO reply, up
/// to [`HEARD_MAX`] bytes), for the extensions lettre does not keep (PIPELINING). The
/// wire records until the bytes are taken.
pub type Heard = Arc<Mutex<Option<Vec<u8>>>>;

/// The most of a connection's start a [`Heard`] keeps.
const HEARD_MAX: usize = 16 * 1024;

#[derive(Debug)]
enum Inner {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

tokio::task_local! {
    /// Set while a message body is written; turns true when its body cannot be read
    /// (see [`abandon_body`]).
    pub static BODY_ABANDONED: std::cell::Cell<bool>;
}

/// The message being written cannot be read to its end: every later write on the
/// connection fails, so lettre never sends the `.` that would end a truncated message
/// (the server sees the connection close inside DATA and discards what it got). Only
/// inside [`BODY_ABANDONED`]'s scope, which the body writer opens.
pub fn abandon_body() {
    let _ = BODY_ABANDONED.try_with(|a| a.set(true));
}

fn abandoned() -> bool {
    BODY_ABANDONED.try_with(|a| a.get()).unwrap_or(false)
}

/// What the TLS session agreed on, for `verify`.
#[derive(Debug, Clone)]
pub struct Session {
    /// `TLSv1.3` and the like.
    pub version: String,
    /// The cipher suite.
    pub cipher: String,
}

impl Wire {
    /// A TLS stream, with `prefix` read before anything from the server.
    pub fn tls(stream: tokio_rustls::client::TlsStream<TcpStream>, prefix: Vec<u8>) -> Wire {
        Wire {
            prefix,
            at: 0,
            inner: Inner::Tls(Box::new(stream)),
            heard: None,
        }
    }

    /// A plain TCP stream (`tls = "none"`).
    pub fn plain(stream: TcpStream) -> Wire {
        Wire {
            prefix: Vec::new(),
            at: 0,
            inner: Inner::Plain(stream),
            heard: None,
        }
    }

    /// The same wire, recording what the server says into `heard` until it is taken.
    pub fn heard_by(mut self, heard: Heard) -> Wire {
        self.heard = Some(heard);
        self
    }

    /// The negotiated version and cipher suite (None for a plain stream).
    pub fn session(&self) -> Session {
        let Inner::Tls(s) = &self.inner else {
            return Session {
                version: "none".into(),
                cipher: "none".into(),
            };
        };
        let c = s.get_ref().1;
        Session {
            version: c.protocol_version().map_or_else(
                || "?".into(),
                |v| format!("{v:?}").replace("TLSv1_", "TLS 1."),
            ),
            cipher: c
                .negotiated_cipher_suite()
                .map_or_else(|| "?".into(), |s| format!("{:?}", s.suite())),
        }
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let (Poll::Ready(Ok(())), Some(h)) = (&read, &self.heard) {
            let mut taken = false;
            if let Ok(mut g) = h.lock() {
                match g.as_mut() {
                    Some(v) if v.len() < HEARD_MAX => v.extend_from_slice(&buf.filled()[before..]),
                    Some(_) => {}
                    None => taken = true,
                }
            }
            if taken {
                self.heard = None;
            }
        }
        read
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if abandoned() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the message body could not be read to its end; the message is not ended",
            )));
        }
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, data),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for Wire {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        match &self.inner {
            Inner::Plain(s) => s.peer_addr(),
            Inner::Tls(s) => s.get_ref().0.peer_addr(),
        }
    }
}
