//! Notices to the sender (SPEC "Telling people"): when an attempt leaves a message
//! `failed` or `partial`, a bounce; when it has waited `delay_warning`, one delay notice.
//! The notice is a message of its own, committed in the same transaction as the outcome
//! that caused it, and sent through the chain of the original's user to its rewritten
//! sender.

use std::collections::HashMap;

use super::{Distributor, Routing};
use crate::config::{BounceMode, Config};
use crate::history::{NoticeKind, NoticeLink, Recipient, Record, Status};
use crate::notify;
use crate::store::Mutation;

/// `[notify]` as the distributor uses it.
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    /// Bounces go to the sender.
    pub bounce: bool,
    /// Delay notices after this long (ms); None: never.
    pub delay_ms: Option<u64>,
    /// `notify.from`.
    pub from: Option<String>,
    /// `smtp.hostname`.
    pub hostname: String,
    /// Each provider's `username` (the default From of its notices).
    pub usernames: HashMap<String, String>,
    /// `sendmail.admin_address`: told of a failure when the sender cannot be.
    pub admin: Option<String>,
}

/// Who a bounce goes to: the sender, when its domain can receive mail from the Internet
/// (as always); else the rewritten sender, when the rewrite gave a different one that
/// can; else `admin`; else no one (None).
pub(super) fn bounce_to(original: &str, rewritten: &str, admin: Option<&str>) -> Option<String> {
    use crate::address::is_routable;
    if is_routable(original) || rewritten != original && is_routable(rewritten) {
        return Some(rewritten.to_string());
    }
    admin.map(str::to_string)
}

impl NotifySettings {
    /// The settings of a configuration.
    pub fn from_config(c: &Config) -> NotifySettings {
        let n = &c.notify;
        NotifySettings {
            bounce: n.bounce == BounceMode::Sender,
            delay_ms: Some(crate::time::duration_ms(n.delay_warning.0)).filter(|ms| *ms > 0),
            from: n.from.as_ref().map(|f| f.get_ref().clone()),
            hostname: c.smtp.hostname.clone(),
            usernames: c
                .provider
                .iter()
                .filter_map(|p| Some((p.name.get_ref().clone(), p.username()?.to_string())))
                .collect(),
            admin: c
                .sendmail
                .admin_address
                .as_ref()
                .map(|a| a.get_ref().clone()),
        }
    }
}

/// The notice a record calls for after an attempt, `age` ms after it was received: a
/// bounce once it failed (or partly), a delay notice once it waited `delay`; each once.
fn due_notice(record: &Record, n: &NotifySettings, age: u64) -> Option<NoticeKind> {
    let noticed = |k: NoticeKind| record.notices.iter().any(|l| l.kind == k);
    match record.status {
        Status::Failed | Status::Partial if n.bounce && !noticed(NoticeKind::Bounce) => {
            Some(NoticeKind::Bounce)
        }
        Status::Deferred if n.delay_ms.is_some_and(|d| age >= d) && !noticed(NoticeKind::Delay) => {
            Some(NoticeKind::Delay)
        }
        _ => None,
    }
}

/// When no one can read a notice: a delay notice is a courtesy, none, quietly; a bounce
/// is said where the administrator looks (the message's page and the log).
fn no_reader(record: &mut Record, kind: NoticeKind) {
    if kind != NoticeKind::Bounce {
        return;
    }
    let why = format!(
        "no {} was sent: the sender {} cannot receive mail (its domain is local or single-label), the rewrite gave no other sender, and sendmail.admin_address is not set",
        kind.as_str(),
        record.original_sender
    );
    tracing::warn!(id = %record.id, kind = kind.as_str(), sender = %record.original_sender, "no one could be told: {why}");
    if let Some(a) = record.attempts.last_mut() {
        a.note = Some(match a.note.take() {
            Some(n) => format!("{n}; {why}"),
            None => why,
        });
    }
}

impl Distributor {
    /// The notice `record` calls for after its attempt, if any: the new message to
    /// insert (with the outcome); `record` is linked to it.
    pub(super) fn notice(
        &self,
        record: &mut Record,
        headers: &[u8],
        routing: &Routing,
    ) -> Option<Mutation> {
        let n = &routing.notify;
        let now = self.now();
        let received = record.received_ms().unwrap_or(now);
        let kind = due_notice(record, n, now.saturating_sub(received))?;
        if !notify::may_notify(record, headers) {
            return None;
        }
        // A sender in a local domain (app@erp.local) reads no mail: someone who can.
        let Some(to) = bounce_to(&record.original_sender, &record.sender, n.admin.as_deref())
        else {
            no_reader(record, kind);
            return None;
        };
        let id = ulid::Ulid::new().to_string();
        let (chain, _) = routing.chains.chain(record.user.as_deref(), &record.sender);
        let first = chain
            .first()
            .cloned()
            .unwrap_or_else(|| record.provider.clone());
        let from = n
            .from
            .clone()
            .or_else(|| n.usernames.get(&first).cloned())
            .unwrap_or_else(|| record.sender.clone());
        let (raw, subject) = notify::compose(&notify::Facts {
            kind,
            record,
            headers,
            hostname: &n.hostname,
            from: &from,
            to: &to,
            id: &id,
            now_ms: now,
            gives_up_ms: Some(received + routing.retry.give_up_ms),
        });
        let notice = Record {
            helo: n.hostname.clone(),
            user: record.user.clone(),
            subject: Some(subject),
            message_id: Some(format!("<{id}@{}>", n.hostname)),
            size: raw.len() as u64,
            provider: first.clone(),
            notice_of: Some(NoticeLink {
                id: record.id.clone(),
                kind,
            }),
            ..Record::queued(
                id.clone(),
                crate::time::Stamp::at_ms(now),
                crate::history::OWN_CLIENT.into(),
                from,
                vec![Recipient::queued(to.clone(), Some(false), Some(first))],
            )
        };
        record.notices.push(NoticeLink {
            id: id.clone(),
            kind,
        });
        tracing::info!(id = %id, of = %record.id, kind = kind.as_str(), to = %to, status = "queued", "notice to the sender queued");
        // A notice holds the original's header block, never its body: it is small.
        Some(Mutation::Insert {
            body: crate::store::NewBody::Memory(raw),
            record: Box::new(notice),
            due_ms: now,
        })
    }
}

impl Distributor {
    /// Queues a message mailgate writes itself (an alert email) to `to` through
    /// `provider` only; returns its id. It carries `Auto-Submitted: auto-generated`, so
    /// it is never bounced, and its record's client is `mailgate`.
    pub async fn send_own(
        &self,
        config: &Config,
        provider: &str,
        to: &str,
        subject: &str,
        text: &str,
    ) -> Result<String, crate::store::StoreError> {
        let now = self.now();
        let id = ulid::Ulid::new().to_string();
        let hostname = &config.smtp.hostname;
        let from = config
            .notify
            .from
            .as_ref()
            .map(|f| f.get_ref().clone())
            .or_else(|| {
                config
                    .provider(provider)
                    .and_then(|p| p.username().map(String::from))
            })
            .unwrap_or_else(|| format!("mailgate@{hostname}"));
        let message_id = format!("{id}@{hostname}");
        let raw = mail_builder::MessageBuilder::new()
            .from(from.as_str())
            .to(to)
            .subject(subject)
            .message_id(message_id.as_str())
            .date(mail_builder::headers::date::Date::new((now / 1000) as i64))
            .header(
                "Auto-Submitted",
                mail_builder::headers::raw::Raw::new("auto-generated"),
            )
            .text_body(text)
            .write_to_vec()
            .unwrap_or_default();
        let raw = crate::message::crlf_normalized(&raw).into_owned();
        let record = Record {
            helo: hostname.clone(),
            subject: Some(subject.to_string()),
            message_id: Some(format!("<{message_id}>")),
            size: raw.len() as u64,
            provider: provider.to_string(),
            pinned: true,
            ..Record::queued(
                id.clone(),
                crate::time::Stamp::at_ms(now),
                crate::history::OWN_CLIENT.into(),
                from,
                vec![Recipient::queued(
                    to.to_string(),
                    Some(false),
                    Some(provider.to_string()),
                )],
            )
        };
        self.store.insert(raw, record, now).await?;
        self.wake();
        Ok(id)
    }
}
