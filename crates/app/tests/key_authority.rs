//! No key can widen its own power: through real HTTP, a limited admin can neither mint nor
//! manage a key more powerful than itself on any axis (scopes, projects, networks, expiry), and
//! sees only the keys that lie within its own projects.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use common::{problem, spawn_app, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn create_as(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.call(Method::POST, "/v1/api-keys", key, Some(body)).await
}

async fn key_count(app: &TestApp) -> usize {
    let page: Value = app.get("/v1/api-keys?limit=200").await.json().await.expect("json");
    page["items"].as_array().expect("items").len()
}

fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339()
}

#[tokio::test]
async fn a_limited_admin_cannot_mint_a_key_wider_than_itself_on_any_axis() {
    let app = spawn_app().await;
    for name in ["alpha", "beta"] {
        app.project(name, 1).await;
    }
    let expires = in_an_hour();
    let (_, limited) = app
        .key(json!({"name": "alpha-admin", "scopes": ["admin"], "projects": ["alpha"],
                    "allowed_ips": ["127.0.0.0/8"], "expires_at": expires}))
        .await;
    let before = key_count(&app).await;
    let wider = [
        (json!({"name": "x", "scopes": ["admin"], "allowed_ips": ["127.0.0.1"], "expires_at": expires}), "projects"),
        (
            json!({"name": "x", "scopes": ["admin"], "projects": ["alpha", "beta"], "allowed_ips": ["127.0.0.1"], "expires_at": expires}),
            "projects",
        ),
        (json!({"name": "x", "scopes": ["admin"], "projects": ["alpha"], "expires_at": expires}), "allowed_ips"),
        (
            json!({"name": "x", "scopes": ["admin"], "projects": ["alpha"], "allowed_ips": ["10.0.0.0/8"], "expires_at": expires}),
            "allowed_ips",
        ),
        (json!({"name": "x", "scopes": ["admin"], "projects": ["alpha"], "allowed_ips": ["127.0.0.1"]}), "expires_at"),
    ];
    for (body, axis) in wider {
        let refused = problem(create_as(&app, &limited, body.clone()).await, 403, "forbidden").await;
        let detail = refused["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(axis), "{body}: the detail names {axis}: {detail}");
    }
    assert_eq!(key_count(&app).await, before, "a refused creation leaves no key");

    let inside = json!({"name": "alpha-ci", "scopes": ["commands:write", "commands:read"], "projects": ["alpha"],
                        "allowed_ips": ["127.0.0.1"], "expires_at": expires});
    let res = create_as(&app, &limited, inside).await;
    assert_eq!(res.status(), StatusCode::CREATED, "{:?}", res.text().await);

    let (_, reader) = app.key(json!({"name": "reader", "scopes": ["commands:read"], "projects": ["alpha"]})).await;
    let escalate = json!({"name": "x", "scopes": ["commands:write"], "projects": ["alpha"]});
    problem(create_as(&app, &reader, escalate).await, 403, "forbidden").await;
}

#[tokio::test]
async fn a_limited_admin_sees_and_manages_only_keys_within_its_projects() {
    let app = spawn_app().await;
    for name in ["alpha", "beta"] {
        app.project(name, 1).await;
    }
    let (_, limited) = app.key(json!({"name": "alpha-admin", "scopes": ["admin"], "projects": ["alpha"]})).await;
    let (inside_id, _) = app.key(json!({"name": "alpha-ci", "scopes": ["commands:read"], "projects": ["alpha"]})).await;
    let (beta_id, _) = app.key(json!({"name": "beta-ci", "scopes": ["commands:read"], "projects": ["beta"]})).await;
    let (wide_ip_id, _) =
        app.key(json!({"name": "alpha-anywhere", "scopes": ["commands:read"], "projects": ["alpha"]})).await;
    let me: Value = app.call(Method::GET, "/v1/me", &app.admin, None).await.json().await.expect("json");
    let root_id = me["id"].as_str().expect("id").to_owned();

    let page: Value = app.call(Method::GET, "/v1/api-keys?limit=200", &limited, None).await.json().await.expect("json");
    let listed: Vec<&str> = page["items"].as_array().expect("items").iter().filter_map(|k| k["id"].as_str()).collect();
    assert!(listed.contains(&inside_id.as_str()), "{listed:?}");
    assert!(!listed.contains(&beta_id.as_str()) && !listed.contains(&root_id.as_str()), "{listed:?}");

    for hidden in [&root_id, &beta_id] {
        for (method, path) in [
            (Method::GET, format!("/v1/api-keys/{hidden}")),
            (Method::POST, format!("/v1/api-keys/{hidden}/rotate")),
            (Method::DELETE, format!("/v1/api-keys/{hidden}")),
        ] {
            problem(app.call(method, &path, &limited, Some(json!({}))).await, 404, "not_found").await;
        }
    }
    let still: Value = app.get(&format!("/v1/api-keys/{root_id}")).await.json().await.expect("json");
    assert!(still["revoked_at"].is_null(), "the unlimited admin was not revoked");

    // An admin limited to a network cannot take over a key usable from anywhere.
    let (_, fenced) = app
        .key(json!({"name": "fenced", "scopes": ["admin"], "projects": ["alpha"], "allowed_ips": ["127.0.0.0/8"]}))
        .await;
    let rotate = format!("/v1/api-keys/{wide_ip_id}/rotate");
    let refused = problem(app.call(Method::POST, &rotate, &fenced, Some(json!({}))).await, 403, "forbidden").await;
    assert!(refused["detail"].as_str().unwrap_or_default().contains("allowed_ips"), "{refused}");

    let revoke = app.call(Method::DELETE, &format!("/v1/api-keys/{inside_id}"), &limited, None).await;
    assert!(revoke.status().is_success(), "{}", revoke.status());
}

#[tokio::test]
async fn a_limited_key_counts_only_its_own_projects_in_the_queue() {
    // No worker slots, so everything stays queued and the counts are exact.
    let app = common::spawn_app_with(&["--concurrent-commands", "0"]).await;
    for name in ["alpha", "beta"] {
        app.project(name, 1).await;
    }
    app.submit("alpha", json!({"command": ["true"]})).await;
    for _ in 0..2 {
        app.submit("beta", json!({"command": ["true"], "priority": "high"})).await;
    }
    let total = |v: &Value| v["depth"].as_object().expect("depth").values().filter_map(Value::as_u64).sum::<u64>();
    let all: Value = app.get("/v1/queue").await.json().await.expect("json");
    assert_eq!(total(&all), 3, "{all}");
    let alpha = app.key_with(&["commands:read"], Some(&["alpha"])).await;
    let mine: Value = app.call(Method::GET, "/v1/queue", &alpha, None).await.json().await.expect("json");
    assert_eq!(total(&mine), 1, "{mine}");
    assert_eq!(mine["depth"]["high"], 0, "beta's high-priority commands are not counted: {mine}");
}
