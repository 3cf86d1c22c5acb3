//! Pod routes on the process executor (the "pod" is the project's workspace), through real HTTP.

mod common;

use common::{problem, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn a_pod_starts_reports_logs_and_stops() {
    let app = spawn_app().await;
    app.project("pods", 1).await;
    let status: Value = app.get("/v1/projects/pods/pod").await.json().await.expect("json");
    assert_eq!(
        status,
        json!({"phase": "stopped", "ready": false, "pod_name": null, "started_at": null, "reason": null})
    );

    let res = app.post("/v1/projects/pods/pod/start", json!({})).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let started: Value = res.json().await.expect("json");
    assert_eq!(started["pod_name"], "local-pods");
    assert_eq!(started["phase"], "running");
    let status: Value = app.get("/v1/projects/pods/pod").await.json().await.expect("json");
    assert_eq!(status["ready"], true);
    assert!(status["started_at"].is_string());

    let logs: Value = app.get("/v1/projects/pods/pod/logs?tail=1").await.json().await.expect("json");
    assert_eq!(logs["lines"].as_array().expect("lines").len(), 1, "{logs}");
    for bad in ["0", "10001", "x", "-1"] {
        problem(app.get(&format!("/v1/projects/pods/pod/logs?tail={bad}")).await, 400, "validation_failed").await;
    }

    let stopped: Value = app.post("/v1/projects/pods/pod/stop", json!({})).await.json().await.expect("json");
    assert_eq!(stopped["phase"], "stopped");
    let again = app.post("/v1/projects/pods/pod/stop", json!({})).await;
    assert_eq!(again.status(), StatusCode::ACCEPTED, "stop is idempotent");
}

#[tokio::test]
async fn a_command_starts_a_stopped_pod_first() {
    let app = spawn_app().await;
    app.project("lazy", 1).await;
    let (done, _) = app.run("lazy", json!({"command": ["true"]})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let status: Value = app.get("/v1/projects/lazy/pod").await.json().await.expect("json");
    assert_eq!(status["phase"], "running", "the command started the pod: {status}");
}

#[tokio::test]
async fn pod_routes_follow_scopes_and_project_visibility() {
    let app = spawn_app().await;
    app.project("mine", 1).await;
    app.project("theirs", 1).await;
    let reader = app.key_with(&["projects:read"], Some(&["mine"])).await;
    assert_eq!(app.call(Method::GET, "/v1/projects/mine/pod", &reader, None).await.status(), StatusCode::OK);
    problem(app.call(Method::GET, "/v1/projects/theirs/pod", &reader, None).await, 404, "not_found").await;
    problem(app.call(Method::GET, "/v1/projects/theirs/pod/logs", &reader, None).await, 404, "not_found").await;
    problem(app.call(Method::POST, "/v1/projects/mine/pod/start", &reader, None).await, 403, "forbidden").await;
    let writer = app.key_with(&["projects:write"], Some(&["mine"])).await;
    problem(app.call(Method::POST, "/v1/projects/theirs/pod/stop", &writer, None).await, 404, "not_found").await;
    assert_eq!(
        app.call(Method::POST, "/v1/projects/mine/pod/start", &writer, None).await.status(),
        StatusCode::ACCEPTED
    );
    problem(app.get("/v1/projects/nope/pod").await, 404, "not_found").await;
    problem(app.get("/v1/projects/Bad_Name/pod").await, 400, "validation_failed").await;
    problem(app.call(Method::DELETE, "/v1/projects/mine/pod", &app.admin, None).await, 405, "method_not_allowed").await;
}
