//! The end of DATA: the size, long-line and bare-newline verdicts, and the
//! protocol-free submission handed to the pipeline.

use super::*;

impl Session {
    /// Judges a finished DATA section; the transaction ends either way.
    pub fn data_finished(&mut self, data: DataOutcome) -> DataVerdict {
        let Some(env) = self.envelope.take() else {
            return DataVerdict::Reject(bad_sequence("Error: need MAIL command"));
        };
        if data.too_big {
            return DataVerdict::Reject(Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds fixed maximum message size ({} bytes)",
                    self.policy.max_message_size
                ),
            ));
        }
        if self.policy.reject_long_lines && data.max_line > crate::message::longlines::MAX_LINE {
            return DataVerdict::Reject(Reply::new(
                554,
                "5.6.0",
                format!(
                    "Message has a line of {} octets; lines are limited to 998 (RFC 5322)",
                    data.max_line
                ),
            ));
        }
        if data.bare_newline && self.policy.bare_newlines == BareNewlines::Reject {
            return DataVerdict::Reject(Reply::new(
                554,
                "5.6.0",
                "Message contains a bare CR or LF; lines must end with CRLF",
            ));
        }
        DataVerdict::Commit(Box::new(Submission {
            origin: Origin::Smtp {
                smtputf8: env.smtputf8,
                tls: self.tls,
            },
            client: Client {
                addr: self.peer,
                helo: self.helo.clone(),
                auth_login: self.auth_login.clone(),
                local_user: self.local_user.clone(),
            },
            mail_from: env.from,
            rcpts: env.rcpts,
            longest_line: Some(data.max_line),
            raw: data.bytes,
            as_user: None,
            provider: None,
        }))
    }

    /// The reply once a message is durably committed.
    pub fn queued(&self, id: &str) -> Reply {
        Reply::new(250, "2.0.0", format!("OK queued as {id}"))
    }

    /// The reply when the commit failed: nothing was acknowledged.
    pub fn commit_failed(&self) -> Reply {
        Reply::new(
            451,
            "4.3.0",
            "Local error: the message could not be stored; try again later",
        )
    }
}
