//! The SMTP session state machine: command lines in, reply values out. No sockets here;
//! the listener feeds it lines and DATA outcomes and carries out what it decides.
//! Requests are parsed with smtp-proto; the states and the policy are ours.

use std::net::SocketAddr;
use std::sync::Arc;

use smtp_proto::{EhloResponse, Error as ParseError, Request};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

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
        }
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

    /// Whether AUTH is offered to this client now: there are logins, and the session is
    /// in TLS or the client is in `allowed_networks`.
    fn auth_offered(&self) -> bool {
        self.policy.auth_enabled && (self.tls || self.policy.is_allowed(self.peer.ip()))
    }

    /// The result of checking the credentials of [`Action::Authenticate`].
    pub fn auth_done(&mut self, login: String, ok: bool) -> Action {
        if ok {
            self.auth_login = Some(login);
            return Action::Reply(Reply::new(235, "2.7.0", "Authentication successful"));
        }
        self.auth_failures += 1;
        if self.auth_failures >= MAX_AUTH_FAILURES {
            return Action::Close(Reply::new(
                421,
                "4.7.0",
                "Too many authentication failures, closing connection",
            ));
        }
        Action::Reply(Reply::new(
            535,
            "5.7.8",
            "Authentication credentials invalid",
        ))
    }

    fn auth_start(&mut self, mechanism: u64, initial: &str) -> Action {
        if self.auth_login.is_some() {
            return Action::Reply(bad_sequence("Already authenticated"));
        }
        if self.envelope.is_some() {
            return Action::Reply(bad_sequence("AUTH not allowed during a mail transaction"));
        }
        if !self.auth_offered() {
            return Action::Reply(if self.policy.auth_enabled {
                Reply::new(
                    538,
                    "5.7.11",
                    "Encryption required for requested authentication mechanism",
                )
            } else {
                Reply::new(503, "5.5.1", "AUTH is not available on this listener")
            });
        }
        let initial = initial.trim();
        match mechanism {
            smtp_proto::AUTH_PLAIN if initial.is_empty() => {
                self.auth_pending = Some(AuthPending::Plain);
                Action::Reply(Reply::new(334, "", ""))
            }
            smtp_proto::AUTH_PLAIN => self.auth_plain(initial),
            smtp_proto::AUTH_LOGIN if initial.is_empty() => {
                self.auth_pending = Some(AuthPending::LoginUser);
                Action::Reply(Reply::new(334, "", "VXNlcm5hbWU6"))
            }
            smtp_proto::AUTH_LOGIN => self.login_user(initial),
            _ => Action::Reply(Reply::new(
                504,
                "5.5.4",
                "Unrecognized authentication type; use PLAIN or LOGIN",
            )),
        }
    }

    /// The user name of AUTH LOGIN (base64); the password is asked next.
    fn login_user(&mut self, b64: &str) -> Action {
        match decode(b64) {
            Some(user) => {
                self.auth_pending = Some(AuthPending::LoginPass(user));
                Action::Reply(Reply::new(334, "", "UGFzc3dvcmQ6"))
            }
            None => Action::Reply(Reply::new(501, "5.5.2", "Invalid base64 data")),
        }
    }

    fn auth_plain(&mut self, b64: &str) -> Action {
        let Some(raw) = B64.decode(b64.trim()).ok() else {
            return Action::Reply(Reply::new(501, "5.5.2", "Invalid base64 data"));
        };
        let mut parts = raw.split(|b| *b == 0);
        let (Some(authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Action::Reply(Reply::new(501, "5.5.2", "Invalid PLAIN response"));
        };
        let (Ok(user), Ok(pass)) = (
            String::from_utf8(user.to_vec()),
            String::from_utf8(pass.to_vec()),
        ) else {
            return Action::Reply(Reply::new(501, "5.5.2", "Invalid PLAIN response"));
        };
        if !authz.is_empty() && authz != user.as_bytes() {
            return self.auth_done(user, false);
        }
        Action::Authenticate {
            login: user,
            password: Secret::new(pass),
        }
    }

    fn auth_continue(&mut self, pending: AuthPending, line: &[u8]) -> Action {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text == "*" {
            return Action::Reply(Reply::new(501, "5.7.0", "Authentication cancelled"));
        }
        match pending {
            AuthPending::Plain => self.auth_plain(text),
            AuthPending::LoginUser => self.login_user(text),
            AuthPending::LoginPass(user) => match decode(text) {
                Some(pass) => Action::Authenticate {
                    login: user,
                    password: Secret::new(pass),
                },
                None => Action::Reply(Reply::new(501, "5.5.2", "Invalid base64 data")),
            },
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
        if let Some(pending) = self.auth_pending.take() {
            return self.auth_continue(pending, line);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r,
            Err(e) => return Action::Reply(parse_error(e)),
        };
        match request {
            Request::Ehlo { host } | Request::Helo { host } if !valid_helo(&host) => {
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

    fn ehlo(&self) -> Reply {
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

fn decode(b64: &str) -> Option<String> {
    B64.decode(b64.trim())
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
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

/// An EHLO/HELO argument: a domain or address literal, never empty, with no spaces or
/// control characters (it is written into the `Received:` header).
fn valid_helo(host: &str) -> bool {
    !host.is_empty() && !host.chars().any(|c| c.is_control() || c.is_whitespace())
}
