//! The history (`/messages`): filters in the URL, cursor paging, search; the same
//! [`HistoryQuery`] as `GET /api/messages`.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;

use super::Ctx;
use super::{enc, html};
use crate::history::Record;
use crate::status::query::{HistoryQuery, ListQuery};

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
    /// Why it waits (the reason code) and until when, for unfinished messages.
    waiting: String,
    /// Until when, as the pages show times (empty: no time).
    waiting_until: String,
}

#[derive(Template)]
#[template(path = "messages.html")]
struct Messages {
    signed_in: bool,
    csrf: String,
    statuses: Vec<(&'static str, bool, &'static str)>,
    user: String,
    /// The configured providers for the filter (name, selected), after "All".
    providers: Vec<(String, bool)>,
    since: String,
    q: String,
    error: Option<String>,
    rows: Vec<Row>,
    next: Option<String>,
}

pub(super) async fn messages(
    State(state): State<Ctx>,
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
        ("failed", "Failed (with partly sent)"),
        ("cancelled", "Cancelled"),
    ] {
        statuses.push((v, status == v, label));
    }
    let mut page = Messages {
        signed_in: state.pages.has_token(),
        csrf: state.pages.csrf_of(&headers),
        statuses,
        user: shown(&q.user),
        providers: {
            let chosen = shown(&q.provider);
            let mut names: Vec<(String, bool)> = state
                .pipeline
                .config()
                .provider
                .iter()
                .map(|p| (p.name.get_ref().clone(), *p.name.get_ref() == chosen))
                .collect();
            // A provider no longer configured still has history: keep it choosable.
            if !chosen.is_empty() && !names.iter().any(|(_, s)| *s) {
                names.push((chosen, true));
            }
            names
        },
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
            let paused = state.distributor.is_paused();
            page.rows = records
                .into_iter()
                .map(|r| row(&crate::status::state::as_shown(r, paused)))
                .collect();
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
        received: super::shown_time(&r.received_at),
        status: r.status.as_str(),
        sender: r.sender.clone(),
        original: r.original_sender.clone(),
        recipients,
        subject: r.subject.clone().unwrap_or_else(|| "(no subject)".into()),
        provider: r.provider.clone(),
        attempts: r.attempts.len(),
        waiting: r
            .waiting
            .as_ref()
            .map(|w| w.reason.clone())
            .unwrap_or_default(),
        waiting_until: r
            .waiting
            .as_ref()
            .and_then(|w| w.until.as_deref())
            .map(super::shown_time)
            .unwrap_or_default(),
    }
}
