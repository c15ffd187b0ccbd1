//! AUTH PLAIN and LOGIN: the exchange, the checks before it, and its outcome (the
//! credentials are checked by the listener, off the runtime).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::*;

impl Session {
    /// Whether AUTH is offered to this client now: there are logins, and the session is
    /// in TLS or the client is in `allowed_networks`.
    pub(super) fn auth_offered(&self) -> bool {
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

    pub(super) fn auth_start(&mut self, mechanism: u64, initial: &str) -> Action {
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
    pub(super) fn login_user(&mut self, b64: &str) -> Action {
        match decode(b64) {
            Some(user) => {
                self.auth_pending = Some(AuthPending::LoginPass(user));
                Action::Reply(Reply::new(334, "", "UGFzc3dvcmQ6"))
            }
            None => Action::Reply(Reply::new(501, "5.5.2", "Invalid base64 data")),
        }
    }

    pub(super) fn auth_plain(&mut self, b64: &str) -> Action {
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

    pub(super) fn auth_continue(&mut self, pending: AuthPending, line: &[u8]) -> Action {
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
}

pub(super) fn decode(b64: &str) -> Option<String> {
    B64.decode(b64.trim())
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
}
