//! The one history query behind `GET /api/messages` and the Email history page: the
//! filters of the URL (status, user, provider, since, a search `q`, a cursor `before`)
//! parsed once and run on the store's status and user indexes, never a scan of all of it
//! for the common filters.

use serde::Deserialize;

use crate::history::{Record, Status};
use crate::store::{Page, Store, StoreError};
use crate::time::{now_ms, parse_rfc3339};

/// How many records a search (`q`, `provider`) examines at most per page; the page's
/// cursor continues from there.
pub const MAX_SCAN: usize = 20_000;

/// The query of `GET /api/messages` and `GET /messages`.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct ListQuery {
    /// Only records of this status.
    pub status: Option<String>,
    /// Only records of this user.
    pub user: Option<String>,
    /// Only records of this provider.
    pub provider: Option<String>,
    /// Only records received within this duration (`2h`) or since this RFC 3339 time.
    pub since: Option<String>,
    /// Words that must all appear in the id, a sender, a recipient or the subject.
    pub q: Option<String>,
    /// The cursor: only records older than this id.
    pub before: Option<String>,
    /// At most this many (default 50, at most 10000).
    pub limit: Option<usize>,
    /// `1`: the history of every node of the fleet, merged (SPEC "One view of the
    /// fleet").
    pub fleet: Option<String>,
}

impl ListQuery {
    /// The query string of this query for another node (without `fleet`).
    pub fn for_peer(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let fields = [
            ("status", &self.status),
            ("user", &self.user),
            ("provider", &self.provider),
            ("since", &self.since),
            ("q", &self.q),
            ("before", &self.before),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                out.push((k, v.clone()));
            }
        }
        if let Some(l) = self.limit {
            out.push(("limit", l.to_string()));
        }
        out
    }

    /// Whether the fleet's history is asked for.
    pub fn wants_fleet(&self) -> bool {
        self.fleet
            .as_deref()
            .is_some_and(|f| matches!(f, "1" | "true" | "yes"))
    }
}

/// Parses `since`: a duration back from now, or an RFC 3339 time; ms since the epoch.
pub fn parse_since(s: &str) -> Option<u64> {
    humantime::parse_duration(s)
        .ok()
        .map(|d| now_ms().saturating_sub(crate::time::duration_ms(d)))
        .or_else(|| parse_rfc3339(s))
}

/// A parsed, runnable history query.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    status: Option<Status>,
    user: Option<String>,
    provider: Option<String>,
    since: Option<u64>,
    words: Vec<String>,
    before: Option<String>,
    limit: usize,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

impl HistoryQuery {
    /// Parses the URL's filters; the error is a sentence for the person who typed them.
    pub fn parse(q: &ListQuery) -> Result<HistoryQuery, String> {
        let status = match nonempty(&q.status) {
            None => None,
            Some(s) => Some(Status::parse(&s).ok_or_else(|| {
                format!(
                    "unknown status {s:?}: use queued, deferred, sent, partial, failed or cancelled"
                )
            })?),
        };
        let since = match nonempty(&q.since) {
            None => None,
            Some(s) => Some(parse_since(&s).ok_or_else(|| {
                format!("invalid since {s:?}: use a duration like 2h or an RFC 3339 time")
            })?),
        };
        let words = nonempty(&q.q)
            .map(|q| q.split_whitespace().map(str::to_lowercase).collect())
            .unwrap_or_default();
        Ok(HistoryQuery {
            status,
            user: nonempty(&q.user),
            provider: nonempty(&q.provider),
            since,
            words,
            before: nonempty(&q.before),
            limit: q.limit.unwrap_or(50).clamp(1, 10_000),
        })
    }

    fn matches(&self, r: &Record) -> bool {
        if self.provider.as_deref().is_some_and(|p| r.provider != p) {
            return false;
        }
        self.words.iter().all(|w| {
            r.id.to_lowercase().contains(w)
                || r.original_sender.to_lowercase().contains(w)
                || r.sender.to_lowercase().contains(w)
                || r.subject
                    .as_deref()
                    .is_some_and(|s| s.to_lowercase().contains(w))
                || r.recipients
                    .iter()
                    .any(|x| x.address.to_lowercase().contains(w))
        })
    }

    /// Runs it: the page of records and the cursor of the next one. `failed` is every
    /// message with a failed recipient: `failed` and `partial` (the administrator's
    /// "Failed" filter finds every failure), merged newest first from both indexes.
    pub fn run(&self, store: &Store) -> Result<(Vec<Record>, Option<String>), StoreError> {
        if self.status != Some(Status::Failed) {
            return self.run_one(store, self.status);
        }
        let (failed, more_failed) = self.run_one(store, Some(Status::Failed))?;
        let (partial, more_partial) = self.run_one(store, Some(Status::Partial))?;
        let mut all = failed;
        all.extend(partial);
        all.sort_by(|a, b| b.id.cmp(&a.id));
        // Each list was read down to its cursor; below the newer of the two, the other
        // list's records come again on the next page.
        let mut cut = [more_failed, more_partial].into_iter().flatten().max();
        if let Some(c) = &cut {
            all.retain(|r| r.id >= *c);
        }
        if all.len() > self.limit {
            all.truncate(self.limit);
            cut = all.last().map(|r| r.id.clone());
        }
        Ok((all, cut))
    }

    fn run_one(
        &self,
        store: &Store,
        status: Option<Status>,
    ) -> Result<(Vec<Record>, Option<String>), StoreError> {
        let searching = self.provider.is_some() || !self.words.is_empty();
        let keep = |r: &Record| self.matches(r);
        store.page(&Page {
            status,
            user: self.user.as_deref(),
            since: self.since,
            before: self.before.as_deref(),
            limit: self.limit,
            max_scan: if searching { MAX_SCAN } else { 0 },
            keep: searching.then_some(&keep as &(dyn Fn(&Record) -> bool + Sync)),
        })
    }

    /// At most this many records.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// [`HistoryQuery::run`] on the blocking pool.
    pub async fn run_blocking(
        self,
        store: &Store,
    ) -> Result<(Vec<Record>, Option<String>), StoreError> {
        store.blocking(move |s| self.run(s)).await
    }
}
