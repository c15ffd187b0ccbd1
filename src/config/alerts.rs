//! `[[alert]]` (SPEC "Telling people: bounces and alerts"): who is told when mailgate
//! needs a person, of which events, and how.

use std::ops::Range;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::{Config, Dur};

/// The events an alert can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertEvent {
    /// Messages failed or partly failed (a digest).
    Failed,
    /// A provider holds mail for a configuration reason.
    Held,
    /// A delegated sign-in ages out, or a client secret or certificate expires, soon.
    SignInExpiring,
    /// The oldest waiting message is older than `distributor.stuck_after`.
    QueueStuck,
    /// The store cannot commit, is damaged, or is short of space.
    Store,
    /// The fleet store has been unreachable for over a minute.
    Fleet,
    /// A test alert (`mailgate alert test`): sent on request, never subscribed to.
    Test,
}

impl AlertEvent {
    /// Every event, in the order the SPEC lists them.
    pub const ALL: [AlertEvent; 6] = [
        AlertEvent::Failed,
        AlertEvent::Held,
        AlertEvent::SignInExpiring,
        AlertEvent::QueueStuck,
        AlertEvent::Store,
        AlertEvent::Fleet,
    ];

    /// The name in the configuration, the payloads and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEvent::Failed => "failed",
            AlertEvent::Held => "held",
            AlertEvent::SignInExpiring => "sign-in-expiring",
            AlertEvent::QueueStuck => "queue-stuck",
            AlertEvent::Store => "store",
            AlertEvent::Fleet => "fleet",
            AlertEvent::Test => "test",
        }
    }

    /// Parses the name of an event one can subscribe to (`test` is not one).
    pub fn parse(s: &str) -> Option<AlertEvent> {
        AlertEvent::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl std::fmt::Display for AlertEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Its name in `alerts.json` and the payloads, as in the configuration.
impl serde::Serialize for AlertEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for AlertEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "test" => Ok(AlertEvent::Test),
            n => AlertEvent::parse(n)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown alert event {n:?}"))),
        }
    }
}

/// The body of a webhook alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// mailgate's own JSON (`event`, `state`, `node`, `provider`, `summary`, ...).
    #[default]
    Json,
    /// A Microsoft Teams message with an Adaptive Card (a Workflows webhook).
    Teams,
    /// A Slack incoming webhook message.
    Slack,
}

/// `[[alert]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Shown in the log, the metrics and `mailgate alert test --alert`.
    pub name: Spanned<String>,
    /// Where the alert is posted (https:// or http://).
    pub webhook_url: Option<Spanned<String>>,
    /// Or: the address an alert email goes to.
    pub email: Option<Spanned<String>>,
    /// The provider an alert email goes through (default: the default chain's first);
    /// never the provider the alert is about.
    pub provider: Option<Spanned<String>>,
    /// `json`, `teams` or `slack` (webhooks).
    #[serde(default)]
    pub format: AlertFormat,
    /// The events it is told of (default: all).
    pub events: Option<Vec<Spanned<String>>>,
    /// Failures within this interval are summed into one alert (default 15 minutes).
    pub min_interval: Option<Dur>,
}

impl AlertConfig {
    /// The events this alert is told of.
    pub fn wants(&self, e: AlertEvent) -> bool {
        self.events
            .as_ref()
            .is_none_or(|l| l.iter().any(|n| n.get_ref() == e.as_str()))
    }

    /// `min_interval` in force.
    pub fn interval(&self) -> std::time::Duration {
        self.min_interval
            .map_or(std::time::Duration::from_secs(900), |d| d.0)
    }
}

impl Config {
    /// The problems of the `[[alert]]` tables.
    pub(super) fn alert_problems(&self) -> Vec<(Range<usize>, String)> {
        let mut out = Vec::new();
        let mut names = std::collections::HashSet::new();
        for a in &self.alert {
            let what = format!("alert {:?}", a.name.get_ref());
            if !names.insert(a.name.get_ref().as_str()) {
                out.push((a.name.span(), format!("duplicate {what}")));
            }
            match (&a.webhook_url, &a.email) {
                (Some(_), Some(_)) | (None, None) => out.push((
                    a.name.span(),
                    format!("{what}: set exactly one of webhook_url and email"),
                )),
                (Some(u), None)
                    if !(u.get_ref().starts_with("https://")
                        || u.get_ref().starts_with("http://")) =>
                {
                    out.push((
                        u.span(),
                        format!("{what}: webhook_url must be an http:// or https:// URL"),
                    ));
                }
                (None, Some(e)) if crate::address::check_address(e.get_ref(), true).is_err() => {
                    out.push((
                        e.span(),
                        format!("{what}: email {:?} is not an address", e.get_ref()),
                    ));
                }
                _ => {}
            }
            if let Some(p) = &a.provider {
                if a.email.is_none() {
                    out.push((p.span(), format!("{what}: provider is for an email alert")));
                } else if self.provider(p.get_ref()).is_none() {
                    out.push((
                        p.span(),
                        format!("{what}: {}", self.no_such_provider(p.get_ref())),
                    ));
                }
            }
            for e in a.events.iter().flatten() {
                if AlertEvent::parse(e.get_ref()).is_none() {
                    let all: Vec<&str> = AlertEvent::ALL.iter().map(|e| e.as_str()).collect();
                    out.push((
                        e.span(),
                        format!(
                            "{what}: no event {:?} (events: {})",
                            e.get_ref(),
                            all.join(", ")
                        ),
                    ));
                }
            }
        }
        out
    }
}
