//! The status endpoint, the admin API and the Email history page, served on
//! `status.listen`.

pub mod http;
pub mod pages;
pub mod query;

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
