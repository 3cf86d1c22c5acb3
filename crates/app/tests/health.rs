//! `rdev-api health`: the container health check (the image has no curl). Exit 0 exactly when
//! the replica's `/readyz` answers 200; otherwise 1 and one line saying why.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::process::Output;

use adapters_webhook::testing::{Receiver, Reply};
use common::spawn_app;

/// Runs the probe without blocking the runtime that serves the replica (or the fake) under test.
async fn health(args: &[&str], listen_addr: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rdev-api"));
    cmd.arg("health").args(args).env_remove("LISTEN_ADDR").env("RUST_LOG", "off");
    if let Some(addr) = listen_addr {
        cmd.env("LISTEN_ADDR", addr);
    }
    cmd.output().await.expect("run rdev-api health")
}

fn one_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line of reason: {err:?}");
    err
}

#[tokio::test]
async fn a_ready_replica_passes_through_listen_addr_even_when_it_is_unspecified() {
    let app = spawn_app().await;
    let port = app.base.rsplit(':').next().expect("port").to_owned();
    let by_url = health(&["--url", &format!("{}/readyz", app.base)], None).await;
    assert_eq!(by_url.status.code(), Some(0), "{}", String::from_utf8_lossy(&by_url.stderr));
    // The compose file's replicas listen on 0.0.0.0: the probe goes to loopback.
    let by_env = health(&[], Some(&format!("0.0.0.0:{port}"))).await;
    assert_eq!(by_env.status.code(), Some(0), "{}", String::from_utf8_lossy(&by_env.stderr));
}

#[tokio::test]
async fn a_replica_that_answers_503_fails_with_its_reason() {
    let fake = Receiver::start().await.expect("receiver");
    fake.set_default(Reply::status(503).with_body(r#"{"ready":false,"database":"connection refused"}"#));
    let out = health(&["--url", &fake.url("/readyz")], None).await;
    assert_eq!(out.status.code(), Some(1));
    let reason = one_line(&out);
    assert!(reason.contains("503") && reason.contains("connection refused"), "{reason}");
}

#[tokio::test]
async fn nothing_listening_fails_with_one_line() {
    // A port that was just free: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let out = health(&[], Some(&format!("127.0.0.1:{port}"))).await;
    assert_eq!(out.status.code(), Some(1));
    let reason = one_line(&out);
    assert!(reason.contains(&format!("127.0.0.1:{port}/readyz")), "{reason}");
}

#[tokio::test]
async fn a_replica_that_hangs_fails_after_the_timeout() {
    let fake = Receiver::start().await.expect("receiver");
    fake.set_default(Reply::Hang);
    let started = std::time::Instant::now();
    let out = health(&["--url", &fake.url("/readyz"), "--timeout-seconds", "1"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "bounded by the timeout");
    assert!(one_line(&out).contains("timed out"));
}
