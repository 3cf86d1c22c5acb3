//! What the cluster does that nobody asked for: evictions, OOM kills, history compaction; and
//! the watch bookmarks and request counts clients rely on to follow it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{pod_body, read_events, start, start_with};
use serde_json::{json, Value};

const PODS: &str = "/api/v1/namespaces/default/pods";

/// Starts `sleep 30` in the pod over exec and waits until the sim lists it.
async fn busy(t: &common::TestSim, pod: &str) -> tokio::task::JoinHandle<common::ExecOutput> {
    let (mut ws, _) =
        common::exec_ws(&t.base, pod, "command=sleep&command=30&stdout=true", "v5.channel.k8s.io").await.unwrap();
    let reader = tokio::spawn(async move { common::collect(&mut ws).await });
    for _ in 0..250 {
        if !t.exec_pids(pod).await.is_empty() {
            return reader;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the exec never started");
}

#[tokio::test]
async fn eviction_fails_the_pod_and_kills_its_processes() {
    let t = start().await;
    t.running("w1").await;
    let exec = busy(&t, "w1").await;
    let (status, pod) = t.post_json("/_sim/pods/default/w1/evict?resource=ephemeral-storage", &json!({})).await;
    assert_eq!(status, 200, "{pod}");
    assert_eq!((pod["status"]["phase"].as_str(), pod["status"]["reason"].as_str()), (Some("Failed"), Some("Evicted")));
    assert_eq!(pod["status"]["message"], "The node was low on resource: ephemeral-storage. ");
    let container = &pod["status"]["containerStatuses"][0];
    assert_eq!(container["state"]["terminated"]["exitCode"], 137);
    assert_eq!(container["ready"], false);
    let disruption = pod["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "DisruptionTarget");
    assert_eq!(disruption.unwrap()["reason"], "TerminationByKubelet");
    let output = tokio::time::timeout(Duration::from_secs(5), exec).await.expect("exec ends").unwrap();
    assert!(output.status.as_ref().is_some_and(|s| s.to_string().contains("137")), "{output:?}");
    assert!(t.exec_pids("w1").await.is_empty());
    assert_eq!(t.pod("w1").await.unwrap()["status"]["reason"], "Evicted", "the object stays until deleted");

    let (status, again) = t.post_json("/_sim/pods/default/w1/evict", &json!({})).await;
    assert_eq!((status, again["kind"].as_str()), (400, Some("Status")), "{again}");
    let (status, missing) = t.post_json("/_sim/pods/default/nope/evict", &json!({})).await;
    assert_eq!((status, missing["reason"].as_str()), (404, Some("NotFound")));
    t.running("w2").await;
    let (status, bad) = t.post_json("/_sim/pods/default/w2/evict?resource=gpu", &json!({})).await;
    assert_eq!((status, bad["reason"].as_str()), (400, Some("BadRequest")), "{bad}");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn the_eviction_subresource_deletes_the_pod() {
    let t = start().await;
    t.running("w1").await;
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "w1", "namespace": "default"},
                          "deleteOptions": {"gracePeriodSeconds": 0}});
    let (status, answer) = t.post_json(&format!("{PODS}/w1/eviction"), &eviction).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer, json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}));
    assert!(t.pod("w1").await.is_none());

    let (status, missing) = t.post_json(&format!("{PODS}/w1/eviction"), &eviction).await;
    assert_eq!((status, missing["reason"].as_str()), (404, Some("NotFound")));
    t.running("w2").await;
    let (status, other) = t.post_json(&format!("{PODS}/w2/eviction"), &eviction).await;
    assert_eq!((status, other["message"].as_str()), (400, Some("name in URL does not match name in Eviction object")));
    let (status, _) = t.post_json(&format!("{PODS}/w2/eviction"), &json!({"kind": "Pod"})).await;
    assert_eq!(status, 400);
    let (status, _) = t.post_json(&format!("{PODS}/w2/eviction"), &json!({"kind": "Eviction"})).await;
    assert_eq!(status, 400, "an Eviction must name its pod");
    let response = t.http.post(t.url(&format!("{PODS}/w2/eviction"))).body("nope").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn kube_rs_evicts_through_the_subresource() {
    let t = start().await;
    t.running("w1").await;
    let kubeconfig = t.dir.path().join("kubeconfig");
    t.sim.write_kubeconfig(&kubeconfig, "default").unwrap();
    let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await.unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let status = pods.evict("w1", &kube::api::EvictParams::default()).await.unwrap();
    assert_eq!(status.code, 201);
    // A graceful delete: the pod is terminating, then gone.
    t.wait_pod("w1", |p| p.is_none()).await;
    t.sim.shutdown().await;
}

#[tokio::test]
async fn oom_kill_under_never_fails_the_pod_and_kills_the_exec() {
    let t = start().await;
    let mut never = pod_body("w1", json!({}));
    never["spec"]["restartPolicy"] = json!("Never");
    t.create(&never).await;
    t.wait_pod("w1", |p| p.is_some_and(|p| p["status"]["phase"] == "Running")).await;
    let exec = busy(&t, "w1").await;
    let (status, pod) = t.post_json("/_sim/pods/default/w1/oom", &json!({})).await;
    assert_eq!(status, 200);
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!((terminated["exitCode"].as_i64(), terminated["reason"].as_str()), (Some(137), Some("OOMKilled")));
    assert_eq!(pod["status"]["phase"], "Failed");
    let output = tokio::time::timeout(Duration::from_secs(5), exec).await.expect("exec ends").unwrap();
    assert!(output.status.as_ref().is_some_and(|s| s.to_string().contains("137")), "{output:?}");
    let (status, again) = t.post_json("/_sim/pods/default/w1/oom", &json!({})).await;
    assert_eq!((status, again["kind"].as_str()), (400, Some("Status")));
    t.sim.shutdown().await;
}

#[tokio::test]
async fn watches_get_periodic_bookmarks_at_the_current_version() {
    let t = start_with(|c| c.bookmark_interval = Duration::from_millis(100)).await;
    t.running("w1").await;
    let (_, list) = t.get_json(&format!("{PODS}?labelSelector=app%3Drdev")).await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let url = format!(
        "{PODS}?watch=true&labelSelector=app%3Dnone&allowWatchBookmarks=true&timeoutSeconds=30&resourceVersion={rv}"
    );
    let response = t.http.get(t.url(&url)).send().await.unwrap();
    // A change the selector hides still moves the bookmark on.
    t.running("w2").await;
    let events = read_events(response, 3).await;
    assert!(events.iter().all(|e| e["type"] == "BOOKMARK"), "{events:?}");
    let last: u64 = events[2]["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(last > rv.parse::<u64>().unwrap(), "the bookmark passed the hidden changes");

    let quiet = t
        .http
        .get(t.url(&format!(
            "{PODS}?watch=true&timeoutSeconds=30&resourceVersion={rv}&fieldSelector=metadata.name%3Dnone"
        )))
        .send()
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_millis(400), read_events(quiet, 1)).await;
    assert!(got.is_err(), "no bookmarks unless asked for");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn compaction_expires_old_versions_and_ends_live_watches() {
    let t = start().await;
    t.running("w1").await;
    let (_, list) = t.get_json(PODS).await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let live =
        t.http.get(t.url(&format!("{PODS}?watch=true&timeoutSeconds=30&resourceVersion={rv}"))).send().await.unwrap();
    let (status, compacted) = t.post_json("/_sim/compact", &json!({})).await;
    assert_eq!(status, 200);
    let events = read_events(live, 1).await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(
        (events[0]["object"]["code"].as_i64(), events[0]["object"]["reason"].as_str()),
        (Some(410), Some("Expired"))
    );

    let old =
        t.http.get(t.url(&format!("{PODS}?watch=true&timeoutSeconds=30&resourceVersion={rv}"))).send().await.unwrap();
    let events = read_events(old, 1).await;
    assert_eq!(events[0]["object"]["code"], 410);
    // A fresh list is at the new version, and watching from there works.
    let (_, list) = t.get_json(PODS).await;
    let fresh = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    assert_eq!(compacted["resourceVersion"].as_str(), Some(fresh.as_str()));
    let watch = t
        .http
        .get(t.url(&format!("{PODS}?watch=true&timeoutSeconds=30&resourceVersion={fresh}")))
        .send()
        .await
        .unwrap();
    t.delete("w1", Some(0)).await;
    let events: Vec<Value> = read_events(watch, 1).await;
    assert_eq!(events[0]["type"], "DELETED");
    t.sim.shutdown().await;
}

#[tokio::test]
async fn stats_count_api_requests_only() {
    let t = start().await;
    let (_, before) = t.get_json("/_sim/stats").await;
    let before = before["api_requests"].as_u64().unwrap();
    t.get_json(PODS).await;
    assert_eq!(t.set_faults(json!({"refuse_connections": true})).await, 200);
    assert!(t.http.get(t.url(PODS)).send().await.is_err());
    let (_, after) = t.get_json("/_sim/stats").await;
    assert_eq!(after["api_requests"].as_u64().unwrap(), before + 2, "refused requests count, control ones do not");
    assert_eq!(t.sim.api_requests(), before + 2);
    t.sim.shutdown().await;
}

#[tokio::test]
async fn stats_count_single_pod_reads_apart() {
    let t = start().await;
    t.create(&pod_body("w1", json!({}))).await;
    let before = t.sim.pod_reads();
    t.get_json(PODS).await;
    t.get_json(&format!("{PODS}/w1")).await;
    t.get_json(&format!("{PODS}/w1/status")).await;
    t.get_json(&format!("{PODS}/missing")).await;
    let (_, stats) = t.get_json("/_sim/stats").await;
    assert_eq!(stats["pod_reads"].as_u64().unwrap(), before + 3, "gets count, a list does not");
    assert_eq!(t.sim.pod_reads(), before + 3);
    t.sim.shutdown().await;
}
