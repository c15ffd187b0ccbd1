//! The JSON side of the status listener: `/healthz`, `/status`, `/metrics` and the admin
//! API the CLI talks to (`/api/...`). `/status` and the dashboard read one
//! [`Snapshot`](crate::snapshot::Snapshot); actions go through [`super::actions`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::actions::{cancel_message, retry_message, sign_in_changed};
use super::query::ListQuery;
use super::state::{AppState, as_shown};
use crate::distributor::circuit::CircuitState;
use crate::history::{Record, Status};
use crate::pipeline::{Client, Origin, Submission, SubmitError};
use crate::snapshot::{ProviderView, Snapshot};
use crate::time::rfc3339;

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    // The probe is a real write: it fails while the store cannot commit, and its success
    // clears a past failure.
    let probe = state.pipeline.store().probe().await;
    match crate::snapshot::store_problem(&state.core()).await {
        None if probe => (StatusCode::OK, "ok").into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store is not writable (disk full or I/O error)",
        )
            .into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

pub(super) async fn status(State(state): State<AppState>) -> Response {
    let snap = match Snapshot::gather(&state.core()).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let records: serde_json::Map<String, serde_json::Value> = snap
        .counts
        .iter()
        .map(|(st, n)| (st.as_str().to_string(), json!(n)))
        .collect();
    let m = state.pipeline.metrics();
    let problem = crate::snapshot::store_problem(&state.core()).await;
    let space = state.space.measure();
    let fleet = fleet_status(&state).await;
    let providers: Vec<_> = snap.providers.iter().map(provider_json).collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "distributor": {
            "enabled": snap.enabled,
            "paused": snap.paused,
        },
        "queue": {
            "queued": snap.waiting(Status::Queued),
            "deferred": snap.waiting(Status::Deferred),
            "sending": snap.sending,
            "oldest_age_seconds": snap.oldest_age_seconds(),
            "oldest_id": snap.oldest,
        },
        "records": records,
        "totals": {
            "accepted": m.accepted.get(),
            "rejected": m.totals.rejected.load(Ordering::Relaxed),
            "sent": m.totals.sent.load(Ordering::Relaxed),
            "partial": m.totals.partial.load(Ordering::Relaxed),
            "failed": m.totals.failed.load(Ordering::Relaxed),
            "notices_sent": m.totals.notices_sent.load(Ordering::Relaxed),
            "notices_failed": m.totals.notices_failed.load(Ordering::Relaxed),
        },
        "providers": providers,
        "chains": snap.chains.iter().map(|c| json!({
            "kind": c.kind,
            "name": c.name,
            "recipients": c.recipients,
            "providers": c.providers,
        })).collect::<Vec<_>>(),
        "alerts": state.alerts.open().iter().map(|c| json!({
            "event": c.event.as_str(),
            "state": "firing",
            "provider": c.provider,
            "summary": c.summary,
            "since": rfc3339(c.since_ms),
        })).collect::<Vec<_>>(),
        "fleet": fleet,
        "store": {
            "ok": problem.is_none(),
            "problem": problem,
            "unrecorded_outcomes": state.distributor.unrecorded(),
            "damaged_messages": state.distributor.damaged(),
            "file_bytes": state.pipeline.store().file_len(),
            "free_bytes": space.map(|(free, _)| free),
            "needed_free_bytes": space.map(|(_, needed)| needed),
        },
    }))
    .into_response()
}

/// One provider of `/status`.
fn provider_json(p: &ProviderView) -> serde_json::Value {
    let oauth2 = p.token.as_ref().map(|t| {
        let mut o = json!({
            "flow": t.flow,
            "token_valid": t.valid,
            "token_expires_at": t.expires_at_ms.map(rfc3339),
            "last_token_error": t.last_error,
            "tokens_fetched": t.fetched,
        });
        if let Some(signed_in) = t.signed_in {
            o["signed_in"] = json!(signed_in);
            o["sign_in"] = t.sign_in.as_ref().map_or(json!(null), |g| {
                json!({
                    "account": g.account,
                    "signed_in_at": rfc3339(g.signed_in_ms),
                    "refresh_token_last_used": rfc3339(g.last_used_ms),
                    "refresh_token_renewed": rfc3339(g.renewed_ms),
                    "refresh_token_ages_out": rfc3339(g.ages_out_ms),
                    "refused": g.refused,
                })
            });
        }
        o
    });
    let stats = &p.stats;
    json!({
        "name": p.name,
        "kind": p.kind,
        "per_minute_limit": p.limits.per_minute,
        "sent_last_minute": stats.sent_last_minute,
        "throttle_deferrals": stats.throttle_deferrals,
        "last_error": stats.last_error.as_ref().map(|(e, _)| e),
        "last_error_at": stats.last_error.as_ref().map(|(_, at)| rfc3339(*at)),
        "per_day_recipient_limit": p.limits.per_day,
        "recipients_last_day": stats.recipients_last_day,
        "sending": stats.in_flight,
        "in_flight": stats.attempts.iter().map(|a| json!({
            "id": a.id,
            "stage": a.stage,
            "seconds": a.age.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "oldest_in_flight_seconds": stats.attempts.first().map_or(0.0, |a| a.age.as_secs_f64()),
        "oauth2": oauth2,
        "circuit": p.circuit.0.as_str(),
        "circuit_open_until": p.circuit.1.filter(|_| p.circuit.0 != CircuitState::Closed).map(rfc3339),
    })
}

/// The `fleet` object of `/status` (SPEC), and the fleet gauges updated.
async fn fleet_status(state: &AppState) -> Option<serde_json::Value> {
    let f = state.distributor.fleet()?;
    let names: Vec<String> = state
        .pipeline
        .config()
        .provider
        .iter()
        .map(|p| p.name.get_ref().clone())
        .collect();
    let overview = f.overview(&names).await;
    let m = state.pipeline.metrics();
    m.fleet_enabled.store(true, Ordering::Relaxed);
    m.fleet_up.set(i64::from(f.is_up()));
    let (nodes, providers) = overview.unwrap_or_default();
    m.fleet_nodes
        .set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
    Some(json!({
        "store": if f.is_up() { "up" } else { "down" },
        "node": f.node(),
        "expected_nodes": f.expected_nodes(),
        "nodes": nodes,
        "providers": providers.iter().map(|(name, minute, day, conns)| json!({
            "name": name, "sent_last_minute": minute, "recipients_last_day": day, "connections": conns,
        })).collect::<Vec<_>>(),
    }))
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let _ = fleet_status(&state).await;
    let now = crate::time::now_ms();
    let seconds_until = |at: u64| i64::try_from(at.saturating_sub(now) / 1000).unwrap_or(i64::MAX);
    for p in &state.pipeline.config().provider {
        let name = p.name.get_ref();
        let oldest = state
            .distributor
            .running_attempts(name)
            .first()
            .map_or(0.0, |a| a.age.as_secs_f64());
        state
            .pipeline
            .metrics()
            .oldest_inflight
            .get_or_create(&crate::metrics::ProviderLabel {
                provider: name.clone(),
            })
            .set(oldest);
    }
    for p in state.distributor.providers() {
        let Some(oauth) = p.oauth() else { continue };
        let t = oauth.status();
        state.pipeline.metrics().oauth2_token(
            oauth.provider(),
            t.expires_at_ms.map_or(0, seconds_until),
            t.signed_in,
            t.sign_in.as_ref().map(|g| seconds_until(g.ages_out_ms)),
        );
    }
    let m = state.pipeline.metrics();
    for p in &state.pipeline.config().provider {
        if let Some((_, at)) = crate::alerts::credential_ends(p) {
            m.credential_expires
                .get_or_create(&crate::metrics::ProviderLabel {
                    provider: p.name.get_ref().clone(),
                })
                .set(seconds_until(at));
        }
    }
    m.store_ok.set(i64::from(
        crate::snapshot::store_problem(&state.core())
            .await
            .is_none(),
    ));
    if let Ok(Some(oldest)) = state
        .pipeline
        .store()
        .blocking(|s| s.oldest_waiting())
        .await
    {
        let at = crate::history::received_ms(&oldest).unwrap_or(now);
        m.oldest_waiting
            .set(i64::try_from(now.saturating_sub(at) / 1000).unwrap_or(i64::MAX));
    } else {
        m.oldest_waiting.set(0);
    }
    if let Ok(counts) = state.pipeline.store().blocking(|s| s.status_counts()).await {
        for (st, n) in counts {
            state
                .pipeline
                .metrics()
                .queue
                .get_or_create(&crate::metrics::StatusLabel {
                    status: st.as_str().to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.pipeline.metrics().encode(),
    )
        .into_response()
}

pub(super) async fn list_messages(
    State(state): State<AppState>,
    peer: Option<axum::Extension<super::http::PeerCall>>,
    Query(q): Query<ListQuery>,
) -> Response {
    let query = match super::query::HistoryQuery::parse(&q) {
        Ok(q) => q,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let limit = query.limit();
    let records = match query.run_blocking(state.pipeline.store()).await {
        Ok((records, _)) => records
            .into_iter()
            .map(|r| as_shown(r, &state.distributor))
            .collect::<Vec<Record>>(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // Another node asks for this node's own records only: a fleet view never fans out
    // from a node that was asked by another.
    if !q.wants_fleet() || peer.is_some() {
        return axum::Json(records).into_response();
    }
    axum::Json(super::fleet_view::merged(&state, &q, records, limit).await).into_response()
}

/// Query of `GET /api/messages/{id}`.
#[derive(Debug, Deserialize, Default)]
pub struct WaitQuery {
    /// Wait up to this long (`60s`) for the first attempt or the end.
    pub wait: Option<String>,
}

fn has_outcome(r: &Record) -> bool {
    r.status.is_finished() || !r.attempts.is_empty()
}

pub(super) async fn get_message(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Response {
    let wait = q
        .wait
        .as_deref()
        .and_then(|w| humantime::parse_duration(w).ok())
        .unwrap_or_default()
        .min(Duration::from_secs(600));
    let mut events = state.distributor.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited_out = wait.is_zero();
    let mut shutdown = state.shutdown.clone();
    loop {
        let lookup = id.clone();
        let record = match state
            .pipeline
            .store()
            .blocking(move |s| s.record(&lookup))
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => return error(StatusCode::NOT_FOUND, format!("no message {id}")),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        if waited_out || has_outcome(&record) {
            return axum::Json(as_shown(record, &state.distributor)).into_response();
        }
        // Wait for news of this message (or the deadline, or shutdown), then look again.
        let news = async {
            loop {
                match events.recv().await {
                    Ok(ev) if ev.id == id => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => std::future::pending::<()>().await,
                }
            }
        };
        waited_out = tokio::select! {
            r = tokio::time::timeout_at(deadline, news) => r.is_err(),
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
    }
}

pub(super) async fn get_eml(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let lookup = id.clone();
    match state
        .pipeline
        .store()
        .blocking(move |s| s.body(&lookup))
        .await
    {
        Ok(Some(body)) => {
            let len = body.len();
            (
                [
                    (header::CONTENT_TYPE, "message/rfc822".to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                body.into_http(),
            )
                .into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Body of `POST /api/messages/{id}/cancel`: who asks (the CLI names its user).
#[derive(Debug, Deserialize, Default)]
pub struct CancelBody {
    /// Who cancels, for the record.
    pub by: Option<String>,
}

pub(super) async fn cancel_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Option<axum::Json<CancelBody>>,
) -> Response {
    let who = body
        .and_then(|b| b.0.by)
        .map(|b| {
            b.chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect::<String>()
        })
        .unwrap_or_else(|| "the admin API".into());
    let by = format!("{who} (from {})", peer.ip());
    match cancel_message(&state, &id, &by).await {
        Ok(r) => axum::Json(r).into_response(),
        Err((code, why)) => error(code, why),
    }
}

pub(super) async fn retry_one(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match retry_message(&state, &id).await {
        Ok(status) => axum::Json(json!({ "id": id, "status": status.as_str() })).into_response(),
        Err((code, why)) => error(code, why),
    }
}

pub(super) async fn retry_all(State(state): State<AppState>) -> Response {
    match state.distributor.retry_deferred().await {
        Ok(n) => axum::Json(json!({ "retried": n })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// After `oauth2 login` or `logout` changed a provider's stored sign-in: the provider
/// forgets what it held in memory and, when a mailbox is signed in now, its held mail is
/// due at once.
pub(super) async fn oauth2_reload(
    State(state): State<AppState>,
    axum::extract::Path(provider): axum::extract::Path<String>,
) -> Response {
    match sign_in_changed(&state, &provider).await {
        Ok(Some((signed_in, released))) => {
            axum::Json(json!({ "signed_in": signed_in, "released": released })).into_response()
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!(
                "the running daemon has no OAuth2 provider named {provider:?} (reload it if the configuration changed)"
            ),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /api/providers/{provider}/circuit/close`: `mailgate verify` proved the provider
/// healthy; its circuit closes and the chains send to it again.
pub(super) async fn close_circuit(
    State(state): State<AppState>,
    axum::extract::Path(provider): axum::extract::Path<String>,
) -> Response {
    if state.distributor.provider(&provider).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "the running daemon has no provider named {provider:?} (reload it if the configuration changed)"
            ),
        );
    }
    let was_open = state.distributor.close_circuit(&provider);
    axum::Json(json!({ "provider": provider, "was_open": was_open, "circuit": "closed" }))
        .into_response()
}

/// `POST /api/alerts/test` `{"alert": NAME?}`: one test alert through each (or the
/// named) `[[alert]]`, one try each; the outcome of each.
pub(super) async fn alert_test(
    State(state): State<AppState>,
    body: Option<axum::Json<serde_json::Value>>,
) -> Response {
    let only = body
        .as_ref()
        .and_then(|b| b.get("alert"))
        .and_then(|a| a.as_str())
        .map(String::from);
    let results = state.alerts.test(&state.core(), only.as_deref()).await;
    axum::Json(results).into_response()
}

pub(super) async fn pause(State(state): State<AppState>) -> Response {
    state.distributor.pause();
    axum::Json(json!({ "paused": true })).into_response()
}

pub(super) async fn resume(State(state): State<AppState>) -> Response {
    state.distributor.resume();
    axum::Json(json!({ "paused": false })).into_response()
}

/// Body of `POST /api/send`.
#[derive(Debug, Deserialize)]
pub struct SendRequest {
    /// Envelope sender (default: the message's From after the rewrite).
    #[serde(default)]
    pub from: Option<String>,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// The message, base64.
    pub raw: String,
    /// Submit as this user.
    #[serde(default)]
    pub user: Option<String>,
    /// Route to this provider.
    #[serde(default)]
    pub provider: Option<String>,
}

pub(super) async fn send(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Json(req): axum::Json<SendRequest>,
) -> Response {
    let config = state.pipeline.config();
    if let Some(u) = &req.user
        && !config.user.iter().any(|x| x.name.get_ref() == u)
    {
        return error(StatusCode::BAD_REQUEST, format!("no user named {u:?}"));
    }
    if let Some(p) = &req.provider
        && config.provider(p).is_none()
    {
        return error(StatusCode::BAD_REQUEST, config.no_such_provider(p));
    }
    if req.to.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no recipients");
    }
    // The same checks as SMTP: a single-label domain is refused for a recipient only.
    for a in &req.to {
        if crate::address::check_address(a, true).is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid recipient address {a:?}"),
            );
        }
    }
    if let Some(a) = &req.from
        && !a.is_empty()
        && matches!(
            crate::address::check_address(a, true),
            Err(crate::address::AddressProblem::Malformed
                | crate::address::AddressProblem::NeedsSmtpUtf8)
        )
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid sender address {a:?}"),
        );
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(req.raw.trim()) else {
        return error(StatusCode::BAD_REQUEST, "raw is not base64");
    };
    // The header From is read only when no envelope sender was given.
    let mail_from = match &req.from {
        Some(f) => f.clone(),
        None => crate::message::rewrite::header_from(&bytes).unwrap_or_default(),
    };
    let sub = Submission {
        origin: Origin::AdminApi,
        client: Client {
            addr: peer,
            helo: None,
            auth_login: None,
            local_user: None,
        },
        mail_from,
        rcpts: req.to.clone(),
        raw: bytes,
        longest_line: None,
        as_user: req.user.clone(),
        provider: req.provider.clone(),
    };
    match state.pipeline.commit(sub).await {
        Ok(id) => (StatusCode::ACCEPTED, axum::Json(json!({ "id": id }))).into_response(),
        Err(SubmitError::Unfit(why)) => error(StatusCode::UNPROCESSABLE_ENTITY, why),
        Err(SubmitError::Store(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

pub(super) async fn reload(State(state): State<AppState>) -> Response {
    match super::actions::reload(&state).await {
        Ok(report) => axum::Json(json!({ "reloaded": true, "needs_restart": report.needs_restart, "released": report.released })).into_response(),
        Err(e @ crate::reload::ReloadError::BuiltIn) => error(StatusCode::CONFLICT, e.to_string()),
        Err(crate::reload::ReloadError::Invalid(errors)) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "the new configuration is invalid; the running one stays",
                "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
    }
}
