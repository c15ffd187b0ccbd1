//! Where an attempt is in its exchange with the outside (connect, TLS handshake, MAIL,
//! message body, ...) and how long each step may take: every wait on the network has a
//! bound, and an attempt that is slow or stuck can be named by its step.
//!
//! The distributor runs each attempt inside [`Stage::scope`]; the provider marks each
//! step with [`enter`]. Nothing here touches a socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

tokio::task_local! {
    static CURRENT: Stage;
}

/// The body of a message may take its size at this rate on top of the step's timeout.
pub const BODY_RATE: u64 = 64 * 1024;

/// A close after a failure (QUIT, TLS close_notify) waits at most this long for the peer;
/// then the socket is dropped.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The time allowed for moving `bytes` of message body: `timeout` plus the size at
/// [`BODY_RATE`].
pub fn body_bound(timeout: Duration, bytes: usize) -> Duration {
    timeout + Duration::from_millis(bytes as u64 * 1000 / BODY_RATE)
}

/// The step an attempt is at now; shared between the attempt and whoever watches it.
#[derive(Debug, Clone)]
pub struct Stage(Arc<Mutex<&'static str>>);

impl Default for Stage {
    fn default() -> Self {
        Stage(Arc::new(Mutex::new("starting")))
    }
}

impl Stage {
    /// The step now.
    pub fn get(&self) -> &'static str {
        self.0.lock().map_or("unknown", |g| *g)
    }

    /// Runs `f` with this stage as the one [`enter`] marks.
    pub async fn scope<F: Future>(&self, f: F) -> F::Output {
        CURRENT.scope(self.clone(), f).await
    }
}

/// Marks the step the running attempt is at (no effect outside [`Stage::scope`]).
pub fn enter(step: &'static str) {
    let _ = CURRENT.try_with(|s| {
        if let Ok(mut g) = s.0.lock() {
            *g = step;
        }
    });
}

/// `d` in words for a reply: `8s`, `1s 500ms`.
pub fn words(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scope_sees_the_steps_marked_inside_it() {
        let s = Stage::default();
        enter("outside"); // no scope: nothing happens
        assert_eq!(s.get(), "starting");
        let seen = s.clone();
        s.scope(async move {
            enter("MAIL");
            assert_eq!(seen.get(), "MAIL");
        })
        .await;
        assert_eq!(s.get(), "MAIL");
    }

    #[test]
    fn the_body_gets_its_size_at_64_kb_per_second() {
        let t = Duration::from_secs(8);
        assert_eq!(body_bound(t, 0), t);
        assert_eq!(body_bound(t, 4 * 1024 * 1024), Duration::from_secs(8 + 64));
    }
}
