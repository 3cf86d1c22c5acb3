//! Limits through real HTTP: revocation and expiry end a key's open event streams and waits,
//! streams per key are capped, queues per project are bounded, and retention removes old
//! finished commands and deliveries (never audit records).
#![allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::wait::eventually;
use common::{problem, spawn_app, spawn_app_with, TestApp};
use futures::StreamExt;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

/// A long command of `project` and an SSE response for it, read by `key`.
async fn open_stream(app: &TestApp, project: &str, key: &str) -> (String, Response) {
    let v = app.submit(project, json!({"command": ["sleep", "30"]})).await;
    let id = v["id"].as_str().expect("id").to_owned();
    let res =
        app.client.get(format!("{}/v1/commands/{id}/events", app.base)).bearer_auth(key).send().await.expect("events");
    assert_eq!(res.status(), StatusCode::OK);
    (id, res)
}

/// Reads the stream until it ends; returns how long that took after `since`.
async fn ends_after(res: Response, since: Instant, within: Duration) -> Duration {
    let mut body = res.bytes_stream();
    let read = async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    };
    tokio::time::timeout(within + Duration::from_secs(5), read).await.expect("the stream never ended");
    since.elapsed()
}

async fn reader_key(app: &TestApp, extra: Value) -> (String, String) {
    let mut body = json!({"name": "reader", "scopes": ["commands:read", "commands:write"]});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    app.key(body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_event_stream_within_a_second() {
    let app = spawn_app().await;
    app.project("web", 4).await;
    let (key_id, key) = reader_key(&app, json!({})).await;
    let (_, mut res) = open_stream(&app, "web", &key).await;
    // The first event (status queued) arrives: the stream is live.
    tokio::time::timeout(Duration::from_secs(5), res.chunk()).await.expect("first chunk").expect("chunk");
    let revoked = Instant::now();
    assert_eq!(app.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), &app.admin, None).await.status(), 200);
    let took = ends_after(res, revoked, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "the stream ended {took:?} after revocation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_pending_wait_within_a_second() {
    let app = spawn_app().await;
    app.project("web", 4).await;
    let (key_id, key) = reader_key(&app, json!({})).await;
    let url = format!("{}/v1/projects/web/commands?wait=30", app.base);
    let pending = app.client.post(url).bearer_auth(&key).json(&json!({"command": ["sleep", "30"]})).send();
    let pending = tokio::spawn(pending);
    // The wait begins right after the command is stored (and a revocation that lands in between
    // is caught when the wait registers).
    eventually("the command is queued", Duration::from_secs(10), || async { listed(&app, "web").await == 1 }).await;
    let revoked = Instant::now();
    assert_eq!(app.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), &app.admin, None).await.status(), 200);
    let res = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("wait ended").expect("task");
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(1), "the wait ended {took:?} after revocation");
    problem(res.expect("response"), 401, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_key_ends_its_event_stream_at_expiry() {
    let app = spawn_app().await;
    app.project("web", 4).await;
    let expires = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let (_, key) = reader_key(&app, json!({"expires_at": expires.to_rfc3339()})).await;
    let (_, res) = open_stream(&app, "web", &key).await;
    let started = Instant::now();
    let took = ends_after(res, started, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(3), "the stream ended {took:?} after it started, key expiring after 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_key_are_capped() {
    let app = spawn_app_with(&["--max-streams-per-key", "2"]).await;
    app.project("web", 4).await;
    let (_, key) = reader_key(&app, json!({})).await;
    let (id, first) = open_stream(&app, "web", &key).await;
    let (_, _second) = open_stream(&app, "web", &key).await;
    let third = app.call(Method::GET, &format!("/v1/commands/{id}/events"), &key, None).await;
    assert_eq!(third.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let p = problem(third, 429, "rate_limited").await;
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("event streams")), "{p}");
    // Another key is not affected by this one's streams.
    let other = app.get(&format!("/v1/commands/{id}/events")).await;
    assert_eq!(other.status(), StatusCode::OK);
    drop(other);
    drop(first);
}

/// How many commands `project` has.
async fn listed(app: &TestApp, project: &str) -> usize {
    let v: Value = app.get(&format!("/v1/projects/{project}/commands?limit=200")).await.json().await.expect("json");
    v["items"].as_array().map_or(0, Vec::len)
}

/// Fills a project (queue cap 2; its one slot held by a long command) and checks the refusal.
async fn a_full_queue_refuses_with_queue_full(app: &TestApp) {
    let res = app
        .post(
            "/v1/projects",
            json!({"name": "tight", "image": "alpine:3.20", "max_concurrent_commands": 1, "max_queued_commands": 2}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let created: Value = res.json().await.expect("json");
    assert_eq!(created["max_queued_commands"], 2);
    // Holds the only slot, so later commands stay queued.
    let running = app.submit("tight", json!({"command": ["sleep", "30"]})).await;
    let running_id = running["id"].as_str().expect("id").to_owned();
    eventually("the first command starts", Duration::from_secs(20), || async {
        app.get(&format!("/v1/commands/{running_id}")).await.json::<Value>().await.expect("json")["status"] == "running"
    })
    .await;
    for _ in 0..2 {
        app.submit("tight", json!({"command": ["true"]})).await;
    }
    let before = listed(app, "tight").await;
    let refused = app.post("/v1/projects/tight/commands", json!({"command": ["true"]})).await;
    assert!(refused.headers().get("retry-after").is_some(), "a queue_full answer says when to retry");
    let p = problem(refused, 429, "queue_full").await;
    assert!(p["detail"].as_str().is_some_and(|d| d.contains('2')), "{p}");
    assert_eq!(listed(app, "tight").await, before, "a refused command leaves no row");
    // Making room (cancelling one) lets the next one in; so does raising the cap.
    let patched =
        app.call(Method::PATCH, "/v1/projects/tight", &app.admin, Some(json!({"max_queued_commands": 3}))).await;
    assert_eq!(patched.status(), StatusCode::OK);
    app.submit("tight", json!({"command": ["true"]})).await;
    problem(app.post("/v1/projects/tight/commands", json!({"command": ["true"]})).await, 429, "queue_full").await;
    let bad = app.call(Method::PATCH, "/v1/projects/tight", &app.admin, Some(json!({"max_queued_commands": 0}))).await;
    problem(bad, 400, "validation_failed").await;
    let bad =
        app.post("/v1/projects", json!({"name": "huge", "image": "alpine:3.20", "max_queued_commands": 100_001})).await;
    problem(bad, 400, "validation_failed").await;
    app.post(&format!("/v1/commands/{running_id}/cancel"), json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_queue_is_bounded() {
    let app = spawn_app().await;
    a_full_queue_refuses_with_queue_full(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_default_bounds_projects_without_their_own_cap() {
    let app = spawn_app_with(&["--max-queued-commands", "1", "--concurrent-commands", "0"]).await;
    app.project("web", 1).await;
    let v: Value = app.get("/v1/projects/web").await.json().await.expect("json");
    assert_eq!(v["max_queued_commands"], Value::Null, "null: the server default applies");
    app.submit("web", json!({"command": ["true"]})).await;
    problem(app.post("/v1/projects/web/commands", json!({"command": ["true"]})).await, 429, "queue_full").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_finished_commands_and_deliveries() {
    let flags = [
        "--webhook-allow-private-targets",
        "--command-retention",
        "1s",
        "--webhook-retention",
        "1s",
        "--retention-interval",
        "1s",
    ];
    let app = spawn_app_with(&flags).await;
    retention_removes_old_finished_commands_only(&app, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_writes_no_webhook_event() {
    let app = spawn_app_with(&["--webhook-allow-private-targets", "--concurrent-commands", "0"]).await;
    let receiver = adapters_webhook::testing::Receiver::start().await.expect("receiver");
    let res = app.post("/v1/webhooks", json!({"url": receiver.url("/hook"), "events": ["command.queued"]})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let hook: Value = res.json().await.expect("json");
    let res = app.post("/v1/projects", json!({"name": "one", "image": "alpine:3.20", "max_queued_commands": 1})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    app.submit("one", json!({"command": ["true"]})).await;
    for _ in 0..3 {
        problem(app.post("/v1/projects/one/commands", json!({"command": ["true"]})).await, 429, "queue_full").await;
    }
    receiver.wait_for(1, Duration::from_secs(20)).await;
    // Time for any further event to fan out and be sent, had one been written.
    // Fixed sleep: proves an event is *not* sent; nothing happens to wait for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), 1, "only the accepted command was announced");
    let id = hook["id"].as_str().expect("id");
    let deliveries: Value = app.get(&format!("/v1/webhooks/{id}/deliveries")).await.json().await.expect("json");
    assert_eq!(deliveries["items"].as_array().map(Vec::len), Some(1), "{deliveries}");
    assert_eq!(listed(&app, "one").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_left_frees_its_slot() {
    let app = spawn_app_with(&["--max-streams-per-key", "1"]).await;
    app.project("web", 4).await;
    let (_, key) = reader_key(&app, json!({})).await;
    let (id, first) = open_stream(&app, "web", &key).await;
    drop(first);
    // A keep-alive write every 15 s of idling finds the connection gone: the first write to a
    // closed socket may still succeed (the peer's reset arrives after it), so allow a second
    // one, and the idle clock runs slower than the wall clock on a loaded machine.
    eventually("the slot of a closed stream is freed", Duration::from_secs(40), || async {
        let res = app.call(Method::GET, &format!("/v1/commands/{id}/events"), &key, None).await;
        if res.status() != StatusCode::OK {
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        }
        res.status() == StatusCode::OK
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_from_the_cli_ends_the_servers_streams_too() {
    let app = spawn_app().await;
    app.project("web", 4).await;
    let (key_id, key) = reader_key(&app, json!({})).await;
    let (_, mut res) = open_stream(&app, "web", &key).await;
    tokio::time::timeout(Duration::from_secs(5), res.chunk()).await.expect("first chunk").expect("chunk");
    // Another process changes the store: no signal reaches the server, only its backstop.
    let db = format!("sqlite://{}/rdev.db", app.dir.path().display());
    let revoked = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rdev-api"))
        .args(["--database-url", &db, "keys", "revoke", &key_id])
        .output()
        .await
        .expect("rdev-api keys revoke");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let took = ends_after(res, revoked, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(3), "the stream ended {took:?} after the CLI revoked its key");
}
