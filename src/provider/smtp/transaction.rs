//! One transaction: MAIL, RCPT per recipient (pipelined when the server offers it),
//! DATA, each recipient with its own answer.

use super::*;
use lettre::transport::smtp::extension::Extension;
use std::time::Duration;

impl SmtpProvider {
    /// MAIL, RCPT per recipient, DATA. `Err` when the whole attempt failed before any
    /// recipient-level answer (or at MAIL/DATA).
    pub(super) async fn transact(&self, conn: &mut Conn, d: &Delivery) -> Result<Outcome, Failure> {
        let t = self.timeout;
        let info = conn.server_info();
        // What goes after DATA: the stored body without its last CRLF. A file body is
        // read in pieces as it goes out; only an old stored message with bare LFs is
        // copied (`wire_body`).
        let legacy;
        let (body, end): (&Body, u64) = match &*d.body {
            Body::Memory(v) => match wire_body(v) {
                std::borrow::Cow::Borrowed(b) => (&*d.body, b.len() as u64),
                std::borrow::Cow::Owned(o) => {
                    legacy = Body::Memory(o);
                    (&legacy, legacy.len())
                }
            },
            file => {
                let len = file.len();
                let tail = file.read_at(len.saturating_sub(2), 2).map_err(unreadable)?;
                (file, if *tail == *b"\r\n" { len - 2 } else { len })
            }
        };
        let mut params = String::new();
        if info.supports_feature(Extension::EightBitMime) && !body.is_ascii().map_err(unreadable)? {
            params.push_str(" BODY=8BITMIME");
        }
        let utf8 = !d.from.is_ascii() || d.rcpts.iter().any(|r| !r.is_ascii());
        if utf8 {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(Failure::permanent(
                    Code::Unknown,
                    "the message has non-ASCII addresses but the server does not offer SMTPUTF8",
                ));
            }
            params.push_str(" SMTPUTF8");
        }
        let mail = format!("MAIL FROM:<{}>{params}\r\n", d.from);
        let (mut results, accepted) = if conn.pipelining {
            pipelined_envelope(conn, mail, &d.rcpts, t).await?
        } else {
            timed(t, "MAIL", conn.command(mail)).await?;
            let mut results = Vec::new();
            for rcpt in &d.rcpts {
                let reply = timed(t, "RCPT", conn.command(format!("RCPT TO:<{rcpt}>\r\n"))).await;
                results.push(rcpt_result(rcpt, reply)?);
            }
            let accepted = results.iter().filter(|r| r.fate == Fate::Sent).count();
            if accepted > 0 {
                timed(t, "DATA", conn.command("DATA\r\n")).await?;
            }
            (results, accepted)
        };
        if accepted == 0 {
            // A connection whose RSET went unanswered is closed, never reused.
            if !reset(conn, t).await {
                close_in_place(conn).await;
            }
            return Ok(Outcome::PerRecipient {
                reply: results.first().map(|r| r.reply.clone()).unwrap_or_default(),
                results,
            });
        }
        let reply = send_body(conn, body, end, t).await?;
        let reply = response_text(&reply);
        for r in results.iter_mut().filter(|r| r.fate == Fate::Sent) {
            r.reply = reply.clone();
        }
        if accepted == d.rcpts.len() {
            Ok(Outcome::Sent { reply })
        } else {
            Ok(Outcome::PerRecipient { reply, results })
        }
    }
}

/// One recipient's answer to RCPT; `Err` when the connection broke.
pub(super) fn rcpt_result(
    rcpt: &str,
    reply: Result<lettre::transport::smtp::response::Response, Failure>,
) -> Result<RcptResult, Failure> {
    match reply {
        Ok(_) => Ok(RcptResult {
            address: rcpt.to_string(),
            fate: Fate::Sent,
            reply: String::new(),
            code: None,
        }),
        Err(f) if f.is_broken() => Err(f),
        Err(f) => Ok(RcptResult {
            address: rcpt.to_string(),
            fate: if f.is_transient() {
                Fate::Transient
            } else {
                Fate::Permanent
            },
            reply: f.reply,
            code: Some(f.code),
        }),
    }
}

/// MAIL, every RCPT and DATA in one write (RFC 2920), their replies read in order: the
/// recipients' answers and how many were taken. `Err` when MAIL was refused, DATA was
/// refused although a recipient was taken, or the connection broke. When the server
/// opened DATA with nothing to deliver (MAIL or every RCPT refused), the data is ended
/// empty at once and its refusal read, so the connection stays in step.
pub(super) async fn pipelined_envelope(
    conn: &mut Conn,
    mut batch: String,
    rcpts: &[String],
    t: Duration,
) -> Result<(Vec<RcptResult>, usize), Failure> {
    use std::fmt::Write as _;
    for rcpt in rcpts {
        let _ = write!(batch, "RCPT TO:<{rcpt}>\r\n");
    }
    batch.push_str("DATA\r\n");
    let mail = timed(t, "MAIL", conn.command(batch)).await;
    if let Err(f) = &mail
        && f.is_broken()
    {
        return Err(f.clone());
    }
    let mut results = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        let reply = timed(t, "RCPT", conn.read_response()).await;
        results.push(rcpt_result(rcpt, reply)?);
    }
    let accepted = results.iter().filter(|r| r.fate == Fate::Sent).count();
    let data = timed(t, "DATA", conn.read_response()).await;
    match &data {
        Err(f) if f.is_broken() => return Err(f.clone()),
        Ok(_) if mail.is_err() || accepted == 0 => {
            let end = conn.message_iter(std::iter::empty::<&[u8]>());
            if let Err(f) = timed(t, "end of DATA", end).await
                && f.is_broken()
            {
                return Err(f);
            }
        }
        _ => {}
    }
    mail?;
    if accepted > 0 {
        data?;
    }
    Ok((results, accepted))
}
