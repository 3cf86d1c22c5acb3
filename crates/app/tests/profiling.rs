//! `GET /debug/pprof/profile`: a real CPU profile in pprof's protobuf format, for admins only,
//! one at a time, with `seconds` checked like every other input.
#![allow(clippy::expect_used, reason = "test set-up: a failed expectation is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{problem, spawn_app};
use pprof::protos::Message;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// Keeps one core busy in a function whose name the profile must show.
#[inline(never)]
fn spin_for_the_profiler(until: Instant) -> u64 {
    let mut x: u64 = 1;
    while Instant::now() < until {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_profile_of_a_busy_loop_has_its_samples_and_a_second_one_waits_its_turn() {
    let app = spawn_app().await;
    let busy = std::thread::spawn(|| spin_for_the_profiler(Instant::now() + Duration::from_secs(4)));
    let first = {
        let (client, url, key) =
            (app.client.clone(), format!("{}/debug/pprof/profile?seconds=2", app.base), app.admin.clone());
        tokio::spawn(async move { client.get(url).bearer_auth(key).send().await.expect("profile") })
    };
    // Fixed sleep: the first profile having begun has no outside sign short of asking for a
    // second one, which is what is being tested.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = app.get("/debug/pprof/profile?seconds=1").await;
    problem(second, 409, "conflict").await;

    let res = first.await.expect("task");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    let body = res.bytes().await.expect("body");
    let profile = pprof::protos::Profile::decode(body).expect("a pprof protobuf");
    assert!(!profile.sample.is_empty(), "a busy process has samples");
    let name = |i: i64| profile.string_table.get(usize::try_from(i).expect("index")).map(String::as_str);
    assert!(profile.sample_type.iter().any(|t| name(t.ty) == Some("cpu")), "a CPU profile");
    assert!(
        profile.string_table.iter().any(|s| s.contains("spin_for_the_profiler")),
        "the busy function is among the sampled frames"
    );
    busy.join().expect("busy thread");

    // The profiler is free again.
    let again = app.get("/debug/pprof/profile?seconds=1").await;
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_seconds_and_non_admins_are_refused() {
    let app = spawn_app().await;
    for bad in ["0", "61", "-1", "1.5", "abc", ""] {
        let res = app.get(&format!("/debug/pprof/profile?seconds={bad}")).await;
        let doc = problem(res, 400, "validation_failed").await;
        assert_eq!(doc["errors"][0]["field"], "seconds", "{bad}: {doc}");
    }
    let reader = app.key_with(&["projects:read", "commands:read"], None).await;
    problem(app.call(Method::GET, "/debug/pprof/profile?seconds=1", &reader, None).await, 403, "forbidden").await;
    let anonymous =
        app.client.get(format!("{}/debug/pprof/profile?seconds=1", app.base)).send().await.expect("request");
    problem(anonymous, 401, "unauthorized").await;
}

#[tokio::test]
async fn the_profile_endpoint_is_in_the_openapi_document() {
    let app = spawn_app().await;
    let doc: serde_json::Value = app.get("/openapi.json").await.json().await.expect("json");
    let op = &doc["paths"]["/debug/pprof/profile"]["get"];
    assert_eq!(op["operationId"], "cpu_profile", "{op}");
    assert!(op["responses"]["200"]["content"]["application/octet-stream"].is_object(), "{op}");
    let body = &op["responses"]["200"]["content"]["application/octet-stream"]["schema"]["$ref"];
    let name = body.as_str().and_then(|r| r.rsplit('/').next()).expect("a schema reference");
    let schema = &doc["components"]["schemas"][name];
    assert_eq!(
        (&schema["type"], &schema["format"]),
        (&json!("string"), &json!("binary")),
        "binary, not an array: {schema}"
    );
    assert!(op["responses"]["409"].is_object() && op["responses"]["400"].is_object());
    let seconds =
        op["parameters"].as_array().expect("parameters").iter().find(|p| p["name"] == "seconds").expect("seconds");
    assert_eq!(seconds["in"], "query");
    assert_eq!((seconds["schema"]["minimum"].as_u64(), seconds["schema"]["maximum"].as_u64()), (Some(1), Some(60)));
}
