//! How an smtp attempt failed: lettre's errors and upstream replies classified, once,
//! into a diagnosis code and transient or permanent.

use std::time::Duration;

use lettre::transport::smtp::response::Response;

use super::super::Outcome;
pub(super) use super::super::error_chain;
use crate::diagnosis::{self, Code};

/// What a failure means for the message and the connection: decided once, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Try again later; the connection can go on (after RSET).
    Temporary,
    /// Refused for good; the connection can go on (after RSET).
    Permanent,
    /// Try again later; the connection cannot be used further.
    ConnectionLost,
}

/// Why an attempt stopped before a per-recipient answer. Callers ask it questions
/// (`is_transient`, `is_broken`, `is_auth`) instead of reading flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Diagnosis code.
    pub code: Code,
    /// Upstream reply or local error text.
    pub reply: String,
    kind: Kind,
}

impl Failure {
    /// A local failure (connection, TLS, configuration): temporary, connection lost.
    pub(super) fn local(code: Code, reply: impl Into<String>) -> Failure {
        Failure {
            code,
            reply: reply.into(),
            kind: Kind::ConnectionLost,
        }
    }

    /// A refusal that no retry can change (e.g. an address the server cannot take).
    pub(super) fn permanent(code: Code, reply: impl Into<String>) -> Failure {
        Failure {
            code,
            reply: reply.into(),
            kind: Kind::Permanent,
        }
    }

    /// The same failure, but the session is over (a failed AUTH leaves nothing to reuse),
    /// and the mail is held, not bounced (soft bounce, like Postfix's
    /// `smtp_sasl_auth_soft_bounce`).
    pub(super) fn ends_session(self) -> Failure {
        Failure {
            kind: Kind::ConnectionLost,
            ..self
        }
    }

    /// Whether the message should be tried again later.
    pub fn is_transient(&self) -> bool {
        self.kind != Kind::Permanent
    }

    /// Whether the connection cannot be used further.
    pub fn is_broken(&self) -> bool {
        self.kind == Kind::ConnectionLost
    }

    /// Whether it is about credentials or the auth method.
    pub fn is_auth(&self) -> bool {
        self.code.is_auth()
    }

    pub(super) fn into_outcome(self) -> Outcome {
        if self.is_transient() {
            Outcome::Transient {
                reply: self.reply,
                code: self.code,
            }
        } else {
            Outcome::Permanent {
                reply: self.reply,
                code: self.code,
            }
        }
    }
}

/// A refusing reply read by hand (before STARTTLS), classified like lettre's.
pub(super) fn from_text(reply: &str, stage: &str) -> Failure {
    let num: u16 = reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
    let text = reply.get(4..).unwrap_or("").to_string();
    let code = diagnosis::from_reply(num, &text);
    let transient = (400..500).contains(&num) || code.is_config();
    Failure {
        code,
        reply: format!("{stage}: {}", reply.trim()),
        kind: if transient {
            Kind::ConnectionLost
        } else {
            Kind::Permanent
        },
    }
}

/// The reply text of a lettre response: `250 2.0.0 OK ...`.
pub(super) fn response_text(r: &Response) -> String {
    format!("{} {}", r.code(), r.message().collect::<Vec<_>>().join(" "))
}

/// An upstream reply or a local error, classified. At the AUTH stage every refusal is an
/// authentication failure.
pub(super) fn classify(e: &lettre::transport::smtp::Error, stage: &str) -> Failure {
    if let Some(code) = e.status() {
        let num: u16 = code.to_string().parse().unwrap_or(0);
        let text = std::error::Error::source(e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        let mut diag = diagnosis::from_reply(num, &text);
        if stage == "AUTH" && !diag.is_auth() {
            diag = Code::AuthFailed;
        }
        // Authentication, permission and quota problems are held, not bounced: fixing
        // the configuration (or waiting for the quota) releases the mail.
        let transient = e.is_transient()
            || diag.is_config()
            || matches!(diag, Code::DailyQuota | Code::UpstreamThrottled);
        return Failure {
            code: diag,
            reply: format!("{num} {text}").trim().to_string(),
            kind: match (num == 421, transient) {
                (true, _) => Kind::ConnectionLost,
                (false, true) => Kind::Temporary,
                (false, false) => Kind::Permanent,
            },
        };
    }
    let chain = error_chain(e);
    if is_certificate_error(e) {
        return Failure::local(
            Code::TlsCertificate,
            format!("{stage}: TLS certificate verification failed: {chain}"),
        );
    }
    if e.is_client() && chain.contains("does not expect a challenge") {
        // XOAUTH2 refused with a 334 error challenge (the token was not accepted).
        return Failure::local(
            Code::AuthFailed,
            format!("{stage}: the server rejected the OAuth2 token"),
        );
    }
    if e.is_client() && chain.contains("No compatible authentication mechanism") {
        return Failure::local(
            Code::AuthNotSupported,
            format!("{stage}: the server offers no AUTH mechanism mailgate can use (PLAIN, LOGIN)"),
        );
    }
    Failure::local(Code::ConnectionFailed, format!("{stage}: {chain}"))
}

/// Certificate failures arrive as connection or network errors; look for rustls's
/// verdict in the chain.
fn is_certificate_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            );
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return matches!(r, rustls::Error::InvalidCertificate(_));
        }
        src = s.source();
    }
    error_chain(e).contains("invalid peer certificate")
}

/// One step of the exchange (a command and its reply), marked as the attempt's stage and
/// bounded by `t`: a server that stops answering (or trickles) costs `t`, never more.
pub(super) async fn timed<T>(
    t: Duration,
    stage: &'static str,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Failure> {
    super::super::stage::enter(stage);
    match tokio::time::timeout(t, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(&e, stage)),
        Err(_) => Err(no_answer(stage, t)),
    }
}

/// A step that did not end within its bound: `connection-failed`, naming the step.
pub(super) fn no_answer(stage: &str, t: Duration) -> Failure {
    Failure::local(
        Code::ConnectionFailed,
        format!(
            "{stage}: no answer from the server within {}",
            super::super::stage::words(t)
        ),
    )
}
