//! The Kubernetes API subset over raw HTTP, checked against recorded apiserver documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{assert_matches_fixture, fixture, pod_body, read_events, start, start_with, VOLATILE};
use futures::StreamExt;
use serde_json::{json, Value};

#[tokio::test]
async fn discovery_documents_match_the_apiserver() {
    let t = start().await;
    assert_eq!(t.get_json("/api").await, (200, fixture("discovery_api.json")));
    assert_eq!(t.get_json("/apis").await, (200, fixture("discovery_apis.json")));
    assert_eq!(t.get_json("/api/v1").await, (200, fixture("discovery_api_v1.json")));
    let (status, version) = t.get_json("/version").await;
    assert_eq!(status, 200);
    assert_matches_fixture(&fixture("version.json"), &version, &["gitCommit"]);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn created_pod_has_the_apiserver_defaults_then_runs() {
    let t = start().await;
    let created = t.create(&pod_body("w1", json!({"app": "rdev"}))).await;
    assert_matches_fixture(&fixture("pod_pending.json"), &created, VOLATILE);
    let running = t.wait_pod("w1", |p| p.is_some_and(|p| p["status"]["phase"] == "Running")).await.unwrap();
    assert_matches_fixture(&fixture("pod_running.json"), &running, VOLATILE);
    assert_eq!(running["status"]["conditions"].as_array().unwrap().len(), 5);
    let rv = |p: &Value| p["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(rv(&running) > rv(&created));
    assert!(t.pod_dir("w1").is_dir(), "the pod's directory exists");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn failures_are_status_documents() {
    let t = start().await;
    assert_eq!(t.get_json("/api/v1/namespaces/default/pods/x").await, (404, fixture("status_not_found.json")));
    t.running("w1").await;
    let (status, body) = t.post_json("/api/v1/namespaces/default/pods", &pod_body("w1", json!({}))).await;
    assert_eq!((status, body), (409, fixture("status_already_exists.json")));
    let (status, body) =
        t.get_json("/api/v1/namespaces/default/pods/w1/exec?command=true&stdout=true&container=c").await;
    assert_eq!((status, body), (400, fixture("status_container_not_valid.json")));
    let (status, body) = t.get_json("/api/v1/namespaces/default/pods/w1/log?container=c").await;
    assert_eq!((status, body), (400, fixture("status_container_not_valid.json")));
    let (status, body) = t.get_json("/api/v1/nodes").await;
    assert_eq!((status, body["reason"].as_str()), (404, Some("NotFound")));
    let no_image = json!({"metadata": {"name": "bad"}, "spec": {"containers": [{"name": "main"}]}});
    let (status, body) = t.post_json("/api/v1/namespaces/default/pods", &no_image).await;
    assert_eq!(status, 422);
    assert_eq!(body["message"], "Pod \"bad\" is invalid: spec.containers[0].image: Required value");
    let response = t.http.put(t.url("/api/v1/namespaces/default/pods/w1")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn list_honours_label_and_field_selectors() {
    let t = start().await;
    let (status, empty) = t.get_json("/api/v1/namespaces/default/pods").await;
    assert_eq!(status, 200);
    assert_matches_fixture(&fixture("pod_list_empty.json"), &empty, VOLATILE);
    t.create(&pod_body("a", json!({"app": "rdev", "tier": "web"}))).await;
    t.create(&pod_body("b", json!({"app": "rdev", "tier": "db"}))).await;
    t.create(&pod_body("c", json!({"app": "other"}))).await;
    let names = |list: &Value| -> Vec<String> {
        list["items"].as_array().unwrap().iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()).collect()
    };
    let select = |query: &'static str| {
        let t = &t;
        async move {
            let (status, list) = t.get_json(&format!("/api/v1/namespaces/default/pods?&{query}")).await;
            assert_eq!(status, 200, "{query}: {list}");
            names(&list)
        }
    };
    assert_eq!(select("labelSelector=app%3Drdev").await, ["a", "b"]);
    assert_eq!(select("labelSelector=app%3D%3Drdev%2Ctier%21%3Ddb").await, ["a"]);
    assert_eq!(select("labelSelector=tier+in+%28web%2Cdb%29").await, ["a", "b"]);
    assert_eq!(select("labelSelector=tier+notin+%28web%29").await, ["b", "c"]);
    assert_eq!(select("labelSelector=tier").await, ["a", "b"]);
    assert_eq!(select("labelSelector=%21tier").await, ["c"]);
    assert_eq!(select("fieldSelector=metadata.name%3Db").await, ["b"]);
    assert_eq!(select("fieldSelector=metadata.namespace%3Ddefault%2Cmetadata.name%21%3Db").await, ["a", "c"]);
    assert_eq!(select("fieldSelector=status.phase%3DFailed").await, Vec::<String>::new());
    let (_, list) = t.get_json("/api/v1/namespaces/default/pods?limit=500").await;
    assert!(list["items"][0].get("kind").is_none(), "list items carry no kind");
    assert_eq!(t.get_json("/api/v1/pods?labelSelector=app%3Dother").await.1["items"].as_array().unwrap().len(), 1);
    let (status, bad) = t.get_json("/api/v1/namespaces/default/pods?fieldSelector=spec.foo%3Dx").await;
    assert_eq!((status, bad["message"].as_str()), (400, Some("field label not supported: spec.foo")));
    let (status, _) = t.get_json("/api/v1/namespaces/default/pods?labelSelector=a+b").await;
    assert_eq!(status, 400);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn watch_reports_added_modified_deleted() {
    let t = start().await;
    t.running("other").await;
    let (_, list) = t.get_json("/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dw1").await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let url = t.url(&format!(
        "/api/v1/namespaces/default/pods?&watch=true&timeoutSeconds=10&fieldSelector=metadata.name%3Dw1&allowWatchBookmarks=true&resourceVersion={rv}"
    ));
    let response = t.http.get(url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    t.running("w1").await;
    t.delete("w1", Some(0)).await;
    let mut events = read_events(response, 5).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"ADDED"));
    assert_eq!(kinds.last(), Some(&"DELETED"));
    assert!(kinds[1..kinds.len() - 1].iter().all(|k| *k == "MODIFIED"), "{kinds:?}");
    assert!(events.iter().all(|e| e["object"]["metadata"]["name"] == "w1"), "the field selector holds");
    assert!(events.iter().all(|e| e["object"]["kind"] == "Pod" && e["object"]["apiVersion"] == "v1"));
    let rvs: Vec<u64> =
        events.iter().map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "resourceVersions rise: {rvs:?}");
    let deleted = events.pop().unwrap();
    assert_eq!(deleted["object"]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);

    // Without a resourceVersion the watch starts with the current pods as ADDED.
    let response = t.http.get(t.url("/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1")).send().await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), response.text()).await.unwrap().unwrap();
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "one current pod, then the timeout ends the stream: {body}");
    assert_eq!(
        (lines[0]["type"].as_str(), lines[0]["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("other"))
    );
    t.sim.shutdown().await;
}

#[tokio::test]
async fn watch_ends_with_a_bookmark_and_follows_selector_transitions() {
    let t = start().await;
    let response = t
        .http
        .get(t.url("/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Drdev&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion=0"))
        .send()
        .await
        .unwrap();
    t.running("w1").await;
    let body = tokio::time::timeout(Duration::from_secs(5), response.text()).await.unwrap().unwrap();
    let events: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "BOOKMARK");
    assert_eq!(last["object"]["kind"], "Pod");
    assert!(last["object"]["metadata"]["resourceVersion"].as_str().is_some_and(|rv| !rv.is_empty()));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn watch_refuses_streaming_lists_and_expired_versions() {
    let t = start().await;
    let url = "/api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
    let (status, body) = t.get_json(url).await;
    assert_eq!((status, body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        body["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
    );
    let response =
        t.http.get(t.url("/api/v1/namespaces/default/pods?watch=true&resourceVersion=900")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "expiry is an ERROR event, not an HTTP status");
    let body = tokio::time::timeout(Duration::from_secs(5), response.text()).await.unwrap().unwrap();
    let event: Value = serde_json::from_str(body.trim_end()).unwrap();
    assert_matches_fixture(&fixture("watch_error_expired.json"), &event, &["message"]);
    assert!(event["object"]["message"].as_str().unwrap().starts_with("too old resource version: 900 ("));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn a_restarted_sim_empties_the_trash_a_stopped_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let pods = dir.path().join("pods");
    let left = pods.join(".trash").join("an-old-uid").join("fs");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("file"), "from a pod deleted before the sim stopped").unwrap();
    std::fs::create_dir_all(pods.join("default").join("kept")).unwrap();
    let sim = kube_sim::KubeSim::start(kube_sim::SimConfig::for_tests(pods.clone())).await.unwrap();
    assert!(!pods.join(".trash").exists(), "the trash is emptied on start");
    assert!(pods.join("default").join("kept").is_dir(), "nothing else is touched");
    sim.shutdown().await;
}

#[tokio::test]
async fn graceful_delete_marks_the_pod_then_removes_it() {
    let t = start().await;
    t.running("w1").await;
    let (status, pod) = t.delete("w1", None).await;
    assert_eq!(status, 200);
    assert_eq!(pod["kind"], "Pod", "pods are returned, never a Status");
    assert!(pod["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(t.pod("w1").await.is_some(), "still there during the grace period");
    t.wait_pod("w1", |p| p.is_none()).await;
    assert!(!t.pod_dir("w1").exists(), "the container filesystem goes with the pod");
    let (status, _) = t.delete("w1", None).await;
    assert_eq!(status, 404);

    // A pod that was never scheduled anywhere goes at once.
    t.create(&pod_body("p", json!({}))).await;
    let (status, _) = t.delete("p", Some(0)).await;
    assert_eq!(status, 200);
    assert!(t.pod("p").await.is_none());
    t.sim.shutdown().await;
}

#[tokio::test]
async fn logs_serve_the_container_log() {
    let t = start_with(|c| c.ready_delay = Duration::from_millis(400)).await;
    t.create(&pod_body("w1", json!({}))).await;
    t.wait_pod("w1", |p| p.is_some_and(|p| p["status"]["containerStatuses"].is_array())).await;
    let (status, body) = t.get_json("/api/v1/namespaces/default/pods/w1/log").await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "container \"main\" in pod \"w1\" is waiting to start: ContainerCreating");
    t.wait_pod("w1", |p| p.is_some_and(|p| p["status"]["phase"] == "Running")).await;
    let response = t.http.get(t.url("/api/v1/namespaces/default/pods/w1/log?&container=main")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/plain");
    assert_eq!(response.text().await.unwrap(), "kube-sim: container main started\n");
    let appended = t.http.post(t.url("/_sim/pods/default/w1/log")).body("line two\nline three").send().await.unwrap();
    assert_eq!(appended.status().as_u16(), 200);
    let tail = t.http.get(t.url("/api/v1/namespaces/default/pods/w1/log?tailLines=2")).send().await.unwrap();
    assert_eq!(tail.text().await.unwrap(), "line two\nline three\n");

    let follow =
        t.http.get(t.url("/api/v1/namespaces/default/pods/w1/log?follow=true&tailLines=1")).send().await.unwrap();
    let mut stream = follow.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(&first[..], b"line three\n");
    t.http.post(t.url("/_sim/pods/default/w1/log")).body("live\n").send().await.unwrap();
    let live = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(&live[..], b"live\n");
    t.delete("w1", Some(0)).await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    assert!(end.is_none(), "following ends when the container stops");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn kubectl_gets_a_server_side_table() {
    let t = start().await;
    t.running("w1").await;
    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let response =
        t.http.get(t.url("/api/v1/namespaces/default/pods?limit=500")).header("Accept", accept).send().await.unwrap();
    let table: Value = response.json().await.unwrap();
    assert_matches_fixture(
        &fixture("table_pods.json"),
        &table,
        &["description", "cells", "resourceVersion", "creationTimestamp"],
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(
        (cells[0].as_str(), cells[1].as_str(), cells[2].as_str(), cells[3].as_str()),
        (Some("w1"), Some("1/1"), Some("Running"), Some("0"))
    );
    t.sim.shutdown().await;
}

#[tokio::test]
async fn oom_kill_restarts_or_fails_the_container() {
    let t = start().await;
    t.running("always").await;
    let (status, pod) = t.post_json("/_sim/pods/default/always/oom", &json!({})).await;
    assert_eq!(status, 200);
    let container = &pod["status"]["containerStatuses"][0];
    assert_eq!((pod["status"]["phase"].as_str(), container["restartCount"].as_u64()), (Some("Running"), Some(1)));
    assert_eq!(container["lastState"]["terminated"]["reason"], "OOMKilled");
    assert_eq!(container["lastState"]["terminated"]["exitCode"], 137);

    let mut never = pod_body("never", json!({}));
    never["spec"]["restartPolicy"] = json!("Never");
    t.create(&never).await;
    t.wait_pod("never", |p| p.is_some_and(|p| p["status"]["phase"] == "Running")).await;
    let (_, pod) = t.post_json("/_sim/pods/default/never/oom", &json!({})).await;
    assert_eq!(pod["status"]["phase"], "Failed");
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "OOMKilled");
    let log =
        t.http.get(t.url("/api/v1/namespaces/default/pods/never/log")).send().await.unwrap().text().await.unwrap();
    assert!(log.contains("OOMKilled"), "{log}");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn namespaces_exist_implicitly() {
    let t = start().await;
    let (status, ns) = t.get_json("/api/v1/namespaces/team-a").await;
    assert_eq!((status, ns["kind"].as_str(), ns["status"]["phase"].as_str()), (200, Some("Namespace"), Some("Active")));
    let (status, _) = t.get_json("/api/v1/namespaces/Not_Valid").await;
    assert_eq!(status, 404);
    let (_, list) = t.get_json("/api/v1/namespaces").await;
    assert_eq!(list["kind"], "NamespaceList");
    assert!(list["items"].as_array().unwrap().iter().any(|n| n["metadata"]["name"] == "team-a"));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn faults_apply_to_api_routes_only() {
    let t = start().await;
    t.running("w1").await;
    assert_eq!(t.set_faults(json!({"error_status": 503})).await, 200);
    let response = t.http.get(t.url("/api/v1/namespaces/default/pods/w1")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["kind"].as_str(), body["reason"].as_str(), body["code"].as_u64()),
        (Some("Status"), Some("ServiceUnavailable"), Some(503))
    );
    let (status, faults) = t.get_json("/_sim/faults").await;
    assert_eq!((status, faults), (200, json!({"error_status": 503})), "the control endpoint is never faulted");

    assert_eq!(t.set_faults(json!({"error_status": 500, "error_rate": 0.0})).await, 200);
    assert!(t.pod("w1").await.is_some(), "rate 0 hits nothing");

    assert_eq!(t.set_faults(json!({"drop_connections": true})).await, 200);
    assert!(t.http.get(t.url("/api/v1/namespaces/default/pods/w1")).send().await.is_err());
    assert_eq!(t.set_faults(json!({"refuse_connections": true})).await, 200);
    assert!(t.http.get(t.url("/api/v1/namespaces/default/pods/w1")).send().await.is_err());

    assert_eq!(t.set_faults(json!({"latency_ms": 300})).await, 200);
    let started = std::time::Instant::now();
    assert!(t.pod("w1").await.is_some());
    assert!(started.elapsed() >= Duration::from_millis(300));

    assert_eq!(t.set_faults(json!({"error_status": 200})).await, 400);
    assert_eq!(t.set_faults(json!({"bogus": true})).await, 400);
    let cleared = t.http.delete(t.url("/_sim/faults")).send().await.unwrap();
    assert_eq!(cleared.status().as_u16(), 200);
    let started = std::time::Instant::now();
    assert!(t.pod("w1").await.is_some());
    assert!(started.elapsed() < Duration::from_millis(300));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let t = start_with(|c| c.token = Some("s3cret".to_owned())).await;
    let (status, body) = t.get_json("/api/v1/namespaces/default/pods").await;
    assert_eq!((status, body["reason"].as_str(), body["kind"].as_str()), (401, Some("Unauthorized"), Some("Status")));
    let wrong = t.http.get(t.url("/api/v1/namespaces/default/pods")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = t.http.get(t.url("/api/v1/namespaces/default/pods")).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(right.status().as_u16(), 200);
    assert_eq!(t.get_json("/_sim/faults").await.0, 200, "the control endpoint needs no token");
    let kubeconfig = t.sim.kubeconfig_yaml("default");
    assert!(kubeconfig.contains("token: \"s3cret\""), "{kubeconfig}");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn kubeconfig_names_the_server_and_namespace() {
    let t = start().await;
    let path = t.dir.path().join("nested/kubeconfig");
    t.sim.write_kubeconfig(&path, "team-a").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("server: \"{}\"", t.base)));
    assert!(text.contains("namespace: \"team-a\""));
    assert!(text.contains("current-context: kube-sim"));
    t.sim.shutdown().await;
}
