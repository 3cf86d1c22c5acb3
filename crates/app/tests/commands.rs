//! Commands through real HTTP: run, output, kill on timeout and cancel, priority under a cap,
//! idempotency, output caps, a clean environment, SSE events with resume.

mod common;

use std::time::Duration;

use common::wait::eventually;
use common::{parse_sse, problem, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn a_command_runs_and_its_output_is_kept() {
    let app = spawn_app().await;
    app.project("web", 2).await;
    let (done, out) = app.run("web", json!({"script": "echo out; echo err >&2; exit 3"})).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["exit_code"], 3);
    assert_eq!(done["termination_reason"], "exited");
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    assert_eq!(
        out,
        json!({"stdout": "out\n", "stderr": "err\n", "stdout_truncated": false, "stderr_truncated": false})
    );
    let (ok, out) = app.run("web", json!({"command": ["sh", "-c", "cat"], "stdin": "fed"})).await;
    assert_eq!((ok["status"].as_str(), ok["exit_code"].as_i64()), (Some("succeeded"), Some(0)));
    assert_eq!(out["stdout"], "fed");
}

#[tokio::test]
async fn wait_returns_the_finished_command_and_location_names_it() {
    let app = spawn_app().await;
    app.project("web", 2).await;
    let res = app.post("/v1/projects/web/commands?wait=10", json!({"command": ["echo", "hi"]})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let location = res.headers().get("location").and_then(|v| v.to_str().ok()).expect("Location").to_owned();
    let v: Value = res.json().await.expect("json");
    assert_eq!(v["status"], "succeeded");
    assert_eq!(location, format!("/v1/commands/{}", v["id"].as_str().expect("id")));
    let queued = app.post("/v1/projects/web/commands", json!({"command": ["sleep", "0.2"]})).await;
    assert_eq!(queued.status(), StatusCode::ACCEPTED);
    for bad in ["61", "-1", "abc", "1.5"] {
        problem(
            app.post(&format!("/v1/projects/web/commands?wait={bad}"), json!({"command": ["true"]})).await,
            400,
            "validation_failed",
        )
        .await;
    }
}

#[tokio::test]
async fn a_missing_cwd_or_program_is_start_failed_without_exit_code() {
    let app = spawn_app().await;
    app.project("web", 2).await;
    for body in [json!({"command": ["true"], "cwd": "no/such/dir"}), json!({"command": ["no-such-program-rdev"]})] {
        let (done, _) = app.run("web", body).await;
        assert_eq!(done["status"], "failed");
        assert_eq!(done["termination_reason"], "start_failed");
        assert!(done["exit_code"].is_null());
    }
    let (done, out) = app.run("web", json!({"script": "mkdir -p sub && cd sub && pwd"})).await;
    assert_eq!(done["status"], "succeeded");
    let (_, in_sub) = app.run("web", json!({"command": ["pwd"], "cwd": "sub"})).await;
    assert_eq!(in_sub["stdout"], out["stdout"], "relative cwd is taken from the project's workspace");
}

/// Leaves a background child that would create `marker` (in the workspace) after 2 s.
fn marker_script(marker: &str) -> String {
    format!("(sleep 2; touch {marker}) & sleep 30")
}

/// Whether `file` exists in `project`'s workspace, asked through a command so that it works on
/// every executor (the process sandbox's workspace, a kube-sim pod).
async fn exists_in_workspace(app: &common::TestApp, project: &str, file: &str) -> bool {
    let (done, _) = app.run(project, json!({"command": ["test", "-e", file]})).await;
    done["status"] == "succeeded"
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let app = spawn_app().await;
    app.project("web", 2).await;
    let marker = "timeout-marker";
    let (done, _) = app.run("web", json!({"script": marker_script(marker), "timeout_seconds": 1})).await;
    assert_eq!(done["status"], "timed_out");
    assert_eq!(done["termination_reason"], "timeout");
    assert!(done["exit_code"].is_null());
    // Fixed sleep: proves a marker is *not* written; a survivor would write it 2 s in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!exists_in_workspace(&app, "web", marker).await, "the background child survived the timeout");
}

#[tokio::test]
async fn cancel_kills_a_running_command_and_drops_a_queued_one() {
    let app = spawn_app().await;
    app.project("web", 1).await;
    let marker = "cancel-marker";
    let running = app.submit("web", json!({"script": marker_script(marker)})).await;
    let queued = app.submit("web", json!({"command": ["true"]})).await;
    let (rid, qid) = (running["id"].as_str().expect("id"), queued["id"].as_str().expect("id"));
    eventually("the first command runs", Duration::from_secs(30), || async {
        app.get(&format!("/v1/commands/{rid}")).await.json::<Value>().await.expect("json")["status"] == "running"
    })
    .await;
    let q = app.post(&format!("/v1/commands/{qid}/cancel"), json!({})).await.json::<Value>().await.expect("json");
    assert_eq!(q["status"], "cancelled", "a queued command is cancelled at once");
    let r = app.post(&format!("/v1/commands/{rid}/cancel"), json!({})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let done = app.finished(rid, 10).await;
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["termination_reason"], "cancelled");
    // Fixed sleep: proves a marker is *not* written; a survivor would write it 2 s in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!exists_in_workspace(&app, "web", marker).await, "the background child survived the cancel");
    problem(app.post(&format!("/v1/commands/{rid}/cancel"), json!({})).await, 409, "conflict").await;
}

#[tokio::test]
async fn priority_order_holds_under_a_project_cap_of_one() {
    let app = spawn_app().await;
    app.project("solo", 1).await;
    let ledger = "ledger";
    let gate = app.submit("solo", json!({"command": ["sleep", "1"]})).await;
    let mut ids = Vec::new();
    for p in ["low", "normal", "critical", "high"] {
        let v = app.submit("solo", json!({"script": format!("echo {p} >> {ledger}"), "priority": p})).await;
        ids.push(v["id"].as_str().expect("id").to_owned());
    }
    let critical: Value = app.get(&format!("/v1/commands/{}", ids[2])).await.json().await.expect("json");
    assert_eq!(critical["queue_position"], 1);
    let queue: Value = app.get("/v1/queue").await.json().await.expect("json");
    assert_eq!(queue["depth"]["low"], 1);
    assert_eq!(queue["running"], 1);
    assert_eq!(queue["capacity"], 5);
    for id in &ids {
        app.finished(id, 30).await;
    }
    app.finished(gate["id"].as_str().expect("id"), 30).await;
    let (_, out) = app.run("solo", json!({"command": ["cat", ledger]})).await;
    let order = out["stdout"].as_str().expect("ledger").to_owned();
    assert_eq!(order.lines().collect::<Vec<_>>(), vec!["critical", "high", "normal", "low"]);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_result() {
    let app = spawn_app().await;
    app.project("web", 2).await;
    let send = |body: Value| {
        app.client
            .post(format!("{}/v1/projects/web/commands", app.base))
            .bearer_auth(&app.admin)
            .header("Idempotency-Key", "deploy-42")
            .json(&body)
            .send()
    };
    let first: Value = send(json!({"command": ["echo", "once"]})).await.expect("send").json().await.expect("json");
    let again = send(json!({"command": ["echo", "once"]})).await.expect("send");
    assert_eq!(again.headers().get("idempotent-replayed").and_then(|v| v.to_str().ok()), Some("true"));
    assert_eq!(again.json::<Value>().await.expect("json")["id"], first["id"]);
    problem(send(json!({"command": ["echo", "other"]})).await.expect("send"), 409, "conflict").await;
    let listed: Value = app.get("/v1/projects/web/commands").await.json().await.expect("json");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "a replay runs nothing");
}

#[tokio::test]
async fn output_over_the_cap_keeps_head_and_tail() {
    let app = spawn_app_with(&["--max-output-bytes", "1000"]).await;
    app.project("web", 2).await;
    let (_, out) =
        app.run("web", json!({"script": "echo HEAD-MARK; yes filler | head -c 100000; echo; echo TAIL-MARK"})).await;
    let stdout = out["stdout"].as_str().expect("stdout");
    assert!(stdout.len() <= 1000, "{} bytes kept", stdout.len());
    assert!(stdout.starts_with("HEAD-MARK"));
    assert!(stdout.trim_end().ends_with("TAIL-MARK"));
    assert_eq!(out["stdout_truncated"], true);
}

#[tokio::test]
async fn commands_do_not_see_the_servers_environment() {
    let app = spawn_app().await;
    let res = app.post("/v1/projects", json!({"name": "envy", "image": "alpine", "env": {"PROJECT_VAR": "p"}})).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let (_, out) = app.run("envy", json!({"command": ["env"], "env": {"MY_VAR": "mine"}})).await;
    let env = out["stdout"].as_str().expect("stdout");
    assert!(env.contains("MY_VAR=mine") && env.contains("PROJECT_VAR=p"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")));
    assert!(!env.contains("CARGO"), "server variables leaked: {env}");
}

#[tokio::test]
async fn events_stream_output_status_and_exit_and_resume_after_last_event_id() {
    let app = spawn_app().await;
    app.project("web", 2).await;
    let v = app.submit("web", json!({"script": "echo one; sleep 0.3; echo two >&2"})).await;
    let id = v["id"].as_str().expect("id");
    let text = app.get(&format!("/v1/commands/{id}/events")).await.text().await.expect("sse");
    let events: Vec<(i64, String, Value)> = parse_sse(&text);
    let names: Vec<&str> = events.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"status"));
    assert_eq!(names.last(), Some(&"exit"));
    assert!(events.iter().any(|(_, n, d)| n == "output" && d["stream"] == "stdout" && d["data"] == "one\n"));
    assert!(events.iter().any(|(_, n, d)| n == "output" && d["stream"] == "stderr" && d["data"] == "two\n"));
    assert_eq!(events.last().map(|(_, _, d)| d["status"].clone()), Some(json!("succeeded")));
    let ids: Vec<i64> = events.iter().map(|(i, _, _)| *i).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids increase by one: {ids:?}");

    let resume_from = ids[1];
    let resumed = app
        .client
        .get(format!("{}/v1/commands/{id}/events", app.base))
        .bearer_auth(&app.admin)
        .header("Last-Event-ID", resume_from.to_string())
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("sse");
    let replayed: Vec<i64> = parse_sse(&resumed).iter().map(|(i, _, _)| *i).collect();
    assert_eq!(replayed, ids[2..].to_vec(), "everything after Last-Event-ID, exactly once");
    let bad = app
        .client
        .get(format!("{}/v1/commands/{id}/events", app.base))
        .bearer_auth(&app.admin)
        .header("Last-Event-ID", "x")
        .send()
        .await
        .expect("send");
    problem(bad, 400, "validation_failed").await;
}

#[tokio::test]
async fn listing_filters_by_status_and_pages() {
    let app = spawn_app().await;
    app.project("web", 3).await;
    for _ in 0..3 {
        app.run("web", json!({"command": ["true"]})).await;
    }
    app.run("web", json!({"command": ["false"]})).await;
    let failed: Value = app.get("/v1/projects/web/commands?status=failed").await.json().await.expect("json");
    assert_eq!(failed["items"].as_array().map(Vec::len), Some(1));
    let page: Value = app.get("/v1/projects/web/commands?limit=3").await.json().await.expect("json");
    let cursor = page["next_cursor"].as_str().expect("cursor");
    let rest: Value =
        app.get(&format!("/v1/projects/web/commands?limit=3&cursor={cursor}")).await.json().await.expect("json");
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    problem(app.get("/v1/projects/web/commands?status=weird").await, 400, "validation_failed").await;
    let audit: Value =
        app.call(Method::GET, "/v1/audit-log?action=command.end", &app.admin, None).await.json().await.expect("json");
    assert_eq!(audit["items"].as_array().map(Vec::len), Some(4), "every command end is audited");
}
