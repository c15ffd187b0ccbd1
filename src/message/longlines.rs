//! Lines over 998 octets (RFC 5322 2.1.1). With `long_lines = "encode"` a body part with
//! such a line is re-encoded as quoted-printable (its decoded content unchanged), a
//! base64 part is re-wrapped, and an over-long header field is folded. What cannot be
//! made to fit is refused, so no line over 998 octets ever leaves mailgate.

use mail_parser::{Encoding, HeaderName, MessageParser, PartType};

/// RFC 5322's limit, without the CRLF.
pub const MAX_LINE: usize = 998;

/// The longest line of `raw`, without its line end.
pub fn longest_line(raw: &[u8]) -> usize {
    raw.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

fn has_long_line(raw: &[u8]) -> bool {
    longest_line(raw) > MAX_LINE
}

/// Quoted-printable encoding (RFC 2045 6.7) of data whose line breaks are CRLF; the
/// breaks stay hard breaks, lines are soft-broken at 76.
pub fn qp_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
    let mut lines = data.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        let (line, had_cr) = match line.strip_suffix(b"\r") {
            Some(l) if !last => (l, true),
            _ => (line, false),
        };
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal =
                (b == b' ' || b == b'\t') && !at_end || (33..=126).contains(&b) && b != b'=';
            let width = if literal { 1 } else { 3 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += width;
        }
        if !last {
            if !had_cr {
                // A bare LF inside the data: keep it as an encoded byte.
                out.extend_from_slice(b"=0A");
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Quoted-printable decoding; malformed escapes are kept as they are.
pub fn qp_decode(data: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'=' {
            if data[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if data[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if let (Some(&h), Some(&l)) = (data.get(i + 1), data.get(i + 2))
                && let (Some(h), Some(l)) = (hex(h), hex(l))
            {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

fn base64_rewrap(data: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() + clean.len() / 38);
    for chunk in clean.chunks(76) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Folds every physical line of a header field that is over the limit, at whitespace
/// where there is some.
fn fold_field(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len() + 16);
    for line in field.split_inclusive(|&b| b == b'\n') {
        let mut rest = line;
        loop {
            let content = rest.strip_suffix(b"\r\n").unwrap_or(rest);
            if content.len() <= MAX_LINE {
                out.extend_from_slice(rest);
                break;
            }
            let cut = content[1..MAX_LINE]
                .iter()
                .rposition(|&b| b == b' ' || b == b'\t')
                .map(|p| p + 1);
            match cut {
                Some(c) => {
                    out.extend_from_slice(&rest[..c]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[c..];
                }
                None => {
                    out.extend_from_slice(&rest[..MAX_LINE - 8]);
                    out.extend_from_slice(b"\r\n ");
                    rest = &rest[MAX_LINE - 8..];
                }
            }
        }
    }
    out
}

/// One replacement of a byte range.
struct Edit {
    start: usize,
    end: usize,
    with: Vec<u8>,
}

/// Re-encodes what is over the limit. `Err` names what could not be made to fit.
pub fn encode(raw: &[u8]) -> Result<Vec<u8>, String> {
    if !has_long_line(raw) {
        return Ok(raw.to_vec());
    }
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Err("the message could not be parsed to re-encode its long lines".into());
    };
    let mut edits: Vec<Edit> = Vec::new();
    for part in &msg.parts {
        for h in &part.headers {
            let (s, e) = (h.offset_field as usize, h.offset_end as usize);
            if e <= raw.len() && s < e && has_long_line(&raw[s..e]) {
                edits.push(Edit {
                    start: s,
                    end: e,
                    with: fold_field(&raw[s..e]),
                });
            }
        }
        if matches!(part.body, PartType::Multipart(_) | PartType::Message(_)) {
            continue;
        }
        let (s, e) = (part.offset_body as usize, part.offset_end as usize);
        if e > raw.len() || s >= e || !has_long_line(&raw[s..e]) {
            continue;
        }
        let body = &raw[s..e];
        let cte = part
            .headers
            .iter()
            .find(|h| h.name == HeaderName::ContentTransferEncoding);
        let new_body = match part.encoding {
            Encoding::Base64 => {
                edits.push(Edit {
                    start: s,
                    end: e,
                    with: base64_rewrap(body),
                });
                continue;
            }
            Encoding::QuotedPrintable => qp_encode(&qp_decode(body)),
            Encoding::None => qp_encode(body),
        };
        edits.push(Edit {
            start: s,
            end: e,
            with: new_body,
        });
        match cte {
            Some(h) => edits.push(Edit {
                start: h.offset_start as usize,
                end: h.offset_end as usize,
                with: b" quoted-printable\r\n".to_vec(),
            }),
            None => {
                // Add the header at the end of the part's header block.
                let at = part_header_end(raw, part.offset_header as usize, s);
                let mut with = b"Content-Transfer-Encoding: quoted-printable\r\n".to_vec();
                if part.offset_header == 0
                    && !msg
                        .root_part()
                        .headers
                        .iter()
                        .any(|h| h.name == HeaderName::MimeVersion)
                {
                    with.extend_from_slice(b"MIME-Version: 1.0\r\n");
                }
                edits.push(Edit {
                    start: at,
                    end: at,
                    with,
                });
            }
        }
    }
    edits.sort_by_key(|e| (e.start, e.end));
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    let mut pos = 0;
    for e in edits {
        if e.start < pos {
            continue; // overlapping (should not happen); keep the first
        }
        out.extend_from_slice(&raw[pos..e.start]);
        out.extend_from_slice(&e.with);
        pos = e.end;
    }
    out.extend_from_slice(&raw[pos..]);
    if has_long_line(&out) {
        return Err(format!(
            "a line of {} octets could not be re-encoded (lines are limited to {MAX_LINE})",
            longest_line(&out)
        ));
    }
    Ok(out)
}

/// The offset where one MIME part's header block ends (before its empty line); the
/// message's own is [`super::header_end`].
fn part_header_end(raw: &[u8], header_start: usize, body_start: usize) -> usize {
    let block = &raw[header_start..body_start.min(raw.len())];
    match memchr::memmem::rfind(block, b"\r\n\r\n") {
        Some(i) => header_start + i + 2,
        None => body_start.saturating_sub(2).max(header_start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qp_round_trip() {
        let data = "Grüße = 100%\t \r\nnext line ends with space \r\n"
            .repeat(30)
            .into_bytes();
        let enc = qp_encode(&data);
        assert!(longest_line(&enc) <= 76);
        assert_eq!(qp_decode(&enc), data);
    }

    #[test]
    fn long_plain_body_becomes_qp() {
        let body = "word ".repeat(400);
        let raw = format!("Subject: t\r\n\r\n{body}\r\nshort\r\n");
        let out = encode(raw.as_bytes()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("Subject: t\r\nContent-Transfer-Encoding: quoted-printable\r\nMIME-Version: 1.0\r\n\r\n"), "{text}");
        assert!(longest_line(&out) <= 76);
        let body_out = text.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(
            qp_decode(body_out.as_bytes()),
            format!("{body}\r\nshort\r\n").into_bytes()
        );
    }

    #[test]
    fn long_header_is_folded() {
        let raw = format!("Subject: {}\r\n\r\nb\r\n", "abc ".repeat(400));
        let out = encode(raw.as_bytes()).unwrap();
        assert!(longest_line(&out) <= MAX_LINE);
        let unfolded = String::from_utf8(out).unwrap().replace("\r\n ", " ");
        assert_eq!(unfolded, raw);
    }
}
