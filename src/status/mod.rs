//! The status listener on `status.listen`: the status endpoint, the metrics, the admin
//! API and the Email history pages.
//!
//! Rooms and what they may use: `state` (the shared parts, leaf), `query` (the history
//! query, leaf), `actions` (retry, cancel, sign-in changed, reload: `state`), `api` (JSON:
//! `state`, `actions`, `query`, and [`crate::snapshot`] for the counts and providers
//! `/status` and the dashboard show), `pages` (HTML: the same, never `api` or
//! `http`), `http` (the router: `api`, `pages`, `state`). No room imports one that
//! imports it back.

pub mod actions;
mod api;
pub mod fleet_view;
pub mod http;
pub mod pages;
pub mod query;
pub mod state;
pub mod tls;
/// `s` percent-encoded (everything but RFC 3986's unreserved characters), for a URL query
/// value or path segment: a filter in a link, a provider's name in an API path.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
