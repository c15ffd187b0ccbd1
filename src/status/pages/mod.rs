//! The Email history page (SPEC "The Email history page"): the dashboard (`/`), the
//! history (`/messages`) and one message (`/messages/{id}`), server-rendered with askama
//! (escaping by default: whatever came from a message or a client is text, never markup),
//! one stylesheet and one small script compiled into the binary. Reading works without
//! JavaScript; actions are plain forms with a CSRF token. The pages ask for the admin
//! token once and keep an HttpOnly, SameSite=Strict session cookie for
//! `status.session_ttl`.
//! The list runs the same [`HistoryQuery`] as `GET /api/messages`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::Router;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

mod chart;
mod dashboard;
mod history;
mod message;
mod oauth2;

use super::state::{AppState, token_matches};
use crate::time::now_ms;

const COOKIE: &str = "mailgate_session";
const CSP: &str = "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Sessions of the pages and their CSRF tokens.
#[derive(Debug)]
pub struct PageState {
    token: String,
    secure: bool,
    /// Session id -> its CSRF token and when it was signed in.
    sessions: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// How long a sign-in lasts (`status.session_ttl`).
    ttl: std::time::Duration,
    /// The browser sign-ins of delegated providers.
    pub(super) desk: oauth2::Desk,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    // The OS random source does not fail on Linux; a failure leaves zeros only in tests.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl PageState {
    /// The pages' state for the admin `token` (the sign-in asks for it); `secure` marks
    /// the cookie Secure (the listener has TLS, or a TLS proxy fronts it); a sign-in
    /// lasts `ttl`.
    pub fn new(token: String, secure: bool, ttl: std::time::Duration) -> PageState {
        PageState {
            token,
            secure,
            ttl,
            sessions: Mutex::new(HashMap::new()),
            desk: oauth2::Desk::default(),
        }
    }

    /// The CSRF token to put in a page's forms.
    pub(super) fn csrf_of(&self, headers: &HeaderMap) -> String {
        self.csrf(headers).unwrap_or_default()
    }

    /// The CSRF token of the request's session; None when it has no valid session.
    fn csrf(&self, headers: &HeaderMap) -> Option<String> {
        let sid = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions.lock().ok()?;
        let (csrf, since) = sessions.get(&sid)?.clone();
        if since.elapsed() >= self.ttl {
            // Signed in too long ago: sign in again.
            sessions.remove(&sid);
            return None;
        }
        Some(csrf)
    }

    /// Whether the request carries a page session that is still valid.
    pub fn signed_in(&self, headers: &HeaderMap) -> bool {
        self.csrf(headers).is_some()
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// What a page handler can reach: the daemon's parts (through `Deref`) and the pages'
/// own sessions.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    app: AppState,
    pages: Arc<PageState>,
}

impl std::ops::Deref for Ctx {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.app
    }
}

/// The pages' routes, with their state (merged into the status router).
pub fn routes(app: AppState, pages: Arc<PageState>) -> Router {
    let state = Ctx { app, pages };
    Router::new()
        .route("/", get(dashboard::dashboard))
        .route("/messages", get(history::messages))
        .route("/messages/{id}", get(message::message))
        .route("/messages/{id}/raw", get(message::raw))
        .route("/messages/{id}/retry", post(message::retry))
        .route("/messages/{id}/cancel", post(message::cancel))
        .route("/distributor/pause", post(dashboard::pause))
        .route("/distributor/resume", post(dashboard::resume))
        .route(
            "/providers/{name}/sign-in",
            get(oauth2::show).post(oauth2::start),
        )
        .route("/signout", post(signout))
        .route_layer(middleware::from_fn_with_state(state.clone(), signed_in))
        .route("/signin", get(signin_form).post(signin))
        .route("/oauth2/callback", get(oauth2::callback))
        .route("/static/style.css", get(style))
        .route("/static/app.js", get(script))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A page needs a session (else the sign-in form), and a POST
/// needs the session's CSRF token (checked by the handler's form).
async fn signed_in(State(state): State<Ctx>, req: Request, next: Next) -> Response {
    // A client that holds the admin token (a script, the tests) may read a page with it;
    // a browser never sends it by itself, and every POST still needs a session's CSRF
    // token.
    let bearer = req.method() == Method::GET
        && crate::status::state::bearer_matches(req.headers(), &state.pages.token);
    if !bearer && state.pages.csrf(req.headers()).is_none() {
        return if req.method() == Method::GET {
            Redirect::to("/signin").into_response()
        } else {
            (StatusCode::FORBIDDEN, "sign in first").into_response()
        };
    }
    next.run(req).await
}

pub(super) fn html(t: impl Template) -> Response {
    match t.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("page error: {e}"),
        )
            .into_response(),
    }
}

pub(super) fn page_error(code: StatusCode, why: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why.into(),
    )
        .into_response()
}

/// A POST's form: at least the CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) fn csrf_ok(state: &Ctx, headers: &HeaderMap, form: &CsrfForm) -> bool {
    state
        .pages
        .csrf(headers)
        .is_some_and(|want| token_matches(&want, &form.csrf))
}

pub(super) fn csrf_refused() -> Response {
    page_error(
        StatusCode::FORBIDDEN,
        "missing or wrong CSRF token; reload the page and try again",
    )
}

/// Text split at backticks into (is code, words): `run \`mailgate verify\`` becomes
/// [(false, "run "), (true, "mailgate verify")]. An unpaired backtick stays as it is.
pub(super) fn code_spans(text: &str) -> Vec<(bool, String)> {
    if !text.matches('`').count().is_multiple_of(2) {
        return vec![(false, text.to_string())];
    }
    text.split('`')
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| (i % 2 == 1, s.to_string()))
        .collect()
}

/// An RFC 3339 UTC time as the pages show it: `2026-12-03 10:00:02 UTC`.
pub(super) fn shown_time(rfc3339: impl std::fmt::Display) -> String {
    rfc3339.to_string().replace('T', " ").replace('Z', " UTC")
}

/// A shown time as HTML that may wrap between its date and its clock and never inside
/// either (a browser breaks `2026-12-07` after a hyphen when squeezed).
pub(super) fn when_html(shown: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    match shown.split_once(' ') {
        Some((date, clock)) => format!(
            "<span class=\"nobr\">{}</span> <span class=\"nobr\">{}</span>",
            esc(date),
            esc(clock)
        ),
        None => format!("<span class=\"nobr\">{}</span>", esc(shown)),
    }
}

fn age(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} ago", crate::text::counted(s / 86_400, "day")),
    }
}

pub(super) use super::percent_encode as enc;

// ---- sign-in -----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "signin.html")]
struct SignIn {
    signed_in: bool,
    csrf: String,
    failed: bool,
}

async fn signin_form() -> Response {
    html(SignIn {
        signed_in: false,
        csrf: String::new(),
        failed: false,
    })
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    #[serde(default)]
    token: String,
}

async fn signin(State(state): State<Ctx>, Form(f): Form<TokenForm>) -> Response {
    if !token_matches(f.token.trim(), &state.pages.token) {
        tracing::warn!("pages: sign-in with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            html(SignIn {
                signed_in: false,
                csrf: String::new(),
                failed: true,
            }),
        )
            .into_response();
    }
    let sid = random_hex();
    if let Ok(mut s) = state.pages.sessions.lock() {
        let now = std::time::Instant::now();
        let ttl = state.pages.ttl;
        s.retain(|_, (_, since)| now.duration_since(*since) < ttl);
        s.insert(sid.clone(), (random_hex(), now));
    }
    let secure = if state.pages.secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn signout(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &f) {
        return csrf_refused();
    }
    if let Some(sid) = cookie(&headers, COOKIE)
        && let Ok(mut s) = state.pages.sessions.lock()
    {
        s.remove(&sid);
    }
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/signin")).into_response()
}

// ---- assets ------------------------------------------------------------------------------

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../static/style.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../static/app.js"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    /// A time comes from a record, perhaps another node's: whatever it holds stays text.
    #[test]
    fn a_time_from_a_record_is_text_never_markup() {
        assert_eq!(
            super::when_html("2026-12-07 18:20:53 UTC"),
            "<span class=\"nobr\">2026-12-07</span> <span class=\"nobr\">18:20:53 UTC</span>"
        );
        let html = super::when_html("<img src=x onerror=alert(1)> \"&<script>");
        assert!(
            !html.contains("<img") && !html.contains("<script"),
            "{html}"
        );
        assert!(
            html.contains("&lt;img") && html.contains("&quot;&amp;&lt;script&gt;"),
            "{html}"
        );
    }
}
