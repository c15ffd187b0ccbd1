//! Providers: where a committed message goes (eml files now; smtp and graph upstreams
//! build on the same shape). Each attempt ends in one typed [`Outcome`]: transient or
//! permanent is decided here, at the provider boundary, and the distributor acts on it.

pub mod eml;

use std::sync::Arc;

use crate::config::{ProviderConfig, ProviderKind};
use crate::history::Diagnosis;

/// The envelope and bytes of one delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Message id.
    pub id: String,
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients still to deliver.
    pub rcpts: Vec<String>,
    /// The stored message.
    pub raw: Arc<Vec<u8>>,
}

/// What one attempt achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted for every recipient.
    Sent {
        /// Upstream reply (or a local description).
        reply: String,
    },
    /// Try again later.
    Transient {
        /// Upstream reply or local error.
        reply: String,
        /// Why, and what to do.
        diagnosis: Diagnosis,
    },
    /// Will never succeed as it is.
    Permanent {
        /// Upstream reply or local error.
        reply: String,
        /// Why, and what to do.
        diagnosis: Diagnosis,
    },
}

/// A configured provider.
#[derive(Debug)]
pub enum Provider {
    /// One .eml file per message.
    Eml(eml::EmlProvider),
    /// A kind this build cannot deliver to yet; attempts are deferred with a diagnosis.
    Unsupported {
        /// Provider name.
        name: String,
        /// Its kind.
        kind: ProviderKind,
    },
}

impl Provider {
    /// Builds the provider of a configuration entry.
    pub fn from_config(p: &ProviderConfig) -> Provider {
        match p.kind {
            ProviderKind::Eml => Provider::Eml(eml::EmlProvider::new(
                p.directory.clone().unwrap_or_else(|| "outbox".into()),
            )),
            kind => Provider::Unsupported {
                name: p.name.get_ref().clone(),
                kind,
            },
        }
    }

    /// Attempts one delivery.
    pub async fn deliver(&self, d: &Delivery) -> Outcome {
        match self {
            Provider::Eml(p) => p.deliver(d).await,
            Provider::Unsupported { name, kind } => Outcome::Transient {
                reply: format!("provider {name:?} of kind {kind:?} is not available in this build"),
                diagnosis: Diagnosis {
                    code: "unknown".into(),
                    explanation: format!("mailgate cannot deliver through a provider of kind {kind:?} yet"),
                    fix: "Route this mail to another provider (distributor.default_provider or the user's provider) and reload".into(),
                },
            },
        }
    }
}
