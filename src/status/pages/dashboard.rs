//! The dashboard (`/`): the distributor with Pause and Resume, the queue, and per provider
//! its limits, use, last error and OAuth2 state (with Sign in for a device-code provider).

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::Ctx;
use super::{CsrfForm, age, chart, csrf_ok, csrf_refused, enc, html, page_error};
use crate::distributor::circuit::CircuitState;
use crate::history::Status;
use crate::snapshot::{ProviderView, Snapshot};

struct ProviderRow {
    name: String,
    kind: String,
    host: String,
    /// The per-minute limit's use as an SVG bar (numbers only).
    minute_bar: String,
    /// The daily recipient limit's use as an SVG bar (numbers only).
    day_bar: String,
    throttle_deferrals: u64,
    last_error: String,
    /// When the last error came, as the pages show times.
    last_error_at: String,
    token: String,
    /// The name in a URL path.
    path: String,
    /// A delegated provider (device code or authorization code): the Sign in button.
    delegated: bool,
    /// `closed`, `open` or `half-open`.
    circuit: &'static str,
    /// While not closed: what it means.
    circuit_words: String,
    /// While open: until when (a time, never broken inside).
    circuit_until: String,
}

impl ProviderRow {
    /// Until when the circuit is open, as HTML that wraps only between date and clock.
    fn until_html(&self) -> String {
        super::when_html(&self.circuit_until)
    }

    /// When the last error came, likewise.
    fn error_at_html(&self) -> String {
        super::when_html(&self.last_error_at)
    }
}

struct ChainRow {
    /// `Route internal`, `User erp`, `Default`.
    what: String,
    /// A route's recipients, comma-separated.
    recipients: String,
    /// `m365 → graph`.
    chain: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    signed_in: bool,
    csrf: String,
    paused: bool,
    queued: u64,
    deferred: u64,
    sending: usize,
    sent: u64,
    partial: u64,
    failed: u64,
    oldest: Option<String>,
    oldest_age: String,
    accepted: u64,
    rejected: u64,
    providers: Vec<ProviderRow>,
    /// Some provider signs in with OAuth2: the Sign-in column is shown.
    sign_in_column: bool,
    /// Routes, users' chains and the default chain, in the order they are looked at.
    chains: Vec<ChainRow>,
    /// Open alert conditions: event, what, since.
    alerts: Vec<(String, String, String)>,
    /// With `[fleet]`: each node alive (name, version, last seen, queued, deferred,
    /// sending, open alert events), from the fleet store's heartbeats.
    nodes: Vec<NodeRow>,
    /// Attempts per hour over 24 hours, an SVG of numbers and times only.
    hourly_chart: String,
    /// Attempts per day over 30 days, likewise.
    daily_chart: String,
    /// Totals of the last 24 hours: sent, deferred, failed.
    day_totals: (u64, u64, u64),
}

/// A fleet node on the dashboard.
struct NodeRow {
    node: String,
    version: String,
    last_seen: String,
    queued: u64,
    deferred: u64,
    sending: u64,
    /// Its open alert conditions' events.
    alerts: String,
}

/// An open alert condition as the dashboard lists it: event, summary, since.
fn alert_row(c: crate::alerts::Condition) -> (String, String, String) {
    (
        c.event.to_string(),
        c.summary,
        super::shown_time(crate::time::rfc3339(c.since_ms)),
    )
}

impl From<&crate::snapshot::ChainView> for ChainRow {
    fn from(c: &crate::snapshot::ChainView) -> Self {
        ChainRow {
            what: match c.kind {
                "route" => format!("Route {}", c.name),
                "user" => format!("User {}", c.name),
                _ => "Default".into(),
            },
            recipients: c.recipients.join(", "),
            chain: c.line(),
        }
    }
}

pub(super) async fn dashboard(State(state): State<Ctx>, headers: HeaderMap) -> Response {
    let since = crate::time::now_ms().saturating_sub(31 * crate::time::DAY_MS);
    let tallies = state
        .pipeline
        .store()
        .blocking(move |s| s.tallies_since(since))
        .await;
    let (snap, tallies) = match (Snapshot::gather(&state.core()).await, tallies) {
        (Ok(s), Ok(t)) => (s, t),
        (Err(e), _) | (_, Err(e)) => {
            return page_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let providers: Vec<ProviderRow> = snap.providers.iter().map(provider_row).collect();
    let sign_in_column = providers.iter().any(|p| p.delegated || !p.token.is_empty());
    let chains = snap.chains.iter().map(ChainRow::from).collect();
    let m = state.pipeline.metrics();
    let now = crate::time::now_ms();
    let hours = chart::hourly(&tallies, now);
    let days = chart::daily(&tallies, now);
    let day_totals = hours.iter().fold((0, 0, 0), |t, b| {
        (t.0 + b.sent, t.1 + b.deferred, t.2 + b.failed)
    });
    html(Dashboard {
        hourly_chart: chart::svg(
            "chart-hourly",
            "attempts per hour, last 24 hours",
            &hours,
            6,
            chart::hour_label,
            chart::hour_when,
        ),
        daily_chart: chart::svg(
            "chart-daily",
            "attempts per day, last 30 days",
            &days,
            5,
            chart::day_label,
            chart::day_when,
        ),
        day_totals,
        // Every page is behind the sign-in: Sign out is always offered.
        signed_in: true,
        csrf: state.pages.csrf_of(&headers),
        paused: snap.paused,
        queued: snap.waiting(Status::Queued),
        deferred: snap.waiting(Status::Deferred),
        sending: snap.sending,
        sent: snap.count(Status::Sent),
        partial: snap.count(Status::Partial),
        failed: snap.count(Status::Failed),
        oldest_age: snap.oldest_at_ms.map(age).unwrap_or_default(),
        oldest: snap.oldest,
        accepted: m.accepted.get(),
        rejected: m.totals.rejected.load(std::sync::atomic::Ordering::Relaxed),
        providers,
        sign_in_column,
        chains,
        nodes: fleet_nodes(&state).await,
        alerts: state.alerts.open().into_iter().map(alert_row).collect(),
    })
}

/// The fleet's nodes from their heartbeats (none without `[fleet]` or while the fleet
/// store is away).
async fn fleet_nodes(state: &Ctx) -> Vec<NodeRow> {
    let Some(f) = state.distributor.fleet() else {
        return Vec::new();
    };
    let Some((nodes, _)) = f.overview(&[]).await else {
        return Vec::new();
    };
    let mut rows: Vec<NodeRow> = nodes
        .iter()
        .map(|n| NodeRow {
            node: n["node"].as_str().unwrap_or_default().to_string(),
            version: n["version"].as_str().unwrap_or_default().to_string(),
            last_seen: format!("{} s ago", n["last_seen_seconds"].as_u64().unwrap_or(0)),
            queued: n["queue"]["queued"].as_u64().unwrap_or(0),
            deferred: n["queue"]["deferred"].as_u64().unwrap_or(0),
            sending: n["queue"]["sending"].as_u64().unwrap_or(0),
            alerts: n["alerts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        })
        .collect();
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    rows
}

/// One provider's row: its limits as bars, its last error and sign-in in words.
fn provider_row(p: &ProviderView) -> ProviderRow {
    let token = p.token.as_ref().map_or_else(String::new, |t| {
        let exp = t
            .expires_at_ms
            .map(crate::time::rfc3339)
            .unwrap_or_default();
        let sign_in = match (t.signed_in, &t.sign_in) {
            (Some(_), Some(g)) => format!(
                "signed in as {}{}; ",
                g.account.as_deref().unwrap_or("(unknown)"),
                g.refused
                    .as_ref()
                    .map(|r| format!(", REFUSED: {r}"))
                    .unwrap_or_default()
            ),
            (Some(_), None) => "not signed in; ".into(),
            (None, _) => String::new(),
        };
        let token = match (t.valid, &t.last_error) {
            (true, _) => format!("valid until {}", super::shown_time(exp)),
            (false, Some(e)) => format!("no valid token: {e}"),
            (false, None) => "not fetched yet".into(),
        };
        format!("{sign_in}{token}")
    });
    ProviderRow {
        name: p.name.clone(),
        kind: p.kind.clone(),
        host: p.upstream.clone(),
        minute_bar: chart::limit_bar("minute", p.stats.sent_last_minute, p.limits.per_minute),
        day_bar: chart::limit_bar("day", p.stats.recipients_last_day, p.limits.per_day),
        throttle_deferrals: p.stats.throttle_deferrals,
        last_error: p
            .stats
            .last_error
            .as_ref()
            .map(|(e, _)| e.clone())
            .unwrap_or_default(),
        last_error_at: p
            .stats
            .last_error
            .as_ref()
            .map(|(_, at)| super::shown_time(crate::time::rfc3339(*at)))
            .unwrap_or_default(),
        token,
        path: enc(&p.name),
        delegated: p.delegated,
        circuit: p.circuit.0.as_str(),
        circuit_words: match p.circuit {
            (CircuitState::Closed, _) => String::new(),
            (CircuitState::Open, _) => "skipped after repeated failures until".into(),
            (CircuitState::HalfOpen, _) => "the next message tries it".into(),
        },
        circuit_until: match p.circuit {
            (CircuitState::Open, until) => {
                super::shown_time(crate::time::rfc3339(until.unwrap_or(0)))
            }
            _ => String::new(),
        },
    }
}

pub(super) async fn pause(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_paused(&state, &headers, &f, true)
}

pub(super) async fn resume(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_paused(&state, &headers, &f, false)
}

/// The Pause and Resume buttons.
fn set_paused(state: &Ctx, headers: &HeaderMap, f: &CsrfForm, paused: bool) -> Response {
    if !csrf_ok(state, headers, f) {
        return csrf_refused();
    }
    if paused {
        state.distributor.pause();
    } else {
        state.distributor.resume();
    }
    Redirect::to("/").into_response()
}
