//! The graph provider (`kind = "graph"`, the "Exchange" provider): sends the stored MIME
//! message through Microsoft Graph, `POST {graph_url}/v1.0/users/{sender}/sendMail` with
//! the message base64-encoded and `Content-Type: text/plain`, as Microsoft documents for
//! MIME. Graph takes the recipients from the MIME headers, so envelope recipients that
//! no header names (blind copies) are added as a `Bcc:` header for Graph only.

use std::time::Duration;

use base64::Engine;
use tokio::sync::Semaphore;

use super::diagnosis::Code;
use super::oauth2::TokenSource;
use super::{Delivery, Outcome};
use crate::config::ProviderConfig;
use crate::secrets::SecretStore;

/// Graph's limit on a request (sendMail with MIME).
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// A Microsoft Graph sender.
#[derive(Debug)]
pub struct GraphProvider {
    graph_url: String,
    timeout: Duration,
    token: TokenSource,
    http: reqwest::Client,
    permits: Semaphore,
}

fn transient(code: Code, reply: String) -> Outcome {
    Outcome::Transient { reply, code }
}

/// The MIME Graph gets: the stored message, with a `Bcc:` header for the envelope
/// recipients no header names (Graph sends to the header's recipients).
pub fn graph_mime(raw: &[u8], blind: &[String]) -> Vec<u8> {
    if blind.is_empty() {
        return raw.to_vec();
    }
    let mut out = format!("Bcc: {}\r\n", blind.join(",\r\n ")).into_bytes();
    out.extend_from_slice(raw);
    out
}

/// The envelope recipients of `d` no header names: from the record, or for a record
/// written before mailgate kept that, read from the header again.
fn blind_of(d: &Delivery) -> Vec<String> {
    if let Some(b) = &d.blind {
        return b.clone();
    }
    let named: Vec<String> = crate::message::recipients::named(&d.raw)
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
fn graph_error(body: &str) -> String {
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
    pub fn new(config: &ProviderConfig, secrets: SecretStore) -> GraphProvider {
        let timeout = config.step_timeout();
        GraphProvider {
            graph_url: config
                .graph_url
                .clone()
                .unwrap_or_else(|| "https://graph.microsoft.com".into())
                .trim_end_matches('/')
                .to_string(),
            token: TokenSource::new(config, secrets),
            timeout,
            // Each request gets its own bound (`timeout` plus the body at 64 KB/s).
            http: reqwest::Client::builder()
                .connect_timeout(timeout)
                .build()
                .unwrap_or_default(),
            permits: Semaphore::new(config.max_connections.max(1)),
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

    fn url(&self, sender: &str) -> Result<reqwest::Url, String> {
        let mut url =
            reqwest::Url::parse(&self.graph_url).map_err(|e| format!("graph_url: {e}"))?;
        url.path_segments_mut()
            .map_err(|()| "graph_url cannot have a path".to_string())?
            .pop_if_empty()
            .extend(["v1.0", "users", sender, "sendMail"]);
        Ok(url)
    }

    /// Sends one message.
    pub async fn deliver(&self, d: &Delivery) -> Outcome {
        let Ok(_permit) = self.permits.acquire().await else {
            return transient(Code::Unknown, "provider closed".into());
        };
        let body =
            base64::engine::general_purpose::STANDARD.encode(graph_mime(&d.raw, &blind_of(d)));
        if body.len() > MAX_REQUEST {
            return Outcome::Permanent {
                reply: format!(
                    "the message is {} bytes base64-encoded; Microsoft Graph accepts requests of at most {MAX_REQUEST} bytes (about 3 MB of message): send large messages through an smtp provider (smtp.office365.com accepts up to 35 MB)",
                    body.len()
                ),
                code: Code::MessageTooLarge,
            };
        }
        let url = match self.url(&d.from) {
            Ok(u) => u,
            Err(e) => return transient(Code::ProviderConfig, e),
        };
        // The whole exchange (headers, the body both ways) within the bound, whatever
        // the server does: a server that trickles its answer is cut off too.
        let bound = super::stage::body_bound(self.timeout, body.len());
        let gone = |e: reqwest::Error| {
            transient(
                Code::ConnectionFailed,
                if e.is_timeout() {
                    format!(
                        "Graph sendMail: no answer from {} within {}",
                        self.graph_url,
                        super::stage::words(bound)
                    )
                } else {
                    format!(
                        "Graph sendMail: {} unreachable: {}",
                        self.graph_url,
                        super::error_chain(&e)
                    )
                },
            )
        };
        for try_no in 0..2 {
            super::stage::enter("OAuth2 token");
            let token = match self.token.token().await {
                Ok(t) => t,
                Err(e) => return transient(e.code, e.reply),
            };
            super::stage::enter("Graph sendMail");
            let resp = self
                .http
                .post(url.clone())
                .timeout(bound)
                .bearer_auth(token.expose())
                .header(reqwest::header::CONTENT_TYPE, "text/plain")
                .body(body.clone())
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => return gone(e),
            };
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) => return gone(e),
            };
            let reply = format!("HTTP {status} {}", graph_error(&text))
                .trim()
                .to_string();
            return match status {
                200..=299 => Outcome::Sent {
                    reply: format!("HTTP {status} accepted by Graph sendMail"),
                },
                401 if try_no == 0 => {
                    // The token may have been revoked or expired early: one fresh try.
                    self.token.invalidate();
                    continue;
                }
                401 => transient(Code::GraphUnauthorized, reply),
                403 => transient(Code::GraphForbidden, reply),
                404 => transient(Code::GraphMailboxNotFound, reply),
                413 => Outcome::Permanent {
                    reply,
                    code: Code::MessageTooLarge,
                },
                429 | 503 => Outcome::Later {
                    reply,
                    code: Code::UpstreamThrottled,
                    after: Duration::from_secs(retry_after.unwrap_or(60).clamp(1, 3600)),
                },
                400..=499 => Outcome::Permanent {
                    reply,
                    code: Code::Unknown,
                },
                _ => transient(Code::Unknown, reply),
            };
        }
        transient(Code::GraphUnauthorized, "HTTP 401".into())
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
            raw: std::sync::Arc::new(raw.to_vec()),
            blind: None,
        };
        // An old record: the header is read again.
        let out = graph_mime(raw, &blind_of(&d));
        assert_eq!(&out[..30], b"Bcc: hidden@contoso.com\r\nTo: A");
        assert!(out.ends_with(raw));
        // A record that knows: it is taken as it is.
        d.blind = Some(vec![]);
        assert_eq!(graph_mime(raw, &blind_of(&d)), raw.to_vec());
    }
}
