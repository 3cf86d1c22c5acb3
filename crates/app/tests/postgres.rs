//! Several replicas on one PostgreSQL database, through real HTTP: the queue runs each command
//! exactly once, a dead replica's command ends `lost` and is never re-run, revocation and rate
//! limits are shared, the audit chain catches tampering, and an outage answers 503 and heals.
//!
//! The server is a throwaway cluster started by `adapters_postgres::testing` (or
//! `DATABASE_URL`); each test gets its own database.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use adapters_postgres::testing::{TestCluster, TestDatabase};
use common::wait::eventually;
use common::{parse_sse, problem, spawn_replica, TestApp};
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

fn ledger_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_run_each_of_2000_commands_exactly_once() {
    let db = TestDatabase::create().await;
    // One workspaces directory for both replicas, so both append to the same ledger file.
    let shared = tempdir();
    let workspaces = shared.path().display().to_string();
    let (a, b) = replicas(&db, &["--concurrent-commands", "8", "--workspaces-dir", &workspaces]).await;
    a.project("ledger", 16).await;
    let ledger = shared.path().join("ledger").join("ledger.txt");
    let total = 2000;
    let mut ids = Vec::with_capacity(total);
    // 16 clients at a time, alternating replicas, like a fleet of CI jobs.
    let submissions: Vec<Value> =
        futures::stream::iter(
            (0..total).map(|n| {
                let app = if n % 2 == 0 { &a } else { &b };
                async move {
                    app.submit("ledger", json!({"command": ["sh", "-c", format!("echo {n} >> ledger.txt")]})).await
                }
            }),
        )
        .buffer_unordered(16)
        .collect()
        .await;
    for v in submissions {
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    eventually("the queue drains", Duration::from_secs(240), || async {
        let queue: Value = a.get("/v1/queue").await.json().await.expect("queue");
        let depth: u64 = queue["depth"].as_object().expect("depth").values().filter_map(Value::as_u64).sum();
        depth == 0 && queue["running"] == 0
    })
    .await;
    assert_eq!(a.get("/v1/queue").await.json::<Value>().await.expect("queue")["replicas"], 2);
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for line in ledger_lines(&ledger) {
        *counts.entry(line.parse().expect("ledger line")).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    assert_eq!(counts.len(), total, "every command ran");
    for id in ids.iter().step_by(97) {
        let v: Value = b.get(&format!("/v1/commands/{id}")).await.json().await.expect("json");
        assert_eq!(v["status"], "succeeded", "{v}");
    }
}

#[tokio::test]
async fn a_command_on_a_killed_replica_ends_lost_and_never_runs_again() {
    let db = TestDatabase::create().await;
    let dir = tempdir();
    let admin = {
        let seed = spawn_replica(db.url(), None, &["--concurrent-commands", "0"], tempdir()).await;
        seed.project("doomed", 1).await;
        seed.admin.clone()
    };
    // Replica A is a real process, so it can be killed with SIGKILL like a crashed pod.
    let mut replica_a = std::process::Command::new(env!("CARGO_BIN_EXE_rdev-api"))
        .args(["serve", "--listen-addr", "127.0.0.1:0", "--lease-seconds", "2", "--concurrent-commands", "1"])
        .env("DATABASE_URL", db.url())
        .env("WORKSPACES_DIR", dir.path().join("a"))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn replica A");
    let b =
        spawn_replica(db.url(), Some(&admin), &["--concurrent-commands", "0", "--lease-seconds", "2"], tempdir()).await;
    let ledger = dir.path().join("a").join("doomed").join("starts.txt");
    let script = "echo started >> starts.txt; sleep 5; echo finished >> starts.txt";
    let cmd = b.submit("doomed", json!({"script": script})).await;
    let id = cmd["id"].as_str().expect("id").to_owned();
    eventually("replica A starts the command", Duration::from_secs(30), || {
        let started = !ledger_lines(&ledger).is_empty();
        async move { started }
    })
    .await;
    replica_a.kill().expect("SIGKILL replica A");
    replica_a.wait().expect("reap replica A");
    // B only reaps (0 slots): the lease runs out and the command is marked lost, not re-run.
    let lost = b.finished(&id, 20).await;
    assert_eq!(lost["status"], "lost", "{lost}");
    assert_eq!(lost["termination_reason"], "worker_lost");
    assert_eq!(lost["exit_code"], Value::Null);
    // Fixed sleep: proves the command is *not* started again (a re-run would write its ledger
    // line within the 5 s it would run); nothing happens to wait for.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let starts = ledger_lines(&ledger).iter().filter(|l| *l == "started").count();
    assert_eq!(starts, 1, "started exactly once: {:?}", ledger_lines(&ledger));
    let again: Value = b.get(&format!("/v1/commands/{id}")).await.json().await.expect("json");
    assert_eq!(again["status"], "lost", "stays lost");
}

#[tokio::test]
async fn revocation_on_one_replica_reaches_the_other_within_a_second() {
    let db = TestDatabase::create().await;
    // A long cache TTL on both: only the NOTIFY can make B forget the key in time.
    let (a, b) = replicas(&db, &["--key-cache-ttl-ms", "600000"]).await;
    let (id, key) = a.key(json!({"name": "shared", "scopes": ["projects:read"]})).await;
    assert_eq!(b.call(Method::GET, "/v1/me", &key, None).await.status(), StatusCode::OK, "B caches the key");
    let revoked = a.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &a.admin, None).await;
    assert!(revoked.status().is_success());
    eventually("B refuses the revoked key within a second", Duration::from_secs(1), || async {
        b.call(Method::GET, "/v1/me", &key, None).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
}

#[tokio::test]
async fn a_rate_limit_consumed_through_one_replica_is_seen_by_the_other() {
    let db = TestDatabase::create().await;
    let (a, b) = replicas(&db, &[]).await;
    // 1 request/s over the default 10 s window: 10 requests in any 10 s.
    let (_, key) = a.key(json!({"name": "slow", "scopes": ["projects:read"], "rate_limit_rps": 1})).await;
    for n in 0..10 {
        let res = a.call(Method::GET, "/v1/me", &key, None).await;
        assert_eq!(res.status(), StatusCode::OK, "request {n} on A");
    }
    let refused = b.call(Method::GET, "/v1/me", &key, None).await;
    assert!(refused.headers().get("retry-after").is_some());
    problem(refused, 429, "rate_limited").await;
}

#[tokio::test]
async fn replicas_admitting_from_blocks_together_never_exceed_the_limit() {
    let db = TestDatabase::create().await;
    let (a, b) = replicas(&db, &[]).await;
    // 20 requests/s over the default 10 s window: 200 in a window, blocks of up to 12.
    let (_, key) = a.key(json!({"name": "busy", "scopes": ["projects:read"], "rate_limit_rps": 20})).await;
    // Start early in a window, so all 240 requests fall in it and the limit is exactly 200.
    let into_window =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() % 10_000;
    if into_window > 5_000 {
        tokio::time::sleep(Duration::from_millis(10_050 - into_window as u64)).await;
    }
    let mut admitted = 0;
    for n in 0..240 {
        let replica = if n % 2 == 0 { &a } else { &b };
        let res = replica.call(Method::GET, "/v1/me", &key, None).await;
        match res.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => assert!(res.headers().get("retry-after").is_some()),
            other => panic!("request {n}: {other}"),
        }
    }
    // Both replicas keep asking until the end, so neither holds part of a block unused.
    assert_eq!(admitted, 200, "every request within the limit, none beyond it");
}

#[tokio::test]
async fn audit_verify_finds_a_record_changed_behind_the_services_back() {
    let db = TestDatabase::create().await;
    let a = spawn_replica(db.url(), None, &[], tempdir()).await;
    a.project("audited", 1).await;
    a.key(json!({"name": "x", "scopes": ["audit:read"]})).await;
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rdev-api"))
            .args(["audit", "verify"])
            .env("DATABASE_URL", db.url())
            .output()
            .expect("run audit verify")
    };
    let good = verify();
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stdout));
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let refused = client.execute("UPDATE audit_log SET action = 'nothing happened' WHERE seq = 1", &[]).await;
    assert!(refused.is_err(), "the trigger refuses UPDATE");
    assert!(client.execute("DELETE FROM audit_log WHERE seq = 1", &[]).await.is_err(), "and DELETE");
    client
        .batch_execute(
            "ALTER TABLE audit_log DISABLE TRIGGER USER; \
             UPDATE audit_log SET action = 'nothing happened' WHERE seq = 2; \
             ALTER TABLE audit_log ENABLE TRIGGER USER;",
        )
        .await
        .expect("tamper with the trigger disabled");
    let bad = verify();
    assert_eq!(bad.status.code(), Some(1), "verify fails");
    let report: Value = serde_json::from_slice(&bad.stdout).expect("json report");
    assert_eq!(report["ok"], false);
    let over_http: Value = a.get("/v1/audit-log/verify").await.json().await.expect("json");
    assert_eq!(over_http["ok"], false);
    assert_eq!(over_http["first_bad_id"], report["first_bad_id"]);
    assert!(report["first_bad_id"].is_string());
}

#[tokio::test]
async fn a_database_outage_gives_503_and_the_service_recovers_by_itself() {
    let cluster = TestCluster::start_dedicated();
    let db = TestDatabase::create_on(&cluster).await;
    let a = spawn_replica(db.url(), None, &[], tempdir()).await;
    a.project("steady", 1).await;
    assert_eq!(a.get("/readyz").await.status(), StatusCode::OK);
    cluster.stop();
    let started = Instant::now();
    let ready = a.client.get(format!("{}/readyz", a.base)).send().await.expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.expect("json");
    assert_ne!(body["database"], "ok", "{body}");
    // The key is cached, so these reach the store and must fail cleanly, not hang or panic.
    problem(a.get("/v1/projects/steady").await, 503, "unavailable").await;
    problem(a.post("/v1/projects/steady/commands", json!({"command": ["true"]})).await, 503, "unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(20), "answers came in {:?}", started.elapsed());
    cluster.start();
    eventually("the service recovers", Duration::from_secs(30), || async {
        a.get("/readyz").await.status() == StatusCode::OK
            && a.get("/v1/projects/steady").await.status() == StatusCode::OK
    })
    .await;
    let (done, _) = a.run("steady", json!({"command": ["true"]})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[tokio::test]
async fn two_replicas_deliver_each_webhook_event_once() {
    let db = TestDatabase::create().await;
    let (a, b) = replicas(&db, &["--webhook-allow-private-targets"]).await;
    let receiver = adapters_webhook::testing::Receiver::start().await.expect("receiver");
    let res = a.post("/v1/webhooks", json!({"url": receiver.url("/hook"), "events": ["command.succeeded"]})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    a.project("hooks", 4).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let app = if n % 2 == 0 { &a } else { &b };
        let v = app.submit("hooks", json!({"command": ["true"]})).await;
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        assert_eq!(a.finished(id, 30).await["status"], "succeeded");
    }
    let got = receiver.wait_for(20, Duration::from_secs(30)).await;
    // Fixed sleep: proves no event is sent twice; nothing happens to wait for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.count(), 20, "each event once, though both replicas dispatch");
    let mut delivered: Vec<String> = got
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.body).expect("payload")["data"]["id"].as_str().expect("id").to_owned()
        })
        .collect();
    delivered.sort();
    ids.sort();
    assert_eq!(delivered, ids, "every command's event, once");
}

/// The whole event stream of `id` on `app`, from after `last_event_id`, each event with when it
/// arrived (since the request was sent).
async fn stream_events(app: &TestApp, id: &str, last_event_id: i64) -> Vec<(i64, String, Value, Duration)> {
    let started = Instant::now();
    let res = app
        .client
        .get(format!("{}/v1/commands/{id}/events", app.base))
        .bearer_auth(&app.admin)
        .header("Last-Event-ID", last_event_id.to_string())
        .send()
        .await
        .expect("send");
    let (mut body, mut text, mut events) = (res.bytes_stream(), String::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("utf-8"));
        let Some(end) = text.rfind("\n\n") else { continue };
        let complete: String = text.drain(..end + 2).collect();
        let at = started.elapsed();
        events.extend(parse_sse(&complete).into_iter().map(|(i, n, d)| (i, n, d, at)));
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_on_both_replicas_see_every_event_once_in_order_pushed_not_polled() {
    let db = TestDatabase::create().await;
    let (a, b) = replicas(&db, &[]).await;
    a.project("web", 1).await;
    let v = a.submit("web", json!({"script": "for i in 1 2 3 4 5; do echo line$i; sleep 0.1; done"})).await;
    let id = v["id"].as_str().expect("id").to_owned();
    // Whichever replica runs it, one of the two streams is on the other replica.
    let (on_a, on_b) = tokio::join!(stream_events(&a, &id, 0), stream_events(&b, &id, 0));
    for (events, replica) in [(&on_a, "a"), (&on_b, "b")] {
        let ids: Vec<i64> = events.iter().map(|e| e.0).collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "replica {replica}: ids increase by one: {ids:?}");
        let output: Vec<&(i64, String, Value, Duration)> = events.iter().filter(|e| e.1 == "output").collect();
        let lines: String = output.iter().filter_map(|e| e.2["data"].as_str()).collect();
        assert_eq!(lines, "line1\nline2\nline3\nline4\nline5\n", "replica {replica}: every line once, in order");
        let exit = events.last().expect("events");
        assert_eq!(exit.1, "exit", "replica {replica}");
        // The command prints its first line 0.4 s before it ends, and streams re-read the store
        // on their own only every 5 s: a first line that arrives well before the exit was
        // pushed to the stream as it was written, on this replica or through the other's signal.
        let ahead = exit.3.saturating_sub(output[0].3);
        assert!(ahead >= Duration::from_millis(200), "replica {replica}: line1 only {ahead:?} before the exit");
        assert!(exit.3 < Duration::from_secs(4), "replica {replica}: the stream took {:?}", exit.3);
    }
    let without_times = |events: &[(i64, String, Value, Duration)]| -> Vec<(i64, String, Value)> {
        events.iter().map(|(i, n, d, _)| (*i, n.clone(), d.clone())).collect()
    };
    assert_eq!(without_times(&on_a), without_times(&on_b), "both replicas stream the same events");

    // Resuming on the other replica gives exactly what followed.
    let resume_from = on_a[1].0;
    let resumed = stream_events(&b, &id, resume_from).await;
    assert_eq!(without_times(&resumed), without_times(&on_a[2..]), "everything after Last-Event-ID, exactly once");
}
