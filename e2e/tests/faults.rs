//! Focused fault tests on the real binaries: each starts its own PostgreSQL cluster and
//! replicas, does one bad thing to one replica, and checks what clients see.
//!
//! - `kill -9` of a replica: its running commands end `lost` within 5 s (its database
//!   session ended), never re-run.
//! - `SIGSTOP` past the lease: its commands end `lost` within 30 s; after `SIGCONT` the woken
//!   replica's result is refused by the fence (the command stays `lost`, the ledger shows it ran).
//! - `SIGTERM` under load: `/readyz` fails within 1 s, nothing new is claimed, a command that
//!   finishes within `SHUTDOWN_GRACE_SECONDS` succeeds, one that does not ends `lost` ("replica
//!   shut down"), open SSE streams end.
//! - The Kubernetes breaker open (kube-sim refusing connections): a command stays queued, then runs.
#![allow(clippy::expect_used, reason = "test: a failed expectation is a failed test")]
#![allow(clippy::print_stderr, reason = "the suite reports what it measured")]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use e2e::api::Api;
use e2e::ledger;
use e2e::stack::{Executor, Stack, StackConfig};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Waits until `path` holds `n` start lines, or panics after `secs`.
async fn wait_for_starts(path: &std::path::Path, n: u32, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let runs = ledger::read(&[(0, path)]);
        if runs.values().map(|r| r.starts).sum::<u32>() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} commands did not start within {secs} s ({})", path.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finished_at(v: &Value) -> DateTime<Utc> {
    v["finished_at"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .expect("finished_at")
        .with_timezone(&Utc)
}

fn secs_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_milliseconds() as f64 / 1000.0
}

/// The `status` values of the command's SSE stream, from the start.
async fn sse_statuses(api: &Api, base: &str, id: &str) -> Vec<String> {
    let (events, complete) = api.events(base, id, Duration::from_secs(10)).await;
    assert!(complete, "the event stream of a finished command ends by itself");
    events.iter().filter(|(e, _)| e == "status").filter_map(|(_, d)| d["status"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_commands_end_lost_within_5_seconds_and_never_rerun() {
    // A 24 s lease (the longest the lease rules allow with its default renewal): only the end of the dead replica's database session can explain 5 s.
    let mut cfg = StackConfig::new(2, 2);
    cfg.concurrent = vec![2, 0];
    cfg.lease_seconds = 24;
    let mut stack = Stack::start(&cfg).await;
    let (api, watcher) = (stack.api.clone(), stack.replicas[1].base());
    api.create_project(&watcher, "doomed", 2).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        let cmd = api.submit_ok(&watcher, "doomed", json!({"script": ledger::script(&format!("k{n}"), 60_000)})).await;
        ids.push(cmd["id"].as_str().expect("id").to_owned());
    }
    let ledger_file = stack.replicas[0].ledger("doomed");
    wait_for_starts(&ledger_file, 2, 30).await;
    let killed_at = stack.replicas[0].kill9();
    let killed = Instant::now();
    for id in &ids {
        // Bounded well past the lease, so a slow detection is measured rather than hung on.
        let lost = api.finished_within(&watcher, id, 45.0).await.expect("the command ended within 45 s");
        let seen = killed.elapsed().as_secs_f64();
        let recorded = secs_between(killed_at, finished_at(&lost));
        eprintln!("e2e faults: kill -9 → lost: seen after {seen:.2} s, finished_at {recorded:.2} s after the kill");
        assert_eq!(lost["status"], "lost", "{lost}");
        assert_eq!(lost["termination_reason"], "worker_lost", "{lost}");
        assert_eq!(lost["exit_code"], Value::Null, "{lost}");
        assert!(
            seen <= 5.5 && recorded <= 5.0,
            "lost {seen:.1} s after the kill (finished_at +{recorded:.1} s); expected within 5 s (the lease is 24 s)"
        );
        let statuses = sse_statuses(&api, &watcher, id).await;
        assert_eq!(statuses.last().map(String::as_str), Some("lost"), "the stream tells it: {statuses:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = ledger::read(&[(0, &ledger_file)]);
    assert!(runs.values().all(|r| r.starts == 1 && r.ends == 0), "started once, never finished: {runs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_loses_its_command_and_its_late_result_is_refused() {
    let mut cfg = StackConfig::new(2, 1);
    cfg.concurrent = vec![1, 0];
    cfg.lease_seconds = 6;
    let mut stack = Stack::start(&cfg).await;
    let (api, watcher) = (stack.api.clone(), stack.replicas[1].base());
    api.create_project(&watcher, "frozen", 1).await;
    // It finishes (4 s) while its replica is stopped; the result waits in a pipe.
    let cmd = api.submit_ok(&watcher, "frozen", json!({"script": ledger::script("s0", 4_000)})).await;
    let id = cmd["id"].as_str().expect("id").to_owned();
    let ledger_file = stack.replicas[0].ledger("frozen");
    wait_for_starts(&ledger_file, 1, 30).await;
    let stopped_at = stack.replicas[0].signal(Signal::SIGSTOP);
    let lost = api.finished_within(&watcher, &id, 40.0).await.expect("the command ended within 40 s");
    let after = secs_between(stopped_at, finished_at(&lost));
    eprintln!("e2e faults: SIGSTOP → lost {after:.2} s after the stop (lease 6 s)");
    assert_eq!(lost["status"], "lost", "{lost}");
    assert!(after <= 30.0, "lost {after:.1} s after the stop; expected within 30 s of the last renewal");
    // Past the command's own end: it ran to completion behind the frozen replica.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.replicas[0].signal(Signal::SIGCONT);
    stack.replicas[0].wait_ready(api.client()).await;
    // The woken replica now tries to record "succeeded"; the fence must refuse it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_wake = api.command(&watcher, &id).await;
    assert_eq!(after_wake["status"], "lost", "the late result was refused: {after_wake}");
    assert_eq!(after_wake["exit_code"], Value::Null, "{after_wake}");
    let runs = ledger::read(&[(0, &ledger_file)]);
    assert_eq!((runs["s0"].starts, runs["s0"].ends), (1, 1), "it ran once, to its end: {runs:?}");
    let statuses = sse_statuses(&api, &watcher, &id).await;
    assert!(!statuses.iter().any(|s| s == "succeeded"), "no success was ever announced: {statuses:?}");
    // The woken replica works on.
    let next = api.submit_ok(&watcher, "frozen", json!({"script": ledger::script("s1", 10)})).await;
    let done = api.finished_within(&watcher, next["id"].as_str().expect("id"), 30.0).await.expect("ran");
    assert_eq!(done["status"], "succeeded", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readiness_fails_at_once_and_unfinished_commands_end_lost() {
    let grace: u64 = 4;
    let mut cfg = StackConfig::new(2, 3);
    cfg.concurrent = vec![3, 0];
    cfg.grace_seconds = grace;
    let mut stack = Stack::start(&cfg).await;
    let (api, watcher, leaving) = (stack.api.clone(), stack.replicas[1].base(), stack.replicas[0].base());
    // Two at a time in the project: the third command waits in the queue.
    api.create_project(&watcher, "drain", 2).await;
    let quick = api.submit_ok(&watcher, "drain", json!({"script": ledger::script("quick", 1_500)})).await;
    let slow = api.submit_ok(&watcher, "drain", json!({"script": ledger::script("slow", 60_000)})).await;
    wait_for_starts(&stack.replicas[0].ledger("drain"), 2, 30).await;
    let later = api.submit_ok(&watcher, "drain", json!({"script": ledger::script("later", 10)})).await;
    let id = |v: &Value| v["id"].as_str().expect("id").to_owned();
    let (quick, slow, later) = (id(&quick), id(&slow), id(&later));
    // An SSE stream through the leaving replica, on a command that will not end by itself.
    let stream = {
        let (api, base, later) = (api.clone(), leaving.clone(), later.clone());
        tokio::spawn(async move {
            let (_, complete) = api.events(&base, &later, Duration::from_secs(grace + 20)).await;
            (complete, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stack.replicas[0].signal(Signal::SIGTERM);
    let term = Instant::now();
    let probe = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(500)).build().expect("client");
    // Every part is checked and reported, so one missing piece does not hide the others.
    let mut problems = Vec::new();
    let not_ready = loop {
        let answer = probe.get(format!("{leaving}/readyz")).send().await;
        match answer {
            Ok(res) if res.status() == reqwest::StatusCode::OK => {}
            Ok(res) => break format!("{}", res.status()),
            Err(e) => break format!("no answer ({})", if e.is_connect() { "refused" } else { "error" }),
        }
        if term.elapsed() > Duration::from_secs(1) {
            break "still 200 a second after SIGTERM".to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("e2e faults: /readyz {:.2} s after SIGTERM: {not_ready}", term.elapsed().as_secs_f64());
    if !not_ready.starts_with("503") {
        problems.push(format!("/readyz must answer 503 within 1 s of SIGTERM, got: {not_ready}"));
    }
    let within = grace as f64 + 10.0;
    match api.finished_within(&watcher, &quick, within).await {
        Some(done) if done["status"] == "succeeded" => {}
        other => problems.push(format!("a command finishing within the grace must succeed: {other:?}")),
    }
    match api.finished_within(&watcher, &slow, within).await {
        Some(done)
            if done["status"] == "lost" && done["error"].as_str().is_some_and(|e| e.contains("replica shut down")) => {}
        other => {
            problems.push(format!("a command outliving the grace must end lost, \"replica shut down\": {other:?}"))
        }
    }
    let (complete, ended) = stream.await.expect("stream task");
    let stream_secs = ended.duration_since(term).as_secs_f64();
    eprintln!("e2e faults: SSE stream through the leaving replica: ended {complete}, {stream_secs:.2} s after SIGTERM");
    if !complete || stream_secs > grace as f64 + 3.0 {
        problems.push(format!(
            "an open SSE stream must end by the end of the grace (ended: {complete}, after {stream_secs:.1} s)"
        ));
    }
    match stack.replicas[0].wait_exit(Duration::from_secs(grace + 10)).await {
        Some(exit) if exit.success() => {}
        other => problems.push(format!("a drained replica exits 0 within the grace: {other:?}")),
    }
    let waiting = api.command(&watcher, &later).await;
    if waiting["status"] != "queued" {
        problems.push(format!("nothing new may be claimed while draining: {waiting}"));
    }
    assert!(problems.is_empty(), "drain on SIGTERM:\n{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_kubernetes_breaker_keeps_commands_queued_then_they_run() {
    let mut cfg = StackConfig::new(1, 2);
    cfg.executor = Executor::Kube;
    let stack = Stack::start(&cfg).await;
    let (api, base) = (stack.api.clone(), stack.replicas[0].base());
    let sim = stack.sim.as_ref().expect("kube-sim");
    api.create_project(&base, "flaky", 1).await;
    sim.set_faults(api.client(), &json!({"refuse_connections": true})).await;
    let cmd = api.submit_ok(&base, "flaky", json!({"command": ["echo", "later"]})).await;
    let id = cmd["id"].as_str().expect("id").to_owned();
    let until = Instant::now() + Duration::from_secs(6);
    let mut readiness = Value::Null;
    while Instant::now() < until {
        let v = api.command(&base, &id).await;
        assert_eq!(v["status"], "queued", "no command is claimed and failed while the API is down: {v}");
        let ready = api.client().get(format!("{base}/readyz")).send().await.expect("readyz");
        if ready.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            readiness = ready.json().await.expect("readyz json");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        readiness["executor"].as_str().is_some_and(|s| !s.is_empty() && s != "ok"),
        "/readyz says why: {readiness}"
    );
    sim.clear_faults(api.client()).await;
    let healed = Instant::now();
    let done = api.finished_within(&base, &id, 60.0).await.expect("ran once the API was back");
    eprintln!(
        "e2e faults: breaker: the queued command ran {:.2} s after the faults cleared",
        healed.elapsed().as_secs_f64()
    );
    assert_eq!(done["status"], "succeeded", "{done}");
}
