//! The Email history page (SPEC "The Email history page"): the dashboard (`/`), the
//! history (`/messages`) and one message (`/messages/{id}`), server-rendered with askama
//! (escaping by default: whatever came from a message or a client is text, never markup),
//! one stylesheet and one small script compiled into the binary. Reading works without
//! JavaScript; actions are plain forms with a CSRF token. With `status.token_file` set,
//! the pages ask for the token once and keep an HttpOnly, SameSite=Strict session cookie.
//! The list runs the same [`HistoryQuery`] as `GET /api/messages`.

use std::collections::HashMap;
use std::sync::Mutex;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::http::{AppState, retry_message};
use super::query::{HistoryQuery, ListQuery};
use crate::history::{Diagnosis, Record, Status};
use crate::time::now_ms;

const COOKIE: &str = "mailgate_session";
const CSP: &str = "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Sessions of the pages and their CSRF tokens.
#[derive(Debug)]
pub struct PageState {
    token: Option<String>,
    secure: bool,
    /// Session id -> its CSRF token.
    sessions: Mutex<HashMap<String, String>>,
    /// The CSRF token of the open pages (no admin token configured, loopback only).
    open_csrf: String,
    /// The browser sign-ins of delegated providers.
    pub(super) desk: super::oauth2_page::Desk,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    // The OS random source does not fail on Linux; a failure leaves zeros only in tests.
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl PageState {
    /// The pages' state for the admin `token` (None: open, only allowed on loopback);
    /// `secure` marks the cookie Secure (a listener that is not loopback).
    pub fn new(token: Option<String>, secure: bool) -> PageState {
        PageState {
            token,
            secure,
            sessions: Mutex::new(HashMap::new()),
            open_csrf: random_hex(),
            desk: super::oauth2_page::Desk::default(),
        }
    }

    /// Whether the pages ask for a token (and show Sign out).
    pub(super) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The CSRF token to put in a page's forms.
    pub(super) fn csrf_of(&self, headers: &HeaderMap) -> String {
        self.csrf(headers).unwrap_or_default()
    }

    /// The CSRF token of the request's session; None when a token is configured and the
    /// request has no valid session.
    fn csrf(&self, headers: &HeaderMap) -> Option<String> {
        if self.token.is_none() {
            return Some(self.open_csrf.clone());
        }
        let sid = cookie(headers, COOKIE)?;
        self.sessions.lock().ok()?.get(&sid).cloned()
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

/// Constant-time comparison for secrets.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The pages' routes (merged into the status router).
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/messages", get(messages))
        .route("/messages/{id}", get(message))
        .route("/messages/{id}/raw", get(raw))
        .route("/messages/{id}/retry", post(retry))
        .route("/distributor/pause", post(pause))
        .route("/distributor/resume", post(resume))
        .route(
            "/providers/{name}/sign-in",
            get(super::oauth2_page::show).post(super::oauth2_page::start),
        )
        .route("/signout", post(signout))
        .route_layer(middleware::from_fn_with_state(state.clone(), signed_in))
        .route("/signin", get(signin_form).post(signin))
        .route("/static/style.css", get(style))
        .route("/static/app.js", get(script))
        .layer(middleware::from_fn(security_headers))
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

/// With a token configured: a page needs a session (else the sign-in form), and a POST
/// needs the session's CSRF token (checked by the handler's form).
async fn signed_in(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.pages.csrf(req.headers()).is_none() {
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

pub(super) fn csrf_ok(state: &AppState, headers: &HeaderMap, form: &CsrfForm) -> bool {
    state
        .pages
        .csrf(headers)
        .is_some_and(|want| same(&want, &form.csrf))
}

pub(super) fn csrf_refused() -> Response {
    page_error(
        StatusCode::FORBIDDEN,
        "missing or wrong CSRF token; reload the page and try again",
    )
}

fn age(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

// ---- dashboard ---------------------------------------------------------------------------

struct ProviderRow {
    name: String,
    kind: String,
    host: String,
    per_minute: String,
    sent_last_minute: u64,
    per_day: String,
    recipients_last_day: u64,
    throttle_deferrals: u64,
    last_error: String,
    token: String,
    /// The name in a URL path.
    path: String,
    /// A device-code provider: the Sign in button.
    device_code: bool,
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
}

async fn dashboard(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let store = state.pipeline.store();
    let counts = store
        .blocking(|s| Ok((s.status_counts()?, s.oldest_waiting()?)))
        .await;
    let (counts, oldest) = match counts {
        Ok(c) => c,
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let count = |st: Status| st.count_in(&counts);
    let config = state.pipeline.config();
    let limit = |n: u32| {
        if n == 0 {
            "none".to_string()
        } else {
            n.to_string()
        }
    };
    let providers = config
        .provider
        .iter()
        .map(|p| {
            let name = p.name.get_ref().clone();
            let stats = state.distributor.provider_stats(&name);
            let limits = crate::distributor::provider_limits(p);
            let token = state
                .distributor
                .provider(&name)
                .and_then(|pr| pr.token_status())
                .map_or_else(String::new, |t| {
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
                    let token = match (t.valid, t.last_error) {
                        (true, _) => format!("valid until {exp}"),
                        (false, Some(e)) => format!("no valid token: {e}"),
                        (false, None) => "not fetched yet".into(),
                    };
                    format!("{sign_in}{token}")
                });
            let device_code = p
                .oauth2
                .as_ref()
                .is_some_and(|o| o.flow == crate::config::OAuthFlow::DeviceCode);
            ProviderRow {
                kind: format!("{:?}", p.kind).to_ascii_lowercase(),
                host: p
                    .host
                    .clone()
                    .or_else(|| p.directory.as_ref().map(|d| d.display().to_string()))
                    .unwrap_or_default(),
                per_minute: limit(limits.per_minute),
                sent_last_minute: stats.sent_last_minute,
                per_day: limit(limits.per_day),
                recipients_last_day: stats.recipients_last_day,
                throttle_deferrals: stats.throttle_deferrals,
                last_error: stats.last_error.unwrap_or_default(),
                token,
                path: enc(&name),
                device_code,
                name,
            }
        })
        .collect();
    let m = state.pipeline.metrics();
    let oldest_age = oldest
        .as_deref()
        .and_then(|id| ulid::Ulid::from_string(id).ok())
        .map(|u| age(u.timestamp_ms()))
        .unwrap_or_default();
    html(Dashboard {
        signed_in: state.pages.has_token(),
        csrf: state.pages.csrf_of(&headers),
        paused: state.distributor.is_paused(),
        queued: count(Status::Queued),
        deferred: count(Status::Deferred),
        sending: state.distributor.sending(),
        sent: count(Status::Sent),
        partial: count(Status::Partial),
        failed: count(Status::Failed),
        oldest,
        oldest_age,
        accepted: m.accepted.get(),
        rejected: m.totals.rejected.load(std::sync::atomic::Ordering::Relaxed),
        providers,
    })
}

// ---- history -----------------------------------------------------------------------------

struct Row {
    id: String,
    received: String,
    status: &'static str,
    sender: String,
    original: String,
    recipients: String,
    subject: String,
    provider: String,
    attempts: usize,
}

#[derive(Template)]
#[template(path = "messages.html")]
struct Messages {
    signed_in: bool,
    csrf: String,
    statuses: Vec<(&'static str, bool, &'static str)>,
    user: String,
    provider: String,
    since: String,
    q: String,
    error: Option<String>,
    rows: Vec<Row>,
    next: Option<String>,
}

/// Percent-encodes a query value.
pub(super) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let shown = |s: &Option<String>| s.clone().unwrap_or_default();
    let status = shown(&q.status);
    let mut statuses = vec![("", status.is_empty(), "All")];
    for (v, label) in [
        ("queued", "Queued"),
        ("deferred", "Deferred"),
        ("sent", "Sent"),
        ("partial", "Partly sent"),
        ("failed", "Failed"),
    ] {
        statuses.push((v, status == v, label));
    }
    let mut page = Messages {
        signed_in: state.pages.has_token(),
        csrf: state.pages.csrf_of(&headers),
        statuses,
        user: shown(&q.user),
        provider: shown(&q.provider),
        since: shown(&q.since),
        q: shown(&q.q),
        error: None,
        rows: Vec::new(),
        next: None,
    };
    let query = match HistoryQuery::parse(&q) {
        Ok(x) => x,
        Err(why) => {
            page.error = Some(why);
            return html(page);
        }
    };
    match query.run_blocking(state.pipeline.store()).await {
        Ok((records, next)) => {
            page.rows = records.iter().map(row).collect();
            page.next = next.map(|cursor| {
                let mut url = String::from("/messages?");
                for (k, v) in [
                    ("status", &q.status),
                    ("user", &q.user),
                    ("provider", &q.provider),
                    ("since", &q.since),
                    ("q", &q.q),
                ] {
                    if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                        url.push_str(&format!("{k}={}&", enc(v)));
                    }
                }
                url.push_str(&format!("before={}", enc(&cursor)));
                url
            });
        }
        Err(e) => page.error = Some(e.to_string()),
    }
    html(page)
}

fn row(r: &Record) -> Row {
    let mut rcpts: Vec<&str> = r.recipients.iter().map(|x| x.address.as_str()).collect();
    let more = rcpts.len().saturating_sub(3);
    rcpts.truncate(3);
    let mut recipients = rcpts.join(", ");
    if more > 0 {
        recipients.push_str(&format!(" and {more} more"));
    }
    Row {
        id: r.id.clone(),
        received: r.received_at.replace('T', " ").replace('Z', " UTC"),
        status: r.status.as_str(),
        sender: r.sender.clone(),
        original: r.original_sender.clone(),
        recipients,
        subject: r.subject.clone().unwrap_or_else(|| "(no subject)".into()),
        provider: r.provider.clone(),
        attempts: r.attempts.len(),
    }
}

// ---- one message -------------------------------------------------------------------------

struct AttemptView {
    at: String,
    provider: String,
    reply: String,
    diagnosis: Option<Diagnosis>,
    note: Option<String>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    signed_in: bool,
    csrf: String,
    r: Record,
    status: &'static str,
    subject: String,
    auth_login: String,
    user: String,
    message_id: String,
    retryable: bool,
    recipients: Vec<(String, &'static str, String)>,
    attempts: Vec<AttemptView>,
    headers: Vec<(String, String)>,
    attachments: Vec<String>,
    body: String,
}

/// At most this much of the text body is shown.
const BODY_SHOWN: usize = 100_000;

/// The headers (name, unfolded value as text), the text of the body (an HTML body as text,
/// never as markup) and the attachment names of a stored message.
fn readable(raw: &[u8]) -> (Vec<(String, String)>, String, Vec<String>) {
    use mail_parser::MimeHeaders;
    let Some(m) = mail_parser::MessageParser::default().parse(raw) else {
        return (
            Vec::new(),
            String::from_utf8_lossy(&raw[..raw.len().min(BODY_SHOWN)]).into_owned(),
            Vec::new(),
        );
    };
    let headers = m
        .root_part()
        .headers
        .iter()
        .map(|h| (h.name.as_str().to_string(), header_text(h, raw)))
        .collect();
    let mut body = m.body_text(0).map(|b| b.into_owned()).unwrap_or_default();
    if body.len() > BODY_SHOWN {
        let cut = body.floor_char_boundary(BODY_SHOWN);
        body.truncate(cut);
        body.push_str("\n[... shortened; download the raw message for all of it]");
    }
    let attachments = m
        .attachments()
        .map(|a| a.attachment_name().unwrap_or("(unnamed)").to_string())
        .collect();
    (headers, body, attachments)
}

/// A header's value as a person reads it: RFC 2047 words decoded (names and text), folds
/// unfolded. Text only: the template escapes it.
fn header_text(h: &mail_parser::Header<'_>, raw: &[u8]) -> String {
    use mail_parser::{Address, HeaderValue};
    let addr = |a: &mail_parser::Addr<'_>| match (&a.name, &a.address) {
        (Some(n), Some(x)) => format!("{n} <{x}>"),
        (None, Some(x)) => x.to_string(),
        (Some(n), None) => n.to_string(),
        (None, None) => String::new(),
    };
    match &h.value {
        HeaderValue::Text(t) => t.to_string(),
        HeaderValue::TextList(l) => l.join(", "),
        HeaderValue::Address(Address::List(l)) => l.iter().map(addr).collect::<Vec<_>>().join(", "),
        HeaderValue::Address(Address::Group(g)) => g
            .iter()
            .map(|g| {
                format!(
                    "{}: {};",
                    g.name.as_deref().unwrap_or(""),
                    g.addresses.iter().map(addr).collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => {
            let v = &raw[h.offset_start as usize..(h.offset_end as usize).min(raw.len())];
            String::from_utf8_lossy(v)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

async fn message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let lookup = id.clone();
    let found = state
        .pipeline
        .store()
        .blocking(move |s| Ok((s.record(&lookup)?, s.message(&lookup).ok().flatten())))
        .await;
    let (record, raw) = match found {
        Ok((Some(r), raw)) => (r, raw),
        Ok((None, _)) => return page_error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (hdrs, body, attachments) = raw.as_deref().map(readable).unwrap_or_default();
    html(MessagePage {
        signed_in: state.pages.has_token(),
        csrf: state.pages.csrf_of(&headers),
        status: record.status.as_str(),
        subject: record
            .subject
            .clone()
            .unwrap_or_else(|| "(no subject)".into()),
        auth_login: record.auth_login.clone().unwrap_or_else(|| "none".into()),
        user: record.user.clone().unwrap_or_else(|| "none".into()),
        message_id: record.message_id.clone().unwrap_or_default(),
        retryable: matches!(
            record.status,
            Status::Failed | Status::Deferred | Status::Partial
        ),
        recipients: record
            .recipients
            .iter()
            .map(|x| {
                (
                    x.address.clone(),
                    x.status.as_str(),
                    x.reply.clone().unwrap_or_default(),
                )
            })
            .collect(),
        attempts: record
            .attempts
            .iter()
            .map(|a| AttemptView {
                at: a.at.replace('T', " ").replace('Z', " UTC"),
                provider: a.provider.clone(),
                reply: a.reply.clone(),
                diagnosis: a.diagnosis.clone(),
                note: a.note.clone(),
            })
            .collect(),
        headers: hdrs,
        attachments,
        body,
        r: record,
    })
}

async fn raw(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let lookup = id.clone();
    match state
        .pipeline
        .store()
        .blocking(move |s| s.message(&lookup))
        .await
    {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, "message/rfc822".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"{}.eml\"",
                        id.replace(|c: char| !c.is_ascii_alphanumeric(), "")
                    ),
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => page_error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &f) {
        return csrf_refused();
    }
    match retry_message(&state, &id).await {
        Ok(_) => Redirect::to(&format!("/messages/{}", enc(&id))).into_response(),
        Err((code, why)) => page_error(code, why),
    }
}

async fn pause(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_paused(&state, &headers, &f, true)
}

async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_paused(&state, &headers, &f, false)
}

/// The Pause and Resume buttons.
fn set_paused(state: &AppState, headers: &HeaderMap, f: &CsrfForm, paused: bool) -> Response {
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

// ---- sign-in -----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "signin.html")]
struct SignIn {
    signed_in: bool,
    csrf: String,
    failed: bool,
}

async fn signin_form(State(state): State<AppState>) -> Response {
    if state.pages.token.is_none() {
        return Redirect::to("/").into_response();
    }
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

async fn signin(State(state): State<AppState>, Form(f): Form<TokenForm>) -> Response {
    let Some(token) = &state.pages.token else {
        return Redirect::to("/").into_response();
    };
    if !same(f.token.trim(), token) {
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
        s.insert(sid.clone(), random_hex());
    }
    let secure = if state.pages.secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict{secure}");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn signout(
    State(state): State<AppState>,
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
        include_str!("../../static/style.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/app.js"),
    )
        .into_response()
}
