//! The graph provider (`kind = "graph"`, the "Exchange" provider): sends the stored MIME
//! message through Microsoft Graph, `POST {graph_url}/v1.0/users/{sender}/sendMail` with
//! the message base64-encoded and `Content-Type: text/plain`, as Microsoft documents for
//! MIME. Graph takes the recipients from the MIME headers, so envelope recipients that
//! no header names (blind copies) are added as a `Bcc:` header for Graph only.
//!
//! A message too big for one request, or one not to be kept in Sent Items, goes as a
//! draft instead ([`draft`]): created from the MIME without its large attachments
//! ([`split`]), each of those uploaded through an upload session, then sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::sync::Semaphore;

mod draft;
pub mod split;

pub(crate) use draft::resume_at;

use super::oauth2::TokenSource;
use super::{Delivery, Outcome};
use crate::config::{GraphSettings, ProviderConfig};
use crate::diagnosis::Code;
use crate::secrets::SecretStore;

/// Graph's limit on a request (sendMail with MIME).
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// Requests at once per mailbox: Exchange Online allows four concurrent requests per
/// mailbox and app, and answers more with 429.
pub const MAILBOX_REQUESTS: usize = 4;

/// A Microsoft Graph sender.
#[derive(Debug)]
pub struct GraphProvider {
    graph_url: String,
    timeout: Duration,
    token: TokenSource,
    http: reqwest::Client,
    permits: Semaphore,
    /// `save_to_sent_items`: Exchange keeps a copy in the mailbox's Sent Items.
    save_to_sent: bool,
    /// Requests in flight per mailbox (sender), at most [`MAILBOX_REQUESTS`].
    mailboxes: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// What a Graph call answered: its status, `Retry-After` (seconds) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    text: String,
}

/// One Graph request: method, URL, body (with its type), and whether it carries the
/// bearer token (an upload session's URL carries its own authorization and must not).
struct Call {
    method: reqwest::Method,
    url: reqwest::Url,
    body: Option<(&'static str, bytes::Bytes)>,
    auth: bool,
}

fn transient(code: Code, reply: String) -> Outcome {
    Outcome::Transient { reply, code }
}

/// The MIME Graph gets: the stored message, with a `Bcc:` header for the envelope
/// recipients no header names (Graph sends to the header's recipients).
pub fn graph_mime(mut raw: Vec<u8>, blind: &[String]) -> Vec<u8> {
    if !blind.is_empty() {
        let bcc = format!("Bcc: {}\r\n", blind.join(",\r\n ")).into_bytes();
        raw.splice(0..0, bcc);
    }
    raw
}

/// The envelope recipients of `d` no header names: from the record, or for a record
/// written before mailgate kept that, read from the header again.
fn blind_of(d: &Delivery) -> Vec<String> {
    if let Some(b) = &d.blind {
        return b.clone();
    }
    let head = d.body.head().unwrap_or_default();
    let named: Vec<String> = crate::message::recipients::named(&head)
        .addresses
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    d.rcpts
        .iter()
        .filter(|r| !named.contains(&r.to_ascii_lowercase()))
        .cloned()
        .collect()
}

/// The error text of a Graph error response (`{"error":{"code","message"}}`).
pub(crate) fn graph_error(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| body.chars().take(300).collect())
}

impl GraphProvider {
    /// A provider for `config` (which has a `[provider.oauth2]` table; checked at load).
    pub fn new(
        config: &ProviderConfig,
        settings: &GraphSettings,
        secrets: SecretStore,
    ) -> GraphProvider {
        let timeout = config.step_timeout();
        GraphProvider {
            graph_url: config.upstream().trim_end_matches('/').to_string(),
            token: TokenSource::new(config, secrets),
            timeout,
            // Each request gets its own bound (`timeout` plus the body at 64 KB/s).
            http: reqwest::Client::builder()
                .connect_timeout(timeout)
                .build()
                .unwrap_or_default(),
            permits: Semaphore::new(config.common.max_connections.max(1)),
            save_to_sent: settings.save_to_sent_items.unwrap_or(true),
            mailboxes: Mutex::new(HashMap::new()),
        }
    }

    /// How long one step (a request and its answer) may take, before the body's share.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `mailgate verify`: Graph has no sign-in without sending, so the app registration
    /// is proved by getting a token (`test-email` proves the mailbox).
    pub async fn verify(&self) -> Result<String, (Code, String)> {
        self.oauth()
            .token()
            .await
            .map(|_| {
                "OAuth2 token acquired for Microsoft Graph (use test-email to prove the mailbox)"
                    .to_string()
            })
            .map_err(|e| (e.code, e.reply))
    }

    /// The token source.
    pub fn oauth(&self) -> &TokenSource {
        &self.token
    }

    /// `{graph_url}/v1.0/users/{sender}/` and `path`, each segment escaped.
    fn url(&self, sender: &str, path: &[&str]) -> Result<reqwest::Url, String> {
        let mut url =
            reqwest::Url::parse(&self.graph_url).map_err(|e| format!("graph_url: {e}"))?;
        url.path_segments_mut()
            .map_err(|()| "graph_url cannot have a path".to_string())?
            .pop_if_empty()
            .extend(["v1.0", "users", sender])
            .extend(path);
        Ok(url)
    }

    /// The mailbox's share of requests: at most [`MAILBOX_REQUESTS`] at once.
    async fn mailbox(&self, sender: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut m = self.mailboxes.lock().ok()?;
            m.entry(sender.to_ascii_lowercase())
                .or_insert_with(|| Arc::new(Semaphore::new(MAILBOX_REQUESTS)))
                .clone()
        };
        sem.acquire_owned().await.ok()
    }

    /// One request, named `step` (for the history and a stalled attempt's words), within
    /// its bound; a 401 gets one fresh token and one more try. Err: the outcome that ends
    /// the attempt (unreachable, no answer in time, no token).
    async fn call(&self, sender: &str, step: &'static str, c: &Call) -> Result<Answer, Outcome> {
        let size = c.body.as_ref().map_or(0, |(_, b)| b.len());
        let bound = super::stage::body_bound(self.timeout, size);
        let gone = |e: reqwest::Error| {
            transient(
                Code::ConnectionFailed,
                if e.is_timeout() {
                    format!(
                        "{step}: no answer from {} within {}",
                        self.graph_url,
                        super::stage::words(bound)
                    )
                } else {
                    format!(
                        "{step}: {} unreachable: {}",
                        self.graph_url,
                        super::error_chain(&e)
                    )
                },
            )
        };
        let _mailbox = self.mailbox(sender).await;
        for try_no in 0..2 {
            let mut req = self
                .http
                .request(c.method.clone(), c.url.clone())
                .timeout(bound);
            if c.auth {
                super::stage::enter("OAuth2 token");
                let token = match self.token.token().await {
                    Ok(t) => t,
                    Err(e) => return Err(transient(e.code, e.reply)),
                };
                req = req.bearer_auth(token.expose());
            }
            req = match &c.body {
                Some((ct, body)) => req
                    .header(reqwest::header::CONTENT_TYPE, *ct)
                    .body(body.clone()),
                None => req.header(reqwest::header::CONTENT_LENGTH, 0),
            };
            super::stage::enter(step);
            let resp = req.send().await.map_err(gone)?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = resp.text().await.map_err(gone)?;
            if status == 401 && c.auth && try_no == 0 {
                // The token may have been revoked or expired early: one fresh try.
                self.token.invalidate();
                continue;
            }
            return Ok(Answer {
                status,
                retry_after,
                text,
            });
        }
        Err(transient(Code::GraphUnauthorized, "HTTP 401".into()))
    }

    /// The outcome of a refused call.
    fn refused(step: &str, a: &Answer) -> Outcome {
        let error = graph_error(&a.text);
        let reply = format!("HTTP {} {error}", a.status).trim().to_string();
        let reply = if step == "Graph sendMail" {
            reply
        } else {
            format!("{step}: {reply}")
        };
        let too_large = error.contains("SizeExceeded") || error.contains("TooLarge");
        match a.status {
            401 => transient(Code::GraphUnauthorized, reply),
            403 => transient(Code::GraphForbidden, reply),
            404 => transient(Code::GraphMailboxNotFound, reply),
            413 => Outcome::Permanent {
                reply,
                code: Code::MessageTooLarge,
            },
            400..=499 if too_large => Outcome::Permanent {
                reply,
                code: Code::MessageTooLarge,
            },
            429 | 503 => Outcome::Later {
                reply,
                code: Code::UpstreamThrottled,
                after: Duration::from_secs(a.retry_after.unwrap_or(60).clamp(1, 3600)),
            },
            400..=499 => Outcome::Permanent {
                reply,
                code: Code::Unknown,
            },
            _ => transient(Code::Unknown, reply),
        }
    }

    /// Sends one message: in one sendMail request when it fits and Sent Items keeps it,
    /// else as a draft.
    pub async fn deliver(&self, d: &Delivery) -> Outcome {
        let Ok(_permit) = self.permits.acquire().await else {
            return transient(Code::Unknown, "provider closed".into());
        };
        // Graph takes the MIME whole (base64 in one request, or parsed for the draft):
        // one copy of it in memory, read from a file body without a second.
        let raw = match d.body.bytes() {
            Ok(r) => r.into_owned(),
            Err(e) => {
                return transient(
                    Code::StoreDamaged,
                    format!("the stored body of {} cannot be read: {e}", d.id),
                );
            }
        };
        let mime = graph_mime(raw, &blind_of(d));
        if split::base64_len(mime.len()) > MAX_REQUEST || !self.save_to_sent {
            return self.send_draft(&d.from, mime).await;
        }
        let url = match self.url(&d.from, &["sendMail"]) {
            Ok(u) => u,
            Err(e) => return transient(Code::ProviderConfig, e),
        };
        let body = base64::engine::general_purpose::STANDARD.encode(mime);
        let call = Call {
            method: reqwest::Method::POST,
            url,
            body: Some(("text/plain", body.into())),
            auth: true,
        };
        match self.call(&d.from, "Graph sendMail", &call).await {
            Err(outcome) => outcome,
            Ok(a) if (200..300).contains(&a.status) => Outcome::Sent {
                reply: format!("HTTP {} accepted by Graph sendMail", a.status),
            },
            Ok(a) => Self::refused("Graph sendMail", &a),
        }
    }
}

impl super::Deliver for GraphProvider {
    async fn deliver(&self, d: &Delivery) -> Outcome {
        GraphProvider::deliver(self, d).await
    }

    async fn verify(&self) -> Result<String, (Code, String)> {
        GraphProvider::verify(self).await
    }

    /// The token; the request (base64: 4/3 of the size).
    fn attempt_once(&self, d: &Delivery) -> Duration {
        let t = self.timeout;
        t + super::stage::body_bound(t, d.body.len() as usize / 3 * 4 + 4)
    }

    fn oauth(&self) -> Option<&TokenSource> {
        Some(&self.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blind_recipients_become_a_bcc_header() {
        let raw = b"To: A <a@contoso.com>\r\nCc: b@contoso.com\r\nSubject: s\r\n\r\nx\r\n";
        let mut d = Delivery {
            id: "x".into(),
            from: "f@contoso.com".into(),
            rcpts: vec![
                "a@contoso.com".into(),
                "B@contoso.com".into(),
                "hidden@contoso.com".into(),
            ],
            body: std::sync::Arc::new(crate::store::Body::from_bytes(raw.to_vec())),
            blind: None,
        };
        // An old record: the header is read again.
        let out = graph_mime(raw.to_vec(), &blind_of(&d));
        assert_eq!(&out[..30], b"Bcc: hidden@contoso.com\r\nTo: A");
        assert!(out.ends_with(raw));
        // A record that knows: it is taken as it is.
        d.blind = Some(vec![]);
        assert_eq!(graph_mime(raw.to_vec(), &blind_of(&d)), raw.to_vec());
    }
}
