//! Sending within the provider's limits, with tokio's paused clock (no real waiting):
//! per-minute throttling with deferrals of at most a minute, the eleventh deferral sent
//! regardless, no limit at 0, the daily recipient quota across a restart, a dead provider
//! that does not hold up a live one, and retention.

mod common;

use std::time::Duration;

use common::TestEnv;
use mailgate::Daemon;
use mailgate::distributor::DeliveryEvent;
use mailgate::history::{Record, Status};
use mailgate::pipeline::{Client, Origin, Submission};
use tokio::sync::broadcast::Receiver;

/// Long in virtual time: the scheduler's own timers always come first.
const VIRTUAL_WAIT: Duration = Duration::from_secs(2 * 3600);

/// With the clock paused, tokio jumps to the next timer whenever every task waits; real
/// work (fsyncs in the store's writer thread, file writes) would then let far timers
/// fire early. A 1 ms ticker keeps the jumps small, so virtual time flows evenly while
/// real I/O is in progress. Decisions are checked against the dispatch times the store
/// keeps, which are exact.
fn ticker() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

/// The dispatch times of the sends counted against provider limits.
fn dispatch_times(daemon: &Daemon) -> Vec<u64> {
    let mut t: Vec<u64> = daemon
        .pipeline
        .store()
        .usage_since(0)
        .unwrap()
        .into_iter()
        .map(|(_, at, _, _)| at)
        .collect();
    t.sort_unstable();
    t
}

fn txn(n: usize, rcpts: &[&str]) -> Submission {
    Submission {
        origin: Origin::Smtp {
            smtputf8: false,
            tls: false,
        },
        client: Client {
            addr: "127.0.0.1:1000".parse().unwrap(),
            helo: Some("erp".into()),
            auth_login: None,
            local_user: None,
        },
        mail_from: "app@erp.local".into(),
        rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        raw: format!("Subject: m{n}\r\n\r\nbody {n}\r\n").into_bytes(),
        longest_line: None,
        as_user: None,
        provider: None,
    }
}

fn env(outbox_extra: &str, distributor: &str) -> TestEnv {
    let env = TestEnv::new("", "");
    let text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "kind = \"eml\"\n",
        &format!("kind = \"eml\"\n{outbox_extra}\n"),
    );
    std::fs::write(
        &env.config_path,
        format!("{text}\n[distributor]\n{distributor}\n"),
    )
    .unwrap();
    env
}

async fn submit_n(daemon: &Daemon, n: usize, rcpts: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(daemon.pipeline.commit(txn(i, rcpts)).await.unwrap());
    }
    ids
}

/// A daemon with sending paused whose outbox provider has `limits`, holding `n`
/// messages to `rcpts`: the env, the daemon, its delivery events, and the ids.
async fn paused_with(
    limits: &str,
    n: usize,
    rcpts: &[&str],
) -> (TestEnv, Daemon, Receiver<DeliveryEvent>, Vec<String>) {
    let env = env(limits, "enabled = false");
    let daemon = Daemon::start(env.config()).await.unwrap();
    let events = daemon.distributor.subscribe();
    let ids = submit_n(&daemon, n, rcpts).await;
    (env, daemon, events, ids)
}

/// Twelve messages to one recipient, held while paused under `limits`, then released
/// and run until all are sent: the env, the daemon, the time of the release, the records.
async fn twelve_sent(limits: &str) -> (TestEnv, Daemon, u64, Vec<Record>) {
    let (env, daemon, mut events, _ids) = paused_with(limits, 12, &["a@contoso.com"]).await;
    let t0 = daemon.distributor.now();
    daemon.distributor.resume();
    let all = run_until_all_sent(&daemon, &mut events).await;
    (env, daemon, t0, all)
}

/// [`run_until`] every message is sent.
async fn run_until_all_sent(daemon: &Daemon, events: &mut Receiver<DeliveryEvent>) -> Vec<Record> {
    run_until(daemon, events, |all| {
        all.iter().all(|r| r.status == Status::Sent)
    })
    .await
}

/// Collects events until `done` says so; checks each throttle deferral waits <= 60 s.
async fn run_until(
    daemon: &Daemon,
    events: &mut Receiver<DeliveryEvent>,
    mut done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    tokio::time::timeout(VIRTUAL_WAIT, async {
        loop {
            let ev = events.recv().await.unwrap();
            let rec = daemon.pipeline.store().record(&ev.id).unwrap().unwrap();
            if rec.status == Status::Deferred && rec.attempts.is_empty() {
                let next = rec.next_attempt_at.unwrap().ms();
                let now = daemon.distributor.now();
                assert!(
                    next <= now + 60_000,
                    "a throttle deferral waits at most a minute"
                );
            }
            let all = daemon.pipeline.store().list(10_000, |_| true).unwrap();
            if done(&all) {
                return all;
            }
        }
    })
    .await
    .expect("the scheduler gets there")
}

#[tokio::test(start_paused = true)]
async fn five_a_minute_sends_five_then_the_rest_later() {
    let _t = ticker();
    let (_env, daemon, t0, all) = twelve_sent("per_minute_limit = 5").await;
    let times = dispatch_times(&daemon);
    assert_eq!(times.len(), 12);
    assert_eq!(
        times.iter().filter(|&&t| t < t0 + 60_000).count(),
        5,
        "{times:?}"
    );
    for w in times.windows(6) {
        assert!(
            w[5] - w[0] >= 60_000,
            "six sends within a minute: {times:?}"
        );
    }
    let deferred: Vec<&Record> = all.iter().filter(|r| r.throttle_deferrals > 0).collect();
    assert_eq!(deferred.len(), 7);
    assert!(
        deferred
            .iter()
            .all(|r| (1..=r.deferrals).contains(&r.throttle_deferrals) && r.attempts.len() == 1),
        "held back by the limit only (counted once a minute of waiting), one attempt each"
    );
    assert!(
        times[11] - t0 < 3 * 60_000,
        "12 messages at 5/min take under 3 minutes"
    );
    daemon.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_eleventh_deferral_is_sent_regardless() {
    let _t = ticker();
    let (_env, daemon, _t0, all) = twelve_sent("per_minute_limit = 1").await;
    let bypassed: Vec<&Record> = all
        .iter()
        .filter(|r| r.attempts.last().unwrap().note.is_some())
        .collect();
    assert!(!bypassed.is_empty());
    for r in &bypassed {
        assert_eq!(r.throttle_deferrals, 10);
        assert!(
            r.attempts[0]
                .note
                .as_deref()
                .unwrap()
                .contains("regardless of the per-minute limit")
        );
    }
    assert!(all.iter().all(|r| r.throttle_deferrals <= 10));
    daemon.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn limit_zero_sends_everything_at_once() {
    let _t = ticker();
    let (_env, daemon, t0, all) = twelve_sent("per_minute_limit = 0").await;
    assert!(
        all.iter()
            .all(|r| r.throttle_deferrals == 0 && r.deferrals == 0)
    );
    assert!(all.iter().all(|r| r.status == Status::Sent));
    assert!(
        dispatch_times(&daemon).iter().all(|&t| t < t0 + 60_000),
        "no throttle wait"
    );
    daemon.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn daily_recipient_quota_survives_a_restart() {
    let _t = ticker();
    let (env, daemon, mut events, ids) = paused_with(
        "per_day_recipient_limit = 4",
        3,
        &["a@contoso.com", "b@contoso.com"],
    )
    .await;
    daemon.distributor.resume();
    let all = run_until(&daemon, &mut events, |all| {
        all.iter().all(|r| r.status != Status::Queued)
    })
    .await;
    let status = |id: &str| all.iter().find(|r| r.id == id).unwrap().clone();
    assert_eq!(status(&ids[0]).status, Status::Sent);
    assert_eq!(status(&ids[1]).status, Status::Sent);
    let third = status(&ids[2]);
    assert_eq!(third.status, Status::Deferred);
    let d = third.attempts[0].diagnosis.as_ref().unwrap();
    assert_eq!(d.code.as_str(), "daily-quota");
    assert!(
        third.attempts[0]
            .reply
            .contains("daily limit of 4 recipients")
    );
    let next = third.next_attempt_at.unwrap().ms();
    assert!(
        next > daemon.distributor.now() + 23 * 3600 * 1000,
        "waits for the window"
    );
    daemon.shutdown().await;

    // After a restart the window is rebuilt from the store: the third still waits.
    let daemon = Daemon::start(env.config()).await.unwrap();
    let rec = daemon.pipeline.store().record(&ids[2]).unwrap().unwrap();
    assert_eq!(rec.status, Status::Deferred);
    // Make it due now, as `retry` would: the quota, not the schedule, holds it back.
    daemon
        .pipeline
        .store()
        .write(vec![mailgate::store::Mutation::DueNow {
            id: ids[2].clone(),
            now_ms: daemon.distributor.now(),
        }])
        .await
        .unwrap();
    let mut events = daemon.distributor.subscribe();
    daemon.distributor.resume();
    let extra = daemon
        .pipeline
        .commit(txn(9, &["c@contoso.com"]))
        .await
        .unwrap();
    let all = run_until(&daemon, &mut events, |all| {
        all.iter()
            .any(|r| r.id == extra && r.status != Status::Queued)
    })
    .await;
    let third = all.iter().find(|r| r.id == ids[2]).unwrap();
    assert_eq!(third.status, Status::Deferred, "{third:#?}");
    assert_eq!(
        all.iter().find(|r| r.id == extra).unwrap().status,
        Status::Deferred
    );
    assert_eq!(
        daemon
            .distributor
            .provider_stats("outbox")
            .recipients_last_day,
        4
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_dead_provider_does_not_hold_up_a_live_one() {
    use common::upstream::{Script, Upstream};
    let silent = Upstream::start(Script {
        silent: true,
        ..Script::default()
    })
    .await;
    let env = TestEnv::new(
        "",
        &format!(
            "{}max_connections = 2\ntimeout = \"20s\"\n\
             [[user]]\nname = \"legacy\"\nemail = \"legacy@contoso.com\"\nmatch_senders = [\"*@dead.local\"]\nprovider = \"dead\"\n",
            common::plain_smtp("dead", silent.addr.port())
        ),
    );
    let daemon = Daemon::start(env.config()).await.unwrap();
    let mut events = daemon.distributor.subscribe();
    for i in 0..20 {
        let mut t = txn(i, &["x@contoso.com"]);
        t.mail_from = "app@dead.local".into();
        daemon.pipeline.commit(t).await.unwrap();
    }
    let live = submit_n(&daemon, 5, &["a@contoso.com"]).await;
    // The live provider's mail is sent while the dead one's connections hang.
    let mut sent = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while sent < live.len() {
            let ev = events.recv().await.unwrap();
            if live.contains(&ev.id) && ev.status == Status::Sent {
                sent += 1;
            }
        }
    })
    .await
    .expect("live mail flows");
    assert!(daemon.distributor.provider_stats("dead").in_flight <= 2);
    daemon.shutdown().await;
}

#[tokio::test]
async fn retention_deletes_finished_records_and_keeps_waiting_ones() {
    use mailgate::history::Recipient;
    let env = TestEnv::new("", "");
    let store = mailgate::store::Store::open(&env.config().store.path).unwrap();
    let now = mailgate::time::now_ms();
    let old = now - 40 * 86_400_000;
    let mk = |ms: u64, status: Status| {
        let id = ulid::Ulid::from_parts(ms, 7).to_string();
        Record {
            status,
            helo: "h".into(),
            size: 1,
            provider: "outbox".into(),
            ..Record::queued(
                id,
                mailgate::time::Stamp::at_ms(ms),
                "127.0.0.1:1".into(),
                "a@b.c".into(),
                vec![Recipient {
                    address: "x@y.z".into(),
                    status,
                    reply: None,
                    blind: None,
                    provider: None,
                    next_attempt_at: None,
                }],
            )
        }
    };
    let old_sent = mk(old, Status::Sent);
    let old_failed = mk(old + 1, Status::Failed);
    let old_deferred = mk(old + 2, Status::Deferred);
    let recent_sent = mk(now - 86_400_000, Status::Sent);
    for r in [&old_sent, &old_failed, &old_deferred, &recent_sent] {
        store
            .insert(b"x\r\n".to_vec(), r.clone(), r.received_at.ms())
            .await
            .unwrap();
    }
    let deleted = store
        .prune(Duration::from_secs(30 * 86_400), now)
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    assert!(store.record(&old_sent.id).unwrap().is_none());
    assert!(
        store.message(&old_sent.id).unwrap().is_none(),
        "the body goes too"
    );
    assert!(store.record(&old_failed.id).unwrap().is_none());
    assert!(
        store.record(&old_deferred.id).unwrap().is_some(),
        "unfinished records stay"
    );
    assert!(store.message(&old_deferred.id).unwrap().is_some());
    assert!(store.record(&recent_sent.id).unwrap().is_some());
    store.close().await;
}
