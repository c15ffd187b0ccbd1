//! The status listener (axum) on `status.listen`: the pages and the JSON API on one
//! router. Every `/api/` call needs `Authorization: Bearer <token>` (compared in
//! constant time); `/healthz` is open, `/status` and `/metrics` open on loopback (the
//! pages have their own sign-in). A call signed with the fleet secret by another
//! node ([`PeerCall`]) needs no token and may only list, show, download, retry and cancel
//! messages (SPEC "Trust boundaries").

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::sync::watch;

use super::api::*;
use super::pages::PageState;
use super::state::{AppState, bearer_matches};

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
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route_layer(middleware::from_fn_with_state(state.clone(), peer_call));
    // No message content: open to local clients; from elsewhere, the admin's.
    let monitoring = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            (state.clone(), pages.clone()),
            local_or_admin,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(monitoring)
        .nest("/api", api)
        .with_state(state.clone())
        .merge(super::pages::routes(state.clone(), pages))
        .layer(middleware::from_fn_with_state(state, browser_guard))
}

/// What a browser (or a page in one) may not make this listener do, checked before
/// anything else: a `Host` that is a name this listener does not answer to (`421`: DNS
/// rebinding finds nothing), a POST from another origin (`403`: no cross-site request
/// forgery), an API POST that is not JSON or has no body (`415`, `400`: an HTML form of
/// another site cannot send one without a preflight, which is never answered).
async fn browser_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(h) = &host
        && !host_allowed(h, &state)
    {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "this listener does not answer to that host name (status.hostnames)",
        );
    }
    if req.method() == axum::http::Method::POST {
        let headers = req.headers();
        // A browser that sends Fetch Metadata says where the request comes from: only
        // this origin (or the user's own typing) may change anything. One that does not
        // is judged by `Origin`. A client that is no browser (the CLI, another node, a
        // script) sends neither.
        let other_origin = match headers.get("sec-fetch-site") {
            Some(site) => !matches!(site.as_bytes(), b"same-origin" | b"none"),
            None => headers.get(header::ORIGIN).is_some_and(|o| {
                let o = o.to_str().unwrap_or("null");
                let authority = o.split_once("://").map(|(_, a)| a);
                !matches!((authority, &host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
            }),
        };
        if other_origin {
            return error(
                StatusCode::FORBIDDEN,
                "a request from another origin may not change anything here",
            );
        }
        if req.uri().path().starts_with("/api/") {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "an API POST takes a JSON body (Content-Type: application/json; {} when there is nothing to say)",
                );
            }
            let bodyless = headers.get(header::TRANSFER_ENCODING).is_none()
                && headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .is_none_or(|l| l.trim() == "0");
            if bodyless {
                return error(
                    StatusCode::BAD_REQUEST,
                    "an API POST takes a JSON body ({} when there is nothing to say)",
                );
            }
        }
    }
    next.run(req).await
}

/// Whether a `Host` header names this listener: an IP address (no name to rebind),
/// `localhost`, one of `status.hostnames`, or the host of this node's own
/// `[fleet] status_url` (the other nodes call it by that name).
fn host_allowed(host: &str, state: &AppState) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(n, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                n
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.');
    if name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
    {
        return true;
    }
    let config = state.pipeline.config();
    config
        .status
        .hostnames
        .iter()
        .any(|h| h.trim_end_matches('.').eq_ignore_ascii_case(name))
        || config
            .fleet
            .as_ref()
            .and_then(|f| f.status_url.as_deref())
            .and_then(|u| reqwest::Url::parse(u).ok())
            .is_some_and(|u| u.host_str().is_some_and(|h| h.eq_ignore_ascii_case(name)))
}

/// Serves until `shutdown` turns true, over HTTPS when the listener has TLS.
pub async fn serve(
    listener: super::tls::Bound,
    state: AppState,
    pages: Arc<PageState>,
    shutdown: watch::Receiver<bool>,
) {
    use axum::serve::ListenerExt;
    match listener {
        super::tls::Bound::Tls(tls) => {
            serve_on(tls.tap_io(|_| {}), state, pages, shutdown).await;
        }
        super::tls::Bound::Plain(tcp) => {
            serve_on(tcp.tap_io(|_| {}), state, pages, shutdown).await;
        }
    }
}

async fn serve_on<L, F>(
    listener: axum::serve::TapIo<L, F>,
    state: AppState,
    pages: Arc<PageState>,
    mut shutdown: watch::Receiver<bool>,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    F: FnMut(&mut L::Io) + Send + 'static,
{
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

/// `/status` and `/metrics`: a client on this host reads them as it is; one elsewhere
/// needs the admin token (`Authorization: Bearer`, as Prometheus's
/// `authorization.credentials_file` sends it) or a signed-in page session.
async fn local_or_admin(
    State((state, pages)): State<(AppState, Arc<PageState>)>,
    req: Request,
    next: Next,
) -> Response {
    let local = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().to_canonical().is_loopback());
    if local || bearer_matches(req.headers(), &state.token) || pages.signed_in(req.headers()) {
        return next.run(req).await;
    }
    error(
        StatusCode::UNAUTHORIZED,
        "from another host, /status and /metrics need the admin token (Authorization: Bearer)",
    )
}

/// A call another node of the fleet signed with the fleet secret: the node's name.
#[derive(Debug, Clone)]
pub struct PeerCall(pub String);

/// What a signed call from another node may do: list, show, download, retry and
/// cancel messages (SPEC "Trust boundaries"), nothing else.
fn peer_may(method: &axum::http::Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/messages") else {
        return false;
    };
    if rest.is_empty() {
        return method == axum::http::Method::GET;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return false;
    };
    match rest.split_once('/') {
        None => method == axum::http::Method::GET && !rest.is_empty(),
        Some((id, "eml")) => method == axum::http::Method::GET && !id.is_empty(),
        Some((id, "retry" | "cancel")) => method == axum::http::Method::POST && !id.is_empty(),
        Some(_) => false,
    }
}

/// Checks a call that carries a fleet signature: `401` when it does not verify, is
/// older than a minute or replays a nonce; `403` for any action but the peer ones;
/// else it goes on as a [`PeerCall`], which needs no admin token.
async fn peer_call(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use crate::fleet::sign;
    if !req.headers().contains_key(sign::SIGNATURE) {
        return next.run(req).await;
    }
    let Some((fleet, secret)) = state
        .distributor
        .fleet()
        .and_then(|f| Some((f, f.secret()?.clone())))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "this node has no fleet secret: it answers no signed fleet call",
        );
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a fleet call's body is at most 1 MB",
        );
    };
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| parts.uri.clone(), |u| u.0.clone());
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let verified = secret.verify(
        sign::Call {
            method: parts.method.as_str(),
            path_and_query,
            body: &bytes,
        },
        |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
    );
    let node = match verified {
        Ok(node) => node,
        Err(why) => {
            fleet.count_rejected("peer-call");
            refused_node(&parts, &why.to_string());
            return error(
                StatusCode::UNAUTHORIZED,
                format!("fleet call refused: {why}"),
            );
        }
    };
    if !peer_may(&parts.method, uri.path()) {
        fleet.count_rejected("peer-call");
        refused_node(
            &parts,
            "a fleet node may only list, show, download, retry and cancel messages",
        );
        return error(
            StatusCode::FORBIDDEN,
            "a fleet node may only list, show, download, retry and cancel messages",
        );
    }
    let mut req = Request::from_parts(parts, axum::body::Body::from(bytes));
    req.extensions_mut().insert(PeerCall(node));
    next.run(req).await
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.extensions().get::<PeerCall>().is_none() && !bearer_matches(req.headers(), &state.token)
    {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    next.run(req).await
}

/// A call signed as coming from another node of the fleet was refused: said in the log
/// (at most once in ten seconds, so a client cannot flood it), since a node with another
/// secret misses from the others' view of the fleet until it is mended.
fn refused_node(parts: &axum::http::request::Parts, why: &str) {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !crate::time::once_per(&LAST, std::time::Duration::from_secs(10)) {
        return;
    }
    let from = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or_else(|| "?".to_string(), |c| c.0.ip().to_string());
    let node = parts
        .headers
        .get(crate::fleet::sign::NODE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .chars()
        .take(100)
        .collect::<String>();
    tracing::warn!(
        from = %from,
        node = %node.escape_debug(),
        path = %parts.uri.path().escape_debug(),
        why,
        "refused a fleet node's call: every node of a fleet needs the same fleet.secret_file"
    );
}
