//! The SMTP door fed a byte stream: the listener's own session loop over an in-memory
//! stream, with the pipeline that records what it is handed (`smtp::harness`, which the
//! door's unit tests use too).

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::config::Config;
use crate::smtp::harness::{FakePipeline, listener_context};
use crate::smtp::listener::{ListenerContext, run_session};
use crate::smtp::policy::FixedSpace;
use crate::smtp::session::Session;

/// A client that sends its bytes `chunk` at a time, then closes its half; what the
/// server writes is kept. Never blocks, so any amount of input and output fits.
struct Script<'a> {
    input: &'a [u8],
    chunk: usize,
    out: Vec<u8>,
}

impl AsyncRead for Script<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.input.len()).min(buf.remaining());
        let (now, later) = self.input.split_at(n);
        buf.put_slice(now);
        self.input = later;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The door as the fuzzer meets it: no users with passwords (so no AUTH to spend time
/// on), at most three recipients, 64 KB messages.
struct Door {
    ctx: ListenerContext,
    fake: Arc<FakePipeline>,
    runtime: tokio::runtime::Runtime,
}

fn door() -> &'static Door {
    static DOOR: std::sync::OnceLock<Door> = std::sync::OnceLock::new();
    DOOR.get_or_init(|| {
        let text = "[smtp]\nhostname = \"mx.test\"\nmax_message_size = 65536\nmax_recipients = 3\n\
                    [store]\npath = \"/nonexistent/mailgate-fuzz/s.redb\"\n\
                    [[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"/nonexistent/mailgate-fuzz/outbox\"\n";
        let config = Config::parse(text, Path::new("fuzz.toml")).unwrap_or_else(|e| panic!("{e}"));
        let fake = Arc::new(FakePipeline::default());
        Door {
            ctx: listener_context(config, fake.clone(), Arc::new(FixedSpace(true))),
            fake,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime"),
        }
    })
}

/// The SMTP session and its listener loop (command parsing, the state machine, DATA)
/// fed a client's bytes. The first byte chooses the client (on this host, or a stranger
/// outside `allowed_networks`) and how the bytes arrive (all at once or in small
/// pieces). Properties: every line the server writes is a well-formed reply; each
/// `250` after DATA answers a message the pipeline got, complete (its terminator was
/// sent); a stranger without AUTH never gets a message in (no open relay); no message
/// has more recipients than `max_recipients`.
pub fn smtp_session(data: &[u8]) {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let stranger = ctl & 1 == 1;
    let chunk = if ctl & 2 == 0 {
        1 << 20
    } else {
        1 + usize::from(ctl >> 2)
    };
    let peer: SocketAddr = if stranger {
        "192.0.2.7:40000"
    } else {
        "127.0.0.1:40000"
    }
    .parse()
    .expect("an address");
    let d = door();
    d.fake.got.lock().expect("not poisoned").clear();
    let mut wire = Script {
        input,
        chunk,
        out: Vec::new(),
    };
    d.runtime.block_on(async {
        let (_keep, shutdown) = watch::channel(false);
        let session = Session::new(d.ctx.policy(), peer);
        let _ = run_session(&mut wire, session, &d.ctx, shutdown, true).await;
    });
    let got = std::mem::take(&mut *d.fake.got.lock().expect("not poisoned"));

    let out = wire.out;
    assert!(out.ends_with(b"\r\n"), "the last reply is cut: {out:?}");
    let mut queued = 0;
    for line in out.split_inclusive(|&b| b == b'\n') {
        let ok = line.len() >= 5
            && line.len() <= crate::smtp::reply::MAX_REPLY_LINE
            && line[..3].iter().all(u8::is_ascii_digit)
            && (b'2'..=b'5').contains(&line[0])
            && (line.len() == 5 || matches!(line[3], b' ' | b'-'))
            && line.ends_with(b"\r\n")
            && !line[..line.len() - 2]
                .iter()
                .any(|&b| b < 0x20 && b != b'\t');
        assert!(ok, "not a reply line: {:?}", String::from_utf8_lossy(line));
        if line.starts_with(b"250 2.0.0 OK queued as ") {
            queued += 1;
        }
    }
    assert_eq!(queued, got.len(), "a 250 without a message in the pipeline");
    let terminators = memchr::memmem::find_iter(input, b".\r\n").count();
    assert!(
        queued <= terminators,
        "{queued} messages acknowledged, {terminators} terminators sent"
    );
    if stranger {
        assert!(got.is_empty(), "a stranger without AUTH got mail in");
    }
    for s in &got {
        assert!(!s.rcpts.is_empty() && s.rcpts.len() <= 3, "{:?}", s.rcpts);
        super::assert_no_bare_newline(&s.raw, "a message handed to the pipeline");
    }
}
