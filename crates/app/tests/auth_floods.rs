//! Unauthenticated floods are limited (issue 11): failed authentications are limited per client
//! address and audited in aggregate, a valid key from the same address is never refused, and a
//! known key's refusal names it.

#![allow(clippy::expect_used, reason = "tests: a failed expectation is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{problem, spawn_app, spawn_app_with, TestApp};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Every `auth.denied` record, oldest first.
async fn denials(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut path = "/v1/audit-log?limit=200&action=auth.denied".to_owned();
    loop {
        let page: Value = app.get(&path).await.json().await.expect("json");
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        let Some(cursor) = page["next_cursor"].as_str() else { return out };
        path = format!("/v1/audit-log?limit=200&action=auth.denied&cursor={cursor}");
    }
}

/// The summed `count` of the records whose detail is `detail`.
fn counted(records: &[Value], detail: &str) -> u64 {
    records.iter().filter(|r| r["detail"] == detail).map(|r| r["count"].as_u64().expect("count")).sum()
}

#[tokio::test]
async fn a_flood_of_bad_keys_is_refused_with_429_and_audited_in_a_handful_of_counted_records() {
    const WINDOW: u64 = 5;
    let app = spawn_app_with(&["--auth-failure-audit-window-seconds", &WINDOW.to_string()]).await;
    let started = Instant::now();
    // 2,000 bad keys, 32 at a time, with the admin key from the same address every 50th request.
    let results: Vec<(bool, StatusCode, Option<String>)> = futures::stream::iter(0..2100)
        .map(|i| {
            let valid = i % 50 == 49;
            let key = if valid { app.admin.clone() } else { "rdev_not_a_key".to_owned() };
            let req = app.client.get(format!("{}/v1/me", app.base)).bearer_auth(key);
            async move {
                let res = req.send().await.expect("send");
                let retry_after = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                (valid, res.status(), retry_after)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let valid: Vec<_> = results.iter().filter(|r| r.0).collect();
    assert_eq!(valid.len(), 42);
    assert!(valid.iter().all(|r| r.1 == StatusCode::OK), "a valid key is never refused: {valid:?}");
    let bad: Vec<_> = results.iter().filter(|r| !r.0).collect();
    assert_eq!(bad.len(), 2058);
    let unauthorized = bad.iter().filter(|r| r.1 == StatusCode::UNAUTHORIZED).count() as u64;
    let limited = bad.iter().filter(|r| r.1 == StatusCode::TOO_MANY_REQUESTS).count() as u64;
    assert_eq!(unauthorized + limited, 2058, "only 401 and 429");
    // The default budget: a burst of 40, then 20 a second.
    let budget = 40 + 20 * (elapsed.as_secs() + 1);
    assert!(unauthorized <= budget, "{unauthorized} 401s in {elapsed:?} (budget {budget})");
    assert!(limited > 1000, "mostly 429: {limited}");
    assert!(
        bad.iter()
            .filter(|r| r.1 == StatusCode::TOO_MANY_REQUESTS)
            .all(|r| r.2.as_deref().is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1))),
        "every 429 says when to retry"
    );
    // The bucket refills while the flood's last responses travel, so a lone request may find a
    // token: keep asking (bounded) until the refusal is a typed 429 problem.
    let (mut unauthorized, mut limited, mut refused) = (unauthorized, limited, false);
    for _ in 0..200 {
        let res = app.call(Method::GET, "/v1/me", "rdev_not_a_key", None).await;
        if res.status() == StatusCode::UNAUTHORIZED {
            unauthorized += 1;
            continue;
        }
        problem(res, 429, "rate_limited").await;
        limited += 1;
        refused = true;
        break;
    }
    assert!(refused, "a burst of bad keys after the flood is refused");

    // Once the windows have closed, the records add up to every failure, and they are few:
    // per window at most two records for each reason.
    // Fixed sleep: the aggregation windows close on the wall clock, and a closed window has no
    // other sign than its record, whose number is what is asserted.
    tokio::time::sleep(Duration::from_secs(WINDOW) + Duration::from_millis(2500)).await;
    let records = denials(&app).await;
    let windows = elapsed.as_secs() / WINDOW + 2;
    assert!(records.len() as u64 <= 2 * 2 * windows, "{} records after {elapsed:?}: {records:?}", records.len());
    assert!(records.len() <= 12, "a handful of records, not one per request: {}", records.len());
    assert_eq!(counted(&records, "401 invalid_key"), unauthorized, "{records:?}");
    assert_eq!(counted(&records, "429 rate_limited"), limited, "{records:?}");
    assert!(records.iter().all(|r| r["client_ip"] == "127.0.0.1" && r["outcome"] == "denied" && r["actor"].is_null()));
    assert!(records.iter().any(|r| r["count"].as_u64().is_some_and(|c| c > 100)), "an aggregated record");
    let verify: Value = app.get("/v1/audit-log/verify").await.json().await.expect("json");
    assert_eq!(verify["ok"], true, "counts are part of the chain: {verify}");

    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(text.contains(r#"auth_failures_total{reason="rate_limited"}"#), "refusals are counted too");
}

#[tokio::test]
async fn a_refused_known_key_is_the_actor_of_its_denial() {
    let app = spawn_app().await;
    let with_id = |key: &str, request_id: &'static str| {
        app.client.get(format!("{}/v1/me", app.base)).bearer_auth(key).header("x-request-id", request_id).send()
    };
    let (revoked_id, revoked) = app.key(json!({"name": "stolen", "scopes": ["projects:read"]})).await;
    let res = app.call(Method::DELETE, &format!("/v1/api-keys/{revoked_id}"), &app.admin, None).await;
    assert!(res.status().is_success(), "revoke: {}", res.status());
    problem(with_id(&revoked, "revoked-1").await.expect("send"), 401, "unauthorized").await;
    let (pinned_id, pinned) =
        app.key(json!({"name": "pinned", "scopes": ["projects:read"], "allowed_ips": ["10.0.0.0/8"]})).await;
    problem(with_id(&pinned, "pinned-1").await.expect("send"), 403, "forbidden").await;
    problem(with_id("rdev_unknown", "unknown-1").await.expect("send"), 401, "unauthorized").await;

    let records = denials(&app).await;
    let of = |rid: &str| {
        records.iter().find(|r| r["request_id"] == rid).cloned().unwrap_or_else(|| panic!("{rid}: {records:?}"))
    };
    assert_eq!(of("revoked-1")["actor"], revoked_id.as_str());
    assert_eq!(of("revoked-1")["detail"], "401 invalid_key");
    assert_eq!(of("pinned-1")["actor"], pinned_id.as_str());
    assert_eq!(of("pinned-1")["detail"], "403 ip_not_allowed");
    assert!(of("unknown-1")["actor"].is_null());
    assert!(records.iter().all(|r| r["count"] == 1));
}

#[tokio::test]
async fn the_failure_budget_is_configurable_and_refills() {
    let app = spawn_app_with(&["--auth-failure-rps", "1", "--auth-failure-burst", "2"]).await;
    let anonymous = || app.client.get(format!("{}/v1/me", app.base)).send();
    problem(anonymous().await.expect("send"), 401, "unauthorized").await;
    problem(anonymous().await.expect("send"), 401, "unauthorized").await;
    let refused = anonymous().await.expect("send");
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    problem(refused, 429, "rate_limited").await;
    assert_eq!(app.get("/v1/me").await.status(), StatusCode::OK, "the admin key from the same address");
    // Fixed sleep: the budget refills on the wall clock; polling would spend what it refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    problem(anonymous().await.expect("send"), 401, "unauthorized").await;
    problem(anonymous().await.expect("send"), 429, "rate_limited").await;
}
