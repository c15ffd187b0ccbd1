//! History: the record that says what happened to every accepted message. Records are
//! written by the store together with the message (before the 250) and updated by the
//! distributor after every attempt; the admin API and CLI read them.

use serde::{Deserialize, Serialize};

/// The state of a message (or of one recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Committed, not yet attempted.
    Queued,
    /// An attempt failed temporarily; a retry is scheduled.
    Deferred,
    /// Accepted upstream.
    Sent,
    /// Accepted for some recipients, refused for others.
    Partial,
    /// Given up.
    Failed,
    /// Stopped by an administrator before it was sent (`mailgate cancel`).
    Cancelled,
}

impl Status {
    /// Every status, in index order.
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Deferred,
        Status::Sent,
        Status::Partial,
        Status::Failed,
        Status::Cancelled,
    ];

    /// Whether the message still has work to do.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Status::Sent | Status::Partial | Status::Failed | Status::Cancelled
        )
    }

    /// The lower-case name used in JSON, logs and query strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Deferred => "deferred",
            Status::Sent => "sent",
            Status::Partial => "partial",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// This status's number in counts such as [`crate::store::Store::status_counts`]'s.
    pub fn count_in(self, counts: &[(Status, u64)]) -> u64 {
        counts
            .iter()
            .find(|(s, _)| *s == self)
            .map_or(0, |(_, n)| *n)
    }

    /// Parses the lower-case name.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// One recipient and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The envelope recipient.
    pub address: String,
    /// Its own status.
    pub status: Status,
    /// The upstream's reply to it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// True when no To, Cc or Bcc of the stored message names it (a Bcc recipient whose
    /// field was removed, or one given only in the envelope), found at intake; a way out
    /// that sends to the header's recipients (Graph) adds it as Bcc. None in a record
    /// written before mailgate kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind: Option<bool>,
    /// The provider that took it (sent or failed), or the one it goes to next while it
    /// waits. None in a record written before recipients kept theirs: the record's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// When this recipient is tried next (RFC 3339 UTC), while it waits for a retry; its
    /// message's `next_attempt_at` is the earliest of its recipients'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<crate::time::Stamp>,
}

impl Recipient {
    /// A recipient not yet tried.
    pub fn queued(address: String, blind: Option<bool>, provider: Option<String>) -> Recipient {
        Recipient {
            address,
            status: Status::Queued,
            reply: None,
            blind,
            provider,
            next_attempt_at: None,
        }
    }
}

pub use crate::diagnosis::{Code, Diagnosis};

/// Who stopped a message, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancellation {
    /// When (RFC 3339 UTC).
    pub at: crate::time::Stamp,
    /// Who: the command or page, and from where.
    pub by: String,
}

/// What a notice to the sender says (SPEC "Telling people").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeKind {
    /// The message failed (or partly failed): a bounce.
    Bounce,
    /// The message has waited `delay_warning`.
    Delay,
}

impl NoticeKind {
    /// The name in JSON, the log and the pages.
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Bounce => "bounce",
            NoticeKind::Delay => "delay",
        }
    }
}

/// A link between a message and a notice about it, kept on both records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeLink {
    /// The other record's id.
    pub id: String,
    /// Bounce or delay.
    pub kind: NoticeKind,
}

/// Why an unfinished message waits, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Why: a diagnosis code (the last attempt's), or `per-minute-limit`, `paused`,
    /// `circuit-open`, `fleet-lease`.
    pub reason: WaitReason,
    /// When it is tried next (RFC 3339 UTC); none while paused.
    pub until: Option<crate::time::Stamp>,
}

/// Why an unfinished message waits (`waiting.reason`, the same names in JSON as ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Held back by the provider's per-minute limit.
    PerMinuteLimit,
    /// The distributor is paused.
    Paused,
    /// The provider's circuit is open.
    CircuitOpen,
    /// Every fleet-wide connection of the provider is held by other nodes.
    FleetLease,
    /// The last attempt's diagnosis (`daily-quota` among them).
    Failed(Code),
}

impl WaitReason {
    /// The name in the record and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::PerMinuteLimit => "per-minute-limit",
            WaitReason::Paused => "paused",
            WaitReason::CircuitOpen => "circuit-open",
            WaitReason::FleetLease => "fleet-lease",
            WaitReason::Failed(code) => code.as_str(),
        }
    }

    /// The reason of a name (a code no longer known reads as `unknown`).
    pub fn parse(name: &str) -> WaitReason {
        match name {
            "per-minute-limit" => WaitReason::PerMinuteLimit,
            "paused" => WaitReason::Paused,
            "circuit-open" => WaitReason::CircuitOpen,
            "fleet-lease" => WaitReason::FleetLease,
            code => WaitReason::Failed(Code::parse(code).unwrap_or(Code::Unknown)),
        }
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for WaitReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for WaitReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(WaitReason::parse(&String::deserialize(d)?))
    }
}

impl Waiting {
    /// Why it waits, in words, and when it is tried next (a diagnosis code is named in
    /// brackets).
    pub fn words(&self) -> String {
        self.words_with(|t| t.to_string())
    }

    /// [`Waiting::words`] with the time written by `time` (the pages' format).
    pub fn words_with(&self, time: impl Fn(&str) -> String) -> String {
        let why = match self.reason {
            WaitReason::PerMinuteLimit => {
                "held back by the provider's per-minute limit".to_string()
            }
            WaitReason::Paused => "the distributor is paused (mailgate resume)".to_string(),
            WaitReason::CircuitOpen => {
                "the provider is skipped for now: its circuit is open after repeated failures"
                    .to_string()
            }
            WaitReason::Failed(Code::DailyQuota) => {
                "the provider's daily recipient limit is reached".to_string()
            }
            WaitReason::FleetLease => "waiting for one of the provider's connections: other nodes of the fleet hold every one (its fleet-wide max_connections)".to_string(),
            WaitReason::Failed(code) => format!("the last attempt failed ({code})"),
        };
        match &self.until {
            Some(t) => format!("{why}; next attempt at {}", time(&t.to_string())),
            None => why,
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended (RFC 3339 UTC).
    pub at: crate::time::Stamp,
    /// The provider it went to.
    pub provider: String,
    /// The upstream reply or the local error.
    pub reply: String,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
    /// Anything else worth knowing (e.g. the throttle was bypassed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The history record of one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Message id (ULID), also in the 250 reply.
    pub id: String,
    /// Current status.
    pub status: Status,
    /// When it was accepted (RFC 3339 UTC).
    pub received_at: crate::time::Stamp,
    /// Client address and port.
    pub client: String,
    /// HELO/EHLO name.
    pub helo: String,
    /// SMTP AUTH login, if any.
    pub auth_login: Option<String>,
    /// The identified user, if any.
    pub user: Option<String>,
    /// Envelope sender as submitted (`""` for the null sender).
    pub original_sender: String,
    /// Envelope sender as relayed.
    pub sender: String,
    /// Recipients with their statuses.
    pub recipients: Vec<Recipient>,
    /// Subject header, decoded.
    pub subject: Option<String>,
    /// Message-ID header.
    pub message_id: Option<String>,
    /// Size of the stored message in bytes.
    pub size: u64,
    /// The provider that handles it: the one its next attempt goes to while it waits,
    /// the last one that took it once finished. Each recipient names its own.
    pub provider: String,
    /// Named outright (the admin API's `provider`, `test-email --provider`): this
    /// provider only, no chain, no route, no fallback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// How many times it was deferred (for any reason).
    pub deferrals: u32,
    /// How many of those were for the provider's per-minute limit, counted once per
    /// minute of waiting (however often it was looked at while the window was full).
    #[serde(default)]
    pub throttle_deferrals: u32,
    /// When `throttle_deferrals` last rose (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_counted_at: Option<crate::time::Stamp>,
    /// When it was sent (RFC 3339 UTC).
    pub sent_at: Option<crate::time::Stamp>,
    /// When the next attempt is due (RFC 3339 UTC), while unfinished.
    #[serde(default)]
    pub next_attempt_at: Option<crate::time::Stamp>,
    /// Who cancelled it and when, if it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Cancellation>,
    /// Why it waits, while it waits for something other than its first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
    /// For a notice mailgate made (a bounce or delay notice): the message it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_of: Option<NoticeLink>,
    /// The notices sent about this message to its sender.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<NoticeLink>,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
}

/// When the message with this id was received (ms): the time its ULID carries.
pub fn received_ms(id: &str) -> Option<u64> {
    ulid::Ulid::from_string(id).ok().map(|u| u.timestamp_ms())
}

/// The `client` of a message mailgate made itself (a notice, an alert email).
pub const OWN_CLIENT: &str = "mailgate";

/// Where a message came from, as its record says it (no field of its own in the JSON:
/// a notice names the message it tells of, mailgate's own mail has [`OWN_CLIENT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client handed it in: SMTP, the sendmail door, the maildrop or `POST /api/send`.
    Client,
    /// A bounce or delay notice to the sender of another message.
    Notice,
    /// An email mailgate wrote itself: an alert.
    Own,
}

impl Record {
    /// The one constructor of a new message's record: queued, received at
    /// `received_at` (RFC 3339) from `client`, from `sender` (as submitted and as it
    /// goes, until the caller sets the rewritten one) to `recipients`, nothing tried yet.
    /// The caller sets what else it knows with struct update syntax.
    pub fn queued(
        id: String,
        received_at: crate::time::Stamp,
        client: String,
        sender: String,
        recipients: Vec<Recipient>,
    ) -> Record {
        Record {
            id,
            status: Status::Queued,
            received_at,
            client,
            helo: String::new(),
            auth_login: None,
            user: None,
            original_sender: sender.clone(),
            sender,
            recipients,
            subject: None,
            message_id: None,
            size: 0,
            provider: String::new(),
            pinned: false,
            deferrals: 0,
            throttle_deferrals: 0,
            throttle_counted_at: None,
            sent_at: None,
            next_attempt_at: None,
            cancelled: None,
            waiting: None,
            notice_of: None,
            notices: Vec::new(),
            attempts: Vec::new(),
        }
    }

    /// When it was received (ms), from its id (a ULID carries its time to the
    /// millisecond; `received_at` is the same time to the second, for people).
    pub fn received_ms(&self) -> Option<u64> {
        received_ms(&self.id)
    }

    /// Where the message came from.
    pub fn origin(&self) -> Origin {
        if self.notice_of.is_some() {
            Origin::Notice
        } else if self.client == OWN_CLIENT {
            Origin::Own
        } else {
            Origin::Client
        }
    }

    /// A message mailgate made itself (a notice or an alert email): never alerted on.
    pub fn is_own(&self) -> bool {
        self.origin() != Origin::Client
    }

    /// The code of the latest attempt that has a diagnosis.
    pub fn last_diagnosis(&self) -> Option<Code> {
        self.attempts
            .iter()
            .rev()
            .find_map(|a| a.diagnosis.as_ref())
            .map(|d| d.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before the time type reads back the same and is written the
    /// same: the store, the API and the fleet's peers see no change.
    #[test]
    fn a_stamp_reads_and_writes_what_the_records_always_held() {
        let json = r#"{"address":"a@example.com","status":"deferred","next_attempt_at":"2026-12-07T21:00:05Z"}"#;
        let r: Recipient = serde_json::from_str(json).unwrap();
        let t = r.next_attempt_at.unwrap();
        assert_eq!(
            Some(t.ms()),
            crate::time::parse_rfc3339("2026-12-07T21:00:05Z")
        );
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
        // Inside, a moment is cut to its second as RFC 3339 keeps it, so it compares
        // the same before and after the store.
        assert_eq!(crate::time::Stamp::at_ms(t.ms() + 999), t);
        assert!(serde_json::from_str::<crate::time::Stamp>(r#""tomorrow""#).is_err());
    }
}
