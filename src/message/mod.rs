//! The message stage: bytes of one accepted DATA in, the bytes to store and relay out,
//! plus the facts the history record needs (subject, Message-ID). Adds the `Received:`
//! trace header at the top and `Message-ID:`/`Date:` at the end of the header block when
//! missing; every other byte is kept as submitted. No I/O.

pub mod identify;
pub mod longlines;
pub mod recipients;
pub mod rewrite;

use std::time::{Duration, UNIX_EPOCH};

use mail_parser::MessageParser;

/// The stored form of a message and what was read from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Bytes to store and relay.
    pub raw: Vec<u8>,
    /// Decoded Subject.
    pub subject: Option<String>,
    /// Message-ID with angle brackets (ours if it had none).
    pub message_id: String,
}

/// The bytes with every bare CR or LF made CRLF (borrowed when there is none).
pub fn crlf_normalized(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bare = raw.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => raw.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || raw[i - 1] != b'\r',
        _ => false,
    });
    if !bare {
        return raw.into();
    }
    let mut out = Vec::with_capacity(raw.len() + 16);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out.into()
}

/// An RFC 5322 date, e.g. `Sat, 28 Nov 2026 00:04:32 +0000`.
pub fn rfc5322_date(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    httpdate::fmt_http_date(t).replace(" GMT", " +0000")
}

/// The one header-end finder: the offset where the message's header block ends and its
/// empty line begins (where trailing headers go): 0 when the data opens with an empty
/// line, None when there is no empty line at all (all header, or no header).
pub fn header_end(raw: &[u8]) -> Option<usize> {
    if raw.starts_with(b"\r\n") || raw.starts_with(b"\n") {
        return Some(0);
    }
    memchr::memmem::find(raw, b"\r\n\r\n")
        .map(|i| i + 2)
        .or_else(|| memchr::memmem::find(raw, b"\n\n").map(|i| i + 1))
}

/// Where the header block really ends: at its empty line, or earlier at the first line
/// that is neither a header field (`name:`, RFC 5322 2.2) nor the continuation of one.
/// `echo hi | sendmail root` gives no header at all; Postfix's cleanup(8) starts the body
/// at such a line, and so does mailgate: an empty line is put in front of it (Some(offset)
/// of that line), so that it is never taken for, or sent upstream as, a header field.
/// None: the header block is well-formed (or there is none). `raw` has CRLF line ends.
pub fn stray_body_line(raw: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < raw.len() {
        let end = memchr::memmem::find(&raw[at..], b"\r\n").map_or(raw.len(), |i| at + i);
        let line = &raw[at..end];
        if line.is_empty() {
            return None;
        }
        let continuation = at > 0 && matches!(line[0], b' ' | b'\t');
        if !continuation && !is_field(line) {
            return Some(at);
        }
        at = end + 2;
    }
    None
}

/// A header field's first line: a name of printable ASCII without a colon, then (perhaps
/// after blanks, the obsolete syntax) a colon.
fn is_field(line: &[u8]) -> bool {
    let name = line
        .iter()
        .take_while(|&&b| (33..=126).contains(&b) && b != b':')
        .count();
    name > 0
        && line[name..]
            .iter()
            .find(|&&b| b != b' ' && b != b'\t')
            .is_some_and(|&b| b == b':')
}

/// What the header block says, read once per message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    /// The first address of the first From field.
    pub from: Option<String>,
    /// Decoded Subject.
    pub subject: Option<String>,
    /// Message-ID with angle brackets.
    pub message_id: Option<String>,
    /// A Date field is present.
    pub has_date: bool,
    /// There is a header block at all.
    pub has_headers: bool,
}

impl HeaderFacts {
    /// Reads the facts of a parsed header block.
    pub fn of(parsed: Option<&mail_parser::Message<'_>>) -> HeaderFacts {
        let Some(m) = parsed else {
            return HeaderFacts::default();
        };
        HeaderFacts {
            from: rewrite::header_from_of(m),
            subject: m.subject().map(str::to_string),
            message_id: m.message_id().map(|id| format!("<{id}>")),
            has_date: m.header_raw("Date").is_some(),
            has_headers: !m.root_part().headers.is_empty(),
        }
    }
}

/// Who submitted the message and how: what identification and the trace header need.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// Message id (ULID).
    pub id: &'a str,
    /// Arrival time, ms since the epoch.
    pub now_ms: u64,
    /// Our hostname (`smtp.hostname`).
    pub hostname: &'a str,
    /// HELO/EHLO name ("" when none).
    pub helo: &'a str,
    /// Client IP as text.
    pub client_ip: String,
    /// Protocol keyword for Received (`ESMTP`, `ESMTPSA`, `UTF8SMTP`, `HTTP`, `local`...).
    pub protocol: &'a str,
    /// SMTP AUTH login.
    pub auth_login: Option<&'a str>,
    /// Envelope sender.
    pub mail_from: &'a str,
    /// Envelope recipients.
    pub rcpts: &'a [String],
    /// The user named outright (admin API `send --as`), not identified.
    pub as_user: Option<&'a str>,
    /// The provider named outright (admin API `--provider`).
    pub provider: Option<&'a str>,
    /// The longest line as the door measured it (None: not measured).
    pub longest_line: Option<usize>,
}

/// One message after the message stage: bytes to store and relay, who sent it, and
/// what the history record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// Bytes to store and relay.
    pub raw: Vec<u8>,
    /// Who sent it, the target sender, the envelope and the provider.
    pub plan: identify::SenderPlan,
    /// Decoded Subject.
    pub subject: Option<String>,
    /// Message-ID with angle brackets (ours if it had none).
    pub message_id: String,
    /// The addresses its To, Cc and Bcc name, lower-cased.
    pub named: Vec<String>,
}

/// The message stage in one call, pure: the header block is parsed once, and that one
/// parse serves identification, the From rewrite and the trace headers; long lines are
/// re-encoded only when the door measured one (the encoder parses the MIME tree, a rare
/// path). `Err` says why the message cannot be made to fit (554 5.6.0 at the door).
pub fn process(
    mut raw: Vec<u8>,
    facts: &Facts<'_>,
    config: &crate::config::Config,
) -> Result<Processed, String> {
    // Bytes are final at intake: whichever door it came through (the SMTP DATA reader,
    // sendmail, the maildrop, the admin API), a message is stored with CRLF line ends,
    // so no delivery needs to rewrite it.
    if let std::borrow::Cow::Owned(v) = crlf_normalized(&raw) {
        raw = v;
    }
    if let Some(at) = stray_body_line(&raw) {
        raw.splice(at..at, *b"\r\n");
    }
    let parsed = MessageParser::default().parse_headers(&raw);
    let mut head = HeaderFacts::of(parsed.as_ref());
    let mut plan = identify::plan_for(
        config,
        facts.as_user,
        facts.auth_login,
        facts.mail_from,
        head.from.as_deref(),
    );
    if let Some(p) = facts.provider {
        plan.provider = p.to_string();
    }
    let edits = plan.target.as_ref().map(|target| {
        rewrite::edits(
            &raw,
            parsed.as_ref(),
            &rewrite::Rewrite {
                target: target.clone(),
                sender: plan.on_behalf_of.clone(),
                reply_to_original: config.rewrite.reply_to_original,
            },
        )
    });
    drop(parsed);
    if let Some(edits) = edits
        && !edits.is_empty()
    {
        // The rewrite writes a From when there was none: then there is a header block.
        head.has_headers = true;
        rewrite::apply(&mut raw, edits);
    }
    let longest = facts
        .longest_line
        .unwrap_or_else(|| longlines::longest_line(&raw));
    if longest > longlines::MAX_LINE {
        raw = longlines::encode(&raw)?;
    }
    let prepared = prepare(raw, facts, &head);
    let named = recipients::named(&prepared.raw)
        .addresses
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    Ok(Processed {
        named,
        raw: prepared.raw,
        plan,
        subject: prepared.subject,
        message_id: prepared.message_id,
    })
}

/// Adds the `Received:` trace header at the top and any missing Message-ID/Date at the
/// end of the header block, in place (a large message is not copied).
fn prepare(data: Vec<u8>, facts: &Facts<'_>, head: &HeaderFacts) -> Prepared {
    let hostname = facts.hostname;
    let date = rfc5322_date(facts.now_ms);
    let mut received = format!(
        "Received: from {} ({})\r\n\tby {} (mailgate) with {} id {}",
        if facts.helo.is_empty() {
            "unknown".to_string()
        } else {
            // Never a control character in a header, whatever the door let through.
            facts
                .helo
                .replace(|c: char| c.is_control() || c.is_whitespace(), "?")
        },
        facts.client_ip,
        hostname,
        facts.protocol,
        facts.id
    );
    if let [r] = facts.rcpts {
        received.push_str(&format!("\r\n\tfor <{r}>"));
    }
    received.push_str(&format!("; {date}\r\n"));

    let mut trailing = String::new();
    let message_id = match &head.message_id {
        Some(id) => id.clone(),
        None => {
            let id = format!("<{}@{}>", facts.id, hostname);
            trailing.push_str(&format!("Message-ID: {id}\r\n"));
            id
        }
    };
    if !head.has_date {
        trailing.push_str(&format!("Date: {date}\r\n"));
    }
    let mut raw = data;
    if head.has_headers {
        let end = header_end(&raw).unwrap_or(raw.len());
        let mut insert = Vec::with_capacity(trailing.len() + 2);
        if end > 0 && !raw[..end].ends_with(b"\n") {
            insert.extend_from_slice(b"\r\n");
        }
        insert.extend_from_slice(trailing.as_bytes());
        raw.splice(end..end, insert);
    } else {
        // No header fields: ours become the header block, the data the body (an empty
        // line opening the data already separates the two).
        let mut insert = trailing.into_bytes();
        if !raw.starts_with(b"\r\n") {
            insert.extend_from_slice(b"\r\n");
        }
        raw.splice(0..0, insert);
    }
    raw.splice(0..0, received.into_bytes());
    Prepared {
        raw,
        subject: head.subject.clone(),
        message_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> crate::config::Config {
        crate::config::Config::parse(
            "[[provider]]\nname = \"outbox\"\nkind = \"eml\"\ndirectory = \"o\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap()
    }

    fn run(data: &[u8]) -> Processed {
        let rcpts = vec!["a@contoso.com".to_string()];
        let facts = Facts {
            id: "01JTEST",
            now_ms: 1_795_000_000_000,
            hostname: "relay.test",
            helo: "erp01",
            client_ip: "127.0.0.1".into(),
            protocol: "ESMTP",
            auth_login: None,
            mail_from: "a@b.com",
            rcpts: &rcpts,
            as_user: None,
            provider: None,
            longest_line: None,
        };
        process(data.to_vec(), &facts, &config()).unwrap()
    }

    #[test]
    fn adds_trace_and_missing_headers_keeps_the_rest() {
        let data = b"From: a@b.com\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n\r\nbody\r\n";
        let p = run(data);
        let text = String::from_utf8(p.raw.clone()).unwrap();
        assert!(text.starts_with("Received: from erp01 (127.0.0.1)\r\n\tby relay.test (mailgate) with ESMTP id 01JTEST\r\n\tfor <a@contoso.com>; "));
        assert!(text.contains(
            "Subject: =?utf-8?q?Caf=C3=A9?=\r\nMessage-ID: <01JTEST@relay.test>\r\nDate: "
        ));
        assert!(text.ends_with("\r\n\r\nbody\r\n"));
        assert_eq!(p.subject.as_deref(), Some("Café"));
        assert_eq!(p.message_id, "<01JTEST@relay.test>");
        // Everything after the Received header is the input plus the two new headers.
        let rest = &p.raw[text.find("From:").unwrap()..];
        let without: Vec<u8> = String::from_utf8_lossy(rest)
            .lines()
            .filter(|l| !l.starts_with("Message-ID: <01JTEST") && !l.starts_with("Date: "))
            .flat_map(|l| format!("{l}\r\n").into_bytes())
            .collect();
        assert_eq!(without, data);
    }

    #[test]
    fn a_line_that_is_no_header_field_starts_the_body() {
        assert_eq!(stray_body_line(b"hi from cron\r\n"), Some(0));
        assert_eq!(stray_body_line(b"Subject: a\r\nhi\r\n"), Some(12));
        assert_eq!(stray_body_line(b"Subject: a\r\n b\r\n\r\nhi\r\n"), None);
        assert_eq!(stray_body_line(b"Subject : obsolete\r\nX:\r\n"), None);
        assert_eq!(stray_body_line(b" folded first\r\n"), Some(0));
        assert_eq!(stray_body_line(b"From sender Mon Dec  7\r\n"), Some(0));
        let out = run(b"hi from cron\r\n");
        let text = String::from_utf8(out.raw).unwrap();
        assert!(text.ends_with("\r\n\r\nhi from cron\r\n"), "{text}");
        let out = run(b"Subject: s\r\nnot a header\r\nmore\r\n");
        let text = String::from_utf8(out.raw).unwrap();
        assert!(text.contains("Subject: s\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnot a header\r\nmore\r\n"), "{text}");
        assert_eq!(out.subject.as_deref(), Some("s"));
    }

    #[test]
    fn existing_id_and_date_are_kept() {
        let data = b"Message-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n";
        let p = run(data);
        assert_eq!(p.message_id, "<x@y>");
        assert!(p.raw.ends_with(data));
    }

    #[test]
    fn date_format() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
