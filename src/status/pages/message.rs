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
        .blocking(move |s| Ok((s.record(&lookup)?, s.message(&lookup).ok().flatten())))
        .await;
    let (record, raw) = match found {
        Ok((Some(r), raw)) => (r, raw),
        Ok((None, _)) => return page_error(StatusCode::NOT_FOUND, format!("no message {id}")),
        Err(e) => return page_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let record = crate::status::state::as_shown(record, state.distributor.is_paused());
    let (hdrs, body, attachments) = raw.as_deref().map(readable).unwrap_or_default();
    html(MessagePage {
        waiting: record
            .waiting
            .as_ref()
            .map(|w| w.words_with(super::shown_time)),
        cancellable: !record.status.is_finished(),
        cancelled: record
            .cancelled
            .as_ref()
            .map(|c| format!("Cancelled at {} by {}", super::shown_time(&c.at), c.by)),
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
        received: super::shown_time(&record.received_at),
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
        recipients: record
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
            .collect(),
        attempts: record
            .attempts
            .iter()
            .map(|a| AttemptView {
                at: super::shown_time(&a.at),
                provider: a.provider.clone(),
                reply: a.reply.clone(),
                diagnosis: a.diagnosis.as_ref().map(DiagnosisView::from),
                note: a.note.clone(),
            })
            .collect(),
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
    match crate::status::actions::cancel_message(&state, &id, &by).await {
        Ok(_) => Redirect::to(&format!("/messages/{}", enc(&id))).into_response(),
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
    match retry_message(&state, &id).await {
        Ok(_) => Redirect::to(&format!("/messages/{}", enc(&id))).into_response(),
        Err((code, why)) => page_error(code, why),
    }
}
