//! HTTP on `status.listen` (axum): `/healthz` and the admin API the CLI talks to. With a
//! token configured, every `/api/` call needs `Authorization: Bearer <token>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Pipeline;
use crate::config::StatusConfig;
use crate::distributor::Distributor;
use crate::history::{Record, Status, now_ms, parse_rfc3339};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Accepted-mail pipeline (and the store).
    pub pipeline: Arc<Pipeline>,
    /// The distributor.
    pub distributor: Arc<Distributor>,
    /// When the daemon started.
    pub started: Instant,
    /// Bearer token for `/api/`, if configured.
    pub token: Option<String>,
}

/// Reads the admin token from `token` or `token_file` (trimmed).
pub fn load_token(c: &StatusConfig) -> std::io::Result<Option<String>> {
    if let Some(t) = &c.token {
        return Ok(Some(t.trim().to_string()));
    }
    match &c.token_file {
        Some(p) => std::fs::read_to_string(p)
            .map(|t| Some(t.trim().to_string()))
            .map_err(|e| std::io::Error::new(e.kind(), format!("token_file {}: {e}", p.display()))),
        None => Ok(None),
    }
}

/// The router (exposed for tests).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/messages", get(list_messages))
        .route("/messages/{id}", get(get_message))
        .route("/messages/{id}/eml", get(get_eml))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .nest("/api", api)
        .with_state(state)
}

/// Serves until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: AppState, mut shutdown: watch::Receiver<bool>) {
    let app = router(state);
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
    (
        status,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
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

async fn healthz(State(state): State<AppState>) -> Response {
    if state.pipeline.store().probe().await {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "store is not writable (disk full or I/O error)",
        )
            .into_response()
    }
}

/// Query of `GET /api/messages`.
#[derive(Debug, Deserialize, Default)]
pub struct ListQuery {
    /// Only records of this status.
    pub status: Option<String>,
    /// Only records of this user.
    pub user: Option<String>,
    /// Only records received within this duration (`2h`) or since this RFC 3339 time.
    pub since: Option<String>,
    /// At most this many (default 50, at most 10000).
    pub limit: Option<usize>,
}

/// Parses `since`: a duration back from now, or an RFC 3339 time; ms since the epoch.
pub fn parse_since(s: &str) -> Option<u64> {
    humantime::parse_duration(s)
        .ok()
        .map(|d: Duration| {
            now_ms().saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        })
        .or_else(|| parse_rfc3339(s))
}

async fn list_messages(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(st) => Some(st),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("unknown status {s:?}: use queued, deferred, sent, partial or failed"),
                );
            }
        },
    };
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match parse_since(s) {
            Some(ms) => Some(ms),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid since {s:?}: use a duration like 2h or an RFC 3339 time"),
                );
            }
        },
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 10_000);
    let user = q.user.filter(|u| !u.is_empty());
    let store = state.pipeline.store().clone();
    let result = tokio::task::spawn_blocking(move || {
        store.list(limit, |r: &Record| {
            status.is_none_or(|s| r.status == s)
                && user.as_ref().is_none_or(|u| r.user.as_ref() == Some(u))
                && since.is_none_or(|t| parse_rfc3339(&r.received_at).is_some_and(|at| at >= t))
        })
    })
    .await;
    match result {
        Ok(Ok(records)) => axum::Json(records).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_message(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.pipeline.store().record(&id) {
        Ok(Some(r)) => axum::Json(r).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_eml(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.pipeline.store().message(&id) {
        Ok(Some(raw)) => ([(header::CONTENT_TYPE, "message/rfc822")], raw).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
