//! The pool: idle connections kept for reuse (at most `max_connections`, none older
//! than [`IDLE_REUSE`]), and how a connection ends (RSET, QUIT, or dropped).

use super::*;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use std::time::{Duration, Instant};

impl SmtpProvider {
    pub(super) async fn checkout(&self) -> Result<(Conn, bool), Failure> {
        {
            let mut pool = self.pool.lock().await;
            while let Some(idle) = pool.pop() {
                if idle.since.elapsed() < IDLE_REUSE && !idle.conn.has_broken() {
                    return Ok((idle.conn, true));
                }
                tokio::spawn(close(idle.conn));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Closes the idle connections (their sign-in no longer holds).
    pub async fn drop_idle(&self) {
        let idle: Vec<Idle> = self.pool.lock().await.drain(..).collect();
        for i in idle {
            tokio::spawn(close(i.conn));
        }
    }

    /// Ends the idle connections beyond the newest `keep`, all at once, each QUIT
    /// awaited at most [`CLOSE_WAIT`] (so a fleet lease given back after this covers no
    /// open connection, and the caller waits no longer than one close).
    pub async fn keep_idle(&self, keep: usize) {
        let mut closing = tokio::task::JoinSet::new();
        {
            let mut pool = self.pool.lock().await;
            let over = pool.len().saturating_sub(keep);
            for i in pool.drain(..over) {
                closing.spawn(quit(i.conn));
            }
        }
        closing.join_all().await;
    }

    /// Whether connections are kept for reuse.
    pub fn set_reuse(&mut self, reuse: bool) {
        self.reuse = reuse;
    }

    pub(super) async fn checkin(&self, conn: Conn) {
        if !self.reuse {
            quit(conn).await;
            return;
        }
        if !conn.has_broken() {
            self.pool.lock().await.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// RSET within `t`; false when the server did not answer it well (the connection must
/// not be reused then).
pub(super) async fn reset(conn: &mut AsyncSmtpConnection, t: Duration) -> bool {
    timed(t, "RSET", conn.command("RSET\r\n")).await.is_ok()
}

/// Ends a connection after a failure: QUIT (and the TLS close) get [`CLOSE_WAIT`], then
/// the socket is dropped whatever the peer does. The connection counts as broken after.
pub(super) async fn close_in_place(conn: &mut AsyncSmtpConnection) {
    stage::enter("QUIT");
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.abort()).await;
}

/// [`close_in_place`], and the connection dropped.
pub(super) async fn close(mut conn: Conn) {
    close_in_place(&mut conn).await;
}

/// Ends a connection that worked: QUIT, its reply awaited at most [`CLOSE_WAIT`].
pub(super) async fn quit(mut conn: Conn) {
    stage::enter("QUIT");
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.quit()).await;
}
