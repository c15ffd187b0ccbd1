//! The SMTP session state machine: command lines in, reply values out. No sockets here;
//! the listener feeds it lines and DATA outcomes and carries out what it decides.
//! Requests are parsed with smtp-proto; the states and the policy are ours.

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{EhloResponse, Error as ParseError, Request};

use super::data::DataOutcome;
use super::policy::{AddressProblem, Policy, check_address};
use super::reply::Reply;
use crate::config::BareNewlines;

/// What the listener must do after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the reply, read the next command.
    Reply(Reply),
    /// Send the reply, then read DATA.
    Data(Reply),
    /// Read and discard this many octets (a BDAT chunk we do not take), then send the reply.
    Discard(usize, Reply),
    /// Send the reply and close the connection.
    Close(Reply),
}

/// A complete transaction, ready to be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Client address.
    pub peer: SocketAddr,
    /// HELO/EHLO name.
    pub helo: String,
    /// SMTP AUTH login.
    pub auth_login: Option<String>,
    /// Envelope sender (`""` for the null sender).
    pub mail_from: String,
    /// Envelope recipients.
    pub rcpts: Vec<String>,
    /// The client announced SMTPUTF8.
    pub smtputf8: bool,
    /// The message as read.
    pub data: DataOutcome,
}

/// What to do with a finished DATA section.
#[derive(Debug)]
pub enum DataVerdict {
    /// Refuse it with this reply.
    Reject(Reply),
    /// Commit it; then answer with [`Session::queued`] or [`Session::commit_failed`].
    Commit(Box<Transaction>),
}

#[derive(Debug, Default)]
struct Envelope {
    from: String,
    smtputf8: bool,
    rcpts: Vec<String>,
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    policy: Arc<Policy>,
    peer: SocketAddr,
    helo: Option<String>,
    auth_login: Option<String>,
    envelope: Option<Envelope>,
}

fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, "5.5.1", text)
}

impl Session {
    /// A new session for a client at `peer`.
    pub fn new(policy: Arc<Policy>, peer: SocketAddr) -> Session {
        Session {
            policy,
            peer,
            helo: None,
            auth_login: None,
            envelope: None,
        }
    }

    /// The banner.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP mailgate", self.policy.hostname))
    }

    /// Whether a mail transaction is open (MAIL given, not yet finished).
    pub fn in_transaction(&self) -> bool {
        self.envelope.is_some()
    }

    fn may_submit(&self) -> bool {
        self.auth_login.is_some()
            || (!self.policy.require_auth && self.policy.is_allowed(self.peer.ip()))
    }

    /// Handles one command line (including its line end).
    pub fn command(&mut self, line: &[u8]) -> Action {
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => return Action::Reply(parse_error(e)),
        };
        match request {
            Request::Ehlo { host } => {
                self.helo = Some(host.into_owned());
                self.envelope = None;
                Action::Reply(self.ehlo())
            }
            Request::Helo { host } => {
                self.helo = Some(host.into_owned());
                self.envelope = None;
                Action::Reply(Reply::new(250, "", &self.policy.hostname))
            }
            Request::Mail { from } => {
                Action::Reply(self.mail(&from.address, from.size, from.flags))
            }
            Request::Rcpt { to } => Action::Reply(self.rcpt(&to.address)),
            Request::Data => match &self.envelope {
                None => Action::Reply(bad_sequence("Error: need MAIL command")),
                Some(e) if e.rcpts.is_empty() => {
                    Action::Reply(Reply::new(554, "5.5.1", "Error: no valid recipients"))
                }
                Some(_) => Action::Data(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")),
            },
            Request::Rset => {
                self.envelope = None;
                Action::Reply(Reply::new(250, "2.0.0", "OK"))
            }
            Request::Noop { .. } => Action::Reply(Reply::new(250, "2.0.0", "OK")),
            Request::Quit => Action::Close(Reply::new(221, "2.0.0", "Bye")),
            Request::Vrfy { .. } => Action::Reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Request::Help { .. } => Action::Reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
            )),
            Request::StartTls => Action::Reply(Reply::new(454, "4.7.0", "TLS not available")),
            Request::Auth { .. } => Action::Reply(Reply::new(
                503,
                "5.5.1",
                "AUTH is not available on this listener",
            )),
            Request::Bdat { chunk_size, .. } => Action::Discard(
                chunk_size,
                Reply::new(503, "5.5.1", "CHUNKING was not offered; use DATA"),
            ),
            Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. }
            | Request::Lhlo { .. } => {
                Action::Reply(Reply::new(502, "5.5.1", "Command not implemented"))
            }
        }
    }

    fn ehlo(&self) -> Reply {
        let mut r = EhloResponse::new(self.policy.hostname.as_str());
        r.capabilities = smtp_proto::EXT_PIPELINING
            | smtp_proto::EXT_SIZE
            | smtp_proto::EXT_8BIT_MIME
            | smtp_proto::EXT_SMTP_UTF8
            | smtp_proto::EXT_ENHANCED_STATUS_CODES;
        r.size = usize::try_from(self.policy.max_message_size).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = r.write(&mut out);
        Reply::rendered(250, out)
    }

    fn mail(&mut self, from: &str, size: usize, flags: u64) -> Reply {
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
        if !from.is_empty()
            && let Err(p) = check_address(from, smtputf8)
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

    fn rcpt(&mut self, to: &str) -> Reply {
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
        if data.bare_newline && self.policy.bare_newlines == BareNewlines::Reject {
            return DataVerdict::Reject(Reply::new(
                554,
                "5.6.0",
                "Message contains a bare CR or LF; lines must end with CRLF",
            ));
        }
        DataVerdict::Commit(Box::new(Transaction {
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            auth_login: self.auth_login.clone(),
            mail_from: env.from,
            rcpts: env.rcpts,
            smtputf8: env.smtputf8,
            data,
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

fn parse_error(e: ParseError) -> Reply {
    match e {
        ParseError::UnknownCommand => Reply::new(500, "5.5.1", "Error: command not recognized"),
        ParseError::InvalidSenderAddress => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "Bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => {
            Reply::new(501, "5.5.2", format!("Syntax error, expected: {syntax}"))
        }
        ParseError::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("Invalid parameter {param:?}"))
        }
        ParseError::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("Unsupported parameter {param:?}"))
        }
        ParseError::ResponseTooLong => Reply::new(500, "5.5.2", "Error: line too long"),
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            Reply::new(500, "5.5.2", "Error: bad syntax")
        }
    }
}
