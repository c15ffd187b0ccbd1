//! The listener: accepts connections, runs one task per client, and is the only place
//! that reads and writes SMTP sockets. Lines (at most 512 octets) go to the session;
//! replies to pipelined commands are written together once no complete line is left;
//! DATA goes through the [`DataReader`]. Connections beyond `max_connections` get `421`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::data::DataReader;
use super::policy::{Policy, SpaceCheck};
use super::reply::Reply;
use super::session::{Action, DataVerdict, Session};
use crate::config::{BareNewlines, Live};
use crate::metrics::Metrics;
use crate::pipeline::{Submit, SubmitError};

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_LINE: usize = 512;

/// Shared by every connection of every listener.
pub struct ListenerContext {
    /// Where accepted mail goes.
    pub submit: Arc<dyn Submit>,
    /// The configuration in force (the session policy is built from it).
    pub live: Arc<Live>,
    /// The free-disk check of the policy.
    pub space: Arc<dyn SpaceCheck>,
    /// Counters of the door.
    pub metrics: Arc<Metrics>,
    /// The policy of the configuration last seen, rebuilt when a reload replaces it.
    pub policy: std::sync::Mutex<Option<(Arc<crate::config::Config>, Arc<Policy>)>>,
    /// Connection permits (`max_connections`).
    pub permits: Arc<Semaphore>,
    /// A silent client is closed after this long.
    pub idle_timeout: Duration,
    /// STARTTLS, when `tls_cert`/`tls_key` are set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// AUTH failures per client address.
    pub auth_failures: super::auth::FailureLimiter,
    /// New connections per minute per address outside `allowed_networks`.
    pub connection_rate: Option<governor::DefaultKeyedRateLimiter<std::net::IpAddr>>,
    /// Connections open at once per address outside `allowed_networks` (0 = no limit).
    pub per_address: usize,
    /// Open connections per address outside `allowed_networks`.
    pub open_per_address: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    /// The slowest DATA accepted after its first minute, bytes per second (0 = none).
    pub min_data_rate: u64,
}

/// One open connection counted against its address; the count drops with it.
struct AddressSlot {
    ip: std::net::IpAddr,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.open.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// DATA may be slower than `min_data_rate` for this long (or `idle_timeout`, if that is
/// shorter) before it counts.
const DATA_RATE_GRACE: Duration = Duration::from_secs(60);

/// The longest wait after a failed `accept` (EMFILE and the like).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

impl ListenerContext {
    /// The session policy of the configuration in force.
    pub fn policy(&self) -> Arc<Policy> {
        let config = self.live.get();
        let Ok(mut cached) = self.policy.lock() else {
            return Arc::new(Policy::from_config(&config, self.space.clone()));
        };
        match &*cached {
            Some((c, p)) if Arc::ptr_eq(c, &config) => p.clone(),
            _ => {
                let p = Arc::new(Policy::from_config(&config, self.space.clone()));
                *cached = Some((config, p.clone()));
                p
            }
        }
    }

    /// Counts a connection from `ip` outside `allowed_networks`; None when its address
    /// already has `max_connections_per_address` open.
    fn address_slot(&self, ip: std::net::IpAddr) -> Result<Option<AddressSlot>, ()> {
        if self.per_address == 0 || self.policy().is_allowed(ip) {
            return Ok(None);
        }
        let mut m = self.open_per_address.lock().map_err(|_| ())?;
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_address {
            return Err(());
        }
        *n += 1;
        Ok(Some(AddressSlot {
            ip,
            open: self.open_per_address.clone(),
        }))
    }

    /// Whether a new connection from `ip` goes over its address's connection rate.
    fn over_rate(&self, ip: std::net::IpAddr) -> bool {
        match &self.connection_rate {
            Some(l) if !self.policy().is_allowed(ip) => l.check_key(&ip).is_err(),
            _ => false,
        }
    }
}

/// The per-address connection limiter of `connection_rate_limit` (None for 0).
pub fn connection_limiter(
    per_minute: u32,
) -> Option<governor::DefaultKeyedRateLimiter<std::net::IpAddr>> {
    std::num::NonZeroU32::new(per_minute)
        .map(|n| governor::RateLimiter::keyed(governor::Quota::per_minute(n)))
}

impl std::fmt::Debug for ListenerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerContext")
            .field("idle_timeout", &self.idle_timeout)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// How a session's run over one stream ended.
#[derive(Debug)]
pub enum Ended<S> {
    /// The connection is closed (or should be).
    Closed,
    /// The client asked for STARTTLS: upgrade `S` and go on with the session.
    StartTls(S, Session),
}

/// Accepts on `listener` until `shutdown`; then lets sessions finish until `deadline`.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ListenerContext>,
    mut shutdown: watch::Receiver<bool>,
    deadline: Duration,
) {
    let mut sessions = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    // Failed accepts since the last warning; the warning is said at most once a
    // second, also when accepts that succeed come between the failures (a refused
    // client frees its descriptor at once, and the next accept fails again).
    let mut failures = 0u64;
    let last_warning = std::sync::atomic::AtomicU64::new(0);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors (EMFILE) or the like: wait before the
                        // next accept instead of spinning, and say so once a second.
                        failures += 1;
                        if crate::time::once_per(&last_warning, Duration::from_secs(1)) {
                            tracing::warn!(error = %e, failures, "accept failed; backing off");
                            failures = 0;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => break,
                        }
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                        continue;
                    }
                };
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                admit(&ctx, stream, peer, shutdown.clone(), &mut sessions);
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let finished = tokio::time::timeout(deadline, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "SMTP sessions still open at the shutdown deadline; closing them"
        );
        sessions.abort_all();
    }
}

/// Serves an accepted connection, or refuses it with the limit it reached.
fn admit(
    ctx: &Arc<ListenerContext>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shutdown: watch::Receiver<bool>,
    sessions: &mut JoinSet<()>,
) {
    if ctx.over_rate(peer.ip()) {
        ctx.metrics.reject("connection-rate");
        tracing::warn!(client = %peer, "connection rate limit reached; refused");
        let r = Reply::new(
            421,
            "4.7.0",
            "Too many connections from your address, try again later",
        );
        sessions.spawn(refuse(stream, r));
        return;
    }
    let Ok(slot) = ctx.address_slot(peer.ip()) else {
        ctx.metrics.reject("connections-per-address");
        tracing::warn!(client = %peer, "max_connections_per_address reached; refused");
        let r = Reply::new(
            421,
            "4.7.0",
            "Too many open connections from your address, try again later",
        );
        sessions.spawn(refuse(stream, r));
        return;
    };
    match ctx.permits.clone().try_acquire_owned() {
        Ok(permit) => {
            let ctx = ctx.clone();
            sessions.spawn(async move {
                let _permit = permit;
                let _slot = slot;
                handle(stream, peer, ctx, shutdown).await;
            });
        }
        Err(_) => {
            ctx.metrics.reject("too-many-connections");
            sessions.spawn(refuse(
                stream,
                Reply::new(421, "4.3.2", "Too many connections, try again later"),
            ));
        }
    }
}

/// Answers a connection that is not served with one reply, then closes it.
async fn refuse(mut stream: TcpStream, r: Reply) {
    let _ = stream.write_all(&r.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Counts the session in `mailgate_smtp_sessions_active` while it lives.
struct SessionGauge(prometheus_client::metrics::gauge::Gauge);

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Queues a reply for the client and counts it when it refuses something.
fn emit(out: &mut Vec<u8>, r: &Reply, ctx: &ListenerContext) {
    if let Some(reason) = reject_reason(r) {
        ctx.metrics.reject(reason);
    }
    out.extend_from_slice(&r.as_bytes());
}

/// The `reason` label of `mailgate_messages_rejected_total` for a refusing reply.
pub fn reject_reason(r: &Reply) -> Option<&'static str> {
    Some(match (r.code, r.enhanced.unwrap_or("")) {
        (552, _) => "size",
        (530, _) => "auth-required",
        (535, _) | (421, "4.7.0") => "auth-failed",
        (538, _) => "auth-needs-tls",
        (550, "5.1.2") => "single-label-domain",
        (501, "5.1.3") => "recipient-syntax",
        (501, "5.1.7") => "sender-syntax",
        (452, "4.5.3") => "too-many-recipients",
        (452, "4.3.1") => "disk-space",
        (451, _) => "store-failed",
        (554, "5.6.0") => "content",
        (500, "5.5.2") => "line-too-long",
        _ => return None,
    })
}

async fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ListenerContext>,
    shutdown: watch::Receiver<bool>,
) {
    let gauge = ctx.metrics.sessions_active.clone();
    gauge.inc();
    let _gauge = SessionGauge(gauge);
    let mut session = Session::new(ctx.policy(), peer);
    // A client on this host is named by the Unix user that owns its socket (identd's
    // way, /proc/net/tcp): never by anything the client says.
    if peer.ip().is_loopback()
        && let Ok(local) = stream.local_addr()
    {
        let user = tokio::task::spawn_blocking(move || {
            crate::unix::tcp_owner(peer, local).map(crate::unix::user_name)
        })
        .await
        .ok()
        .flatten();
        session.set_local_user(user);
    }
    tracing::debug!(%peer, "connect");
    let result = match run_session(stream, session, &ctx, shutdown.clone(), true).await {
        Ok(Ended::StartTls(tcp, mut session)) => match &ctx.tls {
            Some(acceptor) => {
                match tokio::time::timeout(ctx.idle_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        session.tls_started();
                        run_session(tls, session, &ctx, shutdown, false)
                            .await
                            .map(|_| ())
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    )),
                }
            }
            None => Ok(()),
        },
        Ok(Ended::Closed) => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "disconnect"),
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended"),
    }
}

enum Mode {
    Command,
    /// The rest of an over-long command line is being discarded.
    LongLine,
    Data(DataReader),
    Discard(usize, Reply),
}

/// Drives one session over any byte stream (greeting first when `greet`).
pub async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    mut session: Session,
    ctx: &ListenerContext,
    mut shutdown: watch::Receiver<bool>,
    greet: bool,
) -> std::io::Result<Ended<S>> {
    if greet {
        io.write_all(&session.greeting().as_bytes()).await?;
    }
    let policy = ctx.policy();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut out: Vec<u8> = Vec::new();
    let mut mode = Mode::Command;
    let mut closing = false;
    // A command line must be complete within idle_timeout of its first byte (a client
    // trickling bytes is cut like a silent one); DATA must keep min_data_rate.
    let mut line_started: Option<tokio::time::Instant> = None;
    let mut data_started: Option<(tokio::time::Instant, u64)> = None;
    loop {
        let mut pos = 0;
        while pos < buf.len() && !closing {
            match &mut mode {
                Mode::Command | Mode::LongLine => {
                    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
                        if buf.len() - pos > MAX_LINE {
                            mode = Mode::LongLine;
                            pos = buf.len();
                        }
                        break;
                    };
                    let line = &buf[pos..pos + nl + 1];
                    pos += nl + 1;
                    if matches!(mode, Mode::LongLine) || line.len() > MAX_LINE {
                        mode = Mode::Command;
                        out.extend_from_slice(
                            &Reply::new(500, "5.5.2", "Error: line too long").as_bytes(),
                        );
                        continue;
                    }
                    match command_line(ctx, &mut session, line, &mut out).await {
                        Next::Go => {}
                        Next::Data => {
                            data_started = Some((tokio::time::Instant::now(), 0));
                            mode = Mode::Data(DataReader::new(
                                policy.max_message_size,
                                policy.bare_newlines == BareNewlines::Normalize,
                            ));
                        }
                        Next::Discard(n, r) => mode = Mode::Discard(n, r),
                        Next::StartTls => {
                            // Whatever the client pipelined after STARTTLS is dropped
                            // unread (CVE-2011-0411): it must not run inside TLS.
                            io.write_all(&out).await?;
                            return Ok(Ended::StartTls(io, session));
                        }
                        Next::Close => closing = true,
                    }
                }
                Mode::Data(reader) => {
                    let (n, done) = reader.feed(&buf[pos..]);
                    pos += n;
                    if let Some((_, bytes)) = &mut data_started {
                        *bytes += n as u64;
                    }
                    let Some(outcome) = done else { break };
                    mode = Mode::Command;
                    data_started = None;
                    let reply = data_finished(ctx, &mut session, outcome).await;
                    emit(&mut out, &reply, ctx);
                }
                Mode::Discard(..) => {
                    let (n, reply) = mode.discard(buf.len() - pos);
                    pos += n;
                    if let Some(r) = reply {
                        out.extend_from_slice(&r.as_bytes());
                    }
                }
            }
        }
        buf.drain(..pos);
        if !out.is_empty() {
            io.write_all(&out).await?;
            out.clear();
        }
        if closing {
            let _ = io.shutdown().await;
            return Ok(Ended::Closed);
        }
        let idle = matches!(mode, Mode::Command) && buf.is_empty() && !session.in_transaction();
        if idle && *shutdown.borrow() {
            return close_with(io, Reply::new(421, "4.3.2", "Service shutting down")).await;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(65536);
        }
        let now = tokio::time::Instant::now();
        let partial = matches!(mode, Mode::Command | Mode::LongLine) && !buf.is_empty();
        line_started = partial.then(|| line_started.unwrap_or(now));
        let (deadline, too_slow) = read_deadline(ctx, line_started.unwrap_or(now), data_started);
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)) => r,
            _ = shutdown.changed(), if idle && !*shutdown.borrow() => continue,
        };
        match read {
            Err(_) => {
                let why = if too_slow {
                    "Data arrives too slowly, closing connection"
                } else {
                    "Idle timeout, closing connection"
                };
                return close_with(io, Reply::new(421, "4.4.2", why)).await;
            }
            Ok(Ok(0)) => return Ok(Ended::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Says `reply` and closes the connection.
async fn close_with<S: AsyncWrite + Unpin>(mut io: S, reply: Reply) -> std::io::Result<Ended<S>> {
    io.write_all(&reply.as_bytes()).await?;
    let _ = io.shutdown().await;
    Ok(Ended::Closed)
}

impl Mode {
    /// Discards up to `available` bytes of a refused message: how many, and the reply
    /// once the last has gone (the mode is then back to commands).
    fn discard(&mut self, available: usize) -> (usize, Option<Reply>) {
        let Mode::Discard(left, _) = self else {
            return (0, None);
        };
        let n = (*left).min(available);
        *left -= n;
        if *left > 0 {
            return (n, None);
        }
        match std::mem::replace(self, Mode::Command) {
            Mode::Discard(_, r) => (n, Some(r)),
            _ => (n, None),
        }
    }
}

/// What a command line leads to, for the session's loop.
enum Next {
    Go,
    Data,
    Discard(usize, Reply),
    StartTls,
    Close,
}

/// One command line: its reply written to `out`, and what the loop does next.
async fn command_line(
    ctx: &ListenerContext,
    session: &mut Session,
    line: &[u8],
    out: &mut Vec<u8>,
) -> Next {
    let mut action = session.command(line);
    if let Action::Authenticate { login, password } = action {
        action = authenticate(ctx, session, login, password).await;
    }
    match action {
        Action::Reply(r) => emit(out, &r, ctx),
        Action::StartTls(r) => {
            out.extend_from_slice(&r.as_bytes());
            return Next::StartTls;
        }
        Action::Authenticate { .. } => {}
        Action::Data(r) => {
            out.extend_from_slice(&r.as_bytes());
            return Next::Data;
        }
        Action::Discard(n, r) => return Next::Discard(n, r),
        Action::Close(r) => {
            emit(out, &r, ctx);
            return Next::Close;
        }
    }
    Next::Go
}

/// The reply to a message whose data has ended: committed (and queued), or why not.
async fn data_finished(
    ctx: &ListenerContext,
    session: &mut Session,
    outcome: super::data::DataOutcome,
) -> Reply {
    match session.data_finished(outcome) {
        DataVerdict::Reject(r) => r,
        DataVerdict::Commit(sub) => match ctx.submit.submit(*sub).await {
            Ok(id) => session.queued(&id),
            Err(SubmitError::Unfit(why)) => Reply::new(554, "5.6.0", why),
            Err(SubmitError::Store(e)) => {
                tracing::error!(error = %e, "message not committed; client told to retry");
                session.commit_failed()
            }
        },
    }
}

/// When the next read must have come: idle_timeout after a command line's first byte
/// (a client trickling bytes is cut like a silent one), or sooner when DATA would fall
/// below min_data_rate (then `true`).
fn read_deadline(
    ctx: &ListenerContext,
    line_started: tokio::time::Instant,
    data_started: Option<(tokio::time::Instant, u64)>,
) -> (tokio::time::Instant, bool) {
    let deadline = line_started + ctx.idle_timeout;
    if let (Some((start, bytes)), true) = (data_started, ctx.min_data_rate > 0) {
        // The moment the data would fall below the minimum rate if nothing more came.
        let grace = DATA_RATE_GRACE.min(ctx.idle_timeout);
        let due = start
            + grace.max(Duration::from_millis(
                bytes.saturating_mul(1000) / ctx.min_data_rate,
            ));
        if due < deadline {
            return (due, true);
        }
    }
    (deadline, false)
}

/// Checks credentials off the runtime (argon2 is slow on purpose), with the per-address
/// limit in front (an attempt counts from when it starts) and at most
/// `smtp.auth_concurrency` verifications at once.
async fn authenticate(
    ctx: &ListenerContext,
    session: &mut Session,
    login: String,
    password: crate::secrets::Secret,
) -> Action {
    let ip = session.peer().ip();
    let Some(attempt) = ctx.auth_failures.begin(ip) else {
        return Action::Close(Reply::new(
            421,
            "4.7.0",
            "Too many authentication failures from your address; try again later",
        ));
    };
    let users = ctx.live.get().user.clone();
    let l = login.clone();
    let Some(slot) = attempt.slot().await else {
        return Action::Close(Reply::new(421, "4.3.2", "Shutting down"));
    };
    let ok = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        super::auth::verify(&users, &l, password.expose())
    })
    .await
    .unwrap_or(false);
    attempt.done(ok);
    if !ok {
        tracing::warn!(client = %session.peer(), login = %login.escape_debug(), "AUTH failed");
    }
    session.auth_done(login, ok)
}
