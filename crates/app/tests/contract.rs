//! The router, `/openapi.json` and `docs/api.md` describe the same operations (issue 12):
//! every route registered in `src/routes` is documented with the same methods, every documented
//! operation answers (no `404` route-not-found, no `405`), and the docs' operation table names
//! the same methods, paths and operationIds as the document.

#![allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::spawn_app;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Route registrations, read from the sources: `resource("<path>", "<methods>")`.
const ROUTE_SOURCES: [&str; 11] = [
    include_str!("../src/routes/mod.rs"),
    include_str!("../src/routes/debug.rs"),
    include_str!("../src/routes/api_keys.rs"),
    include_str!("../src/routes/audit.rs"),
    include_str!("../src/routes/commands.rs"),
    include_str!("../src/routes/events.rs"),
    include_str!("../src/routes/health.rs"),
    include_str!("../src/routes/me.rs"),
    include_str!("../src/routes/pods.rs"),
    include_str!("../src/routes/projects.rs"),
    include_str!("../src/routes/webhooks.rs"),
];

const API_DOC: &str = include_str!("../../../docs/api.md");

type Operations = BTreeMap<(String, String), String>;

/// (path, method) of every `resource(...)` registration; `web::resource` elsewhere would
/// escape this check, so the sources must not use it.
fn routed() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for source in ROUTE_SOURCES {
        assert!(!source.contains("web::resource("), "register routes with http::resource so this test sees them");
        for call in source.split("resource(\"").skip(1) {
            // `<path>", "<methods>")…`: the first and third quote-separated fields.
            let fields: Vec<&str> = call.splitn(4, '"').collect();
            let (path, methods) = (fields[0], fields[2]);
            for method in methods.split(',') {
                out.insert((path.to_owned(), method.trim().to_owned()));
            }
        }
    }
    out
}

/// (path, method) → operationId of the served document.
fn documented(doc: &Value) -> Operations {
    let mut out = Operations::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let id = op["operationId"].as_str().expect("operationId").to_owned();
            out.insert((path.clone(), method.to_uppercase()), id);
        }
    }
    out
}

/// (path, method) → operationId of the table in `docs/api.md`.
fn in_docs() -> Operations {
    let section = API_DOC.split("## Operations\n").nth(1).expect("docs/api.md has an Operations section");
    let mut out = Operations::new();
    for row in section.lines().take_while(|l| !l.starts_with("## ")).filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(|c| c.trim().trim_matches('`')).collect();
        let (method, path) = cells[1].split_once(' ').expect("`METHOD /path`");
        out.insert((path.to_owned(), method.to_owned()), cells[2].to_owned());
    }
    out
}

/// A concrete URL for a templated path: a valid name or a fresh UUID in each placeholder; the
/// profile gets its shortest run.
fn concrete(path: &str) -> String {
    let url = path.replace("{name}", "no-such-project").replace("{id}", "0190a0b0-0000-7000-8000-000000000000");
    if url == "/debug/pprof/profile" {
        format!("{url}?seconds=1")
    } else {
        url
    }
}

#[tokio::test]
async fn router_document_and_docs_list_the_same_operations() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.expect("json");
    let documented = documented(&doc);

    let ids: BTreeSet<_> = documented.values().collect();
    assert_eq!(ids.len(), documented.len(), "operationIds are unique");
    let documented_routes: BTreeSet<_> = documented.keys().cloned().collect();
    assert_eq!(routed(), documented_routes, "the router and /openapi.json have the same routes");
    assert_eq!(in_docs(), documented, "docs/api.md's Operations table matches /openapi.json");

    for (path, method) in documented.keys() {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let url = format!("{}{}", app.base, concrete(path));
        let res = app.client.request(method.clone(), &url).bearer_auth(&app.admin).send().await.expect("send");
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is routed");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["detail"] == "no such route"),
            "{method} {path} is routed: {body}"
        );
    }
}

#[tokio::test]
async fn every_error_answer_is_a_documented_problem() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.expect("json");
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            let responses = op["responses"].as_object().expect("responses");
            let fallback = &responses["default"]["content"]["application/problem+json"]["schema"]["$ref"];
            assert_eq!(fallback, "#/components/schemas/Problem", "{method} {path} has a default problem");
            for (status, response) in responses {
                let client_or_server_error = status.starts_with('4') || status.starts_with('5');
                if client_or_server_error && !(path == "/readyz" && status == "503") {
                    let content = response["content"].as_object().expect("content");
                    assert!(content.contains_key("application/problem+json"), "{method} {path} {status}");
                    assert!(!content.contains_key("application/json"), "{method} {path} {status}");
                }
            }
        }
    }
}
