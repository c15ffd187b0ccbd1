//! MAIL FROM: who may submit, free disk, SIZE, the sender's syntax.

use super::*;

impl Session {
    pub(super) fn may_submit(&self) -> bool {
        self.auth_login.is_some()
            || (!self.policy.require_auth && self.policy.is_allowed(self.peer.ip()))
    }

    pub(super) fn mail(&mut self, from: &str, size: usize, flags: u64) -> Reply {
        if self.helo.is_none() {
            return bad_sequence("Error: send HELO/EHLO first");
        }
        if self.envelope.is_some() {
            return bad_sequence("Error: nested MAIL command");
        }
        if !self.may_submit() {
            return Reply::new(530, "5.7.0", "Authentication required");
        }
        if !self.policy.space.has_room() {
            return Reply::new(452, "4.3.1", "Insufficient system storage");
        }
        if size as u64 > self.policy.max_message_size {
            return Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds fixed maximum message size ({} bytes)",
                    self.policy.max_message_size
                ),
            );
        }
        let smtputf8 = flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        // A single-label sender domain (`root@localhost`, what cron and scripts send) is
        // accepted: the rule is for recipients, and the rewrite usually replaces it.
        if !from.is_empty()
            && let Err(p) = check_address(from, smtputf8)
            && p != AddressProblem::SingleLabelDomain
        {
            return Reply::new(501, "5.1.7", format!("Bad sender address syntax: {p}"));
        }
        self.envelope = Some(Envelope {
            from: from.to_string(),
            smtputf8,
            rcpts: Vec::new(),
        });
        Reply::new(250, "2.1.0", "Sender OK")
    }
}
