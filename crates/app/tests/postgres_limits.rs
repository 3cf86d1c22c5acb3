//! Limits with two replicas on one PostgreSQL database, through real HTTP: a key revoked on
//! one replica loses its open streams and waits on the other within a second, a project's
//! queue cap holds under concurrent submits to both replicas, and retention removes old
//! finished commands (never queued ones or audit records).
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use common::wait::eventually;
use common::{problem, spawn_replica, TestApp};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn replicas(db: &TestDatabase, flags: &[&str]) -> (TestApp, TestApp) {
    let a = spawn_replica(db.url(), None, flags, tempdir()).await;
    let b = spawn_replica(db.url(), Some(&a.admin), flags, tempdir()).await;
    (a, b)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoking_on_one_replica_ends_streams_and_waits_on_the_other_within_a_second() {
    let db = TestDatabase::create().await;
    let (a, b) = replicas(&db, &[]).await;
    a.project("web", 4).await;
    let (key_id, key) = a.key(json!({"name": "reader", "scopes": ["commands:read", "commands:write"]})).await;
    let v = a.submit("web", json!({"command": ["sleep", "30"]})).await;
    let id = v["id"].as_str().expect("id");
    let mut stream =
        b.client.get(format!("{}/v1/commands/{id}/events", b.base)).bearer_auth(&key).send().await.expect("events");
    assert_eq!(stream.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await.expect("first chunk").expect("chunk");
    let url = format!("{}/v1/projects/web/commands?wait=30", b.base);
    let wait = b.client.post(url).bearer_auth(&key).json(&json!({"command": ["sleep", "30"]})).send();
    let wait = tokio::spawn(wait);
    // The wait begins right after its command is stored (and a revocation that lands in between
    // is caught when the wait registers).
    eventually("the waited-for command is queued", Duration::from_secs(10), || async {
        let v: Value = b.get("/v1/projects/web/commands").await.json().await.expect("json");
        v["items"].as_array().map_or(0, Vec::len) == 2
    })
    .await;

    let revoked = Instant::now();
    let res = a.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), &a.admin, None).await;
    assert!(res.status().is_success());
    let mut body = stream.bytes_stream();
    let ended =
        tokio::time::timeout(Duration::from_secs(10), async { while let Some(Ok(_)) = body.next().await {} }).await;
    assert!(ended.is_ok(), "B's stream never ended");
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1), "B's stream ended {took:?} after the revocation on A");
    let waited = tokio::time::timeout(Duration::from_secs(5), wait).await.expect("wait ended").expect("task");
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1) + Duration::from_millis(200), "B's wait ended {took:?} after revocation");
    problem(waited.expect("response"), 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_to_two_replicas_never_pass_the_queue_cap() {
    let db = TestDatabase::create().await;
    // Nothing runs, so every accepted command stays queued.
    let (a, b) = replicas(&db, &["--concurrent-commands", "0", "--webhook-allow-private-targets"]).await;
    let receiver = adapters_webhook::testing::Receiver::start().await.expect("receiver");
    let res = a.post("/v1/webhooks", json!({"url": receiver.url("/hook"), "events": ["command.queued"]})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = a.post("/v1/projects", json!({"name": "tight", "image": "alpine:3.20", "max_queued_commands": 5})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let answers: Vec<(u16, Value)> = futures::stream::iter((0..40).map(|n| {
        let app = if n % 2 == 0 { &a } else { &b };
        async move {
            let res = app.post("/v1/projects/tight/commands", json!({"command": ["true"]})).await;
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.expect("json"))
        }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    let full = answers.iter().filter(|(s, v)| *s == 429 && v["code"] == "queue_full").count();
    assert_eq!((accepted, full), (5, 35), "{answers:?}");
    let listed: Value = b.get("/v1/projects/tight/commands?limit=200").await.json().await.expect("json");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(5), "refused commands left no row");
    receiver.wait_for(5, Duration::from_secs(20)).await;
    // Time for any further event to fan out and be sent, had one been written.
    // Fixed sleep: proves an event is *not* sent; nothing happens to wait for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 5, "only accepted commands were announced (no outbox event for refusals)");
}

/// Old finished commands and deliveries go, with the retention settings of `a` and `b` (the same
/// replica on SQLite); queued and running commands and every audit record stay.
async fn retention_removes_old_finished_commands_only(a: &TestApp, b: &TestApp) {
    let receiver = adapters_webhook::testing::Receiver::start().await.expect("receiver");
    let res = a.post("/v1/webhooks", json!({"url": receiver.url("/hook"), "events": ["command.succeeded"]})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let hook: Value = res.json().await.expect("json");
    let hook_id = hook["id"].as_str().expect("id").to_owned();
    a.project("web", 1).await;
    let (done, _) = a.run("web", json!({"command": ["true"]})).await;
    let done_id = done["id"].as_str().expect("id").to_owned();
    receiver.wait_for(1, Duration::from_secs(20)).await;
    // The only slot runs a long command, so the next one stays queued.
    let running = a.submit("web", json!({"command": ["sleep", "30"]})).await["id"].as_str().expect("id").to_owned();
    let queued = a.submit("web", json!({"command": ["true"]})).await["id"].as_str().expect("id").to_owned();
    eventually(&format!("retention removes {done_id} and its delivery"), Duration::from_secs(20), || async {
        let gone = b.get(&format!("/v1/commands/{done_id}")).await.status() == StatusCode::NOT_FOUND;
        let deliveries: Value = b.get(&format!("/v1/webhooks/{hook_id}/deliveries")).await.json().await.expect("json");
        gone && deliveries["items"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert_eq!(b.get(&format!("/v1/commands/{done_id}/output")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(b.get(&format!("/v1/commands/{done_id}/events")).await.status(), StatusCode::NOT_FOUND);
    for id in [&running, &queued] {
        let v: Value = b.get(&format!("/v1/commands/{id}")).await.json().await.expect("json");
        assert!(v["status"] == "running" || v["status"] == "queued", "{v}");
    }
    let audit = b.get("/v1/audit-log?limit=200").await.text().await.expect("audit");
    assert!(audit.contains(&done_id), "the audit records of a deleted command stay");
    let verify: Value = b.get("/v1/audit-log/verify").await.json().await.expect("json");
    assert_eq!(verify["ok"], true, "{verify}");
    let metrics =
        a.client.get(format!("{}/metrics", a.base)).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("retention_deleted_total{kind=\"commands\"}"), "metric missing");
    a.post(&format!("/v1/commands/{running}/cancel"), json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_on_postgres_deletes_old_finished_commands_and_deliveries() {
    let db = TestDatabase::create().await;
    let flags = [
        "--webhook-allow-private-targets",
        "--command-retention",
        "1s",
        "--webhook-retention",
        "1s",
        "--retention-interval",
        "1s",
    ];
    let (a, b) = replicas(&db, &flags).await;
    retention_removes_old_finished_commands_only(&a, &b).await;
}
