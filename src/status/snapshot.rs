//! One reading of the daemon's state for the two places that show it whole: `/status`
//! (JSON) and the dashboard (HTML). Each renders the same [`Snapshot`], so they cannot
//! disagree about a count, a limit or a sign-in.

use super::state::AppState;
use crate::distributor::throttle::Limits;
use crate::distributor::{ProviderStats, provider_limits};
use crate::history::Status;
use crate::provider::oauth2::TokenStatus;
use crate::store::StoreError;
use crate::time::now_ms;

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
    /// Each configured provider, in configuration order.
    pub providers: Vec<ProviderView>,
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
}

impl Snapshot {
    /// Reads it: the counts from the store's indexes, the rest from memory.
    pub async fn gather(state: &AppState) -> Result<Snapshot, StoreError> {
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
                    kind: format!("{:?}", p.kind).to_ascii_lowercase(),
                    upstream: p.upstream(),
                    limits: provider_limits(p),
                    stats: state.distributor.provider_stats(&name),
                    token: state
                        .distributor
                        .provider(&name)
                        .and_then(|pr| pr.token_status()),
                    delegated: p.oauth2.as_ref().is_some_and(|o| o.flow.is_delegated()),
                    name,
                }
            })
            .collect();
        let oldest_at_ms = oldest
            .as_deref()
            .and_then(|id| ulid::Ulid::from_string(id).ok())
            .map(|u| u.timestamp_ms());
        Ok(Snapshot {
            counts,
            oldest,
            oldest_at_ms,
            enabled: config.distributor.enabled,
            paused: state.distributor.is_paused(),
            sending: state.distributor.sending(),
            providers,
        })
    }

    /// The records of one status.
    pub fn count(&self, status: Status) -> u64 {
        status.count_in(&self.counts)
    }

    /// Seconds since the oldest waiting message arrived.
    pub fn oldest_age_seconds(&self) -> Option<u64> {
        self.oldest_at_ms
            .map(|at| now_ms().saturating_sub(at) / 1000)
    }
}
