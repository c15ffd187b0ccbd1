//! A local stand-in for the Microsoft identity platform token endpoint and Microsoft
//! Graph's sendMail, speaking their documented wire formats (form-encoded client
//! credentials grant in, JSON token out; base64 MIME in, 202 out) and recording what it
//! received. The real services cannot be reached from here.
//!
//! Also Graph's draft path as Microsoft documents it: a message created from base64 MIME
//! (`POST /users/{id}/messages`, 201 with the message's `id`), updated (`PATCH`), deleted,
//! `attachments/createUploadSession` (201 with `uploadUrl` and `nextExpectedRanges`),
//! the upload URL taking `PUT`s with `Content-Range` (no bearer token; 200 with
//! `nextExpectedRanges` until the last, 201 then; 416 for a range that does not follow;
//! 404 once the session expired) and `GET` for the session's state, and `send` (202).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use base64::Engine;

/// One sendMail request as received.
#[derive(Debug, Clone)]
pub struct SendMail {
    pub sender: String,
    pub authorization: String,
    pub content_type: String,
    /// The base64 body, decoded.
    pub mime: Vec<u8>,
}

/// A managed identity token request: (endpoint, query, the headers that matter).
pub type IdentityRequest = (String, HashMap<String, String>, HashMap<String, String>);

/// What the mock answers and what it saw.
#[derive(Debug, Default)]
pub struct MockState {
    /// Every grant (form fields) received.
    pub grants: Vec<HashMap<String, String>>,
    /// Tokens issued, in order.
    pub issued: Vec<String>,
    /// Lifetime of issued tokens.
    pub expires_in: u64,
    /// When set, the token endpoint answers this (status, body) instead.
    pub token_error: Option<(u16, String)>,
    /// Tokens Graph refuses with 401.
    pub revoked: Vec<String>,
    /// When set, Graph answers this (status, Retry-After, body) instead of 202.
    pub graph_reply: Option<(u16, Option<u64>, String)>,
    /// Every sendMail received.
    pub sent: Vec<SendMail>,
    /// Access tokens another identity platform stand-in issued, valid here too.
    pub also_valid: Option<Arc<Mutex<Vec<String>>>>,
    /// Drafts created (id `draft-{index}`).
    pub drafts: Vec<Draft>,
    /// Upload sessions started (URL `/upload/{index}`).
    pub sessions: Vec<Session>,
    /// Every chunk PUT: (Content-Range, length, whether it carried an Authorization).
    pub puts: Vec<(String, usize, bool)>,
    /// The mailbox's message size limit: a draft and its attachments beyond it are
    /// refused at createUploadSession (Exchange's `ErrorMessageSizeExceeded`).
    pub mailbox_limit: Option<usize>,
    /// Refuse the chunk PUT with this index (over all PUTs) once, with a 503.
    pub fail_put: Option<usize>,
    /// A session expires after this many chunks (later PUTs and GETs answer 404).
    pub expire_after: Option<usize>,
    /// Only the session with this index expires (all do when None).
    pub expire_only: Option<usize>,
    /// sendMail holds each request this long before answering.
    pub send_delay_ms: u64,
    /// sendMail requests in progress per mailbox, and the most seen at once.
    pub in_flight: HashMap<String, usize>,
    pub max_in_flight: HashMap<String, usize>,
    /// Workload identity: the client assertion the token endpoint expects now (the
    /// federated token file's content); a grant with another is refused (AADSTS700213).
    pub expected_assertion: Option<String>,
    /// Managed identity: whether the machine has a system-assigned identity.
    pub system_identity: bool,
    /// Managed identity: the client ids of the user-assigned identities it has.
    pub user_identities: Vec<String>,
    /// App Service: the secret `IDENTITY_HEADER` its endpoint expects.
    pub identity_header: String,
    /// Every managed identity token request: (endpoint, query, headers that matter).
    pub identity_requests: Vec<IdentityRequest>,
}

/// A draft made through the stand-in.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub sender: String,
    /// The MIME it was created from.
    pub mime: Vec<u8>,
    /// PATCH bodies received.
    pub patches: Vec<serde_json::Value>,
    /// Attachments whose upload completed: the AttachmentItem and the bytes.
    pub attachments: Vec<(serde_json::Value, Vec<u8>)>,
    pub sent: bool,
    pub deleted: bool,
}

/// An upload session.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub draft: usize,
    pub item: serde_json::Value,
    pub size: usize,
    pub received: Vec<u8>,
    pub chunks: usize,
    pub expired: bool,
}

#[derive(Clone)]
pub struct MockMicrosoft {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<MockState>>,
}

impl MockMicrosoft {
    pub async fn start() -> MockMicrosoft {
        let state = Arc::new(Mutex::new(MockState {
            expires_in: 3599,
            ..MockState::default()
        }));
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/users/{sender}/sendMail", post(send_mail))
            .route("/v1.0/users/{sender}/messages", post(create_draft))
            .route(
                "/v1.0/users/{sender}/messages/{id}",
                patch(update_draft).delete(delete_draft),
            )
            .route(
                "/v1.0/users/{sender}/messages/{id}/attachments/createUploadSession",
                post(create_session),
            )
            .route("/v1.0/users/{sender}/messages/{id}/send", post(send_draft))
            .route("/upload/{n}", get(session_state).put(put_chunk))
            .route("/metadata/identity/oauth2/token", get(imds_token))
            .route("/msi/token", get(app_service_token))
            // Graph's own limits are checked in the handlers (4 MB per request).
            .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
            .with_state(state.clone());
        let addr = super::serve(app).await;
        MockMicrosoft { addr, state }
    }

    pub fn token_url(&self, tenant: &str) -> String {
        format!("http://{}/{tenant}/oauth2/v2.0/token", self.addr)
    }

    pub fn graph_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut MockState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// The instance metadata endpoint's token URL (IMDS) on this stand-in.
    pub fn imds_url(&self) -> String {
        format!("http://{}/metadata/identity/oauth2/token", self.addr)
    }

    /// App Service's `IDENTITY_ENDPOINT` on this stand-in.
    pub fn app_service_url(&self) -> String {
        format!("http://{}/msi/token", self.addr)
    }
}

fn json_error(status: u16, error: &str, description: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        serde_json::json!({"error": error, "error_description": description}).to_string(),
    )
        .into_response()
}

/// Records a managed identity request; the refusal when the machine lacks the identity
/// asked for.
fn identity_refused(
    s: &mut MockState,
    endpoint: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<Response> {
    let kept = ["metadata", "x-identity-header"]
        .iter()
        .filter_map(|h| Some((h.to_string(), headers.get(*h)?.to_str().ok()?.to_string())))
        .collect();
    s.identity_requests
        .push((endpoint.to_string(), query.clone(), kept));
    if query.get("resource").is_none_or(String::is_empty) {
        return Some(json_error(
            400,
            "invalid_request",
            "Required audience parameter not specified",
        ));
    }
    let assigned = match query.get("client_id") {
        Some(id) => s.user_identities.contains(id),
        None => s.system_identity,
    };
    (!assigned).then(|| json_error(400, "invalid_request", "Identity not found"))
}

fn issue_token(s: &mut MockState) -> String {
    let tok = format!("tok-{}", s.issued.len() + 1);
    s.issued.push(tok.clone());
    tok
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Azure IMDS as documented: `Metadata: true` required (400 without it), api-version,
/// resource, optional client_id; `expires_in` and `expires_on` as strings.
async fn imds_token(
    State(state): State<Arc<Mutex<MockState>>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = identity_refused(&mut s, "imds", &query, &headers) {
        return r;
    }
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return json_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if !query.contains_key("api-version") {
        return json_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let tok = issue_token(&mut s);
    let expires_in = s.expires_in;
    axum::Json(serde_json::json!({
        "access_token": tok,
        "refresh_token": "",
        "expires_in": expires_in.to_string(),
        "expires_on": (unix_now() + expires_in).to_string(),
        "not_before": unix_now().to_string(),
        "resource": query["resource"],
        "token_type": "Bearer",
    }))
    .into_response()
}

/// App Service's identity endpoint as documented (api-version 2019-08-01): the
/// `X-IDENTITY-HEADER` must be `IDENTITY_HEADER`'s value; `expires_on` in Unix seconds.
async fn app_service_token(
    State(state): State<Arc<Mutex<MockState>>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(r) = identity_refused(&mut s, "app-service", &query, &headers) {
        return r;
    }
    let header = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if header != Some(s.identity_header.as_str()) || s.identity_header.is_empty() {
        return json_error(
            401,
            "invalid_request",
            "The X-IDENTITY-HEADER is missing or wrong",
        );
    }
    if query.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return json_error(400, "invalid_request", "api-version 2019-08-01 expected");
    }
    let tok = issue_token(&mut s);
    let expires_on = unix_now() + s.expires_in;
    axum::Json(serde_json::json!({
        "access_token": tok,
        "expires_on": expires_on.to_string(),
        "resource": query["resource"],
        "token_type": "Bearer",
        "client_id": "system-assigned-client-id",
    }))
    .into_response()
}

async fn token(
    State(state): State<Arc<Mutex<MockState>>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut s = state.lock().unwrap();
    let assertion_ok = s.expected_assertion.as_ref().is_none_or(|want| {
        form.get("client_assertion_type").map(String::as_str)
            == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            && form.get("client_assertion") == Some(want)
    });
    s.grants.push(form);
    if !assertion_ok {
        return json_error(
            401,
            "invalid_client",
            "AADSTS700213: No matching federated identity record found for presented assertion subject.",
        );
    }
    if let Some((status, body)) = s.token_error.clone() {
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response();
    }
    let tok = format!("tok-{}", s.issued.len() + 1);
    s.issued.push(tok.clone());
    axum::Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": s.expires_in,
        "ext_expires_in": s.expires_in,
        "access_token": tok,
    }))
    .into_response()
}

async fn send_mail(
    State(state): State<Arc<Mutex<MockState>>>,
    Path(sender): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let delay = {
        let mut s = state.lock().unwrap();
        let n = s.in_flight.entry(sender.clone()).or_default();
        *n += 1;
        let now = *n;
        let most = s.max_in_flight.entry(sender.clone()).or_default();
        *most = (*most).max(now);
        s.send_delay_ms
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let out = send_mail_now(&state, sender.clone(), &headers, body);
    *state.lock().unwrap().in_flight.entry(sender).or_default() -= 1;
    out
}

fn send_mail_now(
    state: &Arc<Mutex<MockState>>,
    sender: String,
    headers: &HeaderMap,
    body: String,
) -> Response {
    let mut s = state.lock().unwrap();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if let Some(refused) = unauthorized(&s, headers) {
        return refused;
    }
    if let Some((status, retry_after, body)) = s.graph_reply.clone() {
        let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
        if let Some(ra) = retry_after {
            resp.headers_mut()
                .insert("retry-after", ra.to_string().parse().unwrap());
        }
        return resp;
    }
    let mime = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .unwrap_or_default();
    s.sent.push(SendMail {
        sender,
        authorization,
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        mime,
    });
    StatusCode::ACCEPTED.into_response()
}

/// Graph's 401 for a missing, unknown or revoked bearer token.
fn unauthorized(s: &MockState, headers: &HeaderMap) -> Option<Response> {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = authorization.strip_prefix("Bearer ").unwrap_or("");
    let elsewhere = s
        .also_valid
        .as_ref()
        .is_some_and(|v| v.lock().unwrap().iter().any(|t| t == token));
    if !(elsewhere || s.issued.iter().any(|t| t == token)) || s.revoked.iter().any(|t| t == token) {
        return Some((
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token validation failure."}})),
        )
            .into_response());
    }
    None
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn draft_index(id: &str) -> Option<usize> {
    id.strip_prefix("draft-")?.parse().ok()
}

async fn create_draft(
    State(state): State<Arc<Mutex<MockState>>>,
    Path(sender): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("text/plain") {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "RequestBodyRead",
            "MIME goes as text/plain",
        );
    }
    if body.len() > 4 * 1024 * 1024 {
        return graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "over 4 MB",
        );
    }
    let Ok(mime) = base64::engine::general_purpose::STANDARD.decode(body.trim()) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        );
    };
    let id = format!("draft-{}", s.drafts.len());
    s.drafts.push(Draft {
        sender,
        mime,
        ..Draft::default()
    });
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"id": id, "isDraft": true})),
    )
        .into_response()
}

async fn update_draft(
    State(state): State<Arc<Mutex<MockState>>>,
    Path((_sender, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Json(patch): axum::Json<serde_json::Value>,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    let Some(d) = draft_index(&id).and_then(|i| s.drafts.get_mut(i)) else {
        return graph_error(StatusCode::NOT_FOUND, "ErrorItemNotFound", "no such item");
    };
    d.patches.push(patch);
    axum::Json(serde_json::json!({"id": id})).into_response()
}

async fn delete_draft(
    State(state): State<Arc<Mutex<MockState>>>,
    Path((_sender, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    let Some(d) = draft_index(&id).and_then(|i| s.drafts.get_mut(i)) else {
        return graph_error(StatusCode::NOT_FOUND, "ErrorItemNotFound", "no such item");
    };
    d.deleted = true;
    StatusCode::NO_CONTENT.into_response()
}

async fn create_session(
    State(state): State<Arc<Mutex<MockState>>>,
    Path((_sender, id)): Path<(String, String)>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    let Some(draft) = draft_index(&id).filter(|i| *i < s.drafts.len()) else {
        return graph_error(StatusCode::NOT_FOUND, "ErrorItemNotFound", "no such item");
    };
    let item = body["AttachmentItem"].clone();
    let Some(size) = item["size"].as_u64().map(|n| n as usize) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "AttachmentItem.size",
        );
    };
    if item["attachmentType"] != "file" || !item["name"].is_string() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "AttachmentItem",
        );
    }
    if let Some(limit) = s.mailbox_limit {
        let d = &s.drafts[draft];
        // Exchange counts the message as it would be sent: attachments base64-encoded.
        let attached = d.attachments.iter().map(|(_, b)| b.len()).sum::<usize>() + size;
        let total = d.mime.len() + attached * 4 / 3;
        if total > limit {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "ErrorMessageSizeExceeded",
                "The message exceeds the maximum supported size.",
            );
        }
    }
    let n = s.sessions.len();
    s.sessions.push(Session {
        draft,
        item,
        size,
        ..Session::default()
    });
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({
            "uploadUrl": format!("http://{host}/upload/{n}"),
            "expirationDateTime": "2030-01-01T00:00:00Z",
            "nextExpectedRanges": ["0-"],
        })),
    )
        .into_response()
}

fn session_answer(se: &Session) -> serde_json::Value {
    serde_json::json!({
        "expirationDateTime": "2030-01-01T00:00:00Z",
        "nextExpectedRanges": [format!("{}-", se.received.len())],
    })
}

async fn session_state(
    State(state): State<Arc<Mutex<MockState>>>,
    Path(n): Path<usize>,
) -> Response {
    let s = state.lock().unwrap();
    match s.sessions.get(n) {
        Some(se) if !se.expired => axum::Json(session_answer(se)).into_response(),
        _ => graph_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "upload session expired",
        ),
    }
}

async fn put_chunk(
    State(state): State<Arc<Mutex<MockState>>>,
    Path(n): Path<usize>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut s = state.lock().unwrap();
    let range = headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let index = s.puts.len();
    s.puts.push((
        range.clone(),
        body.len(),
        headers.contains_key("authorization"),
    ));
    if headers.contains_key("authorization") {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "do not send a token to the upload URL",
        );
    }
    if s.fail_put == Some(index) {
        return graph_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "serviceNotAvailable",
            "try again",
        );
    }
    let expire_after = s
        .expire_after
        .filter(|_| s.expire_only.is_none_or(|only| only == n));
    let Some(se) = s.sessions.get_mut(n).filter(|se| !se.expired) else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "upload session expired",
        );
    };
    if expire_after.is_some_and(|k| se.chunks >= k) {
        se.expired = true;
        return graph_error(
            StatusCode::NOT_FOUND,
            "itemNotFound",
            "upload session expired",
        );
    }
    // "bytes a-b/total"
    let parsed = range
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .and_then(|(ab, total)| {
            let (a, b) = ab.split_once('-')?;
            Some((
                a.parse::<usize>().ok()?,
                b.parse::<usize>().ok()?,
                total.parse::<usize>().ok()?,
            ))
        });
    let Some((a, b, total)) = parsed else {
        return graph_error(StatusCode::BAD_REQUEST, "invalidRange", "Content-Range");
    };
    let last = b + 1 == total;
    if a != se.received.len() || total != se.size || b + 1 - a != body.len() {
        return graph_error(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalidRange",
            "the range does not follow",
        );
    }
    if body.len() > 4 * 1024 * 1024 || (!last && !body.len().is_multiple_of(320 * 1024)) {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "invalidRange",
            "chunks are a multiple of 320 KiB, at most 4 MB",
        );
    }
    se.received.extend_from_slice(&body);
    se.chunks += 1;
    if !last {
        return axum::Json(session_answer(se)).into_response();
    }
    let (draft, item, bytes) = (se.draft, se.item.clone(), std::mem::take(&mut se.received));
    s.drafts[draft].attachments.push((item, bytes));
    StatusCode::CREATED.into_response()
}

async fn send_draft(
    State(state): State<Arc<Mutex<MockState>>>,
    Path((_sender, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = state.lock().unwrap();
    if let Some(refused) = unauthorized(&s, &headers) {
        return refused;
    }
    let Some(d) = draft_index(&id).and_then(|i| s.drafts.get_mut(i)) else {
        return graph_error(StatusCode::NOT_FOUND, "ErrorItemNotFound", "no such item");
    };
    d.sent = true;
    StatusCode::ACCEPTED.into_response()
}
