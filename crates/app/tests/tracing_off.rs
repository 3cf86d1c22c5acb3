//! Without OTEL_* configuration nothing is exported: a receiver listening on the default OTLP
//! port (4318) hears nothing while the service queues and runs a traced command.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::time::Duration;

use common::{otlp, spawn_app};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_exported_without_configuration() {
    // Where an exporter with default settings would send its spans.
    let receiver = otlp::start("127.0.0.1:4318").await.expect("the default OTLP port must be free for this test");
    let config = app::telemetry::TracingConfig::from_lookup(|_| None).expect("an empty environment is valid");
    let telemetry = app::telemetry::init_with(app::config::LogFormat::Json, "error", &config).expect("init");
    assert!(!telemetry.exporting());
    let app = spawn_app().await;
    app.project("quiet", 1).await;
    let res = app
        .client
        .post(format!("{}/v1/projects/quiet/commands", app.base))
        .bearer_auth(&app.admin)
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .json(&json!({"command": ["true"]}))
        .send()
        .await
        .expect("submit");
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let id = res.json::<serde_json::Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    assert_eq!(app.finished(&id, 30).await["status"], "succeeded");
    // Longer than the default batch delay (5 s) would have taken to send anything.
    // Fixed sleep: proves nothing is exported; nothing happens to wait for.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(receiver.requests(), 0, "no export request without configuration");
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    assert!(!metrics.contains("otel_spans_exported_total"), "no exporter, no export counts");
    telemetry.shutdown().await;
}
