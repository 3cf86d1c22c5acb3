//! The audit log cannot be dodged, flooded or quietly rewritten, and its reads follow project
//! visibility; client addresses behind trusted proxies cannot be forged (issue 11).

#![allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]

mod common;

use common::{problem, spawn_app, spawn_app_with};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Audit records of one request id, with the admin key.
async fn records_of(app: &common::TestApp, request_id: &str) -> Vec<Value> {
    let v: Value = app.get("/v1/audit-log?limit=200").await.json().await.expect("json");
    let mut out = Vec::new();
    let mut page = v;
    loop {
        out.extend(page["items"].as_array().expect("items").iter().filter(|r| r["request_id"] == request_id).cloned());
        let Some(cursor) = page["next_cursor"].as_str().map(str::to_owned) else { break };
        page = app.get(&format!("/v1/audit-log?limit=200&cursor={cursor}")).await.json().await.expect("json");
    }
    out
}

#[tokio::test]
async fn the_client_address_is_the_rightmost_untrusted_one_across_all_forwarded_lines() {
    // The test client connects from 127.0.0.1, which plays the trusted proxy here.
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let (_, key) =
        app.key(json!({"name": "pinned", "scopes": ["projects:read"], "allowed_ips": ["198.51.100.7/32"]})).await;
    let send = |lines: &'static [&'static str], rid: &'static str| {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_static(line));
        }
        app.client
            .get(format!("{}/v1/me", app.base))
            .bearer_auth(&key)
            .header("x-request-id", rid)
            .headers(headers)
            .send()
    };
    // The client forges a first line naming the allowed address; the proxy appends the real one
    // as a second line, as HAProxy does. The forged line must not win.
    let forged = send(&["198.51.100.7", "203.0.113.50"], "xff-forged").await.expect("send");
    problem(forged, 403, "forbidden").await;
    let denied = records_of(&app, "xff-forged").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["client_ip"], "203.0.113.50");
    // The real client behind two trusted hops (the first of them on its own line).
    let real = send(&["198.51.100.7", "127.0.0.1"], "xff-real").await.expect("send");
    assert_eq!(real.status(), StatusCode::OK);
    // Without TRUSTED_PROXIES the header is ignored: the peer is the client.
    let plain = spawn_app().await;
    let (_, key) =
        plain.key(json!({"name": "pinned", "scopes": ["projects:read"], "allowed_ips": ["198.51.100.7/32"]})).await;
    let res = plain
        .client
        .get(format!("{}/v1/me", plain.base))
        .bearer_auth(&key)
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .expect("send");
    problem(res, 403, "forbidden").await;
}
