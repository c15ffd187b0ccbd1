//! Telling the sender (SPEC "Telling people: bounces and alerts"): whether a message gets
//! a notice, and the notice itself, an RFC 3464 delivery status notification
//! (`multipart/report; report-type=delivery-status`) built with mail-builder. Pure: the
//! distributor decides when, commits the notice with the outcome, and sends it like any
//! message.

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_parser::MimeHeaders;

use crate::history::{NoticeKind, Record, Status};

/// The header that marks a `mailgate test-email` message (never bounced).
pub const TEST_HEADER: &str = "X-Mailgate-Test";

/// Whether a message may get a notice: never for a null sender, a notice, a report, an
/// `Auto-Submitted` message (other than `no`) or a test message, so a notice never
/// answers a notice.
pub fn may_notify(record: &Record, headers: &[u8]) -> bool {
    if record.original_sender.is_empty()
        || record.sender.is_empty()
        || record.origin() == crate::history::Origin::Notice
    {
        return false;
    }
    let parsed = mail_parser::MessageParser::new().parse_headers(headers);
    let Some(m) = parsed else {
        return true;
    };
    let report = m.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    let auto = m
        .header_raw("Auto-Submitted")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
    let test = m.header_raw(TEST_HEADER).is_some();
    !(report || auto || test)
}

/// The header block of a stored message (up to the empty line).
pub fn header_block(raw: &[u8]) -> &[u8] {
    memchr::memmem::find(raw, b"\r\n\r\n").map_or(raw, |at| &raw[..at + 2])
}

/// What a notice is made of.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// Bounce or delay.
    pub kind: NoticeKind,
    /// The message it is about, after its attempt.
    pub record: &'a Record,
    /// The original message's header block.
    pub headers: &'a [u8],
    /// This host's name (`smtp.hostname`): the Reporting-MTA and the Message-ID.
    pub hostname: &'a str,
    /// The notice's From.
    pub from: &'a str,
    /// Who it goes to (the sender, or whoever reads its mail): its To.
    pub to: &'a str,
    /// Its id (a ULID): the Message-ID's left part.
    pub id: &'a str,
    /// Now, ms.
    pub now_ms: u64,
    /// For a delay notice: when mailgate gives up (ms).
    pub gives_up_ms: Option<u64>,
}

/// The recipients a notice is about: the failed ones of a bounce, the waiting ones of a
/// delay notice.
fn concerned<'a>(f: &Facts<'a>) -> Vec<&'a crate::history::Recipient> {
    f.record
        .recipients
        .iter()
        .filter(|r| match f.kind {
            NoticeKind::Bounce => r.status == Status::Failed,
            NoticeKind::Delay => !r.status.is_finished(),
        })
        .collect()
}

/// An RFC 5322 date (`Thu, 03 Dec 2026 08:30:35 +0000`).
fn date(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    httpdate::fmt_http_date(t).replace(" GMT", " +0000")
}

/// The enhanced status code of a reply (`5.1.1`), else one from its basic code, else
/// the notice's default.
fn status_code(reply: &str, kind: NoticeKind) -> String {
    let enhanced = reply.split_whitespace().find(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    });
    match (enhanced, reply.as_bytes().first(), kind) {
        (Some(e), _, _) => e.to_string(),
        (None, Some(b'5'), _) => "5.0.0".into(),
        (None, Some(b'4'), _) => "4.0.0".into(),
        (None, _, NoticeKind::Bounce) => "5.0.0".into(),
        (None, _, NoticeKind::Delay) => "4.0.0".into(),
    }
}

/// A field value on one line: no CR or LF, at most 900 octets.
fn one_line(s: &str) -> String {
    one_line_within(s, 900)
}

/// [`one_line`] cut to at most `max` bytes (on a character boundary).
fn one_line_within(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// The most of an address a notice writes (RFC 5321's path limit is 256; the door takes
/// up to 320): with the reply beside it, the line stays within 998 octets.
const ADDRESS_MAX: usize = 320;

/// The notice: its bytes (CRLF line ends) and its subject.
pub fn compose(f: &Facts<'_>) -> (Vec<u8>, String) {
    let r = f.record;
    let rcpts = concerned(f);
    let subject_of = r.subject.as_deref().unwrap_or("(no subject)");
    let subject = match f.kind {
        NoticeKind::Bounce => format!("Undelivered mail: {subject_of}"),
        NoticeKind::Delay => format!("Delayed mail (still being retried): {subject_of}"),
    };
    let received_ms = r.received_ms().unwrap_or(f.now_ms);
    let text = person_part(f, &rcpts, received_ms);
    let status = status_part(f, &rcpts, received_ms);
    // The header block goes as it was stored, byte for byte: its lines are within 998
    // octets, and a lossy conversion (one invalid byte becomes three) could lengthen
    // them past it.
    let headers = f.headers.to_vec();
    let eight_bit = |b: &[u8]| if b.is_ascii() { "7bit" } else { "8bit" };
    let headers_encoding = eight_bit(&headers);
    let status_encoding = eight_bit(status.as_bytes());
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", text),
            MimePart::new(
                ContentType::new("message/delivery-status"),
                status.into_bytes(),
            )
            .transfer_encoding(status_encoding),
            MimePart::new(ContentType::new("text/rfc822-headers"), headers)
                .transfer_encoding(headers_encoding),
        ],
    );
    let message_id = format!("{}@{}", f.id, f.hostname);
    let mut builder = MessageBuilder::new()
        .from(f.from)
        .to(f.to)
        .subject(subject.as_str())
        .message_id(message_id.as_str())
        .date(mail_builder::headers::date::Date::new(
            (f.now_ms / 1000) as i64,
        ))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .header("X-Mailgate-Notice", Raw::new(f.kind.as_str()))
        .body(report);
    if let Some(orig) = r.message_id.as_deref() {
        builder = builder.in_reply_to(orig.trim_matches(|c| c == '<' || c == '>'));
    }
    let bytes = builder.write_to_vec().unwrap_or_default();
    (
        crate::message::crlf_normalized(&bytes).into_owned(),
        subject,
    )
}

/// The part a person reads: what happened to which recipients, and from the diagnosis
/// what it means and what to do.
fn person_part(f: &Facts<'_>, rcpts: &[&crate::history::Recipient], received_ms: u64) -> String {
    let r = f.record;
    let subject_of = r.subject.as_deref().unwrap_or("(no subject)");
    let mut text = format!("This is mailgate at {}.\r\n\r\n", f.hostname);
    text.push_str(&match f.kind {
        NoticeKind::Bounce => format!(
            "Your message could not be delivered to {} of its {} recipients. Nothing more will be tried for them.\r\n\r\n",
            rcpts.len(),
            r.recipients.len()
        ),
        NoticeKind::Delay => format!(
            "Your message has not been delivered yet to {} of its {} recipients. mailgate keeps trying{}; you need do nothing now, and you will hear again only if it fails.\r\n\r\n",
            rcpts.len(),
            r.recipients.len(),
            f.gives_up_ms
                .map(|t| format!(" until {}", date(t)))
                .unwrap_or_default()
        ),
    });
    text.push_str(&format!(
        "  Subject:    {}\r\n  Message-ID: {}\r\n  Sent:       {}\r\n  Queue ID:   {}\r\n\r\n",
        one_line(subject_of),
        one_line(r.message_id.as_deref().unwrap_or("(none)")),
        date(received_ms),
        r.id
    ));
    for rc in rcpts {
        // "  address: reply" within 998 octets, however long either is.
        let address = one_line_within(&rc.address, ADDRESS_MAX);
        let room = 990 - address.len();
        text.push_str(&format!(
            "  {address}: {}\r\n",
            one_line_within(rc.reply.as_deref().unwrap_or("no reply yet"), room)
        ));
    }
    if let Some(d) = r.attempts.iter().rev().find_map(|a| a.diagnosis.as_ref()) {
        text.push_str(&format!(
            "\r\nWhat happened ({}): {}\r\n\r\nWhat to do: {}\r\n",
            d.code,
            one_line(&crate::text::plain(&d.explanation)),
            one_line(&crate::text::plain(&d.fix))
        ));
    }
    text
}

/// The part a program reads (RFC 3464 section 2): one block per recipient.
fn status_part(f: &Facts<'_>, rcpts: &[&crate::history::Recipient], received_ms: u64) -> String {
    let r = f.record;
    let last_attempt_ms = r.attempts.last().map_or(f.now_ms, |a| a.at.ms());
    let mut status = format!(
        "Reporting-MTA: dns; {}\r\nX-Mailgate-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        f.hostname,
        r.id,
        date(received_ms)
    );
    for rc in rcpts {
        let reply = rc.reply.as_deref().unwrap_or("");
        let smtp = reply.len() >= 3 && reply.as_bytes()[..3].iter().all(u8::is_ascii_digit);
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            one_line_within(&rc.address, ADDRESS_MAX),
            match f.kind {
                NoticeKind::Bounce => "failed",
                NoticeKind::Delay => "delayed",
            },
            status_code(reply, f.kind)
        ));
        if !reply.is_empty() {
            status.push_str(&format!(
                "Diagnostic-Code: {}; {}\r\n",
                if smtp { "smtp" } else { "x-mailgate" },
                one_line(reply)
            ));
        }
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", date(last_attempt_ms)));
        if let (NoticeKind::Delay, Some(t)) = (f.kind, f.gives_up_ms) {
            status.push_str(&format!("Will-Retry-Until: {}\r\n", date(t)));
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_read_from_the_reply() {
        assert_eq!(
            status_code("550 5.1.1 <a@b>: user unknown", NoticeKind::Bounce),
            "5.1.1"
        );
        assert_eq!(status_code("554 no", NoticeKind::Bounce), "5.0.0");
        assert_eq!(status_code("graph 403", NoticeKind::Bounce), "5.0.0");
        assert_eq!(status_code("451 try later", NoticeKind::Delay), "4.0.0");
        assert_eq!(
            status_code("421 4.7.66 too many connections", NoticeKind::Delay),
            "4.7.66"
        );
    }

    /// The bounce of a message to `address` refused with `reply`, whose stored header
    /// block is `headers`; every one of its lines checked to be within 998 octets.
    fn bounce_of(address: &str, reply: Option<String>, headers: &[u8]) -> Vec<u8> {
        use crate::history::{Recipient, Record, Status};
        let mut rc = Recipient::queued(address.into(), Some(false), None);
        rc.status = Status::Failed;
        rc.reply = reply;
        let record = Record {
            status: Status::Failed,
            ..Record::queued(
                "01JTEST0000000000000000000".into(),
                crate::time::Stamp::at_ms(1_795_000_000_000),
                "127.0.0.1".into(),
                "app@example.com".into(),
                vec![rc],
            )
        };
        let f = Facts {
            kind: NoticeKind::Bounce,
            record: &record,
            headers,
            hostname: "relay.test",
            from: "postmaster@contoso.com",
            to: "app@example.com",
            id: "01JTESTNOTICE0000000000000",
            now_ms: 1_795_000_100_000,
            gives_up_ms: None,
        };
        let (raw, _) = compose(&f);
        for l in raw.split(|b| *b == b'\n') {
            assert!(l.len() <= 999, "a line of {} octets", l.len());
        }
        raw
    }

    /// The quoted header block goes byte for byte: a line of 990 octets that are not
    /// UTF-8 stays 990 octets (a lossy conversion made each of them three).
    #[test]
    fn header_bytes_that_are_not_utf8_keep_their_length() {
        let mut line = b"X-Legacy: ".to_vec();
        line.extend(std::iter::repeat_n(0xE9u8, 980));
        line.extend_from_slice(b"\r\n");
        let raw = bounce_of("a@example.com", None, &line);
        assert!(
            memchr::memmem::find(&raw, &line).is_some(),
            "quoted as stored"
        );
    }

    /// A recorded address of any length (the door takes 320 bytes; a record is not
    /// trusted to hold only what the door took) beside a long reply: every line of the
    /// notice within 998 octets (fuzz/regressions/bounce has the hostile version).
    #[test]
    fn an_address_of_any_length_stays_within_998_octets() {
        let address = format!("{}@example.com", "a".repeat(1200));
        let reply = format!("550 5.1.1 {}", "x".repeat(1200));
        let raw = bounce_of(&address, Some(reply), b"Subject: s\r\n");
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.contains(&format!("Final-Recipient: rfc822; {}\r\n", &address[..320])),
            "{text}"
        );
    }
}
