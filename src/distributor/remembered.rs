//! What a restart keeps of each provider: whether it holds mail (its code and since
//! when), its circuit (failures in a row, open until when) and its last error, in
//! `providers.json` beside the store. Without it a restart showed a dead primary as
//! `closed` with no last error, and the startup release of held mail cleared the `held`
//! alert of a provider that still held it (a false `resolved`, then `firing` again).
//! Read once at start; written (whole, to a temporary file renamed over it, off the
//! runtime) every two seconds when something changed, and at shutdown. Only a delivery
//! that is not held clears `held`; only an answer from the provider closes the circuit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Distributor, ProviderState, circuit::Circuit};
use crate::diagnosis::Code;

/// How often a change is written.
pub(super) const EVERY: Duration = Duration::from_secs(2);

/// One provider as kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Kept {
    /// The diagnosis code it holds mail for, and since when (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<(String, u64)>,
    /// The last failure's reply and when (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<(String, u64)>,
    /// Unavailability failures in a row.
    #[serde(default)]
    circuit_failures: u32,
    /// Open until (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    circuit_open_until: Option<u64>,
}

/// Every provider as kept, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Remembered {
    providers: BTreeMap<String, Kept>,
}

/// The file beside the store.
pub(super) fn file_for(store: &Path) -> PathBuf {
    crate::config::store_dir(store).join("providers.json")
}

impl Remembered {
    /// What the last run left; nothing when the file is missing or unreadable (said once).
    pub(super) fn read(file: &Path) -> Remembered {
        match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %file.display(), error = %e, "cannot read what the last run knew of the providers; starting without it");
                Remembered::default()
            }),
            Err(_) => Remembered::default(),
        }
    }

    /// The states to start from (an unknown code is dropped, not guessed).
    pub(super) fn states(self) -> Vec<(String, ProviderState)> {
        self.providers
            .into_iter()
            .map(|(name, k)| {
                let st = ProviderState {
                    held: k
                        .held
                        .and_then(|(code, since)| Code::parse(&code).map(|c| (c, since))),
                    last_error: k.last_error,
                    circuit: Circuit::restored(k.circuit_failures, k.circuit_open_until),
                    ..ProviderState::default()
                };
                (name, st)
            })
            .collect()
    }

    /// Writes it whole ([`crate::files::replace`]).
    fn write(&self, file: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::files::replace(file, &bytes)
    }
}

impl Distributor {
    /// What would be kept now.
    fn remembered(&self) -> Remembered {
        let providers = self
            .providers
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(name, st)| {
                        (
                            name.clone(),
                            Kept {
                                held: st.held.map(|(c, since)| (c.as_str().to_string(), since)),
                                last_error: st.last_error.clone(),
                                circuit_failures: st.circuit.failures(),
                                circuit_open_until: st.circuit.open_until(),
                            },
                        )
                    })
                    .filter(|(_, k)| *k != Kept::default())
                    .collect()
            })
            .unwrap_or_default();
        Remembered { providers }
    }

    /// Writes what is kept when it changed since the last write.
    pub(super) async fn keep_remembered(&self) {
        let now = self.remembered();
        if self.remembered_last.lock().is_ok_and(|l| *l == now) {
            return;
        }
        let file = self.remembered_file.clone();
        let copy = now.clone();
        match tokio::task::spawn_blocking(move || copy.write(&file)).await {
            Ok(Ok(())) => {
                if let Ok(mut l) = self.remembered_last.lock() {
                    *l = now;
                }
            }
            Ok(Err(e)) => {
                if crate::time::once_per(&self.remembered_warned, Duration::from_secs(60)) {
                    tracing::warn!(file = %self.remembered_file.display(), error = %e, "cannot save what is known of the providers");
                }
            }
            Err(_) => {}
        }
    }
}
