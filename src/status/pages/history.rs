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
    /// In the fleet view: the node that holds it.
    node: String,
    /// Where its page is (on this node, also for another node's message).
    href: String,
}

impl Row {
    /// When it was received, as HTML that wraps only between date and clock.
    fn received_html(&self) -> String {
        super::when_html(&self.received)
    }

    /// Until when it waits, likewise.
    fn until_html(&self) -> String {
        super::when_html(&self.waiting_until)
    }
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
    /// This node is part of a fleet: the "Whole fleet" switch is offered.
    in_fleet: bool,
    /// The fleet's history is shown (`fleet=1`).
    fleet: bool,
    /// In the fleet view: the nodes that did not answer, with why.
    unreachable: Vec<String>,
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
        // Every page is behind the sign-in: Sign out is always offered.
        signed_in: true,
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
        in_fleet: state.distributor.fleet().is_some(),
        fleet: q.wants_fleet() && state.distributor.fleet().is_some(),
        unreachable: Vec::new(),
    };
    let query = match HistoryQuery::parse(&q) {
        Ok(x) => x,
        Err(why) => {
            page.error = Some(why);
            return html(page);
        }
    };
    let limit = query.limit();
    let result = query.run_blocking(state.pipeline.store()).await;
    if page.fleet {
        return html(fleet_page(&state, &q, page, result, limit).await);
    }
    match result {
        Ok((records, next)) => {
            page.rows = records
                .into_iter()
                .map(|r| row(&crate::status::state::as_shown(r, &state.distributor)))
                .collect();
            page.next =
                next.map(|cursor| format!("/messages?{}before={}", filters(&q), enc(&cursor)));
        }
        Err(e) => page.error = Some(e.to_string()),
    }
    html(page)
}

/// The filters of `q` as a query string (`status=..&`), for the next page's link.
fn filters(q: &ListQuery) -> String {
    let mut url = String::new();
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
    url
}

/// The fleet's history (`fleet=1`): this node's records and the other nodes', merged
/// newest first, each with its node; the nodes that did not answer are named.
async fn fleet_page(
    state: &Ctx,
    q: &ListQuery,
    mut page: Messages,
    own: Result<(Vec<Record>, Option<String>), crate::store::StoreError>,
    limit: usize,
) -> Messages {
    let own = match own {
        Ok((records, _)) => records,
        Err(e) => {
            page.error = Some(e.to_string());
            Vec::new()
        }
    };
    let own = own
        .into_iter()
        .map(|r| crate::status::state::as_shown(r, &state.distributor))
        .collect();
    let merged = crate::status::fleet_view::merged(state, q, own, limit).await;
    for m in merged["messages"].as_array().into_iter().flatten() {
        let Ok(r) = serde_json::from_value::<Record>(m.clone()) else {
            continue;
        };
        let node = m["node"].as_str().unwrap_or_default().to_string();
        // Its page is on this node too: another node's message is shown through it.
        let mut row = row(&r);
        row.node = node;
        page.rows.push(row);
    }
    page.unreachable = merged["unreachable"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            format!(
                "{}: {}",
                u["node"].as_str().unwrap_or("?"),
                u["error"].as_str().unwrap_or("")
            )
        })
        .collect();
    if page.rows.len() >= limit
        && let Some(last) = page.rows.last()
    {
        page.next = Some(format!(
            "/messages?fleet=1&{}before={}",
            filters(q),
            enc(&last.id)
        ));
    }
    page
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
        received: super::shown_time(r.received_at),
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
            .map(|w| w.reason.to_string())
            .unwrap_or_default(),
        waiting_until: r
            .waiting
            .as_ref()
            .and_then(|w| w.until)
            .map(|t| super::shown_time(t.to_string()))
            .unwrap_or_default(),
        node: String::new(),
        href: format!("/messages/{}", enc(&r.id)),
    }
}
