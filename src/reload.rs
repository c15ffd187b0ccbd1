//! Reloading the configuration (SIGHUP, `POST /api/reload`, `systemctl reload`): the new
//! file is read and checked whole, live settings take effect for the next message, the
//! start-only ones are reported, and mail held for a configuration reason is released.

use std::sync::Arc;

use crate::config::Config;
use crate::distributor::{self, Distributor};
use crate::pipeline::Pipeline;

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// Settings that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
    /// Messages held for a configuration reason that were made due.
    pub released: usize,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The daemon runs on the built-in default: there is no file to read again.
    #[error(
        "the daemon runs on the built-in default configuration, which has no file to read again: write one (`mailgate default-config > /etc/mailgate/mailgate.toml`), edit it, and restart mailgate (it finds that file, or name another with --config)"
    )]
    BuiltIn,
    /// The file is invalid; every problem with its line.
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigErrors),
}

/// Re-reads the configuration at `path` (None: the daemon runs on the built-in default,
/// which cannot change): users, rewrite rules, providers and limits take effect for the
/// next message; listener and store settings are reported as needing a restart. An
/// invalid file changes nothing. Held mail is released.
pub async fn reload(
    pipeline: &Pipeline,
    distributor: &Distributor,
    path: Option<&std::path::Path>,
) -> Result<ReloadReport, ReloadError> {
    let new = Config::load(path.ok_or(ReloadError::BuiltIn)?)?;
    let old = pipeline.config();
    let needs_restart: Vec<String> = old
        .start_only()
        .into_iter()
        .zip(new.start_only())
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.to_string())
        .collect();
    if old.distributor.enabled != new.distributor.enabled {
        if new.distributor.enabled {
            distributor.resume();
        } else {
            distributor.pause();
        }
    }
    distributor.set_routing(distributor::Routing::from_config(&new));
    pipeline.live().set(Arc::new(new));
    let released = distributor.release_held().await.unwrap_or(0);
    tracing::info!(needs_restart = ?needs_restart, released, "configuration reloaded");
    Ok(ReloadReport {
        needs_restart,
        released,
    })
}
