//! What the status listener's handlers share: the daemon's parts ([`AppState`]), the
//! admin token, and the two readings every view makes the same way: a record as shown
//! (paused counts as waiting) and why the daemon cannot take mail now.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::watch;

use crate::distributor::Distributor;
use crate::history::Record;
use crate::pipeline::Pipeline;
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
    /// The admin token (it always exists: configured, or made beside the store).
    pub token: String,
    /// The client for calls to the fleet's other nodes
    /// ([`crate::status::fleet_view::peer_client`]).
    pub peer_http: reqwest::Client,
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

impl AppState {
    /// The parts of the daemon a [`crate::snapshot::Snapshot`] and the alert engine read.
    pub fn core(&self) -> crate::snapshot::Core {
        crate::snapshot::Core {
            pipeline: self.pipeline.clone(),
            distributor: self.distributor.clone(),
            listeners_up: self.listeners_up.clone(),
            space: self.space.clone(),
        }
    }
}

/// Whether `given` is `token`, in time that does not depend on where they differ (the
/// two are hashed first, so only digests of equal length are compared, with no early
/// exit).
pub fn token_matches(given: &str, token: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, given.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether a request carries `Authorization: Bearer <token>`.
pub fn bearer_matches(headers: &axum::http::HeaderMap, token: &str) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|g| token_matches(g.trim(), token))
}

/// Reads the admin token (`status.token`, else the file of `Config::token_path`, trimmed), for
/// the CLI: the error says what to do when the file cannot be read.
pub fn load_token(c: &crate::config::Config) -> std::io::Result<String> {
    let token = match &c.status.token {
        Some(t) => t.trim().to_string(),
        None => {
            let p = c.token_path();
            std::fs::read_to_string(&p)
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    let hint = match e.kind() {
                        std::io::ErrorKind::PermissionDenied => {
                            "; the admin commands need the admin token: run them as root (sudo), or as a member of the mailgate group (`sudo adduser $USER mailgate`, then log in again)"
                        }
                        std::io::ErrorKind::NotFound if c.status.token_file.is_none() => {
                            "; the daemon makes it when it first starts"
                        }
                        _ => "",
                    };
                    std::io::Error::new(e.kind(), format!("the admin token {}: {e}{hint}", p.display()))
                })?
        }
    };
    if token.is_empty() {
        // An empty token would let anyone in with an empty bearer token.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the admin token (status.token or status.token_file) is empty",
        ));
    }
    Ok(token)
}

/// The daemon's admin token: the configured one, else `admin.token` beside the store,
/// made on first start (32 random bytes, base64url; mode 0640, the daemon's user and
/// group), so the status listener always has one.
pub fn ensure_token(c: &crate::config::Config) -> std::io::Result<String> {
    use base64::Engine;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if c.status.token.is_some() || c.status.token_file.is_some() {
        return load_token(c);
    }
    let p = c.token_path();
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(std::io::Error::other)?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&p)
    {
        Ok(mut f) => {
            f.write_all(format!("{token}\n").as_bytes())?;
            f.sync_all()?;
            if let Some(dir) = p.parent()
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            tracing::info!(file = %p.display(), "made the admin token (the CLI and the pages' sign-in use it)");
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_token(c),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot make the admin token {}: {e}", p.display()),
        )),
    }
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
            reason: crate::history::WaitReason::Paused,
            until: None,
        });
    } else if d.waits_for_lease(&r.id) {
        r.waiting = Some(crate::history::Waiting {
            reason: crate::history::WaitReason::FleetLease,
            until: None,
        });
    }
    r
}
