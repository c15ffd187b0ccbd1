//! The From rewrite: splices the header block of the submitted bytes. The From field
//! (all its folded lines) is replaced so that its address is the target and its display
//! name is kept; every original From field is kept as `X-Original-From`; `Sender:` (for
//! on-behalf-of) and `Reply-To:` (when asked and absent) are added beside it. Every other
//! byte of the message stays as it was. Headers are read with mail-parser, whose byte
//! offsets say exactly which bytes a field owns.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The From address the world sees.
    pub target: String,
    /// `Sender:` for on-behalf-of.
    pub sender: Option<String>,
    /// Put the original From into Reply-To when there is none.
    pub reply_to_original: bool,
}

/// The first address of the first From field, as the header says it.
pub fn header_from(raw: &[u8]) -> Option<String> {
    let msg = MessageParser::default().parse_headers(raw)?;
    header_from_of(&msg)
}

/// [`header_from`] of an already parsed header block.
pub fn header_from_of(msg: &mail_parser::Message<'_>) -> Option<String> {
    let h = msg
        .root_part()
        .headers
        .iter()
        .find(|h| h.name == HeaderName::From)?;
    first_address(&h.value).map(|(_, a)| a)
}

/// Strips an obsolete source route (`@a,@b:user@host` -> `user@host`).
fn strip_route(a: &str) -> &str {
    if a.starts_with('@') {
        a.rsplit_once(':').map_or(a, |(_, rest)| rest)
    } else {
        a
    }
}

fn first_address(v: &HeaderValue<'_>) -> Option<(Option<String>, String)> {
    let addr = match v {
        HeaderValue::Address(Address::List(list)) => list.first(),
        HeaderValue::Address(Address::Group(groups)) => {
            groups.iter().flat_map(|g| g.addresses.iter()).next()
        }
        _ => None,
    }?;
    let a = addr.address.as_deref()?;
    Some((
        addr.name.as_ref().map(|n| n.to_string()),
        strip_route(a).to_string(),
    ))
}

fn address_count(v: &HeaderValue<'_>) -> usize {
    match v {
        HeaderValue::Address(Address::List(list)) => list.len(),
        HeaderValue::Address(Address::Group(groups)) => {
            groups.iter().map(|g| g.addresses.len()).sum()
        }
        _ => 0,
    }
}

/// A display name as header text: a quoted string, or RFC 2047 when not ASCII.
fn encode_display_name(name: &str) -> String {
    use base64::Engine;
    if name.is_ascii() {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        )
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The new value (after `From:`) of a From field whose raw value is `value`.
fn new_from_value(value: &[u8], parsed: &HeaderValue<'_>, target: &str) -> Vec<u8> {
    // The field's own line end; a field that ends the data without one gets CRLF (a
    // bare LF would be the only one in the message).
    let eol: &[u8] = if value.ends_with(b"\n") && !value.ends_with(b"\r\n") {
        b"\n"
    } else {
        b"\r\n"
    };
    if address_count(parsed) == 1
        && let Some((_, original)) = first_address(parsed)
        && let Some(i) = find(value, original.as_bytes())
        && find(&value[i + original.len()..], original.as_bytes()).is_none()
    {
        // Splice: keep display name, comments and folding; swap the address (with its
        // angle brackets and any source route).
        let end = i + original.len();
        let lt = value[..i].iter().rposition(|&b| b == b'<');
        let gt = value[end..]
            .iter()
            .position(|&b| b == b'>')
            .map(|p| end + p);
        let mut out = Vec::with_capacity(value.len() + target.len());
        match (lt, gt) {
            (Some(l), Some(g)) if !value[l + 1..i].contains(&b'>') => {
                out.extend_from_slice(&value[..l]);
                out.extend_from_slice(format!("<{target}>").as_bytes());
                out.extend_from_slice(&value[g + 1..]);
            }
            _ => {
                out.extend_from_slice(&value[..i]);
                out.extend_from_slice(target.as_bytes());
                out.extend_from_slice(&value[end..]);
            }
        }
        return out;
    }
    // One mailbox we cannot find as written (comments inside it): keep the raw display
    // part before its angle bracket.
    if address_count(parsed) == 1
        && let Some(lt) = value.iter().position(|&b| b == b'<')
        && value.iter().filter(|&&b| b == b'<').count() == 1
    {
        let display = value[..lt].trim_ascii_end();
        let mut out = display.to_vec();
        out.extend_from_slice(format!(" <{target}>").as_bytes());
        out.extend_from_slice(eol);
        return out;
    }
    // Several mailboxes, a group, or an address we cannot find as written: one mailbox
    // with the first display name.
    let name = first_address(parsed)
        .and_then(|(n, _)| n)
        .filter(|n| !n.trim().is_empty());
    let mut out = match name {
        Some(n) => format!(" {} <{target}>", encode_display_name(&n)).into_bytes(),
        None => format!(" <{target}>").into_bytes(),
    };
    out.extend_from_slice(eol);
    out
}

/// Rewrites the header block of `raw`; returns the new bytes.
pub fn rewrite(raw: &[u8], plan: &Rewrite) -> Vec<u8> {
    let mut out = raw.to_vec();
    rewrite_in_place(&mut out, plan);
    out
}

/// Rewrites the header block of `raw` in place (the body is moved, never copied).
pub fn rewrite_in_place(raw: &mut Vec<u8>, plan: &Rewrite) {
    let parsed = MessageParser::default().parse_headers(raw);
    let edits = edits(raw, parsed.as_ref(), plan);
    drop(parsed);
    apply(raw, edits);
}

/// Byte-range replacements, in order and not overlapping.
pub type Edits = Vec<(usize, usize, Vec<u8>)>;

/// Applies [`edits`] to the bytes they were computed on.
pub fn apply(raw: &mut Vec<u8>, edits: Edits) {
    for (start, end, with) in edits.into_iter().rev() {
        raw.splice(start..end, with);
    }
}

/// The rewrite of `raw` (whose header block `parsed` is) as byte-range replacements.
pub fn edits(raw: &[u8], parsed: Option<&mail_parser::Message<'_>>, plan: &Rewrite) -> Edits {
    let fields = Fields::read(raw, parsed);
    let unchanged = fields.names_alone(&plan.target);
    if unchanged && plan.sender.is_none() {
        return Vec::new();
    }
    let block = fields.block(plan, unchanged);
    fields.placed(block, plan.sender.is_some())
}

/// What the rewrite needs to know of a message's header block.
struct Fields<'a> {
    raw: &'a [u8],
    parsed: Option<&'a mail_parser::Message<'a>>,
    headers: Vec<&'a mail_parser::Header<'a>>,
    /// The line ending the message uses.
    eol: &'static [u8],
    froms: Vec<&'a mail_parser::Header<'a>>,
    /// From fields in obsolete syntax that the parser does not take for From (a name
    /// folded before its colon): the upstream might, so they go too.
    obsolete: Vec<(usize, usize)>,
    senders: Vec<&'a mail_parser::Header<'a>>,
    has_reply_to: bool,
}

impl<'a> Fields<'a> {
    fn read(raw: &'a [u8], parsed: Option<&'a mail_parser::Message<'a>>) -> Self {
        let headers: Vec<_> = parsed
            .map(|m| m.root_part().headers.iter().collect())
            .unwrap_or_default();
        // The message's line end; one with no line end at all gets CRLF.
        let lf_only = memchr::memchr(b'\n', raw).is_some_and(|i| i == 0 || raw[i - 1] != b'\r');
        let eol: &[u8] = if lf_only { b"\n" } else { b"\r\n" };
        let named = |name: HeaderName<'static>| -> Vec<&'a mail_parser::Header<'a>> {
            headers.iter().copied().filter(|h| h.name == name).collect()
        };
        let froms = named(HeaderName::From);
        let senders = named(HeaderName::Sender);
        let header_end = headers
            .iter()
            .map(|h| h.offset_end as usize)
            .max()
            .unwrap_or(0);
        let obsolete = obsolete_from_fields(&raw[..header_end.min(raw.len())])
            .into_iter()
            .filter(|&(start, end)| {
                !froms
                    .iter()
                    .any(|h| (h.offset_field as usize) < end && start < h.offset_end as usize)
            })
            .collect();
        let has_reply_to = headers.iter().any(|h| h.name == HeaderName::ReplyTo);
        Fields {
            raw,
            parsed,
            headers,
            eol,
            froms,
            obsolete,
            senders,
            has_reply_to,
        }
    }

    /// Whether the one From already names the target alone: it is not changed, and
    /// gets no X-Original-From (nor a Reply-To naming the same address).
    fn names_alone(&self, target: &str) -> bool {
        match self.froms.as_slice() {
            [h] => {
                self.obsolete.is_empty()
                    && address_count(&h.value) == 1
                    && first_address(&h.value).is_some_and(|(_, a)| a.eq_ignore_ascii_case(target))
            }
            _ => false,
        }
    }

    /// A field's value as written, with the space after the colon and the line end.
    fn value_of(&self, h: &mail_parser::Header<'_>) -> Vec<u8> {
        let mut v = self.raw[h.offset_start as usize..h.offset_end as usize].to_vec();
        if !v.starts_with(b" ") && !v.starts_with(b"\t") {
            v.insert(0, b' ');
        }
        if !v.ends_with(b"\n") {
            v.extend_from_slice(self.eol);
        }
        v
    }

    /// The block written where the first From stood (or at the end of the headers).
    fn block(&self, plan: &Rewrite, unchanged: bool) -> Vec<u8> {
        let (raw, eol) = (self.raw, self.eol);
        let mut block = Vec::new();
        match self.froms.first() {
            Some(h) if unchanged => {
                block.extend_from_slice(&raw[h.offset_field as usize..h.offset_end as usize]);
            }
            Some(h) => {
                block.extend_from_slice(b"From:");
                block.extend(new_from_value(&self.value_of(h), &h.value, &plan.target));
            }
            None => {
                block.extend_from_slice(format!("From: <{}>", plan.target).as_bytes());
                block.extend_from_slice(eol);
            }
        }
        if !unchanged {
            for h in &self.froms {
                block.extend_from_slice(b"X-Original-From:");
                block.extend(self.value_of(h));
            }
        }
        for &(start, end) in &self.obsolete {
            let field = &raw[start..end];
            let colon = field
                .iter()
                .position(|&b| b == b':')
                .map_or(field.len(), |c| c + 1);
            block.extend_from_slice(b"X-Original-From:");
            let v = &field[colon..];
            if !v.starts_with(b" ") && !v.starts_with(b"\t") {
                block.push(b' ');
            }
            block.extend_from_slice(v);
        }
        if let Some(account) = &plan.sender {
            block.extend_from_slice(format!("Sender: <{account}>").as_bytes());
            block.extend_from_slice(eol);
            for h in &self.senders {
                block.extend_from_slice(b"X-Original-Sender:");
                block.extend(self.value_of(h));
            }
        }
        if plan.reply_to_original
            && !unchanged
            && !self.has_reply_to
            && let Some(h) = self.froms.first()
        {
            block.extend_from_slice(b"Reply-To:");
            block.extend(self.value_of(h));
        }
        block
    }

    /// The edits: every From field removed (and the Senders replaced when
    /// `replace_senders`), the block standing where the first of them stood, or at the
    /// end of the header block when none is removed.
    fn placed(&self, mut block: Vec<u8>, replace_senders: bool) -> Edits {
        let (raw, eol) = (self.raw, self.eol);
        let span = |h: &&mail_parser::Header<'_>| (h.offset_field as usize, h.offset_end as usize);
        let mut removed: Vec<(usize, usize)> = self.froms.iter().map(span).collect();
        if replace_senders {
            removed.extend(self.senders.iter().map(span));
        }
        removed.extend(self.obsolete.iter().copied());
        removed.sort_unstable();

        if removed.is_empty() && self.headers.is_empty() {
            // No header block at all: ours becomes it.
            if !raw.starts_with(eol) {
                block.extend_from_slice(eol);
            }
            return vec![(0, 0, block)];
        }
        if removed.is_empty() {
            let at = super::header_end(raw)
                .unwrap_or_else(|| {
                    self.parsed
                        .map_or(raw.len(), |m| m.root_part().offset_body as usize)
                })
                .min(raw.len());
            if at > 0 && !raw[..at].ends_with(b"\n") {
                block.splice(0..0, eol.iter().copied());
            }
            return vec![(at, at, block)];
        }
        let mut out: Edits = Vec::new();
        let mut pos = 0;
        for (start, end) in removed {
            if start < pos {
                // Overlapping ranges (malformed input): never step back.
                if let Some(last) = out.last_mut() {
                    last.1 = last.1.max(end);
                }
                pos = pos.max(end);
                continue;
            }
            let with = if out.is_empty() {
                std::mem::take(&mut block)
            } else {
                Vec::new()
            };
            out.push((start, end, with));
            pos = end;
        }
        out
    }
}

/// Header fields (start, end) whose name, with folding and white space removed, is
/// `From`: the scanner behind the parser for obsolete shapes such as `From\r\n : x`.
fn obsolete_from_fields(block: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < block.len() {
        // A field runs until a line that does not start with white space.
        let mut end = start;
        loop {
            end = match memchr::memchr(b'\n', &block[end..]) {
                Some(i) => end + i + 1,
                None => block.len(),
            };
            if end >= block.len() || !matches!(block[end], b' ' | b'\t') {
                break;
            }
        }
        let field = &block[start..end];
        if let Some(colon) = field.iter().position(|&b| b == b':') {
            let name: Vec<u8> = field[..colon]
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            if name.eq_ignore_ascii_case(b"from")
                && field[..colon].iter().any(|b| b.is_ascii_whitespace())
            {
                out.push((start, end));
            }
        }
        start = end;
    }
    out
}

/// Where new header fields go when there is no From: before the empty line that ends
/// the header block (or at the end of a headers-only message).
#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Rewrite {
        Rewrite {
            target: "billing@contoso.com".into(),
            sender: None,
            reply_to_original: false,
        }
    }

    fn headers(out: &[u8]) -> String {
        let s = String::from_utf8_lossy(out);
        s.split("\r\n\r\n").next().unwrap().to_string()
    }

    #[test]
    fn display_name_is_kept() {
        let raw = b"Subject: x\r\nFrom: \"Last, First\" <first.last@erp.local>\r\nTo: a@b.com\r\n\r\nbody\r\n";
        let out = rewrite(raw, &plan());
        assert_eq!(
            headers(&out),
            "Subject: x\r\nFrom: \"Last, First\" <billing@contoso.com>\r\nX-Original-From: \"Last, First\" <first.last@erp.local>\r\nTo: a@b.com"
        );
        assert!(out.ends_with(b"\r\n\r\nbody\r\n"));
    }

    #[test]
    fn a_from_that_already_names_the_target_is_left_alone() {
        let raw = b"From: Billing <Billing@Contoso.com>\r\nTo: a@b.com\r\n\r\nbody\r\n";
        assert_eq!(rewrite(raw, &plan()), raw.to_vec(), "no X-Original-From");
        let with_reply = Rewrite {
            reply_to_original: true,
            ..plan()
        };
        assert_eq!(
            rewrite(raw, &with_reply),
            raw.to_vec(),
            "no Reply-To to itself"
        );
        let behalf = Rewrite {
            sender: Some("relay@contoso.com".into()),
            ..plan()
        };
        assert_eq!(
            headers(&rewrite(raw, &behalf)),
            "From: Billing <Billing@Contoso.com>\r\nSender: <relay@contoso.com>\r\nTo: a@b.com"
        );
        // Two addresses, one of them the target: that is a change.
        let two = b"From: billing@contoso.com, x@y.z\r\n\r\nb";
        assert!(String::from_utf8_lossy(&rewrite(two, &plan())).contains("X-Original-From:"));
    }

    #[test]
    fn bare_address_and_missing_from() {
        let out = rewrite(b"From: app@erp.local\r\n\r\nx", &plan());
        assert_eq!(
            headers(&out),
            "From: billing@contoso.com\r\nX-Original-From: app@erp.local"
        );
        let out = rewrite(b"Subject: s\r\n\r\nx", &plan());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Subject: s\r\nFrom: <billing@contoso.com>\r\n\r\nx"
        );
    }

    #[test]
    fn on_behalf_of_and_reply_to() {
        let p = Rewrite {
            sender: Some("relay@contoso.com".into()),
            reply_to_original: true,
            ..plan()
        };
        let out = rewrite(
            b"From: Scanner <scan@printer.local>\r\nSender: old@x.y\r\n\r\nx",
            &p,
        );
        assert_eq!(
            headers(&out),
            "From: Scanner <billing@contoso.com>\r\nX-Original-From: Scanner <scan@printer.local>\r\nSender: <relay@contoso.com>\r\nX-Original-Sender: old@x.y\r\nReply-To: Scanner <scan@printer.local>"
        );
    }
}
