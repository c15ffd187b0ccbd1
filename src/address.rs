//! Address syntax (RFC 5321/5322 with SMTPUTF8): the checks the door applies to
//! envelope addresses, and their canonical wire form. A leaf: every stage may use it.

use std::fmt;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressProblem {
    /// No `@`, empty local part or domain, spaces or control characters.
    Malformed,
    /// Non-ASCII without SMTPUTF8.
    NeedsSmtpUtf8,
    /// The domain has a single label (`user@contoso`).
    SingleLabelDomain,
}

impl fmt::Display for AddressProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressProblem::Malformed => "expected local-part@domain",
            AddressProblem::NeedsSmtpUtf8 => "non-ASCII address without SMTPUTF8",
            AddressProblem::SingleLabelDomain => "single label domain",
        })
    }
}

/// RFC 5322 `atext`, plus UTF-8 (RFC 6531).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Whether a local part is a dot-atom (`first.last`), which needs no quoting.
fn is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local
            .split('.')
            .all(|w| !w.is_empty() && w.chars().all(is_atext))
}

/// The address as it goes on the wire: smtp-proto hands over a quoted local part
/// unquoted (`"a b"@example.com` arrives as `a b@example.com`), so a local part that is
/// not a dot-atom is quoted again (RFC 5321 Quoted-string, `\` and `"` escaped).
pub fn canonical_address(parsed: &str) -> String {
    match parsed.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !is_dot_atom(local) => {
            let mut q = String::with_capacity(local.len() + 2);
            q.push('"');
            for c in local.chars() {
                if c == '"' || c == '\\' {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('"');
            format!("{q}@{domain}")
        }
        _ => parsed.to_string(),
    }
}

/// The longest address any door takes, in bytes.
pub const MAX_ADDRESS: usize = 320;

/// Whether mail can reach `addr` from the Internet, judged by its domain alone: not a
/// single label (`app@erp`) and not a name kept for local or test use (`.local`,
/// `.lan`, `.internal`, `.localdomain`, `.home.arpa`, `.localhost`, `.test`,
/// `.invalid`; RFC 6761, RFC 6762, RFC 8375 and common practice).
pub fn is_routable(addr: &str) -> bool {
    let Some((_, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !domain.contains('.') {
        return false;
    }
    ![
        "local",
        "lan",
        "internal",
        "localdomain",
        "home.arpa",
        "localhost",
        "test",
        "invalid",
    ]
    .iter()
    .any(|t| domain.ends_with(&format!(".{t}")) || domain == *t)
}

/// Checks `local@domain` (the local part a dot-atom or a quoted string). Single-label
/// domains are reported last, so the caller may let them pass.
pub fn check_address(addr: &str, smtputf8: bool) -> Result<(), AddressProblem> {
    // RFC 5321 4.5.3.1: a path is at most 256 octets; past 320, no address is real (and
    // the history keeps none longer).
    if addr.len() > MAX_ADDRESS {
        return Err(AddressProblem::Malformed);
    }
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return Err(AddressProblem::Malformed);
    };
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    if local.is_empty()
        || domain.is_empty()
        || addr.chars().any(|c| c.is_control())
        || domain.chars().any(char::is_whitespace)
        || (!quoted && local.chars().any(char::is_whitespace))
        || domain.contains(['<', '>'])
        || (!quoted && local.contains(['<', '>']))
    {
        return Err(AddressProblem::Malformed);
    }
    if !smtputf8 && !addr.is_ascii() {
        return Err(AddressProblem::NeedsSmtpUtf8);
    }
    if domain.starts_with('[') {
        return if domain.ends_with(']') {
            Ok(())
        } else {
            Err(AddressProblem::Malformed)
        };
    }
    let labels_ok = domain.split('.').all(|l| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    });
    if !labels_ok {
        return Err(AddressProblem::Malformed);
    }
    if !domain.contains('.') {
        return Err(AddressProblem::SingleLabelDomain);
    }
    Ok(())
}

/// What is wrong with an envelope that did not come through the SMTP listener (the
/// maildrop): the SMTP door's policy, so no door lets through what another refuses. The
/// sender may be empty (the null sender) or, like the sendmail door's `root@localhost`,
/// single-label; every recipient is a valid address (single-label ones only when
/// `allow_single_label`), at most `max_recipients`, and nothing anywhere holds a control
/// character (a CR or LF would become a header line or a log line of its own).
pub fn envelope_problem(
    from: &str,
    rcpts: &[String],
    max_recipients: usize,
    allow_single_label: bool,
) -> Option<String> {
    if rcpts.is_empty() {
        return Some("the envelope has no recipients".into());
    }
    if rcpts.len() > max_recipients {
        return Some(format!(
            "{} recipients, more than smtp.max_recipients ({max_recipients})",
            rcpts.len()
        ));
    }
    if !from.is_empty()
        && !matches!(
            check_address(from, true),
            Ok(()) | Err(AddressProblem::SingleLabelDomain)
        )
    {
        return Some(format!(
            "the sender {:?} is not an address",
            from.escape_debug().to_string()
        ));
    }
    for r in rcpts {
        match check_address(r, true) {
            Ok(()) => {}
            Err(AddressProblem::SingleLabelDomain) if allow_single_label => {}
            Err(AddressProblem::SingleLabelDomain) => {
                return Some(format!(
                    "the recipient {r:?} has a single-label domain (smtp.reject_single_label_domains)"
                ));
            }
            Err(_) => {
                return Some(format!(
                    "the recipient {:?} is not an address",
                    r.escape_debug().to_string()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(check_address("a@contoso.com", false), Ok(()));
        assert_eq!(check_address("a@[192.0.2.1]", false), Ok(()));
        assert_eq!(
            check_address("a@contoso", false),
            Err(AddressProblem::SingleLabelDomain)
        );
        assert_eq!(
            check_address("contoso.com", false),
            Err(AddressProblem::Malformed)
        );
        assert_eq!(
            check_address("@contoso.com", false),
            Err(AddressProblem::Malformed)
        );
        assert_eq!(
            check_address("a@b..com", false),
            Err(AddressProblem::Malformed)
        );
        assert_eq!(
            check_address("jdöe@mächine.example", false),
            Err(AddressProblem::NeedsSmtpUtf8)
        );
        assert_eq!(check_address("jdöe@mächine.example", true), Ok(()));
        assert_eq!(check_address("\"a b\"@example.com", false), Ok(()));
        assert_eq!(
            check_address("a b@example.com", false),
            Err(AddressProblem::Malformed)
        );
    }

    #[test]
    fn quoted_local_parts_are_quoted_again() {
        assert_eq!(canonical_address("a b@example.com"), "\"a b\"@example.com");
        assert_eq!(
            canonical_address("a\"b@example.com"),
            "\"a\\\"b\"@example.com"
        );
        assert_eq!(
            canonical_address("first.last@example.com"),
            "first.last@example.com"
        );
        assert_eq!(canonical_address(""), "");
    }
}
