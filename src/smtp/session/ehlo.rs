//! EHLO and HELO: the capabilities offered, and the argument check.

use super::*;

impl Session {
    pub(super) fn ehlo(&self) -> Reply {
        let mut r = EhloResponse::new(self.policy.hostname.as_str());
        r.capabilities = smtp_proto::EXT_PIPELINING
            | smtp_proto::EXT_SIZE
            | smtp_proto::EXT_8BIT_MIME
            | smtp_proto::EXT_SMTP_UTF8
            | smtp_proto::EXT_ENHANCED_STATUS_CODES;
        if self.policy.tls_enabled && !self.tls {
            r.capabilities |= smtp_proto::EXT_START_TLS;
        }
        if self.auth_offered() && self.auth_login.is_none() {
            r.capabilities |= smtp_proto::EXT_AUTH;
            r.auth_mechanisms = smtp_proto::AUTH_PLAIN | smtp_proto::AUTH_LOGIN;
        }
        r.size = usize::try_from(self.policy.max_message_size).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = r.write(&mut out);
        // The builder's lines without their codes; its first line carries a joke: greet
        // the client by its name instead.
        let mut lines: Vec<String> = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.get(4..).unwrap_or("").to_string())
            .collect();
        let helo = self.helo.as_deref().unwrap_or("");
        if let Some(first) = lines.first_mut() {
            *first = format!("{} Hello {helo}", self.policy.hostname);
        }
        Reply::lines(250, lines)
    }
}

/// An EHLO/HELO argument: a domain or address literal, never empty, with no spaces or
/// control characters (it is written into the `Received:` header).
pub(super) fn valid_helo(host: &str) -> bool {
    !host.is_empty() && !host.chars().any(|c| c.is_control() || c.is_whitespace())
}
