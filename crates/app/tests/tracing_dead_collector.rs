//! A collector that cannot be reached never fails or slows a request: spans are dropped and
//! counted, and every answer is what it would be without tracing.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::spawn_app;
use common::wait::wait_for;
use reqwest::StatusCode;
use serde_json::json;

/// A loopback port nothing listens on: bound once, then released.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn dropped(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("otel_spans_dropped_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_collector_changes_no_response() {
    let mut config = app::telemetry::TracingConfig::http(&format!("http://127.0.0.1:{}/v1/traces", dead_port()));
    config.batch.schedule_delay = Duration::from_millis(50);
    config.batch.max_queue_size = 64;
    config.batch.max_export_batch_size = 16;
    let telemetry = app::telemetry::init_with(app::config::LogFormat::Json, "error", &config).expect("init");
    assert!(telemetry.exporting());
    let app = spawn_app().await;
    app.project("dead", 2).await;

    let started = Instant::now();
    for n in 0..200 {
        let res = app
            .client
            .get(format!("{}/v1/me", app.base))
            .bearer_auth(&app.admin)
            .header("traceparent", format!("00-0af7651916cd43dd8448eb211c8{n:05}-b7ad6b7169203331-01"))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status(), StatusCode::OK);
    }
    let (done, _) = app.run("dead", json!({"command": ["sh", "-c", "echo still runs"]})).await;
    assert_eq!(done["status"], "succeeded");
    let res = app.post("/v1/projects/dead/commands", json!({"command": []})).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "errors stay what they are");
    // 200 authenticated requests take well under a second here; an exporter that waited on
    // the dead collector would add its connect attempts to each.
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());

    let metrics = wait_for("dropped spans are counted", Duration::from_secs(10), || async {
        let metrics = app.get("/metrics").await.text().await.expect("metrics");
        (dropped(&metrics) > 0.0).then_some(metrics)
    })
    .await;
    assert!(metrics.contains("reason=\"export_failed\""), "{metrics}");
    let shutdown = Instant::now();
    telemetry.shutdown().await;
    assert!(shutdown.elapsed() < Duration::from_secs(15), "shutdown is bounded too");
}
