//! Webhooks end to end through the HTTP API: subscriptions, events from a real command, the
//! Standard Webhooks signature checked by the Python reference library (old and new secret after
//! a rotation), retries with the same `webhook-id`, redelivery, pings, and the SSRF guard.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::time::Duration;

use adapters_webhook::testing::{verify_with_python, Receiver, Reply};
use common::{problem, spawn_app, spawn_app_with};
use serde_json::{json, Value};

async fn subscribe(app: &common::TestApp, url: &str, events: &[&str]) -> Value {
    let res = app.post("/v1/webhooks", json!({"url": url, "events": events})).await;
    assert_eq!(res.status().as_u16(), 201, "{:?}", res.text().await);
    res.json().await.expect("json")
}

#[tokio::test]
async fn a_finished_command_is_delivered_signed_and_tracked() {
    let app = spawn_app_with(&["--webhook-allow-private-targets"]).await;
    let receiver = Receiver::start().await.expect("receiver");
    receiver.script([Reply::status(500)]);
    let hook = subscribe(&app, &receiver.url("/hook"), &["command.succeeded"]).await;
    let secret = hook["secret"].as_str().expect("secret shown once").to_owned();
    let id = hook["id"].as_str().expect("id").to_owned();
    let shown: Value = app.get(&format!("/v1/webhooks/{id}")).await.json().await.expect("json");
    assert!(shown.get("secret").is_none(), "the secret is never shown again: {shown}");

    app.project("hooked", 1).await;
    let (done, _) = app.run("hooked", json!({"command": ["true"]})).await;
    assert_eq!(done["status"], "succeeded");
    // The first attempt gets a 500, the retry (5 s later, per the schedule) the default 204.
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "a retry after the 500");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"), "same webhook-id on every retry");
    let body: Value = serde_json::from_str(&got[1].body).expect("payload");
    assert_eq!(body["type"], "command.succeeded");
    assert_eq!(body["data"]["id"], done["id"]);
    let dir = tempfile::tempdir().expect("dir");
    verify_with_python(dir.path(), &got[1], &[&secret], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .expect("python verifier");

    let deliveries: Value = app.get(&format!("/v1/webhooks/{id}/deliveries")).await.json().await.expect("json");
    let delivery = &deliveries["items"][0];
    assert_eq!(delivery["status"], "succeeded", "{deliveries}");
    // The listing carries the last attempt's outcome (the first attempt got a 500).
    assert_eq!(delivery["last_status_code"], 204, "{deliveries}");
    assert!(delivery["last_latency_ms"].is_u64() && delivery["last_error"].is_null(), "{deliveries}");
    let delivery_id = delivery["id"].as_str().expect("delivery id");
    assert_eq!(Some(delivery_id), got[0].header("webhook-id"));
    let detail: Value = app.get(&format!("/v1/webhook-deliveries/{delivery_id}")).await.json().await.expect("json");
    let attempts: Vec<u64> =
        detail["attempt_log"].as_array().expect("attempts").iter().filter_map(|a| a["status_code"].as_u64()).collect();
    assert_eq!(attempts, vec![500, 204], "{detail}");

    // Rotation with a grace period: both the new and the old secret verify the next delivery.
    let rotated: Value = app
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), json!({"grace_seconds": 3600}))
        .await
        .json()
        .await
        .expect("json");
    let new_secret = rotated["secret"].as_str().expect("new secret").to_owned();
    let res = app.post(&format!("/v1/webhook-deliveries/{delivery_id}/redeliver"), json!({})).await;
    assert_eq!(res.status().as_u16(), 202);
    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    assert_ne!(got[2].header("webhook-id"), got[0].header("webhook-id"), "a redelivery is a new delivery");
    verify_with_python(dir.path(), &got[2], &[&new_secret, &secret], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .expect("both secrets verify during the grace");

    let ping = app.post(&format!("/v1/webhooks/{id}/test"), json!({})).await;
    assert_eq!(ping.status().as_u16(), 202);
    let got = receiver.wait_for(4, Duration::from_secs(20)).await;
    let ping: Value = serde_json::from_str(&got[3].body).expect("payload");
    assert_eq!(ping["type"], "ping");

    let metrics =
        app.client.get(format!("{}/metrics", app.base)).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("webhook_deliveries_total{"), "{metrics}");
    assert!(metrics.contains("webhook_delivery_duration_seconds_bucket{le=\"15\"}"), "a histogram: {metrics}");
}

#[tokio::test]
async fn private_targets_and_bad_input_are_refused() {
    let app = spawn_app().await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x",
        "http://localhost/x",
        "ftp://example.com/x",
        "file:///etc/passwd",
    ] {
        problem(app.post("/v1/webhooks", json!({"url": url})).await, 400, "validation_failed").await;
    }
    problem(
        app.post("/v1/webhooks", json!({"url": "https://example.com", "events": ["nope"]})).await,
        400,
        "validation_failed",
    )
    .await;
    problem(
        app.post("/v1/webhooks", json!({"url": "https://example.com", "extra": 1})).await,
        400,
        "validation_failed",
    )
    .await;
    problem(app.get("/v1/webhooks/not-a-uuid").await, 400, "validation_failed").await;
    problem(app.get(&format!("/v1/webhooks/{}", uuid::Uuid::now_v7())).await, 404, "not_found").await;
    problem(app.get(&format!("/v1/webhook-deliveries/{}", uuid::Uuid::now_v7())).await, 404, "not_found").await;
    let reader = app.key_with(&["projects:read"], None).await;
    let res = app.call(reqwest::Method::GET, "/v1/webhooks", &reader, None).await;
    problem(res, 403, "forbidden").await;
}
