//! The status listener (axum) on `status.listen`: the pages and the JSON API on one
//! router. With a token configured, every `/api/` call needs `Authorization: Bearer
//! <token>`; `/healthz`, `/status` and `/metrics` stay open (the pages have their own
//! sign-in).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::api::*;
use super::pages::PageState;
use super::state::AppState;

/// The router: the pages (with their own state) and the API.
pub fn router(state: AppState, pages: Arc<PageState>) -> Router {
    // A message this node does not hold is looked for on the fleet's other nodes.
    let one_message = Router::new()
        .route("/messages/{id}", get(get_message))
        .route("/messages/{id}/eml", get(get_eml))
        .route("/messages/{id}/retry", post(retry_one))
        .route("/messages/{id}/cancel", post(cancel_one))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::fleet_view::forward_unknown,
        ));
    let api = Router::new()
        .route("/messages", get(list_messages))
        .merge(one_message)
        .route("/retry-all", post(retry_all))
        .route("/distributor/pause", post(pause))
        .route("/distributor/resume", post(resume))
        .route("/send", post(send))
        .route("/reload", post(reload))
        .route("/oauth2/{provider}/reload", post(oauth2_reload))
        .route("/providers/{provider}/circuit/close", post(close_circuit))
        .route("/alerts/test", post(alert_test))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .nest("/api", api)
        .with_state(state.clone())
        .merge(super::pages::routes(state, pages))
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    pages: Arc<PageState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = router(state, pages).into_make_service_with_connect_info::<SocketAddr>();
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

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given.map(str::trim) != Some(token.as_str()) {
            if req.headers().contains_key(super::fleet_view::FORWARDED) {
                refused_node(&req);
            }
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(req).await
}

/// A call marked as coming from another node of the fleet came with a token that is not
/// this node's: said in the log (at most once in ten seconds, so a client cannot flood
/// it), since the other node's view of the fleet misses this node until it is mended.
fn refused_node(req: &Request) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = crate::time::now_ms();
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if now.saturating_sub(last) < 10_000
        || LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_err()
    {
        return;
    }
    let from = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or_else(|| "?".to_string(), |c| c.0.ip().to_string());
    tracing::warn!(
        from = %from,
        path = %req.uri().path(),
        "refused a fleet node's call: its token is not this node's; every node of a fleet needs the same status.token_file"
    );
}
