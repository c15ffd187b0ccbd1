//! One reading of the daemon's state for the places that show it whole or watch it:
//! `/status` (JSON), the dashboard (HTML) and the alert engine. Each reads the same
//! [`Snapshot`], so they cannot disagree about a count, a limit or a sign-in. The parts
//! of the daemon they read are one small struct, [`Core`]: the status listener and the
//! alert engine both depend on it, and neither on the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::distributor::Distributor;
use crate::distributor::circuit::CircuitState;
use crate::distributor::throttle::Limits;
use crate::distributor::{ProviderStats, provider_limits};
use crate::history::Status;
use crate::pipeline::Pipeline;
use crate::provider::oauth2::TokenStatus;
use crate::store::StoreError;
use crate::store::space::SpaceCheck;
use crate::time::now_ms;

/// The parts of the running daemon that are read to know how it is.
#[derive(Debug, Clone)]
pub struct Core {
    /// Accepted-mail pipeline (and the store, the config, the metrics).
    pub pipeline: Arc<Pipeline>,
    /// The distributor.
    pub distributor: Arc<Distributor>,
    /// False once the SMTP listeners are closing.
    pub listeners_up: Arc<AtomicBool>,
    /// Free space on the store's disk.
    pub space: Arc<dyn SpaceCheck>,
}

/// The daemon as it is now.
#[derive(Debug)]
pub struct Snapshot {
    /// Records per status.
    pub counts: Vec<(Status, u64)>,
    /// The oldest queued or deferred message.
    pub oldest: Option<String>,
    /// When the oldest waiting message arrived, ms since the epoch.
    pub oldest_at_ms: Option<u64>,
    /// `distributor.enabled` in the running configuration.
    pub enabled: bool,
    /// Paused (`mailgate pause`, the Pause button, or `enabled = false`).
    pub paused: bool,
    /// Deliveries running now.
    pub sending: usize,
    /// Of those, how many have a record still queued, and still deferred.
    pub sending_from: (u64, u64),
    /// Each configured provider, in configuration order.
    pub providers: Vec<ProviderView>,
    /// Where mail goes: the routes, the users' chains, the default chain, in the order
    /// they are looked at.
    pub chains: Vec<ChainView>,
}

/// One chain as the views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainView {
    /// `route`, `user` or `default`.
    pub kind: &'static str,
    /// The route's or user's name (`default` for the default chain).
    pub name: String,
    /// A route's recipients (addresses and `*@domain`).
    pub recipients: Vec<String>,
    /// The providers, first to last.
    pub providers: Vec<String>,
}

impl ChainView {
    /// The chain as one line: `m365 → graph`.
    pub fn line(&self) -> String {
        self.providers.join(" → ")
    }
}

/// The chains of a configuration, as they are looked at: routes, users, default.
fn chain_views(config: &crate::config::Config) -> Vec<ChainView> {
    let list = |l: &[serde_spanned::Spanned<String>]| -> Vec<String> {
        l.iter().map(|p| p.get_ref().clone()).collect()
    };
    let mut out: Vec<ChainView> = config
        .route
        .iter()
        .map(|r| ChainView {
            kind: "route",
            name: r.name.get_ref().clone(),
            recipients: list(&r.recipients),
            providers: list(&r.providers),
        })
        .collect();
    out.extend(config.user.iter().filter_map(|u| {
        let providers = match (&u.providers, &u.provider) {
            (Some(l), _) => list(l),
            (None, Some(p)) => vec![p.get_ref().clone()],
            (None, None) => return None,
        };
        Some(ChainView {
            kind: "user",
            name: u.name.get_ref().clone(),
            recipients: Vec::new(),
            providers,
        })
    }));
    out.push(ChainView {
        kind: "default",
        name: "default".into(),
        recipients: Vec::new(),
        providers: config.default_chain(),
    });
    out
}

/// One provider as the views show it.
#[derive(Debug)]
pub struct ProviderView {
    /// Its name.
    pub name: String,
    /// `eml`, `smtp` or `graph`.
    pub kind: String,
    /// Where it sends: the host, or the eml directory.
    pub upstream: String,
    /// Its limits in force (defaults applied).
    pub limits: Limits,
    /// Its use and state now.
    pub stats: ProviderStats,
    /// Its OAuth2 token and sign-in, when it has `[provider.oauth2]`.
    pub token: Option<TokenStatus>,
    /// A mailbox signs in (device code or authorization code).
    pub delegated: bool,
    /// Its circuit, and until when it is open.
    pub circuit: (CircuitState, Option<u64>),
}

impl Snapshot {
    /// Reads it: the counts from the store's indexes, the rest from memory.
    pub async fn gather(state: &Core) -> Result<Snapshot, StoreError> {
        let (counts, oldest) = state
            .pipeline
            .store()
            .blocking(|s| Ok((s.status_counts()?, s.oldest_waiting()?)))
            .await?;
        let config = state.pipeline.config();
        let providers = config
            .provider
            .iter()
            .map(|p| {
                let name = p.name.get_ref().clone();
                ProviderView {
                    kind: p.kind().as_str().to_string(),
                    upstream: p.upstream(),
                    limits: provider_limits(p),
                    stats: state.distributor.provider_stats(&name),
                    token: state
                        .distributor
                        .provider(&name)
                        .and_then(|pr| pr.token_status()),
                    delegated: p.oauth2().is_some_and(|o| o.flow.is_delegated()),
                    circuit: state.distributor.circuit(&name),
                    name,
                }
            })
            .collect();
        let oldest_at_ms = oldest.as_deref().and_then(crate::history::received_ms);
        Ok(Snapshot {
            counts,
            oldest,
            oldest_at_ms,
            enabled: config.distributor.enabled,
            paused: state.distributor.is_paused(),
            sending: state.distributor.sending(),
            sending_from: (
                state.distributor.sending_from(Status::Queued),
                state.distributor.sending_from(Status::Deferred),
            ),
            providers,
            chains: chain_views(&config),
        })
    }

    /// The records of one status.
    pub fn count(&self, status: Status) -> u64 {
        status.count_in(&self.counts)
    }

    /// The records of `status` (queued or deferred) that wait: those being sent are
    /// counted as sending only.
    pub fn waiting(&self, status: Status) -> u64 {
        let sending = match status {
            Status::Queued => self.sending_from.0,
            Status::Deferred => self.sending_from.1,
            _ => 0,
        };
        self.count(status).saturating_sub(sending)
    }

    /// Seconds since the oldest waiting message arrived.
    pub fn oldest_age_seconds(&self) -> Option<u64> {
        self.oldest_at_ms
            .map(|at| now_ms().saturating_sub(at) / 1000)
    }
}

/// Why the daemon cannot take mail right now, or None: listeners down, the store file
/// lost, its last commit failed, delivery outcomes waiting for the store, free space
/// below `store.min_free_space` (plus the store's next growth), or a probe write failing.
pub async fn store_problem(state: &Core) -> Option<String> {
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
