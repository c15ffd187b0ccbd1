//! The recipients a message's header names (To, Cc, Bcc): read once here for the
//! sendmail door's `-t` and for Graph, which must add a `Bcc:` for envelope recipients
//! no header names.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

/// What the header names.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Named {
    /// The addresses of To, Cc and Bcc in order, as written; a bare user name (`To:
    /// root`, as cron writes it) is kept as the name.
    pub addresses: Vec<String>,
    /// The byte ranges of the Bcc fields (name to end of the field, folded lines
    /// included).
    pub bcc_fields: Vec<(usize, usize)>,
}

/// Reads the To, Cc and Bcc fields of `raw`'s header.
pub fn named(raw: &[u8]) -> Named {
    let mut out = Named::default();
    let Some(m) = MessageParser::default().parse_headers(raw) else {
        return out;
    };
    for h in &m.root_part().headers {
        if !matches!(h.name, HeaderName::To | HeaderName::Cc | HeaderName::Bcc) {
            continue;
        }
        if h.name == HeaderName::Bcc {
            out.bcc_fields
                .push((h.offset_field as usize, h.offset_end as usize));
        }
        let list: Vec<&mail_parser::Addr<'_>> = match &h.value {
            HeaderValue::Address(Address::List(l)) => l.iter().collect(),
            HeaderValue::Address(Address::Group(g)) => {
                g.iter().flat_map(|g| g.addresses.iter()).collect()
            }
            _ => Vec::new(),
        };
        // `To: root` is a bare local name, which mail-parser reads as a display name
        // without an address.
        out.addresses.extend(list.iter().filter_map(|a| {
            match a.address.as_deref() {
                Some(addr) => Some(addr.to_string()),
                None => a
                    .name
                    .as_deref()
                    .filter(|n| crate::aliases::is_local_name(n))
                    .map(String::from),
            }
        }));
    }
    out
}

/// `raw` without its Bcc fields.
pub fn without_bcc(raw: &[u8], named: &Named) -> Vec<u8> {
    let mut out = raw.to_vec();
    for &(s, e) in named.bcc_fields.iter().rev() {
        out.drain(s..e.min(out.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_cc_bcc_and_a_bare_name() {
        let raw = b"To: A <a@x.example>, root\r\nCc: g: b@x.example;\r\nBcc: c@x.example,\r\n d@x.example\r\nSubject: s\r\n\r\nbody\r\n";
        let n = named(raw);
        assert_eq!(
            n.addresses,
            [
                "a@x.example",
                "root",
                "b@x.example",
                "c@x.example",
                "d@x.example"
            ]
        );
        assert_eq!(
            without_bcc(raw, &n),
            b"To: A <a@x.example>, root\r\nCc: g: b@x.example;\r\nSubject: s\r\n\r\nbody\r\n"
        );
    }
}
