//! Limits through real HTTP: revocation and expiry end a key's open event streams and waits,
//! streams per key are capped, queues per project are bounded, and retention removes old
//! finished commands and deliveries (never audit records).
#![allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::wait::eventually;
use common::{problem, spawn_app, spawn_app_with, spawn_app_with_options, TestApp};
use futures::StreamExt;
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// `sse_slow_consumers_total` on `/metrics`.
async fn slow_consumers(app: &TestApp) -> f64 {
    let text =
        app.client.get(format!("{}/metrics", app.base)).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("sse_slow_consumers_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sse_slow_consumers_total is registered")
}

/// A finished command with about 12 MB of SSE, far more than the sockets between a client and
/// the server buffer (8 MB of stdout; the app needs `--max-output-bytes 8000000`).
async fn big_stream(app: &TestApp) -> String {
    app.project("web", 2).await;
    let v = app.submit("web", json!({"script": "yes | head -c 8000000"})).await;
    let id = v["id"].as_str().expect("id").to_owned();
    assert_eq!(app.finished(&id, 60).await["status"], "succeeded");
    id
}

/// A client with a small receive buffer that asks for the events of `id` and reads no more
/// than the start of the answer (so the stream is known to be open).
async fn unread_stream(app: &TestApp, id: &str, key: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut conn = socket.connect(addr).await.expect("connect");
    let request =
        format!("GET /v1/commands/{id}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.expect("request");
    let mut status = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut status)).await.expect("answer").expect("read");
    assert_eq!(&status, b"HTTP/1.1 200");
    conn
}

/// Reads `conn` until the server closes it (panics after `within`): what had been buffered.
async fn read_until_closed(mut conn: tokio::net::TcpStream, within: Duration) -> String {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(within, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server did not close the connection within {within:?}");
    let received = String::from_utf8_lossy(&received).into_owned();
    assert!(received.contains("event: output"), "the stream had started");
    assert!(!received.contains("event: exit"), "the client was cut off before the end");
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_counted_and_frees_its_slot() {
    let options = app::service::StartOptions { sse_send_timeout: Duration::from_secs(1), ..common::start_options() };
    let app = spawn_app_with_options(&["--max-streams-per-key", "1", "--max-output-bytes", "8000000"], options).await;
    let id = big_stream(&app).await;
    let before = slow_consumers(&app).await;
    let conn = unread_stream(&app, &id, &app.admin).await;
    eventually("the reader that never reads is counted", Duration::from_secs(30), || async {
        slow_consumers(&app).await > before
    })
    .await;

    // Its slot is free (the key may hold one stream), and a client that reads gets every event
    // once, in order, up to the exit, even with the short send timeout.
    let res = app.get(&format!("/v1/commands/{id}/events")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let events = common::parse_sse(&res.text().await.expect("sse"));
    let ids: Vec<i64> = events.iter().map(|(i, _, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "every event once, in order");
    assert_eq!(events.last().map(|(_, name, _)| name.as_str()), Some("exit"));
    let stdout: usize = events
        .iter()
        .filter(|(_, _, d)| d["stream"] == "stdout")
        .filter_map(|(_, _, d)| d["data"].as_str())
        .map(str::len)
        .sum();
    assert_eq!(stdout, 8_000_000, "all the output");

    // The slow client reads what was buffered, then the end of the connection: cut off, not
    // at the end of a response (which would close its chunked body first).
    let received = read_until_closed(conn, Duration::from_secs(30)).await;
    assert!(!received.ends_with("0\r\n\r\n"), "the connection was cut, not the response finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_the_stream_and_connection_of_a_client_that_is_not_reading() {
    // A send timeout far beyond the test's limits: it is not what ends the stream here.
    let options = app::service::StartOptions { sse_send_timeout: Duration::from_secs(300), ..common::start_options() };
    let app = spawn_app_with_options(&["--max-output-bytes", "8000000"], options).await;
    let id = big_stream(&app).await;
    let (key_id, key) = reader_key(&app, json!({})).await;
    let conn = unread_stream(&app, &id, &key).await;
    // Not a wait for a condition: the test passes either way, but after a moment the buffers
    // are full and the revocation usually finds the stream waiting for room (the unit tests of
    // `routes::events` cover that wait for certain).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), &app.admin, None).await.status(), 200);
    // Cut after a second, or (when the server had already taken the end of the stream) closed
    // by the server's keep-alive timeout of 5 s.
    read_until_closed(conn, Duration::from_secs(30)).await;
}
