//! HTTP on `status.listen` (axum): `/healthz`, `/status`, `/metrics`, and the admin API
//! the CLI talks to. With a token configured, every `/api/` call needs
//! `Authorization: Bearer <token>`; `/healthz`, `/status` and `/metrics` stay open.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Pipeline;
use crate::config::StatusConfig;
use crate::distributor::{Distributor, provider_limits};
use crate::history::{Record, Status};
use crate::pipeline::{Client, Origin, Submission, SubmitError};
use crate::store::space::SpaceCheck;
use crate::time::{now_ms, rfc3339};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Accepted-mail pipeline (and the store, the config, the metrics).
    pub pipeline: Arc<Pipeline>,
    /// The distributor.
    pub distributor: Arc<Distributor>,
    /// When the daemon started.
    pub started: Instant,
    /// Bearer token for `/api/`, if configured.
    pub token: Option<String>,
    /// The configuration file, for reloads.
    pub config_path: Arc<RwLock<Option<PathBuf>>>,
    /// False once the SMTP listeners are closing.
    pub listeners_up: Arc<AtomicBool>,
    /// Free space on the store's disk.
    pub space: Arc<dyn SpaceCheck>,
    /// Turns true at shutdown: long polls answer at once.
    pub shutdown: watch::Receiver<bool>,
    /// Sessions and CSRF tokens of the pages.
    pub pages: Arc<super::pages::PageState>,
}

/// Reads the admin token from `token` or `token_file` (trimmed).
pub fn load_token(c: &StatusConfig) -> std::io::Result<Option<String>> {
    let token = match (&c.token, &c.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("token_file {}: {e}", p.display()))
            })?,
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        // An empty token would let anyone in with an empty bearer token.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the admin token (status.token or status.token_file) is empty",
        ));
    }
    Ok(Some(token))
}

/// The router (exposed for tests).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/messages", get(list_messages))
        .route("/messages/{id}", get(get_message))
        .route("/messages/{id}/eml", get(get_eml))
        .route("/messages/{id}/retry", post(retry_one))
        .route("/messages/{id}/cancel", post(cancel_one))
        .route("/retry-all", post(retry_all))
        .route("/distributor/pause", post(pause))
        .route("/distributor/resume", post(resume))
        .route("/send", post(send))
        .route("/reload", post(reload))
        .route("/oauth2/{provider}/reload", post(oauth2_reload))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .merge(super::pages::routes(state.clone()))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .nest("/api", api)
        .with_state(state)
}

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: AppState, mut shutdown: watch::Receiver<bool>) {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stop = async move {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "status listener failed");
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.map(str::trim) != Some(token.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(req).await
}

/// Why the daemon cannot take mail right now, or None: listeners down, the store file
/// lost, its last commit failed, delivery outcomes waiting for the store, free space
/// below `store.min_free_space` (plus the store's next growth), or a probe write failing.
async fn store_problem(state: &AppState) -> Option<String> {
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

async fn healthz(State(state): State<AppState>) -> Response {
    // The probe is a real write: it fails while the store cannot commit, and its success
    // clears a past failure.
    let probe = state.pipeline.store().probe().await;
    match store_problem(&state).await {
        None if probe => (StatusCode::OK, "ok").into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "store is not writable (disk full or I/O error)",
        )
            .into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    let counts = state
        .pipeline
        .store()
        .blocking(|s| Ok((s.status_counts()?, s.oldest_waiting()?)))
        .await;
    let (counts, oldest) = match counts {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let count = |s: Status| s.count_in(&counts);
    let oldest_age = oldest
        .as_deref()
        .and_then(|id| ulid::Ulid::from_string(id).ok())
        .map(|u| now_ms().saturating_sub(u.timestamp_ms()) / 1000);
    let records: serde_json::Map<String, serde_json::Value> = counts
        .iter()
        .map(|(st, n)| (st.as_str().to_string(), json!(n)))
        .collect();
    let config = state.pipeline.config();
    let m = state.pipeline.metrics();
    let problem = store_problem(&state).await;
    let space = state.space.measure();
    let fleet = fleet_status(&state).await;
    let providers: Vec<_> = config
        .provider
        .iter()
        .map(|p| {
            let name = p.name.get_ref();
            let stats = state.distributor.provider_stats(name);
            let limits = provider_limits(p);
            let oauth2 = state
                .distributor
                .provider(name)
                .and_then(|pr| pr.token_status())
                .map(|t| {
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
            json!({
                "name": name,
                "kind": format!("{:?}", p.kind).to_ascii_lowercase(),
                "per_minute_limit": limits.per_minute,
                "sent_last_minute": stats.sent_last_minute,
                "throttle_deferrals": stats.throttle_deferrals,
                "last_error": stats.last_error.as_ref().map(|(e, _)| e),
                "last_error_at": stats.last_error.as_ref().map(|(_, at)| rfc3339(*at)),
                "per_day_recipient_limit": limits.per_day,
                "recipients_last_day": stats.recipients_last_day,
                "sending": stats.in_flight,
                "in_flight": stats.attempts.iter().map(|a| json!({
                    "id": a.id,
                    "stage": a.stage,
                    "seconds": a.age.as_secs_f64(),
                })).collect::<Vec<_>>(),
                "oldest_in_flight_seconds": stats.attempts.first().map_or(0.0, |a| a.age.as_secs_f64()),
                "oauth2": oauth2,
            })
        })
        .collect();
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "distributor": {
            "enabled": config.distributor.enabled,
            "paused": state.distributor.is_paused(),
        },
        "queue": {
            "queued": count(Status::Queued),
            "deferred": count(Status::Deferred),
            "sending": state.distributor.sending(),
            "oldest_age_seconds": oldest_age,
            "oldest_id": oldest,
        },
        "records": records,
        "totals": {
            "accepted": m.accepted.get(),
            "rejected": m.totals.rejected.load(Ordering::Relaxed),
            "sent": m.totals.sent.load(Ordering::Relaxed),
            "partial": m.totals.partial.load(Ordering::Relaxed),
            "failed": m.totals.failed.load(Ordering::Relaxed),
        },
        "providers": providers,
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

async fn metrics(State(state): State<AppState>) -> Response {
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

pub use super::query::{ListQuery, parse_since};

async fn list_messages(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let query = match super::query::HistoryQuery::parse(&q) {
        Ok(q) => q,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    match query.run_blocking(state.pipeline.store()).await {
        Ok((records, _)) => {
            let paused = state.distributor.is_paused();
            let records: Vec<Record> = records.into_iter().map(|r| as_shown(r, paused)).collect();
            axum::Json(records).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Query of `GET /api/messages/{id}`.
#[derive(Debug, Deserialize, Default)]
pub struct WaitQuery {
    /// Wait up to this long (`60s`) for the first attempt or the end.
    pub wait: Option<String>,
}

/// A record as the API, the CLI and the pages show it: while the distributor is paused,
/// an unfinished message waits for that.
pub fn as_shown(mut r: Record, paused: bool) -> Record {
    if paused && !r.status.is_finished() {
        r.waiting = Some(crate::history::Waiting {
            reason: "paused".into(),
            until: None,
        });
    }
    r
}

fn has_outcome(r: &Record) -> bool {
    r.status.is_finished() || !r.attempts.is_empty()
}

async fn get_message(
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
            return axum::Json(as_shown(record, state.distributor.is_paused())).into_response();
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

async fn get_eml(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let lookup = id.clone();
    match state
        .pipeline
        .store()
        .blocking(move |s| s.message(&lookup))
        .await
    {
        Ok(Some(raw)) => ([(header::CONTENT_TYPE, "message/rfc822")], raw).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Queues a failed, partial or deferred message again, now (its failed recipients get
/// another chance); the API and the page's Retry button. Err: the HTTP status and why.
pub async fn retry_message(state: &AppState, id: &str) -> Result<Status, (StatusCode, String)> {
    let store = state.pipeline.store();
    let lookup = id.to_string();
    let mut record = match store.blocking(move |s| s.record(&lookup)).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err((StatusCode::NOT_FOUND, format!("no message {id}"))),
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    if matches!(record.status, Status::Sent | Status::Cancelled) {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "message {id} was {}; nothing to retry",
                record.status.as_str()
            ),
        ));
    }
    for r in record
        .recipients
        .iter_mut()
        .filter(|r| r.status == Status::Failed)
    {
        r.status = Status::Queued;
    }
    if matches!(record.status, Status::Failed | Status::Partial) {
        record.status = Status::Queued;
    }
    let now = state.distributor.now();
    record.next_attempt_at = Some(rfc3339(now));
    let status = record.status;
    store
        .update(record, Some(now))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(id = %id, status = status.as_str(), "retry requested");
    state.distributor.wake();
    Ok(status)
}

/// Body of `POST /api/messages/{id}/cancel`: who asks (the CLI names its user).
#[derive(Debug, Deserialize, Default)]
pub struct CancelBody {
    /// Who cancels, for the record.
    pub by: Option<String>,
}

/// Cancels a queued or deferred message; the API and the page's Cancel button. Err: the
/// HTTP status (404, 409 while it is being sent or when it has ended) and why.
pub async fn cancel_message(
    state: &AppState,
    id: &str,
    by: &str,
) -> Result<Record, (StatusCode, String)> {
    use crate::distributor::CancelError;
    state.distributor.cancel(id, by).await.map_err(|e| {
        let code = match &e {
            CancelError::NotFound(_) => StatusCode::NOT_FOUND,
            CancelError::Sending(_) | CancelError::Finished(..) => StatusCode::CONFLICT,
            CancelError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, e.to_string())
    })
}

async fn cancel_one(
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

async fn retry_one(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match retry_message(&state, &id).await {
        Ok(status) => axum::Json(json!({ "id": id, "status": status.as_str() })).into_response(),
        Err((code, why)) => error(code, why),
    }
}

async fn retry_all(State(state): State<AppState>) -> Response {
    match state.distributor.retry_deferred().await {
        Ok(n) => axum::Json(json!({ "retried": n })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// After `oauth2 login` or `logout` changed a provider's stored sign-in: the provider
/// forgets what it held in memory and, when a mailbox is signed in now, its held mail is
/// due at once.
async fn oauth2_reload(
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

/// A provider's stored sign-in changed (`oauth2 login` or `logout`, or the pages'
/// sign-in): it forgets its tokens and idle connections, and when a mailbox is signed in
/// now its held mail is due at once. `(signed in, released)`; None for no such provider.
pub(super) async fn sign_in_changed(
    state: &AppState,
    provider: &str,
) -> Result<Option<(bool, usize)>, crate::store::StoreError> {
    let Some(p) = state.distributor.provider(provider) else {
        return Ok(None);
    };
    let Some(oauth) = p.oauth() else {
        return Ok(None);
    };
    let signed_in = oauth.signed_in();
    p.oauth_changed().await;
    let released = if signed_in {
        state.distributor.release_held_of(provider).await?
    } else {
        0
    };
    tracing::info!(provider = %provider, signed_in, released, "OAuth2 sign-in changed");
    Ok(Some((signed_in, released)))
}

async fn pause(State(state): State<AppState>) -> Response {
    state.distributor.pause();
    axum::Json(json!({ "paused": true })).into_response()
}

async fn resume(State(state): State<AppState>) -> Response {
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

async fn send(
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

async fn reload(State(state): State<AppState>) -> Response {
    let path = state.config_path.read().ok().and_then(|g| g.clone());
    match crate::reload(&state.pipeline, &state.distributor, path.as_deref()).await {
        Ok(report) => axum::Json(json!({ "reloaded": true, "needs_restart": report.needs_restart, "released": report.released })).into_response(),
        Err(e @ crate::ReloadError::BuiltIn) => error(StatusCode::CONFLICT, e.to_string()),
        Err(crate::ReloadError::Invalid(errors)) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "the new configuration is invalid; the running one stays",
                "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
    }
}
