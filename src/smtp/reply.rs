//! Replies to SMTP clients as values: code, enhanced status code, text. The session
//! decides them; only the listener writes them to the socket.

use std::fmt;

/// One SMTP reply, possibly multi-line, already rendered with CRLF line ends.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    bytes: Vec<u8>,
}

impl Reply {
    /// A single-line reply `code esc text`.
    pub fn new(code: u16, esc: &str, text: impl fmt::Display) -> Reply {
        let line = if esc.is_empty() {
            format!("{code} {text}\r\n")
        } else {
            format!("{code} {esc} {text}\r\n")
        };
        Reply {
            code,
            bytes: line.into_bytes(),
        }
    }

    /// A reply already rendered (e.g. by smtp-proto's EHLO builder).
    pub fn rendered(code: u16, bytes: Vec<u8>) -> Reply {
        Reply { code, bytes }
    }

    /// The reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The bytes sent to the client.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The reply as text (for tests and logs).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({:?})", self.text().trim_end())
    }
}
