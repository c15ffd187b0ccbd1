//! One message (`/messages/{id}`): recipients, attempts with their failure details, who
//! sent it, headers and body as text, the raw download and Retry.

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Ctx;
use super::{CsrfForm, csrf_ok, csrf_refused, enc, html, page_error};
use crate::history::{Diagnosis, Record, Status};
use crate::status::actions::retry_message;
use crate::status::fleet_view::{Ask, MAX_JSON, Passed, answer_of, ask_holder, bounded};

struct AttemptView {
    at: String,
    provider: String,
    reply: String,
    diagnosis: Option<DiagnosisView>,
    note: Option<String>,
}

/// A diagnosis for the page: its words split where the text quotes a command or key in
/// backticks, so those show as code instead of literal backticks.
struct DiagnosisView {
    code: String,
    explanation: Vec<(bool, String)>,
    fix: Vec<(bool, String)>,
}

impl From<&Diagnosis> for DiagnosisView {
    fn from(d: &Diagnosis) -> Self {
        DiagnosisView {
            code: d.code.to_string(),
            explanation: super::code_spans(&d.explanation),
            fix: super::code_spans(&d.fix),
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    /// The fleet node that holds the message, when not this one (its actions are passed on).
    node: Option<String>,
    signed_in: bool,
    csrf: String,
    r: Record,
    status: &'static str,
    subject: String,
    auth_login: String,
    user: String,
    message_id: String,
    /// When it was received, as the pages show times.
    received: String,
    /// Its size in words (`19.6 MB`).
    size: String,
    retryable: bool,
    cancellable: bool,
    cancelled: Option<String>,
    /// Why it waits, in words (unfinished messages).
    waiting: Option<String>,
    /// Address, status, provider, upstream reply.
    recipients: Vec<(String, &'static str, String, String)>,
    /// Notices sent to the sender about it: (id, `bounce` or `delay`).
    notices: Vec<(String, &'static str)>,
    /// The message a notice is about: (id, kind).
    notice_of: Option<(String, &'static str)>,
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

pub(super) async fn message(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let lookup = id.clone();
    let found = state
        .pipeline
        .store()
        .blocking(move |s| Ok((s.record(&lookup)?, preview(s, &lookup))))
        .await;
    match found {
        Ok((Some(r), raw)) => {
            let r = crate::status::state::as_shown(r, &state.distributor);
            render(&state, &headers, r, raw, None)
        }
        Ok((None, _)) => match held_elsewhere(&state, &id).await {
            Some((node, r, raw)) => render(&state, &headers, r, raw, Some(node)),
            None => page_error(StatusCode::NOT_FOUND, format!("no message {id}")),
        },
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// What the page reads of a stored message: all of a small one; of a large one (kept in
/// a file) its first [`PREVIEW`] bytes, with a note, so showing it costs little memory.
fn preview(s: &crate::store::Store, id: &str) -> Option<Vec<u8>> {
    let body = s.body(id).ok().flatten()?;
    let bytes = body.read_at(0, PREVIEW).ok()?.into_owned();
    Some(bytes)
}

/// How much of a message the page reads.
const PREVIEW: usize = 1 << 20;

/// A message another node of the fleet holds: its node, its record and its bytes, asked
/// of that node's admin API with the fleet token.
async fn held_elsewhere(state: &Ctx, id: &str) -> Option<(String, Record, Option<Vec<u8>>)> {
    let (node, resp) =
        ask_holder(state, Ask::get(format!("/api/messages/{}", enc(id))), None).await?;
    if !resp.status().is_success() {
        return None;
    }
    let record: Record = serde_json::from_slice(&bounded(resp, MAX_JSON).await?).ok()?;
    let raw = match ask_holder(
        state,
        Ask::get(format!("/api/messages/{}/eml", enc(id))),
        Some(&node),
    )
    .await
    {
        Some((_, mut r)) if r.status().is_success() => {
            // As for a local message: at most its first PREVIEW bytes.
            let mut got = Vec::new();
            while got.len() < PREVIEW {
                match r.chunk().await {
                    Ok(Some(c)) => got.extend_from_slice(&c),
                    Ok(None) => break,
                    Err(_) => return Some((node, record, None)),
                }
            }
            got.truncate(PREVIEW);
            Some(got)
        }
        _ => None,
    };
    Some((node, record, raw))
}

/// Each recipient as the page lists it: address, status, provider and reply.
fn recipient_rows(record: &Record) -> Vec<(String, &'static str, String, String)> {
    record
        .recipients
        .iter()
        .map(|x| {
            (
                x.address.clone(),
                x.status.as_str(),
                x.provider
                    .clone()
                    .unwrap_or_else(|| record.provider.clone()),
                x.reply.clone().unwrap_or_default(),
            )
        })
        .collect()
}

impl From<&crate::history::Attempt> for AttemptView {
    fn from(a: &crate::history::Attempt) -> Self {
        AttemptView {
            at: super::shown_time(a.at),
            provider: a.provider.clone(),
            reply: a.reply.clone(),
            diagnosis: a.diagnosis.as_ref().map(DiagnosisView::from),
            note: a.note.clone(),
        }
    }
}

/// The page of one message; `node`: the fleet node that holds it, when not this one.
fn render(
    state: &Ctx,
    headers: &HeaderMap,
    record: Record,
    raw: Option<Vec<u8>>,
    node: Option<String>,
) -> Response {
    let (hdrs, mut body, attachments) = raw.as_deref().map(readable).unwrap_or_default();
    if raw.is_some() && record.size > PREVIEW as u64 {
        body.push_str(&format!(
            "\n[... the message is {}: this page reads its first megabyte (attachments after it are not listed); download the raw message for all of it]",
            crate::text::size(record.size)
        ));
    }
    html(MessagePage {
        size: crate::text::size(record.size),
        node,
        waiting: record
            .waiting
            .as_ref()
            .map(|w| w.words_with(|t| super::shown_time(t))),
        cancellable: !record.status.is_finished(),
        cancelled: record
            .cancelled
            .as_ref()
            .map(|c| format!("Cancelled at {} by {}", super::shown_time(c.at), c.by)),
        // Every page is behind the sign-in: Sign out is always offered.
        signed_in: true,
        csrf: state.pages.csrf_of(headers),
        status: record.status.as_str(),
        subject: record
            .subject
            .clone()
            .unwrap_or_else(|| "(no subject)".into()),
        auth_login: record.auth_login.clone().unwrap_or_else(|| "none".into()),
        user: record.user.clone().unwrap_or_else(|| "none".into()),
        message_id: record.message_id.clone().unwrap_or_default(),
        received: super::shown_time(record.received_at),
        retryable: matches!(
            record.status,
            Status::Failed | Status::Deferred | Status::Partial
        ),
        notices: record
            .notices
            .iter()
            .map(|n| (n.id.clone(), n.kind.as_str()))
            .collect(),
        notice_of: record
            .notice_of
            .as_ref()
            .map(|n| (n.id.clone(), n.kind.as_str())),
        recipients: recipient_rows(&record),
        attempts: record.attempts.iter().map(AttemptView::from).collect(),
        headers: hdrs,
        attachments,
        body,
        r: record,
    })
}

pub(super) async fn raw(State(state): State<Ctx>, Path(id): Path<String>) -> Response {
    let lookup = id.clone();
    match state
        .pipeline
        .store()
        .blocking(move |s| s.body(&lookup))
        .await
    {
        Ok(Some(body)) => (
            [
                (header::CONTENT_LENGTH, body.len().to_string()),
                (header::CONTENT_TYPE, "message/rfc822".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!(
                        "attachment; filename=\"{}.eml\"",
                        id.replace(|c: char| !c.is_ascii_alphanumeric(), "")
                    ),
                ),
            ],
            body.into_http(),
        )
            .into_response(),
        Ok(None) => match ask_holder(
            &state,
            Ask::get(format!("/api/messages/{}/eml", enc(&id))),
            None,
        )
        .await
        {
            Some((node, resp)) if resp.status().is_success() => {
                let mut out = answer_of(&state, &node, resp, Passed::Raw);
                if let Ok(v) = header::HeaderValue::from_str(&format!(
                    "attachment; filename=\"{}.eml\"",
                    id.replace(|c: char| !c.is_ascii_alphanumeric(), "")
                )) {
                    out.headers_mut().insert(header::CONTENT_DISPOSITION, v);
                }
                out
            }
            _ => page_error(StatusCode::NOT_FOUND, format!("no message {id}")),
        },
        Err(e) => page_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Retry or cancel of a message another node of the fleet holds, passed on to it; `by`:
/// who cancels, for its record. Err: the node's status and words, or 404 when no node
/// holds it.
async fn act_elsewhere(
    state: &Ctx,
    id: &str,
    action: &str,
    by: Option<String>,
) -> Result<(), (StatusCode, String)> {
    // An API POST is JSON: `{}` when there is nothing to say.
    let body = match by {
        Some(by) => serde_json::json!({ "by": by }),
        None => serde_json::json!({}),
    }
    .to_string();
    let ask = Ask {
        method: axum::http::Method::POST,
        path: format!("/api/messages/{}/{action}", enc(id)),
        content_type: Some(header::HeaderValue::from_static("application/json")),
        body: body.into(),
    };
    let Some((node, resp)) = ask_holder(state, ask, None).await else {
        return Err((StatusCode::NOT_FOUND, format!("no message {id}")));
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let why = bounded(resp, MAX_JSON)
        .await
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| status.to_string());
    Err((status, format!("node {node}: {why}")))
}

pub(super) async fn cancel(
    State(state): State<Ctx>,
    headers: HeaderMap,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &f) {
        return csrf_refused();
    }
    let by = format!("the Email history page (from {})", peer.ip());
    let done = match crate::status::actions::cancel_message(&state, &id, &by).await {
        Err((StatusCode::NOT_FOUND, _)) => {
            let here = state.distributor.fleet().map(|f| f.node().to_string());
            let by = format!(
                "the Email history page of node {} (for {})",
                here.unwrap_or_default(),
                peer.ip()
            );
            act_elsewhere(&state, &id, "cancel", Some(by)).await
        }
        done => done.map(|_| ()),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/messages/{}", enc(&id))).into_response(),
        Err((code, why)) => page_error(code, why),
    }
}

pub(super) async fn retry(
    State(state): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !csrf_ok(&state, &headers, &f) {
        return csrf_refused();
    }
    let done = match retry_message(&state, &id).await {
        Err((StatusCode::NOT_FOUND, _)) => act_elsewhere(&state, &id, "retry", None).await,
        done => done.map(|_| ()),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/messages/{}", enc(&id))).into_response(),
        Err((code, why)) => page_error(code, why),
    }
}
