//! Replies to SMTP clients as values: code, enhanced status code, text (as go-smtp's
//! `SMTPError{Code, EnhancedCode, Message}`). The session decides them; only the
//! listener writes them to the socket, rendered with CRLF line ends.

use std::fmt;

/// The longest reply line, CRLF included (RFC 5321 4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// A reply line as it may be sent: control characters (but tab) become `?`, and what
/// goes past [`MAX_REPLY_LINE`] with its CRLF is cut at a character's edge.
fn fit(line: &str) -> String {
    let mut out: String = line
        .chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect();
    if out.len() > MAX_REPLY_LINE - 2 {
        let mut cut = MAX_REPLY_LINE - 2;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// One SMTP reply.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply code (`250`).
    pub code: u16,
    /// The enhanced status code (`2.0.0`), when the reply has one.
    pub enhanced: Option<&'static str>,
    /// The text after the codes; several lines for a multi-line reply.
    pub text: Vec<String>,
}

impl Reply {
    /// A single-line reply `code esc text` (`esc` empty: none).
    pub fn new(code: u16, esc: &'static str, text: impl fmt::Display) -> Reply {
        Reply {
            code,
            enhanced: (!esc.is_empty()).then_some(esc),
            text: vec![text.to_string()],
        }
    }

    /// A multi-line reply (EHLO): one text per line, the codes on each.
    pub fn lines(code: u16, text: Vec<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            text,
        }
    }

    /// The reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The bytes sent to the client. Each line is cut to [`MAX_REPLY_LINE`] octets and
    /// carries no control character, whatever a reply echoes of what the client sent.
    pub fn as_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        let last = self.text.len().saturating_sub(1);
        for (i, t) in self.text.iter().enumerate() {
            let sep = if i < last { '-' } else { ' ' };
            let line = match self.enhanced {
                Some(e) => format!("{}{sep}{e} {t}", self.code),
                None if t.is_empty() => format!("{}{sep}", self.code),
                None => format!("{}{sep}{t}", self.code),
            };
            out.push_str(&fit(&line));
            out.push_str("\r\n");
        }
        if self.text.is_empty() {
            out.push_str(&format!("{}\r\n", self.code));
        }
        out.into_bytes()
    }

    /// The rendered reply as text (for tests and logs).
    pub fn rendered(&self) -> String {
        String::from_utf8_lossy(&self.as_bytes()).into_owned()
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({:?})", self.rendered().trim_end())
    }
}
