//! What the status listener's handlers share: the daemon's parts ([`AppState`]), the
//! admin token, and the two readings every view makes the same way: a record as shown
//! (paused counts as waiting) and why the daemon cannot take mail now.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::Pipeline;
use crate::config::StatusConfig;
use crate::distributor::Distributor;
use crate::history::Record;
use crate::store::space::SpaceCheck;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Accepted-mail pipeline (and the store, the config, the metrics).
    pub pipeline: Arc<Pipeline>,
    /// The distributor.
    pub distributor: Arc<Distributor>,
    /// When the daemon started.
    pub started: Instant,
    /// Bearer token for `/api/`, if configured.
    pub token: Option<String>,
    /// The configuration file, for reloads.
    pub config_path: Arc<RwLock<Option<PathBuf>>>,
    /// False once the SMTP listeners are closing.
    pub listeners_up: Arc<AtomicBool>,
    /// Free space on the store's disk.
    pub space: Arc<dyn SpaceCheck>,
    /// Turns true at shutdown: long polls answer at once.
    pub shutdown: watch::Receiver<bool>,
    /// The alert engine (its open conditions for `/status` and the dashboard).
    pub alerts: Arc<crate::alerts::Alerts>,
}

/// Reads the admin token from `token` or `token_file` (trimmed).
pub fn load_token(c: &StatusConfig) -> std::io::Result<Option<String>> {
    let token = match (&c.token, &c.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("token_file {}: {e}", p.display()))
            })?,
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        // An empty token would let anyone in with an empty bearer token.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the admin token (status.token or status.token_file) is empty",
        ));
    }
    Ok(Some(token))
}

/// A record as the API, the CLI and the pages show it: while the distributor is paused,
/// an unfinished message waits for that; while its delivery waits for a connection
/// lease other nodes of the fleet hold, for that (`fleet-lease`).
pub fn as_shown(mut r: Record, d: &Distributor) -> Record {
    if r.status.is_finished() {
        return r;
    }
    if d.is_paused() {
        r.waiting = Some(crate::history::Waiting {
            reason: "paused".into(),
            until: None,
        });
    } else if d.waits_for_lease(&r.id) {
        r.waiting = Some(crate::history::Waiting {
            reason: "fleet-lease".into(),
            until: None,
        });
    }
    r
}

/// Why the daemon cannot take mail right now, or None: listeners down, the store file
/// lost, its last commit failed, delivery outcomes waiting for the store, free space
/// below `store.min_free_space` (plus the store's next growth), or a probe write failing.
pub async fn store_problem(state: &AppState) -> Option<String> {
    if !state.listeners_up.load(Ordering::SeqCst) {
        return Some("SMTP listeners are down".into());
    }
    let store = state.pipeline.store();
    // The last commit's result: a probe write that succeeds clears a past failure.
    if let Some(why) = store.trouble().or_else(|| {
        (state.distributor.unrecorded() > 0).then(|| {
            format!(
                "{} delivery outcomes wait for the store to commit",
                state.distributor.unrecorded()
            )
        })
    }) {
        return Some(why);
    }
    if let Some((free, needed)) = state.space.measure()
        && free < needed
    {
        return Some(format!(
            "free disk space {} MB is below store.min_free_space plus the store's next growth ({} MB)",
            free / 1_000_000,
            needed / 1_000_000
        ));
    }
    None
}
