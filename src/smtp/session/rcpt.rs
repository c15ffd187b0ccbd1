//! RCPT TO: the recipient limit, syntax and single-label domains.

use super::*;

impl Session {
    pub(super) fn rcpt(&mut self, to: &str) -> Reply {
        let policy = self.policy.clone();
        let Some(env) = self.envelope.as_mut() else {
            return bad_sequence("Error: need MAIL command");
        };
        if env.rcpts.len() >= policy.max_recipients {
            return Reply::new(452, "4.5.3", "Too many recipients");
        }
        match check_address(to, env.smtputf8) {
            Err(AddressProblem::SingleLabelDomain) if policy.reject_single_label_domains => {
                return Reply::new(
                    550,
                    "5.1.2",
                    format!("<{to}>: Recipient address rejected: single label domain not accepted"),
                );
            }
            Err(AddressProblem::SingleLabelDomain) => {}
            Err(p) => {
                return Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {p}"));
            }
            Ok(()) => {}
        }
        env.rcpts.push(to.to_string());
        Reply::new(250, "2.1.5", "Recipient OK")
    }
}
