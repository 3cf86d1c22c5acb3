//! The runbooks name only what exists: every metric they mention is on a running server's
//! `/metrics`, every endpoint is routed by it, every variable is one its configuration reads,
//! and every alert is in `k8s/prometheusrule.yaml`.
//!
//! The server runs on kube-sim with tracing exported to a test receiver, so the Kubernetes
//! breaker and the exporter's series exist too; series that only move on rare events (lost
//! commands, store errors) are registered at zero when the service starts.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use common::{otlp, spawn_app_on_kube, TestApp};
use regex::Regex;
use reqwest::Method;
use serde_json::{json, Value};

/// Series a runbook may name that come from elsewhere: cAdvisor, kube-state-metrics, the API server.
const EXTERNAL_METRICS: [&str; 3] =
    ["container_cpu_usage_seconds_total", "kube_pod_container_resource_limits", "apiserver_request_total"];
/// Variables read by tools the runbooks use, not by rdev-api.
const EXTERNAL_VARIABLES: [&str; 0] = [];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each runbook page with the code it shows: inline spans and fenced blocks.
fn runbook_code() -> Vec<(String, Vec<String>)> {
    let fence = Regex::new(r"(?s)```[a-z]*\n(.*?)```").expect("regex");
    let inline = Regex::new(r"`([^`\n]+)`").expect("regex");
    let dir = root().join("docs/operations");
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("docs/operations") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut code: Vec<String> = fence.captures_iter(&text).map(|c| c[1].to_owned()).collect();
        let prose = fence.replace_all(&text, "");
        code.extend(inline.captures_iter(&prose).map(|c| c[1].to_owned()));
        pages.push((path.file_name().expect("name").to_string_lossy().into_owned(), code));
    }
    assert!(pages.len() >= 8, "the runbooks are where this test looks: {dir:?}");
    pages
}

/// Metric names (histograms by their base name) and label names on `/metrics`.
fn exposed(metrics: &str) -> (HashSet<String>, HashSet<String>) {
    let series = Regex::new(r"^([a-z_][a-z0-9_]*)(?:\{([^}]*)\})? ").expect("regex");
    let label = Regex::new(r#"([a-z_]+)=""#).expect("regex");
    let (mut names, mut labels) = (HashSet::new(), HashSet::new());
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(c) = series.captures(line) else { continue };
        let name = &c[1];
        names.insert(name.to_owned());
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                names.insert(base.to_owned());
            }
        }
        if let Some(l) = c.get(2) {
            labels.extend(label.captures_iter(l.as_str()).map(|m| m[1].to_owned()));
        }
    }
    (names, labels)
}

/// Every property and parameter name of the API: runbooks name request and response fields too.
fn api_fields(doc: &Value, out: &mut HashSet<String>) {
    match doc {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            if let (Some(Value::String(name)), Some(_)) = (map.get("name"), map.get("in")) {
                out.insert(name.clone());
            }
            map.values().for_each(|v| api_fields(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| api_fields(v, out)),
        _ => {}
    }
}

/// Every environment variable the configuration reads.
fn variables() -> HashSet<String> {
    fn walk(cmd: &clap::Command, out: &mut HashSet<String>) {
        out.extend(cmd.get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()));
        cmd.get_subcommands().for_each(|sub| walk(sub, out));
    }
    let mut out: HashSet<String> = app::telemetry::ENVIRONMENT.iter().map(|v| (*v).to_owned()).collect();
    walk(&app::config::Cli::command(), &mut out);
    out
}

/// A request for a documented path: placeholders filled with values that parse.
async fn probe(app: &TestApp, method: &str, path: &str) -> (u16, Value) {
    let mut path = path.replace("{id}", &uuid::Uuid::now_v7().to_string()).replace("{name}", "runbook-probe");
    if path == "/debug/pprof/profile" {
        // Routed or not is all that matters: an invalid length answers at once instead of profiling.
        path.push_str("?seconds=0");
    }
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let res = app.call(method, &path, &app.admin, None).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_endpoint_and_variable_a_runbook_names_exists() {
    let receiver = otlp::start("127.0.0.1:0").await.expect("receiver");
    let telemetry = app::telemetry::init_with(
        app::config::LogFormat::Json,
        "error",
        &app::telemetry::TracingConfig::http(&receiver.url),
    )
    .expect("tracing");
    let app = spawn_app_on_kube(&[]).await;
    // Move the series that appear with their first event: a request, a readiness check, a command.
    app.client.get(format!("{}/readyz", app.base)).send().await.expect("readyz");
    app.project("probe", 1).await;
    let (done, _) = app.run("probe", json!({"command": ["sh", "-c", "echo ok"]})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let (metric_names, label_names) = exposed(&metrics);
    let doc: Value = app.get("/openapi.json").await.json().await.expect("openapi");
    let mut fields = HashSet::new();
    api_fields(&doc, &mut fields);
    let vars = variables();
    let rules = std::fs::read_to_string(root().join("k8s/prometheusrule.yaml")).expect("rules");
    let (_, unrouted) = probe(&app, "GET", "/no/such/route/at/all").await;

    let metric_like = Regex::new(
        r"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)*_(?:total|seconds|bucket|active|queued|running|state|up|limits))\b",
    )
    .expect("regex");
    let variable = Regex::new(r"\b([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|EXECUTOR)\b").expect("regex");
    // A method and a path, a URL on this service (other hosts' URLs are not ours), or a bare path.
    let endpoint = Regex::new(
        r"(?:\b((?:GET|POST|PATCH|DELETE|PUT)(?:/(?:GET|POST|PATCH|DELETE|PUT))*)\s+|https?://(?:127\.0\.0\.1|localhost|<pod>)(?::\d+)?|^)(/[A-Za-z0-9_\-./{}]*)([^\s`'\x22]*)",
    )
    .expect("regex");
    let alert = Regex::new(r"\bRdevAPI[A-Za-z]+\b").expect("regex");

    let mut problems = BTreeSet::new();
    let (mut metrics_seen, mut endpoints_seen, mut vars_seen) = (0, 0, 0);
    for (page, code) in runbook_code() {
        for span in &code {
            for c in metric_like.captures_iter(span) {
                let name = &c[1];
                let base = name.strip_suffix("_bucket").unwrap_or(name);
                metrics_seen += 1;
                let known = metric_names.contains(base)
                    || label_names.contains(name)
                    || fields.contains(name)
                    || EXTERNAL_METRICS.contains(&name);
                if !known {
                    problems.insert(format!("{page}: metric {name} is not on /metrics"));
                }
            }
            for c in variable.captures_iter(span) {
                let name = &c[1];
                vars_seen += 1;
                if !vars.contains(name) && !EXTERNAL_VARIABLES.contains(&name) {
                    problems.insert(format!("{page}: variable {name} is not read by the configuration"));
                }
            }
            for line in span.lines() {
                for c in endpoint.captures_iter(line.trim()) {
                    let path = c[2].trim_end_matches('.').to_owned();
                    let rest = c.get(3).map_or("", |m| m.as_str());
                    // Patterns (`/pod*`), elisions and other files' paths are not endpoints.
                    if rest.starts_with('*') || path.contains('…') || path.contains('<') || path.ends_with(".md") {
                        continue;
                    }
                    let methods = c.get(1).map_or("GET", |m| m.as_str());
                    for method in methods.split('/') {
                        endpoints_seen += 1;
                        let (status, body) = probe(&app, method, &path).await;
                        let missing = status == 405 || (status == 404 && body.get("detail") == unrouted.get("detail"));
                        if missing {
                            problems.insert(format!("{page}: {method} {path} is not routed ({status} {body})"));
                        }
                    }
                }
            }
            for name in alert.find_iter(span) {
                if !rules.contains(&format!("alert: {}", name.as_str())) {
                    problems.insert(format!("{page}: alert {} is not in k8s/prometheusrule.yaml", name.as_str()));
                }
            }
        }
    }
    assert!(metrics_seen > 20 && endpoints_seen > 20 && vars_seen > 20, "the scan found what the runbooks name");
    assert!(
        problems.is_empty(),
        "runbooks name what does not exist:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
    // The runbooks' headline names, read from the server itself as the issue asks.
    for name in ["http_requests_total", "commands_active", "http_request_duration_seconds", "otel_spans_dropped_total"]
    {
        assert!(metric_names.contains(name), "{name} on /metrics");
    }
    telemetry.shutdown().await;
}
