//! Crash safety with a real process: concurrent clients submit, the daemon is killed with
//! SIGKILL in the middle of the burst, restarted on the same store, and every message
//! that got a 250 must reach the outbox.

mod common;

use std::time::Duration;

use common::{DaemonProcess, TestEnv};

const CLIENTS: usize = 8;
const KILL_AFTER: usize = 40;
const PER_CLIENT_MAX: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_acknowledged() {
    let env = TestEnv::new("", "");
    let mut daemon = DaemonProcess::start(&env.config_path);
    let addr = daemon.smtp;
    let acked: common::Acked = Default::default();
    let (clients, count) = common::burst(addr, CLIENTS, PER_CLIENT_MAX, "TOKEN", &acked);
    // Kill as soon as enough have been acknowledged, while the clients are mid-burst.
    common::until_count(&count, KILL_AFTER).await;
    daemon.kill();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= KILL_AFTER);
    assert!(
        acked.len() < CLIENTS * PER_CLIENT_MAX,
        "the kill happened mid-burst"
    );

    let mut daemon = DaemonProcess::start(&env.config_path);
    let already: Vec<String> = env.outbox_ids();
    let pending: Vec<String> = acked
        .values()
        .filter(|id| !already.contains(id))
        .cloned()
        .collect();
    daemon.wait_sent(&pending, Duration::from_secs(60));

    let delivered = env.outbox_ids();
    let mut lost = 0;
    for (token, id) in &acked {
        if delivered.contains(id) {
            let eml = String::from_utf8(env.eml(id)).unwrap();
            assert!(
                eml.contains(&format!("Subject: {token}\r\n")),
                "{id} holds {token}"
            );
        } else {
            lost += 1;
        }
    }
    println!(
        "acknowledged={} delivered={} lost={lost} redelivered_after_restart={}",
        acked.len(),
        delivered.len(),
        pending.len()
    );
    assert_eq!(lost, 0);
    assert_eq!(
        daemon.terminate().code(),
        Some(0),
        "graceful SIGTERM exits 0"
    );
}
