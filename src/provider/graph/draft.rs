//! Graph's draft path, for a message too big for one request (Graph takes 4 MB per
//! request) or one Exchange is not to keep in Sent Items: the MIME without its large
//! attachments creates a draft (`POST /users/{sender}/messages`, base64 MIME); with
//! `save_to_sent_items = false` the draft is marked to be deleted once submitted
//! (`PidTagDeleteAfterSubmit`); each large attachment goes through an upload session
//! (`createUploadSession`, then `PUT`s of at most 4 MB, a multiple of 320 KiB, each with
//! its `Content-Range`, without the bearer token: the session's URL carries its own
//! authorization); then the draft is sent. A chunk that fails is resumed from where the
//! session says it is; a session that expired is started again. A draft whose sending
//! failed is deleted, so a retry does not leave drafts behind.

use std::time::Duration;

use base64::Engine;

use super::split::{self, Large};
use super::{Answer, Call, GraphProvider, MAX_REQUEST, transient};
use crate::diagnosis::Code;
use crate::provider::Outcome;

/// An upload chunk: ten times 320 KiB (3.2 MB), under Graph's 4 MB per request.
pub const CHUNK: usize = 10 * 320 * 1024;

/// Attachments from this size on always go through an upload session (Graph's
/// documented bound for attachments in one request).
pub const UPLOAD_FROM: usize = 3 * 1024 * 1024;

/// The largest message Exchange Online accepts at all (its maximum setting).
pub const EXCHANGE_MAX: usize = 150 * 1024 * 1024;

/// Failed chunks in a row after which the attempt gives up (and is retried later).
const CHUNK_TRIES: u32 = 4;

/// Upload sessions started for one attachment at most (one expired is started again).
const SESSIONS: u32 = 3;

impl GraphProvider {
    /// Sends `mime` from `sender` as a draft.
    pub(super) async fn send_draft(&self, sender: &str, mime: Vec<u8>) -> Outcome {
        if mime.len() > EXCHANGE_MAX {
            return Outcome::Permanent {
                reply: format!(
                    "the message is {} bytes; Exchange Online accepts at most {EXCHANGE_MAX} bytes (150 MB) even with the mailbox's limit at its maximum",
                    mime.len()
                ),
                code: Code::MessageTooLarge,
            };
        }
        // Room for the base64 in one request, with some to spare for the request itself.
        let fits = MAX_REQUEST - 64 * 1024;
        let Some((rest, large)) = split::split(&mime, fits, UPLOAD_FROM) else {
            return Outcome::Permanent {
                reply: format!(
                    "the message is {} bytes and, without its attachments, still more than Microsoft Graph takes in one request (4 MB base64-encoded); send it through an smtp provider",
                    mime.len()
                ),
                code: Code::MessageTooLarge,
            };
        };
        drop(mime);
        let id = match self.create_draft(sender, rest).await {
            Ok(id) => id,
            Err(o) => return o,
        };
        let outcome = self.complete_draft(sender, &id, &large).await;
        if !matches!(outcome, Outcome::Sent { .. }) {
            self.delete_draft(sender, &id).await;
        }
        outcome
    }

    /// Creates the draft from the MIME; its id.
    async fn create_draft(&self, sender: &str, mime: Vec<u8>) -> Result<String, Outcome> {
        let url = self
            .url(sender, &["messages"])
            .map_err(|e| transient(Code::ProviderConfig, e))?;
        let body = base64::engine::general_purpose::STANDARD.encode(mime);
        let call = Call {
            method: reqwest::Method::POST,
            url,
            body: Some(("text/plain", body.into())),
            auth: true,
        };
        let a = self.call(sender, "Graph create draft", &call).await?;
        if !(200..300).contains(&a.status) {
            return Err(Self::refused("Graph create draft", &a));
        }
        json_of(&a)
            .get("id")
            .and_then(|v| v.as_str())
            .map(String::from)
            .ok_or_else(|| {
                transient(
                    Code::Unknown,
                    format!("Graph create draft: HTTP {} without a message id", a.status),
                )
            })
    }

    /// Marks the draft (Sent Items or not), uploads the attachments, sends it.
    async fn complete_draft(&self, sender: &str, id: &str, large: &[Large]) -> Outcome {
        if !self.save_to_sent {
            // PidTagDeleteAfterSubmit: Exchange deletes the item once submitted instead
            // of moving it to Sent Items.
            let patch = serde_json::json!({
                "singleValueExtendedProperties": [{"id": "Boolean 0x0E01", "value": "true"}]
            });
            let call = match self.url(sender, &["messages", id]) {
                Ok(url) => Call {
                    method: reqwest::Method::PATCH,
                    url,
                    body: Some(("application/json", patch.to_string().into())),
                    auth: true,
                },
                Err(e) => return transient(Code::ProviderConfig, e),
            };
            match self.call(sender, "Graph update draft", &call).await {
                Err(o) => return o,
                Ok(a) if !(200..300).contains(&a.status) => {
                    return Self::refused("Graph update draft", &a);
                }
                Ok(_) => {}
            }
        }
        for a in large {
            if let Err(o) = self.upload(sender, id, a).await {
                return o;
            }
        }
        let call = match self.url(sender, &["messages", id, "send"]) {
            Ok(url) => Call {
                method: reqwest::Method::POST,
                url,
                body: None,
                auth: true,
            },
            Err(e) => return transient(Code::ProviderConfig, e),
        };
        match self.call(sender, "Graph send draft", &call).await {
            Err(o) => o,
            Ok(a) if (200..300).contains(&a.status) => Outcome::Sent {
                reply: format!(
                    "HTTP {} accepted by Graph (draft with {} attachment{} uploaded)",
                    a.status,
                    large.len(),
                    if large.len() == 1 { "" } else { "s" }
                ),
            },
            Ok(a) => Self::refused("Graph send draft", &a),
        }
    }

    /// Uploads one attachment to the draft through an upload session.
    async fn upload(&self, sender: &str, id: &str, a: &Large) -> Result<(), Outcome> {
        let total = a.bytes.len();
        for _ in 0..SESSIONS {
            let upload_url = self.upload_session(sender, id, a).await?;
            let mut next = 0usize;
            let mut failures = 0u32;
            loop {
                let end = (next + CHUNK).min(total);
                let call = Call {
                    method: reqwest::Method::PUT,
                    url: upload_url.clone(),
                    body: Some((
                        "application/octet-stream",
                        bytes::Bytes::copy_from_slice(&a.bytes[next..end]),
                    )),
                    auth: false,
                };
                let range = format!("bytes {next}-{}/{total}", end.saturating_sub(1));
                let answer = self.put_chunk(sender, &call, &range).await;
                match answer {
                    Ok(ans) if ans.status == 201 || (ans.status == 200 && end == total) => {
                        return Ok(());
                    }
                    Ok(ans) if (200..300).contains(&ans.status) => {
                        // The session says where it wants the next bytes. One that
                        // keeps asking for what it already had makes no progress: that
                        // counts as a failed chunk, so it ends.
                        let want = resume_at(&ans.text, total, end);
                        if want > next {
                            failures = 0;
                        } else {
                            failures += 1;
                            if failures >= CHUNK_TRIES {
                                return Err(Self::refused("Graph upload attachment", &ans));
                            }
                        }
                        next = want;
                        continue;
                    }
                    // The session is gone (expired): start a new one.
                    Ok(ans) if ans.status == 404 => break,
                    Ok(ans)
                        if ans.status != 429
                            && ans.status != 503
                            && (400..500).contains(&ans.status) =>
                    {
                        return Err(Self::refused("Graph upload attachment", &ans));
                    }
                    Ok(ans) => {
                        failures += 1;
                        if failures >= CHUNK_TRIES {
                            return Err(Self::refused("Graph upload attachment", &ans));
                        }
                        if let Some(s) = ans.retry_after {
                            tokio::time::sleep(Duration::from_secs(s.min(30))).await;
                        }
                    }
                    Err(o) => {
                        failures += 1;
                        if failures >= CHUNK_TRIES {
                            return Err(o);
                        }
                    }
                }
                // Resume from where the session is.
                match self.session_status(sender, &upload_url).await {
                    Some(ans) if ans.status == 404 => break,
                    Some(ans) => next = resume_at(&ans.text, total, next),
                    None => {}
                }
            }
        }
        Err(transient(
            Code::Unknown,
            format!(
                "Graph upload attachment: the upload session of {:?} expired {SESSIONS} times",
                a.name
            ),
        ))
    }

    /// One chunk, with its `Content-Range`.
    async fn put_chunk(&self, sender: &str, c: &Call, range: &str) -> Result<Answer, Outcome> {
        let Some((_, body)) = &c.body else {
            return Err(transient(Code::Unknown, "empty chunk".into()));
        };
        let bound = crate::provider::stage::body_bound(self.timeout, body.len());
        let _mailbox = self.mailbox(sender).await;
        crate::provider::stage::enter("Graph upload attachment");
        let resp = self
            .http
            .put(c.url.clone())
            .timeout(bound)
            .header(reqwest::header::CONTENT_RANGE, range)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body.clone())
            .send()
            .await
            .map_err(|e| {
                transient(
                    Code::ConnectionFailed,
                    format!(
                        "Graph upload attachment: {}",
                        crate::provider::error_chain(&e)
                    ),
                )
            })?;
        answer_of(resp).await
    }

    /// The upload session's state (`GET` its URL), or None when it cannot be asked.
    async fn session_status(&self, sender: &str, url: &reqwest::Url) -> Option<Answer> {
        let _mailbox = self.mailbox(sender).await;
        let resp = self
            .http
            .get(url.clone())
            .timeout(self.timeout)
            .send()
            .await
            .ok()?;
        answer_of(resp).await.ok()
    }

    /// Starts an upload session for `a` on the draft; its upload URL.
    async fn upload_session(
        &self,
        sender: &str,
        id: &str,
        a: &Large,
    ) -> Result<reqwest::Url, Outcome> {
        let url = self
            .url(
                sender,
                &["messages", id, "attachments", "createUploadSession"],
            )
            .map_err(|e| transient(Code::ProviderConfig, e))?;
        let mut item = serde_json::json!({
            "attachmentType": "file",
            "name": a.name,
            "size": a.bytes.len(),
            "contentType": a.content_type,
            "isInline": a.inline,
        });
        if let Some(cid) = &a.content_id {
            item["contentId"] = serde_json::json!(cid);
        }
        let body = serde_json::json!({ "AttachmentItem": item }).to_string();
        let call = Call {
            method: reqwest::Method::POST,
            url,
            body: Some(("application/json", body.into())),
            auth: true,
        };
        let ans = self
            .call(sender, "Graph create upload session", &call)
            .await?;
        if !(200..300).contains(&ans.status) {
            return Err(Self::refused("Graph create upload session", &ans));
        }
        json_of(&ans)
            .get("uploadUrl")
            .and_then(|v| v.as_str())
            .and_then(|u| reqwest::Url::parse(u).ok())
            .ok_or_else(|| {
                transient(
                    Code::Unknown,
                    "Graph create upload session: no uploadUrl in the answer".into(),
                )
            })
    }

    /// Deletes a draft whose sending failed (best effort).
    async fn delete_draft(&self, sender: &str, id: &str) {
        if let Ok(url) = self.url(sender, &["messages", id]) {
            let call = Call {
                method: reqwest::Method::DELETE,
                url,
                body: None,
                auth: true,
            };
            if let Err(e) = self.call(sender, "Graph delete draft", &call).await {
                tracing::warn!(draft = %id, outcome = ?e, "could not delete a draft whose sending failed");
            }
        }
    }
}

/// An answer's JSON body (`null` when it has none).
fn json_of(a: &Answer) -> serde_json::Value {
    serde_json::from_str(&a.text).unwrap_or_default()
}

/// Where to go on after an upload session's answer (`text`): the start of its first
/// `nextExpectedRanges` when that lies inside the attachment of `total` bytes, else
/// `fallback`. The answer comes from the network: a start past the end must not become
/// a slice of bytes that are not there.
pub(crate) fn resume_at(text: &str, total: usize, fallback: usize) -> usize {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v["nextExpectedRanges"]
                .as_array()?
                .first()?
                .as_str()?
                .split('-')
                .next()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .filter(|&at| at < total)
        .unwrap_or(fallback)
}

async fn answer_of(resp: reqwest::Response) -> Result<Answer, Outcome> {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let text = resp.text().await.map_err(|e| {
        transient(
            Code::ConnectionFailed,
            format!(
                "Graph upload attachment: {}",
                crate::provider::error_chain(&e)
            ),
        )
    })?;
    Ok(Answer {
        status,
        retry_after,
        text,
    })
}
