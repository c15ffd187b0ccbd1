//! The message stage: bytes of one accepted DATA in, the bytes to store and relay out,
//! plus the facts the history record needs (subject, Message-ID). Adds the `Received:`
//! trace header at the top and `Message-ID:`/`Date:` at the end of the header block when
//! missing; every other byte is kept as submitted. No I/O.

pub mod identify;
pub mod longlines;
pub mod rewrite;

use std::time::{Duration, UNIX_EPOCH};

use mail_parser::MessageParser;

/// What the message stage needs to know about the submission.
#[derive(Debug, Clone)]
pub struct TraceInfo<'a> {
    /// Message id (ULID).
    pub id: &'a str,
    /// Our hostname.
    pub hostname: &'a str,
    /// Client HELO name.
    pub helo: &'a str,
    /// Client IP as text.
    pub client_ip: String,
    /// Protocol keyword for Received (`ESMTP`, `ESMTPA`, `ESMTPS`, `UTF8SMTP`...).
    pub protocol: &'a str,
    /// The recipient, named in Received only when there is exactly one.
    pub single_rcpt: Option<&'a str>,
    /// Arrival time, ms since the epoch.
    pub now_ms: u64,
}

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

/// Offset where the header block ends (where new trailing headers go) and whether the
/// message has a header block at all.
fn header_end(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 0;
    }
    match memchr::memmem::find(raw, b"\r\n\r\n") {
        Some(i) => i + 2,
        None => raw.len(),
    }
}

/// Adds the trace header and any missing Message-ID/Date, in place (a large message is
/// not copied).
pub fn prepare(data: Vec<u8>, info: &TraceInfo<'_>) -> Prepared {
    let parsed = MessageParser::default().parse_headers(&data);
    let has_headers = parsed
        .as_ref()
        .is_some_and(|m| !m.root_part().headers.is_empty());
    let subject = parsed
        .as_ref()
        .and_then(|m| m.subject())
        .map(str::to_string);
    let existing_id = parsed
        .as_ref()
        .and_then(|m| m.message_id())
        .map(|id| format!("<{id}>"));
    let has_date = parsed
        .as_ref()
        .is_some_and(|m| m.header_raw("Date").is_some());

    let date = rfc5322_date(info.now_ms);
    let mut received = format!(
        "Received: from {} ({})\r\n\tby {} (mailgate) with {} id {}",
        if info.helo.is_empty() {
            "unknown".to_string()
        } else {
            // Never a control character in a header, whatever the session let through.
            info.helo
                .replace(|c: char| c.is_control() || c.is_whitespace(), "?")
        },
        info.client_ip,
        info.hostname,
        info.protocol,
        info.id
    );
    if let Some(r) = info.single_rcpt {
        received.push_str(&format!("\r\n\tfor <{r}>"));
    }
    received.push_str(&format!("; {date}\r\n"));

    let mut trailing = String::new();
    let message_id = match existing_id {
        Some(id) => id,
        None => {
            let id = format!("<{}@{}>", info.id, info.hostname);
            trailing.push_str(&format!("Message-ID: {id}\r\n"));
            id
        }
    };
    if !has_date {
        trailing.push_str(&format!("Date: {date}\r\n"));
    }

    drop(parsed);
    let mut raw = data;
    if has_headers {
        let end = header_end(&raw);
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
        subject,
        message_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TraceInfo<'static> {
        TraceInfo {
            id: "01JTEST",
            hostname: "relay.test",
            helo: "erp01",
            client_ip: "127.0.0.1".into(),
            protocol: "ESMTP",
            single_rcpt: Some("a@contoso.com"),
            now_ms: 1_795_000_000_000,
        }
    }

    #[test]
    fn adds_trace_and_missing_headers_keeps_the_rest() {
        let data = b"From: a@b.com\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n\r\nbody\r\n";
        let p = prepare(data.to_vec(), &info());
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
    fn existing_id_and_date_are_kept() {
        let data = b"Message-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n";
        let p = prepare(data.to_vec(), &info());
        assert_eq!(p.message_id, "<x@y>");
        assert!(p.raw.ends_with(data));
    }

    #[test]
    fn date_format() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }
}
