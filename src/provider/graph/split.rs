//! Taking a message's large attachments out of its MIME, for Graph's draft path: the
//! rest creates the draft in one request, each attachment taken out goes through an
//! upload session with its name, content type, content id and inline flag, so Exchange
//! puts the same parts back together.

use mail_parser::{MessageParser, MimeHeaders};

/// An attachment taken out of the MIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Large {
    /// Its file name (`attachment` when it has none).
    pub name: String,
    /// `type/subtype`.
    pub content_type: String,
    /// Its Content-ID without the angle brackets (an inline image's `cid:`).
    pub content_id: Option<String>,
    /// Shown in the body (Content-Disposition inline, or referenced by a content id).
    pub inline: bool,
    /// The decoded content.
    pub bytes: Vec<u8>,
}

/// One candidate: where it is in the MIME (from its boundary line's CRLF to the end of
/// its body), which part it is, and what it is (its bytes still in the parsed part).
struct Candidate {
    cut: std::ops::Range<usize>,
    part: usize,
    large: Large,
}

/// Where the part starting at `header` begins with its boundary delimiter: the CRLF (or
/// LF) before the `--boundary` line. None when the bytes before are not a delimiter line.
fn delimiter_start(raw: &[u8], header: usize) -> Option<usize> {
    let before = raw.get(..header)?;
    let line_end = before.strip_suffix(b"\n")?;
    let line_end = line_end.strip_suffix(b"\r").unwrap_or(line_end);
    let line_start = line_end.iter().rposition(|b| *b == b'\n')? + 1;
    if !raw[line_start..].starts_with(b"--") {
        return None;
    }
    let lf = line_start - 1;
    Some(if lf > 0 && raw[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    })
}

/// The MIME without attachments, largest first, until its base64 takes at most
/// `fits` bytes, every attachment of at least `always` bytes taken out too; and those
/// taken out, in the order they appear. None when the MIME cannot be parsed, or the
/// rest does not fit even without any attachment.
pub fn split(raw: &[u8], fits: usize, always: usize) -> Option<(Vec<u8>, Vec<Large>)> {
    let mut msg = MessageParser::default().parse(raw)?;
    let mut candidates: Vec<Candidate> = Vec::new();
    for &idx in &msg.attachments {
        let Some(part) = msg.parts.get(idx as usize) else {
            continue;
        };
        let (header, end) = (part.offset_header as usize, part.offset_end as usize);
        let Some(from) = delimiter_start(raw, header) else {
            continue;
        };
        // Not a part inside another taken out already (a nested message's parts).
        if candidates
            .iter()
            .any(|c| c.cut.start <= from && end <= c.cut.end)
        {
            continue;
        }
        let content_type = part.content_type().map_or_else(
            || "application/octet-stream".to_string(),
            |ct| match ct.subtype() {
                Some(sub) => format!("{}/{sub}", ct.ctype()),
                None => ct.ctype().to_string(),
            },
        );
        let content_id = part
            .content_id()
            .map(|c| c.trim_matches(|ch| ch == '<' || ch == '>').to_string());
        let inline = part
            .content_disposition()
            .map_or(content_id.is_some(), |d| d.is_inline());
        candidates.push(Candidate {
            cut: from..end,
            part: idx as usize,
            large: Large {
                name: part.attachment_name().unwrap_or("attachment").to_string(),
                content_type,
                content_id,
                inline,
                bytes: Vec::new(),
            },
        });
    }
    // Largest first, until the rest fits.
    candidates.sort_by_key(|c| std::cmp::Reverse(c.cut.len()));
    let mut rest = raw.len();
    let mut taken = Vec::new();
    for c in candidates {
        if base64_len(rest) <= fits && c.cut.len() < always {
            continue;
        }
        rest -= c.cut.len();
        taken.push(c);
    }
    if base64_len(rest) > fits {
        return None;
    }
    taken.sort_by_key(|c| c.cut.start);
    // The decoded contents of those taken out are moved out of the parse, not copied: a
    // large attachment is in memory once in its encoded and once in its decoded form.
    for c in &mut taken {
        let body = std::mem::replace(
            &mut msg.parts[c.part].body,
            mail_parser::PartType::Text("".into()),
        );
        c.large.bytes = match body {
            mail_parser::PartType::Binary(b) | mail_parser::PartType::InlineBinary(b) => {
                b.into_owned()
            }
            mail_parser::PartType::Text(t) | mail_parser::PartType::Html(t) => {
                t.into_owned().into_bytes()
            }
            other => {
                // A nested message: its contents as the parse holds them.
                msg.parts[c.part].body = other;
                msg.parts[c.part].contents().to_vec()
            }
        };
    }
    drop(msg);
    let mut out = Vec::with_capacity(rest);
    let mut at = 0;
    for c in &taken {
        out.extend_from_slice(&raw[at..c.cut.start]);
        at = c.cut.end;
    }
    out.extend_from_slice(&raw[at..]);
    Some((out, taken.into_iter().map(|c| c.large).collect()))
}

/// The length of `n` bytes base64-encoded (padded).
pub fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &[u8] = b"From: a@contoso.com\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npre\r\n--XX\r\nContent-Type: multipart/related; boundary=\"YY\"\r\n\r\n--YY\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n--YY\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\naW1hZ2U=\r\n--YY--\r\n\r\n--XX\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8gd29ybGQsIGEgbG9uZ2VyIGF0dGFjaG1lbnQ=\r\n--XX--\r\nepi\r\n";

    #[test]
    fn the_largest_attachments_come_out_until_the_rest_fits() {
        // Everything fits: nothing taken out.
        let (rest, taken) = split(RAW, 10_000, usize::MAX).unwrap();
        assert_eq!(rest, RAW);
        assert!(taken.is_empty());
        // Only just not: the PDF (the largest) comes out, the image stays.
        let (rest, taken) = split(RAW, base64_len(RAW.len()) - 4, usize::MAX).unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].name, "a.pdf");
        assert_eq!(taken[0].content_type, "application/pdf");
        assert_eq!(taken[0].bytes, b"Hello world, a longer attachment");
        assert!(!taken[0].inline);
        let text = String::from_utf8(rest).unwrap();
        assert!(text.ends_with("<img src=\"cid:logo@x\">\r\n--YY\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\naW1hZ2U=\r\n--YY--\r\n\r\n--XX--\r\nepi\r\n"), "{text}");
        // Both out: the image keeps its content id and goes inline.
        let (rest, taken) = split(RAW, 300, usize::MAX).unwrap();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].content_id.as_deref(), Some("logo@x"));
        assert!(taken[0].inline);
        assert_eq!(taken[0].bytes, b"image");
        let parsed = MessageParser::default().parse(&rest[..]).unwrap();
        assert_eq!(parsed.attachments.len(), 0);
        assert_eq!(parsed.subject(), Some("s"));
        // Too big even without attachments.
        assert!(split(RAW, 100, usize::MAX).is_none());
        // `always`: any attachment that large comes out even when the rest would fit.
        let (_, taken) = split(RAW, 10_000, 150).unwrap();
        assert_eq!(taken.len(), 1);
    }
}
