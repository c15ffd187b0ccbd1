//! Attempt outcomes applied to a history record: typed outcome in, new record and next
//! due time out. Pure. An outcome concerns one group of recipients (those that went
//! together through one provider of their chain); the record's status, next due time and
//! provider follow from all its recipients ([`refresh`]).

use crate::diagnosis::Code;
use crate::history::{Attempt, Diagnosis, Record, Status, WaitReason, Waiting};
use crate::provider::{Fate, Outcome, RcptResult};
use crate::store::Mutation;
use crate::time::{MINUTE_MS, Stamp};

use super::retry::RetryPolicy;

/// Where an attempt went: its provider and recipients, the first provider of their chain
/// (where mail starts again after a deferral) and the next provider that may take the
/// mail now (None: the chain is exhausted).
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// The provider of the attempt.
    pub provider: &'a str,
    /// The recipients it was for.
    pub rcpts: &'a [String],
    /// The first provider of their chain.
    pub first: &'a str,
    /// The next provider of the chain that may take the mail now.
    pub next: Option<&'a str>,
}

impl<'a> Step<'a> {
    /// A chain of one: `provider` for every waiting recipient of `record`.
    pub fn alone(provider: &'a str, rcpts: &'a [String]) -> Step<'a> {
        Step {
            provider,
            rcpts,
            first: provider,
            next: None,
        }
    }
}

/// One attempt settled: everything its outcome changed, committed together.
#[derive(Debug)]
pub struct Settled {
    /// The record as it now is.
    pub record: Record,
    /// When it is next due (None: finished).
    pub due: Option<u64>,
    /// The provider the group's mail moved on to, if it did (a failover).
    pub moved_to: Option<String>,
    /// How many recipients this attempt sent.
    pub sent: u32,
    /// What went wrong, when something did: after a partial delivery the reply to the
    /// data is a success, and a refused recipient's reply is the error.
    pub error: Option<String>,
    /// The notice it calls for (a bounce or a delay notice), to insert with it.
    pub notice: Option<Mutation>,
}

impl Settled {
    /// A record settled without an attempt to the upstream (say, a damaged body).
    pub fn without_sending(record: Record, error: Option<String>) -> Settled {
        Settled {
            record,
            due: None,
            moved_to: None,
            sent: 0,
            error,
            notice: None,
        }
    }

    /// What the writer commits for it, in one transaction: the record and its next due
    /// time, the day's tally, the notice, and the recipients sent through `provider`
    /// (counted against its limits from `at`).
    pub fn mutations(self, provider: &str, at: u64, now: u64) -> Vec<Mutation> {
        let (id, status) = (self.record.id.clone(), self.record.status);
        let mut mutations = vec![
            Mutation::Update {
                record: Box::new(self.record),
                due_ms: self.due,
            },
            Mutation::Tally {
                at_ms: now,
                outcome: status,
            },
        ];
        mutations.extend(self.notice);
        if self.sent > 0 {
            mutations.push(Mutation::Usage {
                provider: provider.to_string(),
                at,
                id,
                rcpts: self.sent,
            });
        }
        mutations
    }
}

/// The attempt settled: the record after it, its next due time, the provider the
/// group's mail moved on to, what was sent and what went wrong.
///
/// Every outcome becomes a fate per recipient of the group. When the provider could not
/// take the mail now ([`Code::moves_on`]) and the chain has a next provider, the group's
/// recipients move to it and are due at once (a failover, not a deferral). Otherwise a
/// transient failure defers them with backoff (past `give_up_after`: failed), and they
/// start again at the first provider of their chain.
pub fn apply_outcome(
    mut record: Record,
    step: Step<'_>,
    outcome: Outcome,
    retry: &RetryPolicy,
    now: u64,
) -> Settled {
    let at = Stamp::at_ms(now);
    let unavailable = outcome.unavailable();
    let sent_before = sent_count(&record);
    let (reply, results, retry_after) = fates(&record, step.rcpts, outcome);
    // Some recipients went (the reply to the data was a success): then the error is a
    // refused recipient's reply, not the data's.
    let some_went = results.iter().any(|r| r.fate == Fate::Sent);
    let received = record.received_ms().unwrap_or(now);
    let give_up = retry.gives_up(received, now);
    let moved_to = step
        .next
        .filter(|_| unavailable.is_some() && !give_up)
        .map(str::to_string);
    let diagnosis = attempt_diagnosis(&results);
    let deferred = moved_to.is_none()
        && results
            .iter()
            .any(|r| r.fate == Fate::Transient && !give_up);
    let due = deferred.then(|| {
        record.deferrals += 1;
        now + retry_after.unwrap_or_else(|| retry.delay_ms(record.deferrals))
    });
    settle_recipients(
        &mut record,
        results,
        give_up,
        step,
        moved_to.as_deref(),
        due,
    );
    record.attempts.push(Attempt {
        at,
        provider: step.provider.to_string(),
        reply,
        diagnosis,
        note: moved_to
            .as_ref()
            .map(|to| format!("provider {to:?}, next in the chain, takes the mail over")),
    });
    record.waiting = if let Some(code) = unavailable.filter(|_| moved_to.is_some()) {
        Some(Waiting {
            reason: WaitReason::Failed(code),
            until: None,
        })
    } else if deferred {
        Some(Waiting {
            reason: chain_waits_for(&record, step.first),
            until: None,
        })
    } else {
        None
    };
    let due = refresh(&mut record, now);
    let sent = u32::try_from(sent_count(&record) - sent_before).unwrap_or(u32::MAX);
    let error = attempt_error(&record, some_went);
    Settled {
        record,
        due,
        moved_to,
        sent,
        error,
        notice: None,
    }
}

fn sent_count(r: &Record) -> usize {
    r.recipients
        .iter()
        .filter(|x| x.status == Status::Sent)
        .count()
}

/// The last attempt's error, if it failed: its reply, or after a partial delivery the
/// first refused recipient's.
fn attempt_error(record: &Record, some_went: bool) -> Option<String> {
    let a = record.attempts.last().filter(|a| a.diagnosis.is_some())?;
    if !some_went {
        return Some(a.reply.clone());
    }
    Some(
        record
            .recipients
            .iter()
            .filter(|r| r.status != Status::Sent)
            .find_map(|r| r.reply.as_ref().map(|x| format!("{}: {x}", r.address)))
            .unwrap_or_else(|| a.reply.clone()),
    )
}

/// Each recipient's fate written into the record: its status and reply, where it stands
/// in its chain and when it is tried next. A deferred recipient goes to `moved_to` at
/// once (a failover), else back to its chain's first provider at `due`.
fn settle_recipients(
    record: &mut Record,
    results: Vec<RcptResult>,
    give_up: bool,
    step: Step<'_>,
    moved_to: Option<&str>,
    due: Option<u64>,
) {
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
        (r.provider, r.next_attempt_at) = match (moved_to, r.status) {
            (Some(to), Status::Deferred) => (Some(to.to_string()), None),
            (None, Status::Deferred) => (Some(step.first.to_string()), due.map(Stamp::at_ms)),
            _ => (Some(step.provider.to_string()), None),
        };
    }
}

/// The outcome as a fate per pending recipient of the group (those of `rcpts` not yet
/// finished): the reply, the fates, and the wait the upstream asked for.
fn fates(
    record: &Record,
    rcpts: &[String],
    outcome: Outcome,
) -> (String, Vec<RcptResult>, Option<u64>) {
    let all = |fate: Fate, reply: &str, code: Option<Code>| -> Vec<RcptResult> {
        record
            .recipients
            .iter()
            .filter(|r| !r.status.is_finished() && rcpts.contains(&r.address))
            .map(|r| RcptResult {
                address: r.address.clone(),
                fate,
                reply: reply.to_string(),
                code,
            })
            .collect()
    };
    match outcome {
        Outcome::Later { reply, code, after } => {
            let results = all(Fate::Transient, &reply, Some(code));
            (reply, results, Some(crate::time::duration_ms(after)))
        }
        Outcome::Sent { reply } => {
            let results = all(Fate::Sent, &reply, None);
            (reply, results, None)
        }
        Outcome::Transient { reply, code } => {
            let results = all(Fate::Transient, &reply, Some(code));
            (reply, results, None)
        }
        Outcome::Permanent { reply, code } => {
            let results = all(Fate::Permanent, &reply, Some(code));
            (reply, results, None)
        }
        Outcome::PerRecipient { reply, results } => (reply, results, None),
    }
}

/// What a deferred group waits for: a chain that is exhausted waits with its first
/// provider's diagnosis (else the last attempt's).
fn chain_waits_for(record: &Record, first: &str) -> WaitReason {
    record
        .attempts
        .iter()
        .rev()
        .find(|a| a.provider == first)
        .and_then(|a| a.diagnosis.as_ref())
        .or(record.attempts.last().and_then(|a| a.diagnosis.as_ref()))
        .map_or(WaitReason::Failed(Code::Unknown), |d| {
            WaitReason::Failed(d.code)
        })
}

/// Settles a record's status, next due time, provider and waiting time from its
/// recipients; returns its due time (None when finished). While it waits, its provider
/// is the one its earliest recipient goes to next; finished, the last one that took it.
pub fn refresh(record: &mut Record, now: u64) -> Option<u64> {
    let sent = record
        .recipients
        .iter()
        .filter(|r| r.status == Status::Sent)
        .count();
    if sent > 0 && record.sent_at.is_none() {
        record.sent_at = Some(Stamp::at_ms(now));
    }
    let next = record
        .recipients
        .iter()
        .filter(|r| !r.status.is_finished())
        .min_by_key(|r| super::chain::due_of(r));
    let Some(next) = next else {
        record.next_attempt_at = None;
        record.waiting = None;
        if let Some(a) = record.attempts.last() {
            record.provider = a.provider.clone();
        }
        record.status = if sent == record.recipients.len() {
            Status::Sent
        } else if sent == 0 {
            Status::Failed
        } else {
            Status::Partial
        };
        return None;
    };
    let due = super::chain::due_of(next).max(now);
    if let Some(p) = &next.provider {
        record.provider = p.clone();
    }
    let waits = record
        .recipients
        .iter()
        .any(|r| r.status == Status::Deferred);
    if waits || record.deferrals > 0 {
        record.status = Status::Deferred;
    }
    record.next_attempt_at = Some(Stamp::at_ms(due));
    if let Some(w) = &mut record.waiting {
        w.until = record.next_attempt_at;
    }
    Some(due)
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

/// Holds a group of recipients back until `until` without an attempt: its provider's
/// per-minute limit is reached. Returns the record's due time.
///
/// A deferral for the limit counts toward the ten after which a message goes regardless
/// once per minute of waiting: under a backlog the window frees a place every few
/// milliseconds and a waiting message is looked at each time, so counting every look would
/// send the backlog regardless within seconds, over the mailbox's limit. (A second of slack
/// for a message woken exactly when the window's oldest send leaves it.)
pub fn throttled(record: &mut Record, rcpts: &[String], until: u64, now: u64) -> u64 {
    record.deferrals += 1;
    let counted = record.throttle_counted_at.map(Stamp::ms);
    if counted.is_none_or(|t| now.saturating_add(1_000) >= t.saturating_add(MINUTE_MS)) {
        record.throttle_deferrals += 1;
        record.throttle_counted_at = Some(Stamp::at_ms(now));
    }
    for r in record
        .recipients
        .iter_mut()
        .filter(|r| !r.status.is_finished() && rcpts.contains(&r.address))
    {
        r.next_attempt_at = Some(Stamp::at_ms(until));
    }
    record.waiting = Some(Waiting {
        reason: WaitReason::PerMinuteLimit,
        until: None,
    });
    refresh(record, now).unwrap_or(until)
}

/// A group whose provider's daily recipient quota is spent: its attempt is recorded
/// with `daily-quota`; the group moves to `step.next` at once when there is one (a
/// failover), else waits until `until`. Returns the record's due time.
pub fn quota_spent(record: &mut Record, step: Step<'_>, now: u64, until: u64, limit: u32) -> u64 {
    record.attempts.push(Attempt {
        at: Stamp::at_ms(now),
        provider: step.provider.to_string(),
        reply: format!(
            "not sent: the provider's daily limit of {limit} recipients in 24 hours is reached (mailgate's own per_day_recipient_limit)"
        ),
        diagnosis: Some(Code::DailyQuota.diagnosis()),
        note: step
            .next
            .map(|to| format!("provider {to:?}, next in the chain, takes the mail over")),
    });
    if step.next.is_none() {
        record.deferrals += 1;
    }
    for r in record
        .recipients
        .iter_mut()
        .filter(|r| !r.status.is_finished() && step.rcpts.contains(&r.address))
    {
        r.status = Status::Deferred;
        (r.provider, r.next_attempt_at) = match step.next {
            Some(to) => (Some(to.to_string()), None),
            None => (Some(step.first.to_string()), Some(Stamp::at_ms(until))),
        };
    }
    record.waiting = Some(Waiting {
        reason: WaitReason::Failed(Code::DailyQuota),
        until: None,
    });
    refresh(record, now).unwrap_or(until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Recipient;

    fn record(now: u64, rcpts: &[&str]) -> Record {
        Record {
            helo: "h".into(),
            size: 1,
            provider: "m365".into(),
            ..Record::queued(
                ulid::Ulid::from_parts(now, 1).to_string(),
                Stamp::at_ms(now),
                "127.0.0.1:1".into(),
                "a@b.c".into(),
                rcpts
                    .iter()
                    .map(|a| Recipient::queued((*a).into(), Some(false), Some("m365".into())))
                    .collect(),
            )
        }
    }

    fn retry() -> RetryPolicy {
        RetryPolicy {
            initial_ms: 60_000,
            max_ms: 1_800_000,
            give_up_ms: 2 * 86_400_000,
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn an_unavailable_provider_hands_its_group_to_the_next_at_once() {
        let a = vec!["a@example.com".to_string()];
        let step = Step {
            provider: "m365",
            rcpts: &a,
            first: "m365",
            next: Some("graph"),
        };
        let out = Outcome::Transient {
            reply: "connection refused".into(),
            code: Code::ConnectionFailed,
        };
        let Settled {
            record: r,
            due,
            moved_to: moved,
            ..
        } = apply_outcome(record(NOW, &["a@example.com"]), step, out, &retry(), NOW);
        assert_eq!(moved.as_deref(), Some("graph"));
        assert_eq!(due, Some(NOW), "due at once");
        assert_eq!(r.deferrals, 0, "a failover is not a deferral");
        assert_eq!(r.status, Status::Deferred);
        assert_eq!(r.provider, "graph");
        assert_eq!(r.recipients[0].provider.as_deref(), Some("graph"));
        assert_eq!(r.attempts[0].provider, "m365");
        assert!(r.attempts[0].note.as_deref().unwrap().contains("graph"));
    }

    #[test]
    fn a_refusal_never_moves_on_and_an_exhausted_chain_starts_again_at_its_first() {
        let a = vec!["a@example.com".to_string()];
        let step = Step {
            provider: "m365",
            rcpts: &a,
            first: "m365",
            next: Some("graph"),
        };
        let out = Outcome::Permanent {
            reply: "550 5.1.1 user unknown".into(),
            code: Code::RecipientUnknown,
        };
        let Settled {
            record: r,
            due,
            moved_to: moved,
            ..
        } = apply_outcome(record(NOW, &["a@example.com"]), step, out, &retry(), NOW);
        assert_eq!((r.status, due, moved), (Status::Failed, None, None));

        let step = Step {
            provider: "graph",
            rcpts: &a,
            first: "m365",
            next: None,
        };
        let out = Outcome::Transient {
            reply: "401".into(),
            code: Code::GraphUnauthorized,
        };
        let mut before = record(NOW, &["a@example.com"]);
        before.attempts.push(Attempt {
            at: Stamp::at_ms(NOW),
            provider: "m365".into(),
            reply: "connection refused".into(),
            diagnosis: Some(Code::ConnectionFailed.diagnosis()),
            note: None,
        });
        let Settled {
            record: r,
            due,
            moved_to: moved,
            ..
        } = apply_outcome(before, step, out, &retry(), NOW);
        assert_eq!(moved, None);
        assert_eq!(due, Some(NOW + 60_000), "backoff as today");
        assert_eq!(r.recipients[0].provider.as_deref(), Some("m365"));
        assert_eq!(r.provider, "m365");
        assert_eq!(
            r.waiting.unwrap().reason,
            WaitReason::Failed(Code::ConnectionFailed),
            "the first provider's diagnosis"
        );
    }

    #[test]
    fn each_group_keeps_its_own_time_and_the_record_waits_for_the_earliest() {
        let rec = record(NOW, &["a@contoso.com", "b@example.com"]);
        let a = vec!["a@contoso.com".to_string()];
        let b = vec!["b@example.com".to_string()];
        let out = Outcome::Transient {
            reply: "451 4.3.0 try later".into(),
            code: Code::Unknown,
        };
        let Settled {
            record: rec, due, ..
        } = apply_outcome(rec, Step::alone("hve", &a), out, &retry(), NOW);
        assert_eq!(due, Some(NOW), "b has not been tried: due now");
        assert_eq!(rec.status, Status::Deferred);
        assert_eq!(
            rec.recipients[0].next_attempt_at,
            Some(Stamp::at_ms(NOW + 60_000))
        );
        let out = Outcome::Sent {
            reply: "250 ok".into(),
        };
        let Settled {
            record: rec, due, ..
        } = apply_outcome(rec, Step::alone("m365", &b), out, &retry(), NOW + 5);
        assert_eq!(due, Some(NOW + 60_000), "now a's retry");
        assert_eq!(rec.status, Status::Deferred);
        assert_eq!(rec.provider, "hve");
        assert_eq!(rec.recipients[1].status, Status::Sent);
        assert_eq!(rec.recipients[1].provider.as_deref(), Some("m365"));
        let out = Outcome::Permanent {
            reply: "550 no".into(),
            code: Code::Unknown,
        };
        let Settled {
            record: rec, due, ..
        } = apply_outcome(rec, Step::alone("hve", &a), out, &retry(), NOW + 60_000);
        assert_eq!((rec.status, due), (Status::Partial, None));
    }
}
