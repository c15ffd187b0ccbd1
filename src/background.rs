//! The daemon's quiet helpers, each a task until shutdown: the fleet heartbeat (with this
//! node's queue and open alerts) and the OAuth2 keep-alive that stops a delegated sign-in from ageing out while idle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::distributor::Distributor;
use crate::store::Store;
use crate::{fleet, history};

/// Writes this node's heartbeat into the fleet store until shutdown.
pub async fn fleet_heartbeat(
    fleet: Arc<fleet::Fleet>,
    store: Store,
    distributor: Arc<Distributor>,
    alerts: Arc<crate::alerts::Alerts>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let counts = store
            .blocking(|s| s.status_counts())
            .await
            .unwrap_or_default();
        let count = |st: history::Status| st.count_in(&counts);
        let open: Vec<String> = alerts
            .open()
            .into_iter()
            .map(|c| c.event.to_string())
            .collect();
        fleet
            .heartbeat(
                serde_json::json!({
                    "queued": count(history::Status::Queued),
                    "deferred": count(history::Status::Deferred),
                    "sending": distributor.sending(),
                }),
                &open,
            )
            .await;
        tokio::select! {
            _ = tokio::time::sleep(fleet::HEARTBEAT_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Uses each delegated provider's refresh token when it has gone unused for
/// [`provider::oauth2::KEEP_ALIVE`] (checked at start and every ten minutes), so that a
/// sign-in never ages out while mailgate runs, mail or no mail.
pub async fn oauth2_keep_alive(distributor: Arc<Distributor>, mut shutdown: watch::Receiver<bool>) {
    loop {
        for p in distributor.providers() {
            let Some(source) = p.oauth() else { continue };
            let renewal = tokio::select! {
                r = source.keep_alive() => r,
                _ = shutdown.changed() => return,
            };
            match renewal {
                Some(Ok(())) => tracing::info!(
                    provider = source.provider(),
                    "OAuth2 sign-in renewed while idle (refresh tokens age out when unused)"
                ),
                Some(Err(e)) => tracing::warn!(
                    provider = source.provider(),
                    diagnosis = e.code.as_str(),
                    error = %e.reply,
                    "cannot renew the OAuth2 sign-in"
                ),
                None => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
