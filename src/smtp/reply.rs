//! Replies to SMTP clients as values: code, enhanced status code, text (as go-smtp's
//! `SMTPError{Code, EnhancedCode, Message}`). The session decides them; only the
//! listener writes them to the socket, rendered with CRLF line ends.

use std::fmt;

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

    /// The bytes sent to the client.
    pub fn as_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        let last = self.text.len().saturating_sub(1);
        for (i, t) in self.text.iter().enumerate() {
            let sep = if i < last { '-' } else { ' ' };
            match self.enhanced {
                Some(e) => out.push_str(&format!("{}{sep}{e} {t}\r\n", self.code)),
                None if t.is_empty() => out.push_str(&format!("{}{sep}\r\n", self.code)),
                None => out.push_str(&format!("{}{sep}{t}\r\n", self.code)),
            }
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
