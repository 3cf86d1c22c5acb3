//! Bad input always gets a 4xx problem document, never a 5xx; plus audit, health and OpenAPI.

mod common;

use common::{problem, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_400_naming_the_field() {
    let app = spawn_app().await;
    let raw = |body: &'static str| {
        app.client
            .post(format!("{}/v1/projects", app.base))
            .bearer_auth(&app.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    problem(raw("{not json").await.expect("send"), 400, "validation_failed").await;
    let typed = problem(
        raw(r#"{"name":"web","image":"a","max_concurrent_commands":"two"}"#).await.expect("send"),
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(typed["errors"][0]["field"], "max_concurrent_commands", "{typed}");
    problem(raw(r#"{"name":"web","image":"a"} trailing"#).await.expect("send"), 400, "validation_failed").await;
    problem(raw(r#"{"name":"web","image":"a","surprise":1}"#).await.expect("send"), 400, "validation_failed").await;
    problem(raw("").await.expect("send"), 400, "validation_failed").await;
    let bad_name =
        problem(app.post("/v1/projects", json!({"name": "Bad_Name", "image": "a"})).await, 400, "validation_failed")
            .await;
    assert_eq!(bad_name["errors"][0]["field"], "name");
    let range = problem(
        app.post("/v1/projects", json!({"name": "web", "image": "a", "max_concurrent_commands": 0})).await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(range["errors"][0]["field"], "max_concurrent_commands");
    app.project("web", 1).await;
    problem(app.post("/v1/projects", json!({"name": "web", "image": "a"})).await, 409, "conflict").await;
    for body in [
        json!({}),
        json!({"command": []}),
        json!({"command": ["true"], "script": "true"}),
        json!({"command": ["true"], "timeout_seconds": 0}),
        json!({"command": ["true"], "timeout_seconds": 86401}),
        json!({"command": ["true"], "priority": "urgent"}),
        json!({"command": ["true"], "env": {"1BAD": "x"}}),
        json!({"command": "true"}),
    ] {
        problem(app.post("/v1/projects/web/commands", body.clone()).await, 400, "validation_failed").await;
    }
}

#[tokio::test]
async fn a_bad_cwd_is_refused_at_the_edge_and_named() {
    let app = spawn_app().await;
    app.project("web", 1).await;
    for cwd in ["", "a\u{0}b"] {
        let body = json!({"command": ["true"], "cwd": cwd});
        let refused = problem(app.post("/v1/projects/web/commands", body).await, 400, "validation_failed").await;
        assert_eq!(refused["errors"][0]["field"], "cwd", "{cwd:?}");
        assert_eq!(
            refused["errors"][0]["message"], "must be a non-empty path of at most 4096 characters without NUL",
            "{cwd:?}"
        );
    }
}

#[tokio::test]
async fn oversized_bodies_are_413_and_create_nothing() {
    let app = spawn_app().await;
    let huge = json!({"name": "big", "image": "a", "env": {"X": "y".repeat(2 * 1024 * 1024)}});
    problem(app.post("/v1/projects", huge.clone()).await, 413, "payload_too_large").await;
    let bytes = serde_json::to_vec(&huge).expect("json");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let chunked = app
        .client
        .post(format!("{}/v1/projects", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("send");
    problem(chunked, 413, "payload_too_large").await;
    problem(app.get("/v1/projects/big").await, 404, "not_found").await;
}

#[tokio::test]
async fn unknown_ids_routes_and_methods_are_clean_4xx() {
    let app = spawn_app().await;
    problem(app.get("/v1/commands/not-a-uuid").await, 400, "validation_failed").await;
    problem(app.get("/v1/api-keys/123").await, 400, "validation_failed").await;
    problem(app.get(&format!("/v1/commands/{}", uuid::Uuid::now_v7())).await, 404, "not_found").await;
    problem(app.get(&format!("/v1/commands/{}/output", uuid::Uuid::now_v7())).await, 404, "not_found").await;
    problem(app.get("/v1/projects/nope").await, 404, "not_found").await;
    // A name the document's pattern refuses is refused as input, not looked up.
    problem(app.get("/v1/projects/NOT_VALID").await, 400, "validation_failed").await;
    problem(app.get("/v1/nothing-here").await, 404, "not_found").await;
    let wrong = app.call(Method::PUT, "/v1/projects", &app.admin, None).await;
    assert_eq!(wrong.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET, POST"));
    problem(wrong, 405, "method_not_allowed").await;
    for q in ["limit=0", "limit=201", "limit=x", "cursor=zzz"] {
        problem(app.get(&format!("/v1/projects?{q}")).await, 400, "validation_failed").await;
    }
    problem(app.get("/v1/audit-log?since=yesterday").await, 400, "validation_failed").await;
}

#[tokio::test]
async fn request_ids_are_echoed_and_audit_records_carry_them() {
    let app = spawn_app().await;
    let res = app
        .client
        .post(format!("{}/v1/projects", app.base))
        .bearer_auth(&app.admin)
        .header("X-Request-Id", "req-abc-123")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .json(&json!({"name": "web", "image": "alpine"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("req-abc-123"));
    problem(app.call(Method::GET, "/v1/me", "rdev_bad", None).await, 401, "unauthorized").await;
    let log: Value = app.get("/v1/audit-log").await.json().await.expect("json");
    let items = log["items"].as_array().expect("items");
    let created = items.iter().find(|r| r["request_id"] == "req-abc-123").expect("the create is audited");
    assert_eq!(created["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(created["project"], "web", "{created}");
    assert_eq!(created["outcome"], "success");
    assert_eq!(created["client_ip"], "127.0.0.1");
    assert!(created["actor"].is_string());
    assert!(items.iter().any(|r| r["outcome"] == "denied"), "denied requests are audited");
    let verify: Value = app.get("/v1/audit-log/verify").await.json().await.expect("json");
    assert_eq!(verify["ok"], true);
    assert!(verify["checked"].as_u64().unwrap_or(0) >= 2);
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let app = spawn_app().await;
    let ready: Value =
        app.client.get(format!("{}/readyz", app.base)).send().await.expect("send").json().await.expect("json");
    assert_eq!(ready["ready"], true, "{ready}");
    app.get("/v1/me").await;
    let metrics =
        app.client.get(format!("{}/metrics", app.base)).send().await.expect("send").text().await.expect("text");
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("commands_queued{priority=\"critical\"} 0"), "queue depth at scrape: {metrics}");
    let doc: Value =
        app.client.get(format!("{}/openapi.json", app.base)).send().await.expect("send").json().await.expect("json");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/v1/projects/{name}/commands") && paths.contains_key("/v1/commands/{id}/events"));
    for (path, ops) in paths {
        let public = ["/healthz", "/readyz", "/metrics", "/openapi.json"].contains(&path.as_str());
        // The profiler is operational, not API: DESIGN names it without the /v1 prefix.
        assert!(public || path.starts_with("/v1/") || path == "/debug/pprof/profile", "{path}");
        for (method, op) in ops.as_object().expect("ops") {
            let responses = op["responses"].as_object().expect("responses");
            assert!(!responses.is_empty(), "{method} {path}");
            if public {
                assert_eq!(op["security"], json!([]), "{method} {path} is public");
            } else {
                assert!(responses.contains_key("401"), "{method} {path} documents 401");
            }
        }
    }
    assert_eq!(app.client.get(format!("{}/healthz", app.base)).send().await.expect("send").status(), StatusCode::OK);
}

#[tokio::test]
async fn oversized_headers_are_431_problem_documents() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/v1/projects", app.base))
        .bearer_auth(&app.admin)
        .header("x-padding", "p".repeat(20 * 1024))
        .send()
        .await
        .expect("send");
    assert!(res.headers().contains_key("x-request-id"), "observed like every request");
    problem(res, 431, "headers_too_large").await;
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    let app = common::spawn_app_with(&["--body-read-timeout-seconds", "1"]).await;
    // One byte a second: a body that would take a minute to arrive.
    let trickle = futures::stream::unfold(0u32, |sent| async move {
        if sent >= 60 {
            return None;
        }
        // Fixed sleep: it paces the body being sent, one byte a second; it waits for nothing.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        Some((Ok::<_, std::io::Error>(vec![b' ']), sent + 1))
    });
    let started = std::time::Instant::now();
    let res = app
        .client
        .post(format!("{}/v1/projects", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(trickle))
        .send()
        .await
        .expect("send");
    problem(res, 408, "request_timeout").await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "cut off at the timeout: {:?}", started.elapsed());
}
