//! `mailgate health`, the containers' probe, run as the binary: 0 and `ok` while the
//! daemon's `/healthz` says ok; 1 with the reason when the daemon is gone, answers 503,
//! or does not answer within 5 s (the probe itself ends then).

mod common;

use std::time::{Duration, Instant};

use common::{DaemonProcess, TestEnv, cli, write};

/// The configuration with its status listener on `port`.
fn env_with_status_on(port: u16) -> TestEnv {
    let env = TestEnv::new("", "");
    common::status_on(&env, port);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_ok_while_the_daemon_is_healthy_and_why_not_otherwise() {
    let env = TestEnv::new("", "");
    write(&env, "");
    let mut d = DaemonProcess::start(&env.config_path);
    let (code, out, err) = cli(&env, &["health"]);
    assert_eq!((code, out.trim()), (0, "ok"), "{err}");
    d.terminate();
    let (code, out, err) = cli(&env, &["health"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("mailgate health: mailgate is not running at 127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_or_silent_status_listener_fails_the_probe_within_5_s() {
    // A listener that answers what the daemon answers with a store it cannot write to.
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "store is not writable (disk full or I/O error)",
            )
        }),
    );
    let sick = common::serve(app).await;
    let env = env_with_status_on(sick.port());
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&env, &["health"]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("/healthz answered 503: store is not writable (disk full or I/O error)"),
        "{err}"
    );

    // One that takes the connection and never answers.
    let env = env_with_status_on(common::silent_listener().await.port());
    let started = Instant::now();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&env, &["health"]))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("within 5 s"), "{err}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "{took:?}"
    );
}
