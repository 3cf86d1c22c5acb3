//! Authentication, scopes, project visibility, IP allow-lists, revocation, rotation, expiry and
//! rate limits, through real HTTP.

mod common;

use std::time::{Duration, Instant};

use common::wait::eventually;
use common::{problem, spawn_app, spawn_app_with};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn requests_without_a_valid_key_are_unauthorized() {
    let app = spawn_app().await;
    let res = app.client.get(format!("{}/v1/me", app.base)).send().await.expect("send");
    assert!(res.headers().get("x-request-id").is_some());
    problem(res, 401, "unauthorized").await;
    problem(app.call(Method::GET, "/v1/me", "rdev_nope", None).await, 401, "unauthorized").await;
    let healthz = app.client.get(format!("{}/healthz", app.base)).send().await.expect("send");
    assert_eq!(healthz.status(), StatusCode::OK, "health needs no key");
}

#[tokio::test]
async fn each_scope_is_denied_without_it_and_allowed_with_it() {
    let app = spawn_app().await;
    app.project("web", 2).await;
    let cmd = app.submit("web", json!({"command": ["true"]})).await;
    let cmd_path = format!("/v1/commands/{}", cmd["id"].as_str().expect("id"));
    let cases: [(&str, Method, &str, Option<Value>); 7] = [
        ("projects:read", Method::GET, "/v1/projects/web", None),
        ("projects:write", Method::PATCH, "/v1/projects/web", Some(json!({"image": "alpine:3.21"}))),
        ("commands:read", Method::GET, &cmd_path, None),
        ("commands:write", Method::POST, "/v1/projects/web/commands", Some(json!({"command": ["true"]}))),
        ("audit:read", Method::GET, "/v1/audit-log", None),
        ("admin", Method::GET, "/v1/api-keys", None),
        ("webhooks:manage", Method::GET, "/v1/me", None),
    ];
    for (scope, method, path, body) in cases {
        let other = if scope == "audit:read" { "projects:read" } else { "audit:read" };
        let without = app.key_with(&[other], None).await;
        let with = app.key_with(&[scope], None).await;
        if scope != "webhooks:manage" {
            problem(app.call(method.clone(), path, &without, body.clone()).await, 403, "forbidden").await;
        }
        let res = app.call(method.clone(), path, &with, body.clone()).await;
        assert!(res.status().is_success(), "{scope} {method} {path}: {}", res.status());
    }
}

#[tokio::test]
async fn a_key_limited_to_a_project_cannot_see_others() {
    let app = spawn_app().await;
    app.project("alpha", 2).await;
    app.project("beta", 2).await;
    let b_cmd = app.submit("beta", json!({"command": ["true"]})).await;
    let b_id = b_cmd["id"].as_str().expect("id");
    let key = app.key_with(&["projects:read", "commands:read", "commands:write"], Some(&["alpha"])).await;
    assert_eq!(app.call(Method::GET, "/v1/projects/alpha", &key, None).await.status(), StatusCode::OK);
    problem(app.call(Method::GET, "/v1/projects/beta", &key, None).await, 404, "not_found").await;
    problem(app.call(Method::GET, &format!("/v1/commands/{b_id}"), &key, None).await, 404, "not_found").await;
    problem(app.call(Method::GET, &format!("/v1/commands/{b_id}/output"), &key, None).await, 404, "not_found").await;
    problem(app.call(Method::POST, &format!("/v1/commands/{b_id}/cancel"), &key, None).await, 404, "not_found").await;
    problem(
        app.call(Method::POST, "/v1/projects/beta/commands", &key, Some(json!({"command": ["true"]}))).await,
        404,
        "not_found",
    )
    .await;
    let listed: Value = app.call(Method::GET, "/v1/projects", &key, None).await.json().await.expect("json");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["items"][0]["name"], "alpha");
}

#[tokio::test]
async fn allowed_ips_ignore_a_spoofed_forwarded_for() {
    let app = spawn_app().await;
    let (_, key) = app.key(json!({"name": "office", "scopes": ["projects:read"], "allowed_ips": ["10.0.0.0/8"]})).await;
    let spoofed = app
        .client
        .get(format!("{}/v1/me", app.base))
        .bearer_auth(&key)
        .header("X-Forwarded-For", "10.1.2.3")
        .send()
        .await
        .expect("send");
    problem(spoofed, 403, "forbidden").await;

    let proxied = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let (_, key) =
        proxied.key(json!({"name": "office", "scopes": ["projects:read"], "allowed_ips": ["10.0.0.0/8"]})).await;
    let via_proxy = proxied
        .client
        .get(format!("{}/v1/me", proxied.base))
        .bearer_auth(&key)
        .header("X-Forwarded-For", "10.1.2.3")
        .send()
        .await
        .expect("send");
    assert_eq!(via_proxy.status(), StatusCode::OK, "a trusted proxy's X-Forwarded-For is believed");
    let forged = proxied
        .client
        .get(format!("{}/v1/me", proxied.base))
        .bearer_auth(&key)
        .header("X-Forwarded-For", "10.1.2.3, 203.0.113.7")
        .send()
        .await
        .expect("send");
    problem(forged, 403, "forbidden").await;
}

#[tokio::test]
async fn revocation_takes_effect_within_a_second() {
    let app = spawn_app().await;
    let (id, key) = app.key(json!({"name": "ci", "scopes": ["projects:read"]})).await;
    assert_eq!(app.call(Method::GET, "/v1/me", &key, None).await.status(), StatusCode::OK);
    let revoked = Instant::now();
    assert_eq!(
        app.call(Method::DELETE, &format!("/v1/api-keys/{id}"), &app.admin, None).await.status(),
        StatusCode::OK
    );
    let within = Duration::from_secs(1).saturating_sub(revoked.elapsed());
    eventually("the revoked key is refused within 1 s", within, || async {
        app.call(Method::GET, "/v1/me", &key, None).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
}

#[tokio::test]
async fn rotation_returns_a_new_secret_and_honours_the_grace_period() {
    let app = spawn_app().await;
    let (id, old) = app.key(json!({"name": "ci", "scopes": ["projects:read"]})).await;
    let res = app.post(&format!("/v1/api-keys/{id}/rotate"), json!({"grace_seconds": 60})).await;
    assert_eq!(res.status(), StatusCode::OK);
    let new = res.json::<Value>().await.expect("json")["key"].as_str().expect("key").to_owned();
    assert_ne!(new, old);
    assert_eq!(app.call(Method::GET, "/v1/me", &new, None).await.status(), StatusCode::OK);
    assert_eq!(app.call(Method::GET, "/v1/me", &old, None).await.status(), StatusCode::OK, "old secret in grace");
    let res = app.call(Method::POST, &format!("/v1/api-keys/{id}/rotate"), &app.admin, None).await;
    assert_eq!(res.status(), StatusCode::OK, "grace defaults to 0");
    problem(app.call(Method::GET, "/v1/me", &new, None).await, 401, "unauthorized").await;
    problem(
        app.post(&format!("/v1/api-keys/{id}/rotate"), json!({"grace_seconds": 10_000_000})).await,
        400,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let app = spawn_app().await;
    let expires = (chrono::Utc::now() + chrono::TimeDelta::milliseconds(1500)).to_rfc3339();
    let (_, key) = app.key(json!({"name": "short", "scopes": ["projects:read"], "expires_at": expires})).await;
    assert_eq!(app.call(Method::GET, "/v1/me", &key, None).await.status(), StatusCode::OK);
    // Fixed sleep: the expiry is wall-clock time that must pass; polling before it would spend the
    // key's rate limit, and a 429 would hide the 401 asked for.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    problem(app.call(Method::GET, "/v1/me", &key, None).await, 401, "unauthorized").await;
    let past = (chrono::Utc::now() - chrono::TimeDelta::seconds(5)).to_rfc3339();
    problem(
        app.post("/v1/api-keys", json!({"name": "x", "scopes": ["admin"], "expires_at": past})).await,
        400,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn over_the_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let app = spawn_app().await;
    let (_, key) = app.key(json!({"name": "slow", "scopes": ["projects:read"], "rate_limit_rps": 1})).await;
    let mut last = None;
    for i in 0..10 {
        let res = app.call(Method::GET, "/v1/me", &key, None).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i} of 10 in the window");
        last = res.headers().get("ratelimit-remaining").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(res.headers().get("ratelimit-limit").and_then(|v| v.to_str().ok()), Some("10"));
        assert!(res.headers().get("ratelimit-reset").is_some());
    }
    assert_eq!(last.as_deref(), Some("0"));
    let refused = app.call(Method::GET, "/v1/me", &key, None).await;
    let retry: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    // A count made early in a window weighs fully until the window ends and then fades, so the
    // wait can pass one window (by up to window / limit) but never two.
    assert!((1..=20).contains(&retry), "retry after {retry}");
    assert!(refused.headers().get("ratelimit-remaining").is_some());
    problem(refused, 429, "rate_limited").await;
    assert_eq!(app.get("/v1/me").await.status(), StatusCode::OK, "other keys are not affected");
}

#[tokio::test]
async fn key_management_is_admin_only_and_never_shows_secrets_again() {
    let app = spawn_app().await;
    let (id, secret) =
        app.key(json!({"name": "ci", "scopes": ["commands:read", "commands:write"], "projects": ["web"]})).await;
    let got: Value = app.get(&format!("/v1/api-keys/{id}")).await.json().await.expect("json");
    assert_eq!(got["scopes"], json!(["commands:read", "commands:write"]));
    assert_eq!(got["projects"], json!(["web"]));
    assert!(!got.to_string().contains(&secret), "secrets are shown once");
    let listed = app.get("/v1/api-keys?limit=1").await.json::<Value>().await.expect("json");
    assert!(listed["next_cursor"].is_string());
    problem(app.call(Method::GET, "/v1/api-keys", &secret, None).await, 403, "forbidden").await;
    let me: Value = app.call(Method::GET, "/v1/me", &secret, None).await.json().await.expect("json");
    assert_eq!(me["id"], id.as_str());
    problem(app.post("/v1/api-keys", json!({"name": "x", "scopes": ["root"]})).await, 400, "validation_failed").await;
    problem(
        app.post("/v1/api-keys", json!({"name": "x", "scopes": ["admin"], "allowed_ips": ["not-an-ip"]})).await,
        400,
        "validation_failed",
    )
    .await;
}
