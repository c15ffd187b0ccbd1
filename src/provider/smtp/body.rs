//! The body pump: the stored bytes after DATA in pieces, each write bounded, the
//! progress kept so a slow server is told apart from a dead one.

use super::*;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How much of the body has gone out, and when the server last took some.
#[derive(Debug)]
pub(super) struct BodyProgress {
    started: tokio::time::Instant,
    /// Bytes handed to the connection.
    sent: AtomicU64,
    /// ms after `started` when the last piece was taken.
    last_ms: AtomicU64,
    /// Every piece taken: now only the final reply is awaited.
    done: std::sync::atomic::AtomicBool,
    /// Why a piece of the body could not be read (the message was abandoned).
    unreadable: std::sync::Mutex<Option<String>>,
}

impl BodyProgress {
    pub(super) fn since_last(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The stored body cannot be read (a file body's disk): the attempt is deferred.
pub(super) fn unreadable(e: std::io::Error) -> Failure {
    Failure::local(
        Code::StoreDamaged,
        format!("the stored message body cannot be read: {e}"),
    )
}

/// The body in pieces (64 KB, read from its file for a large one); each piece pulled
/// means the one before was written. A piece that cannot be read abandons the message
/// (see [`wire::abandon_body`]): it is never ended with a dot.
pub(super) struct Pieces<'a> {
    pieces: crate::store::body::Pieces<'a>,
    progress: &'a BodyProgress,
    /// A file body's recorded checksum, and the bytes after `end` (its last CRLF): what
    /// went out is checked against it before the message is ended.
    check: Option<(u32, &'static [u8])>,
    crc: u32,
}

impl Pieces<'_> {
    pub(super) fn abandon(&self, why: String) {
        if let Ok(mut slot) = self.progress.unreadable.lock() {
            *slot = Some(why);
        }
        wire::abandon_body();
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = std::borrow::Cow<'a, [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let p = self.progress;
        p.last_ms.store(
            crate::time::duration_ms(p.started.elapsed()),
            Ordering::Relaxed,
        );
        match self.pieces.next() {
            Some(Ok(c)) => {
                p.sent.fetch_add(c.len() as u64, Ordering::Relaxed);
                if self.check.is_some() {
                    self.crc = crc32c::crc32c_append(self.crc, &c);
                }
                Some(c)
            }
            Some(Err(e)) => {
                self.abandon(e.to_string());
                None
            }
            None if self
                .check
                .is_some_and(|(want, tail)| crc32c::crc32c_append(self.crc, tail) != want) =>
            {
                self.abandon(
                    "the body file changed on disk after it was checked: it fails its checksum"
                        .into(),
                );
                None
            }
            None => {
                p.done.store(true, Ordering::Relaxed);
                stage::enter("end of DATA");
                None
            }
        }
    }
}

/// Sends the body after `354` and reads the final reply. A server that takes no data for
/// `t` fails at once ("stopped reading"); the whole body may take `t` plus its size at
/// 64 KB/s; the final reply comes within `t` of the last byte.
pub(super) async fn send_body(
    conn: &mut AsyncSmtpConnection,
    body: &Body,
    end: u64,
    t: Duration,
) -> Result<lettre::transport::smtp::response::Response, Failure> {
    stage::enter("message body");
    let progress = BodyProgress {
        started: tokio::time::Instant::now(),
        sent: AtomicU64::new(0),
        last_ms: AtomicU64::new(0),
        done: std::sync::atomic::AtomicBool::new(false),
        unreadable: std::sync::Mutex::new(None),
    };
    let ceiling = stage::body_bound(t, end as usize);
    let check = match body {
        Body::File {
            crc: Some(c), len, ..
        } => Some((*c, if end < *len { &b"\r\n"[..] } else { &b""[..] })),
        _ => None,
    };
    let pieces = Pieces {
        pieces: body.pieces(0..end),
        progress: &progress,
        check,
        crc: 0,
    };
    let send = wire::BODY_ABANDONED.scope(std::cell::Cell::new(false), async {
        let r = conn.message_iter(pieces).await;
        match progress.unreadable.lock().ok().and_then(|mut u| u.take()) {
            Some(why) => Err(why),
            None => Ok(r),
        }
    });
    tokio::select! {
        r = send => match r {
            Ok(r) => r.map_err(|e| failure::classify(&e, "end of DATA")),
            Err(why) => Err(Failure::local(
                Code::StoreDamaged,
                format!(
                    "message body: the stored body could not be read after {} of {} ({why}); the message was not ended, so the server discards what it got",
                    crate::text::size(progress.sent.load(Ordering::Relaxed)),
                    crate::text::size(end)
                ),
            )),
        },
        () = progress.watch(t, ceiling) => Err(progress.stalled(t, end, ceiling)),
    }
}

impl BodyProgress {
    /// Returns once the server took no data for `t`, or the body is not all taken by
    /// `ceiling`.
    async fn watch(&self, t: Duration, ceiling: Duration) {
        loop {
            tokio::time::sleep(Duration::from_millis(200).min(t)).await;
            if self.since_last() >= t {
                return;
            }
            if !self.done.load(Ordering::Relaxed) && self.started.elapsed() >= ceiling {
                return;
            }
        }
    }

    /// What went wrong when [`watch`](Self::watch) returned.
    fn stalled(&self, t: Duration, end: u64, ceiling: Duration) -> Failure {
        let sent = crate::text::size(self.sent.load(Ordering::Relaxed));
        if self.done.load(Ordering::Relaxed) {
            no_answer("end of DATA", t)
        } else if self.since_last() >= t {
            Failure::local(
                Code::ConnectionFailed,
                format!(
                    "message body: the server stopped reading: it took no data for {} after {sent} of {}",
                    stage::words(t),
                    crate::text::size(end)
                ),
            )
        } else {
            Failure::local(
                Code::ConnectionFailed,
                format!(
                    "message body: only {sent} of {} taken within {} (at least 64 KB/s are needed)",
                    crate::text::size(end),
                    stage::words(ceiling)
                ),
            )
        }
    }
}
