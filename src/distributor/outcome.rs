//! Attempt outcomes applied to a history record: typed outcome in, new record and next
//! due time out. Pure.

use crate::history::{Attempt, Diagnosis, Record, Status, Waiting};
use crate::provider::diagnosis::Code;
use crate::provider::{Fate, Outcome, RcptResult};
use crate::time::rfc3339;

use super::retry::RetryPolicy;

/// The record after an attempt, and its next due time (None when finished).
///
/// Every outcome becomes a fate per pending recipient; the message's status follows from
/// its recipients: any still waiting -> `deferred`; else all sent -> `sent`, all failed
/// -> `failed`, a mix -> `partial`. A transient failure past `give_up_after` is failed.
pub fn apply_outcome(
    mut record: Record,
    outcome: Outcome,
    retry: &RetryPolicy,
    now: u64,
) -> (Record, Option<u64>) {
    let at = rfc3339(now);
    let pending: Vec<String> = record
        .recipients
        .iter()
        .filter(|r| !r.status.is_finished())
        .map(|r| r.address.clone())
        .collect();
    let all = |fate: Fate, reply: &str, code: Option<Code>| -> Vec<RcptResult> {
        pending
            .iter()
            .map(|a| RcptResult {
                address: a.clone(),
                fate,
                reply: reply.to_string(),
                code,
            })
            .collect()
    };
    let mut retry_after = None;
    let (reply, results) = match outcome {
        Outcome::Later { reply, code, after } => {
            retry_after = Some(crate::time::duration_ms(after));
            let results = all(Fate::Transient, &reply, Some(code));
            (reply, results)
        }
        Outcome::Sent { reply } => {
            let results = all(Fate::Sent, &reply, None);
            (reply, results)
        }
        Outcome::Transient { reply, code } => {
            let results = all(Fate::Transient, &reply, Some(code));
            (reply, results)
        }
        Outcome::Permanent { reply, code } => {
            let results = all(Fate::Permanent, &reply, Some(code));
            (reply, results)
        }
        Outcome::PerRecipient { reply, results } => (reply, results),
    };
    let received = ulid::Ulid::from_string(&record.id)
        .map(|u| u.timestamp_ms())
        .unwrap_or(now);
    let give_up = retry.gives_up(received, now);
    let diagnosis = attempt_diagnosis(&results);
    for res in results {
        let Some(r) = record
            .recipients
            .iter_mut()
            .find(|r| r.address == res.address && !r.status.is_finished())
        else {
            continue;
        };
        r.status = match res.fate {
            Fate::Sent => Status::Sent,
            Fate::Permanent => Status::Failed,
            Fate::Transient if give_up => Status::Failed,
            Fate::Transient => Status::Deferred,
        };
        r.reply = Some(res.reply);
    }
    record.attempts.push(Attempt {
        at: at.clone(),
        provider: record.provider.clone(),
        reply,
        diagnosis,
        note: None,
    });
    let waiting = record.recipients.iter().any(|r| !r.status.is_finished());
    let sent = record
        .recipients
        .iter()
        .filter(|r| r.status == Status::Sent)
        .count();
    if waiting {
        record.deferrals += 1;
        record.status = Status::Deferred;
        let due = now + retry_after.unwrap_or_else(|| retry.delay_ms(record.deferrals));
        record.next_attempt_at = Some(rfc3339(due));
        record.waiting = Some(Waiting {
            reason: record
                .attempts
                .last()
                .and_then(|a| a.diagnosis.as_ref())
                .map_or_else(|| "unknown".to_string(), |d| d.code.to_string()),
            until: record.next_attempt_at.clone(),
        });
        if sent > 0 && record.sent_at.is_none() {
            record.sent_at = Some(at);
        }
        return (record, Some(due));
    }
    record.next_attempt_at = None;
    record.waiting = None;
    record.status = if sent == record.recipients.len() {
        Status::Sent
    } else if sent == 0 {
        Status::Failed
    } else {
        Status::Partial
    };
    if sent > 0 && record.sent_at.is_none() {
        record.sent_at = Some(at);
    }
    (record, None)
}

/// The diagnosis of one attempt: it describes that attempt. When recipients had different
/// fates it says how many were accepted and which were refused, with their replies, then
/// explains the refusal's code; it never calls an accepted message refused.
fn attempt_diagnosis(results: &[RcptResult]) -> Option<Diagnosis> {
    let refused: Vec<&RcptResult> = results.iter().filter(|r| r.fate != Fate::Sent).collect();
    // The typed code becomes words here, where the history record is written.
    let first = refused.iter().find_map(|r| r.code)?.diagnosis();
    let accepted = results.len() - refused.len();
    if refused.len() == results.len() && refused.iter().all(|r| r.reply == refused[0].reply) {
        return Some(first);
    }
    let list = refused
        .iter()
        .map(|r| format!("{} ({})", r.address, r.reply))
        .collect::<Vec<_>>()
        .join("; ");
    let head = if accepted > 0 {
        format!(
            "The upstream accepted the message for {accepted} of {} recipients and refused {}: {list}.",
            results.len(),
            refused.len()
        )
    } else {
        format!("The upstream refused every recipient: {list}.")
    };
    Some(Diagnosis {
        code: first.code,
        explanation: format!("{head} {}", first.explanation),
        fix: first.fix,
    })
}

/// The record of a message held back by its provider's per-minute limit until `until`.
pub fn throttle_deferral(mut record: Record, until: u64) -> Record {
    record.deferrals += 1;
    record.throttle_deferrals += 1;
    record.status = Status::Deferred;
    record.next_attempt_at = Some(rfc3339(until));
    record.waiting = Some(Waiting {
        reason: "per-minute-limit".into(),
        until: record.next_attempt_at.clone(),
    });
    record
}

/// The record of a message waiting for its provider's daily recipient quota.
pub fn quota_deferral(mut record: Record, now: u64, until: u64, limit: u32) -> Record {
    record.deferrals += 1;
    record.status = Status::Deferred;
    record.next_attempt_at = Some(rfc3339(until));
    record.waiting = Some(Waiting {
        reason: Code::DailyQuota.as_str().into(),
        until: record.next_attempt_at.clone(),
    });
    for r in record
        .recipients
        .iter_mut()
        .filter(|r| !r.status.is_finished())
    {
        r.status = Status::Deferred;
    }
    record.attempts.push(Attempt {
        at: rfc3339(now),
        provider: record.provider.clone(),
        reply: format!(
            "not sent: the provider's daily limit of {limit} recipients in 24 hours is reached (mailgate's own per_day_recipient_limit)"
        ),
        diagnosis: Some(Code::DailyQuota.diagnosis()),
        note: None,
    });
    record
}
