//! The SMTP session state machine: command lines in, reply values out. No sockets here;
//! the listener feeds it lines and DATA outcomes and carries out what it decides.
//! Requests are parsed with smtp-proto; the states and the policy are ours. One file per
//! verb (as Stalwart's `inbound/`): `ehlo.rs`, `mail.rs`, `rcpt.rs`, `data.rs`, `auth.rs`.

mod auth;
mod data;
mod ehlo;
mod mail;
mod rcpt;

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{EhloResponse, Error as ParseError, Request};

use super::data::DataOutcome;
use super::policy::{AddressProblem, Policy, check_address};
use super::reply::Reply;
use crate::config::BareNewlines;
use crate::pipeline::{Client, Origin, Submission};
use crate::secrets::Secret;

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
    /// Send the reply, drop any input already received, start TLS; then call
    /// [`Session::tls_started`].
    StartTls(Reply),
    /// Check these credentials, then call [`Session::auth_done`].
    Authenticate {
        /// The login.
        login: String,
        /// The password (never printed).
        password: Secret,
    },
}

/// An AUTH exchange waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthPending {
    Plain,
    LoginUser,
    LoginPass(String),
}

/// What to do with a finished DATA section.
#[derive(Debug)]
pub enum DataVerdict {
    /// Refuse it with this reply.
    Reject(Reply),
    /// Commit it; then answer with [`Session::queued`] or [`Session::commit_failed`].
    Commit(Box<Submission>),
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
    tls: bool,
    auth_failures: u32,
    /// The Unix user of a client on this host, when known.
    local_user: Option<String>,
    auth_pending: Option<AuthPending>,
}

/// AUTH failures after which a session is closed.
pub const MAX_AUTH_FAILURES: u32 = 3;

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
            tls: false,
            auth_failures: 0,
            auth_pending: None,
            local_user: None,
        }
    }

    /// The Unix user who owns the client's end of the connection (a client on this
    /// host): the record names it as `local:NAME`.
    pub fn set_local_user(&mut self, user: Option<String>) {
        self.local_user = user;
    }

    /// TLS is up: the session starts over (RFC 3207: forget HELO, transaction, AUTH).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.envelope = None;
        self.auth_login = None;
        self.auth_pending = None;
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The banner.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP mailgate", self.policy.hostname))
    }

    /// Whether a mail transaction is open (MAIL given, not yet finished).
    pub fn in_transaction(&self) -> bool {
        self.envelope.is_some()
    }

    /// Handles one command line (including its line end).
    pub fn command(&mut self, line: &[u8]) -> Action {
        if let Some(pending) = self.auth_pending.take() {
            return self.auth_continue(pending, line);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => return Action::Reply(parse_error(e)),
        };
        match request {
            Request::Ehlo { host } | Request::Helo { host } if !ehlo::valid_helo(&host) => {
                Action::Reply(Reply::new(
                    501,
                    "5.5.4",
                    "Invalid EHLO/HELO argument: no spaces or control characters",
                ))
            }
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
            Request::Mail { from } => Action::Reply(self.mail(
                &super::policy::canonical_address(&from.address),
                from.size,
                from.flags,
            )),
            Request::Rcpt { to } => {
                Action::Reply(self.rcpt(&super::policy::canonical_address(&to.address)))
            }
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
            Request::StartTls if self.tls => Action::Reply(bad_sequence("Already in TLS")),
            Request::StartTls if self.policy.tls_enabled => {
                Action::StartTls(Reply::new(220, "2.0.0", "Ready to start TLS"))
            }
            Request::StartTls => Action::Reply(Reply::new(454, "4.7.0", "TLS not available")),
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth_start(mechanism, &initial_response),
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
