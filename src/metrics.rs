//! Prometheus metrics (prometheus-client), prefix `mailgate_`: the names of SPEC.md,
//! shared by the listener, the pipeline, the distributor and the store.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why the message was refused.
    pub reason: String,
}

/// `{what}`: what a node refused from the fleet (`heartbeat`, `peer-call`, `value`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabel {
    /// What was refused.
    pub what: String,
}

/// `{provider}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    /// Provider name.
    pub provider: String,
}

/// `{provider,diagnosis}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderDiagnosis {
    /// Provider name.
    pub provider: String,
    /// Diagnosis code.
    pub diagnosis: String,
}

/// `{from,to}`: a failover from one provider of a chain to the next.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Failover {
    /// The provider that could not take the mail.
    pub from: String,
    /// The one that took it over.
    pub to: String,
}

/// `{alert,event}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertEventLabel {
    /// The `[[alert]]` name.
    pub alert: String,
    /// The event.
    pub event: String,
}

/// `{alert}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabel {
    /// The `[[alert]]` name.
    pub alert: String,
}

/// `{status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// Message status.
    pub status: String,
}

fn delivery_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// Every metric, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `mailgate_smtp_sessions_active`
    pub sessions_active: Gauge,
    /// `mailgate_messages_accepted_total`
    pub accepted: Counter,
    /// `mailgate_messages_rejected_total{reason}`
    pub rejected: Family<Reason, Counter>,
    /// `mailgate_messages_sent_total{provider}`
    pub sent: Family<ProviderLabel, Counter>,
    /// `mailgate_messages_failed_total{provider,diagnosis}`
    pub failed: Family<ProviderDiagnosis, Counter>,
    /// `mailgate_deliveries_deferred_total{provider,diagnosis}`
    pub deferred: Family<ProviderDiagnosis, Counter>,
    /// `mailgate_throttle_deferrals_total{provider}`
    pub throttle_deferrals: Family<ProviderLabel, Counter>,
    /// `mailgate_queue_messages{status}`
    pub queue: Family<StatusLabel, Gauge>,
    /// `mailgate_alerts_sent_total{alert,event}`
    pub alerts_sent: Family<AlertEventLabel, Counter>,
    /// `mailgate_alert_failures_total{alert}`
    pub alert_failures: Family<AlertLabel, Counter>,
    /// `mailgate_provider_held{provider}`: 1 while the provider holds mail for a
    /// configuration reason.
    pub provider_held: Family<ProviderLabel, Gauge>,
    /// `mailgate_queue_oldest_waiting_seconds`: the age of the oldest queued or deferred
    /// message (0: none); set at scrape time.
    pub oldest_waiting: Gauge,
    /// `mailgate_store_ok`: 1 while `/healthz` would say the store is healthy; set at
    /// scrape time.
    pub store_ok: Gauge,
    /// `mailgate_oauth2_credential_expires_seconds{provider}`: until the client
    /// certificate or secret ends (when known); set at scrape time.
    pub credential_expires: Family<ProviderLabel, Gauge>,
    /// `mailgate_failovers_total{from,to}`
    pub failovers: Family<Failover, Counter>,
    /// `mailgate_provider_circuit_open{provider}`: 1 while the provider's circuit is
    /// open or half-open.
    pub circuit_open: Family<ProviderLabel, Gauge>,
    /// `mailgate_oauth2_access_token_expires_seconds{provider}`
    pub oauth2_access_expires: Family<ProviderLabel, Gauge>,
    /// `mailgate_oauth2_signed_in{provider}` (delegated flows)
    pub oauth2_signed_in: Family<ProviderLabel, Gauge>,
    /// `mailgate_oauth2_refresh_token_ages_out_seconds{provider}` (delegated flows)
    pub oauth2_ages_out: Family<ProviderLabel, Gauge>,
    /// `mailgate_delivery_oldest_inflight_seconds{provider}`: the age of the provider's
    /// oldest attempt running now (0: none); set at scrape time.
    pub oldest_inflight: Family<ProviderLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// `mailgate_delivery_duration_seconds{provider}`
    pub delivery_duration: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    /// `mailgate_store_commit_duration_seconds`
    pub commit_duration: Histogram,
    /// Totals since start for `/status` (label families cannot be summed).
    pub totals: Totals,
    /// `fleet_store_up`: 1 while the fleet store answers (with `[fleet]` only).
    pub fleet_up: Gauge,
    /// `mailgate_fleet_call_duration_seconds`: one round trip to the fleet store, as this
    /// node sees it (answered calls only).
    pub fleet_call_duration: Histogram,
    /// `fleet_nodes`: nodes with a live heartbeat (with `[fleet]` only).
    pub fleet_nodes: Gauge,
    /// `mailgate_fleet_rejected_total{what}`: heartbeats and peer calls that did not
    /// verify, and values of the fleet store that were out of bounds (with `[fleet]`).
    pub fleet_rejected: Family<WhatLabel, Counter>,
    /// Whether the fleet gauges are shown.
    pub fleet_enabled: std::sync::atomic::AtomicBool,
    fleet_registry: Registry,
}

/// Counts since start, for `/status`.
#[derive(Debug, Default)]
pub struct Totals {
    /// Refused messages or transactions.
    pub rejected: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages partly sent.
    pub partial: AtomicU64,
    /// Messages failed.
    pub failed: AtomicU64,
    /// Notices mailgate made (bounces, delay notices) that went.
    pub notices_sent: AtomicU64,
    /// Notices that failed.
    pub notices_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mailgate");
        let m = Metrics {
            sessions_active: Gauge::default(),
            accepted: Counter::default(),
            rejected: Family::default(),
            sent: Family::default(),
            failed: Family::default(),
            deferred: Family::default(),
            throttle_deferrals: Family::default(),
            queue: Family::default(),
            failovers: Family::default(),
            provider_held: Family::default(),
            oldest_waiting: Gauge::default(),
            store_ok: Gauge::default(),
            credential_expires: Family::default(),
            alerts_sent: Family::default(),
            alert_failures: Family::default(),
            circuit_open: Family::default(),
            delivery_duration: Family::new_with_constructor(delivery_histogram),
            oldest_inflight: Family::default(),
            oauth2_access_expires: Family::default(),
            oauth2_signed_in: Family::default(),
            oauth2_ages_out: Family::default(),
            commit_duration: commit_histogram(),
            totals: Totals::default(),
            fleet_up: Gauge::default(),
            fleet_nodes: Gauge::default(),
            fleet_rejected: Family::default(),
            fleet_call_duration: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            fleet_enabled: std::sync::atomic::AtomicBool::new(false),
            fleet_registry: Registry::default(),
            registry: Registry::default(),
        };
        // Each metric: its name (after `mailgate_`), its help, its field.
        macro_rules! register {
            ($registry:expr, $($name:literal, $help:literal => $field:ident;)*) => {
                $( $registry.register($name, $help, m.$field.clone()); )*
            };
        }
        let mut fleet_registry = Registry::with_prefix("mailgate");
        register!(fleet_registry,
            "fleet_store_up", "1 while the fleet store (Redis) answers" => fleet_up;
            "fleet_nodes", "Nodes of the fleet with a live heartbeat" => fleet_nodes;
            "fleet_rejected", "Heartbeats and peer calls that did not verify with the fleet secret, and fleet store values out of bounds, by what" => fleet_rejected;
            "fleet_call_duration_seconds", "Round trips to the fleet store (Redis) as this node sees them" => fleet_call_duration;
        );
        register!(registry,
            "smtp_sessions_active", "SMTP sessions open now" => sessions_active;
            "messages_accepted", "Messages accepted and committed" => accepted;
            "messages_rejected", "Messages or transactions refused, by reason" => rejected;
            "messages_sent", "Messages sent, by provider" => sent;
            "messages_failed", "Messages failed, by provider and diagnosis" => failed;
            "deliveries_deferred", "Delivery attempts deferred, by provider and diagnosis" => deferred;
            "throttle_deferrals", "Messages held back by a per-minute limit, by provider" => throttle_deferrals;
            "provider_held", "1 while a provider holds mail for a configuration reason (the held alert)" => provider_held;
            "queue_oldest_waiting_seconds", "Age of the oldest queued or deferred message (0: none)" => oldest_waiting;
            "store_ok", "1 while the store can commit, is the file opened, records every outcome and has space" => store_ok;
            "oauth2_credential_expires_seconds", "Seconds until the provider's client certificate or client secret ends (when known)" => credential_expires;
            "alerts_sent", "Alerts delivered, by alert and event" => alerts_sent;
            "alert_failures", "Alert deliveries that failed (each is tried again), by alert" => alert_failures;
            "failovers", "Mail moved on to the next provider of its chain, by the provider it left and the one that took it" => failovers;
            "provider_circuit_open", "1 while a provider's circuit is open (skipped after repeated failures) or half-open" => circuit_open;
            "queue_messages", "Messages in the store, by status" => queue;
            "delivery_duration_seconds", "Duration of delivery attempts, by provider" => delivery_duration;
            "delivery_oldest_inflight_seconds", "Age of the oldest delivery attempt running now (0: none), by provider" => oldest_inflight;
            "oauth2_access_token_expires_seconds", "Seconds until the OAuth2 access token held expires (0: none held), by provider" => oauth2_access_expires;
            "oauth2_signed_in", "1 while a delegated OAuth2 provider holds a sign-in (refresh token), by provider" => oauth2_signed_in;
            "oauth2_refresh_token_ages_out_seconds", "Seconds until the stored refresh token ages out if it is not used again, by provider" => oauth2_ages_out;
            "store_commit_duration_seconds", "Duration of store commits (group commit)" => commit_duration;
        );
        Metrics {
            registry,
            fleet_registry,
            ..m
        }
    }
}

impl Metrics {
    /// Counts a refused message or transaction.
    pub fn reject(&self, reason: &str) {
        self.totals.rejected.fetch_add(1, Ordering::Relaxed);
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets a provider's OAuth2 gauges (read at scrape time).
    pub fn oauth2_token(
        &self,
        provider: &str,
        access_expires_in: i64,
        signed_in: Option<bool>,
        ages_out_in: Option<i64>,
    ) {
        let label = ProviderLabel {
            provider: provider.to_string(),
        };
        self.oauth2_access_expires
            .get_or_create(&label)
            .set(access_expires_in);
        if let Some(s) = signed_in {
            self.oauth2_signed_in
                .get_or_create(&label)
                .set(i64::from(s));
            self.oauth2_ages_out
                .get_or_create(&label)
                .set(ages_out_in.unwrap_or(0));
        }
    }

    /// The text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if self.fleet_enabled.load(Ordering::Relaxed) {
            let mut fleet = String::new();
            let _ = prometheus_client::encoding::text::encode(&mut fleet, &self.fleet_registry);
            if let Some(body) = out.strip_suffix("# EOF\n") {
                out = format!("{body}{fleet}");
            }
        }
        out
    }
}
