//! `coordination.k8s.io/v1` leases over raw HTTP, through kube-rs and through kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{assert_matches_fixture, fixture, start};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::Api;
use serde_json::{json, Value};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

fn lease(name: &str, holder: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-11-25T10:00:00.000000Z"}})
}

async fn put(t: &common::TestSim, name: &str, body: &Value) -> (u16, Value) {
    let response = t.http.put(t.url(&format!("{LEASES}/{name}"))).json(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn discovery_lists_the_coordination_group() {
    let t = start().await;
    assert_eq!(t.get_json("/apis/coordination.k8s.io/v1").await, (200, fixture("discovery_coordination_v1.json")));
    let (status, group) = t.get_json("/apis/coordination.k8s.io").await;
    assert_eq!(status, 200);
    assert_eq!(group["preferredVersion"]["groupVersion"], "coordination.k8s.io/v1");
}

#[tokio::test]
async fn updates_need_the_current_resource_version() {
    let t = start().await;
    let (status, created) = t.post_json(LEASES, &lease("l", "a")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["kind"], "Lease");
    assert_eq!(created["metadata"]["namespace"], "default");
    let rv = created["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let uid = created["metadata"]["uid"].clone();

    let (status, taken) = t.post_json(LEASES, &lease("l", "b")).await;
    assert_eq!((status, taken["reason"].as_str()), (409, Some("AlreadyExists")));
    assert_eq!(taken["message"], "leases.coordination.k8s.io \"l\" already exists");

    let mut update = created.clone();
    update["spec"]["holderIdentity"] = json!("b");
    let (status, updated) = put(&t, "l", &update).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["spec"]["holderIdentity"], "b");
    assert_eq!(updated["metadata"]["uid"], uid);
    assert_ne!(updated["metadata"]["resourceVersion"].as_str(), Some(rv.as_str()));

    // The same update again carries a resourceVersion that is no longer current.
    let (status, stale) = put(&t, "l", &update).await;
    assert_eq!(status, 409);
    assert_eq!(stale, fixture("status_lease_conflict.json"));

    let mut unversioned = updated.clone();
    unversioned["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    let (status, invalid) = put(&t, "l", &unversioned).await;
    assert_eq!(status, 422);
    assert_eq!(
        invalid["message"],
        "leases.coordination.k8s.io \"l\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );
    let (status, got) = t.get_json(&format!("{LEASES}/l")).await;
    assert_eq!((status, &got["spec"]["holderIdentity"]), (200, &json!("b")));
}

#[tokio::test]
async fn missing_leases_are_not_found_and_put_creates_them() {
    let t = start().await;
    assert_eq!(t.get_json(&format!("{LEASES}/l")).await, (404, fixture("status_lease_not_found.json")));
    let response = t.http.delete(t.url(&format!("{LEASES}/l"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);

    let (status, created) = put(&t, "l", &lease("l", "a")).await;
    assert_eq!(status, 201, "{created}");
    let (status, listed) = t.get_json("/apis/coordination.k8s.io/v1/leases?fieldSelector=metadata.name%3Dl").await;
    assert_eq!(status, 200);
    assert_eq!(listed["kind"], "LeaseList");
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(listed["metadata"]["resourceVersion"].as_str().is_some_and(|rv| !rv.is_empty()));

    let stale = json!({"preconditions": {"resourceVersion": "1"}});
    let response = t.http.delete(t.url(&format!("{LEASES}/l"))).json(&stale).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let response = t.http.delete(t.url(&format!("{LEASES}/l"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let deleted: Value = response.json().await.unwrap();
    assert_eq!(deleted["status"], "Success");
    assert_eq!(deleted["details"]["uid"], created["metadata"]["uid"]);
    assert_eq!(t.get_json(&format!("{LEASES}/l")).await.0, 404);
}

#[tokio::test]
async fn bad_lease_bodies_are_refused_with_a_status() {
    let t = start().await;
    let cases = [
        (json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0}}), 422, "Invalid"),
        (json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": "x"}}), 400, "BadRequest"),
        (json!({"metadata": {"name": "l"}, "spec": {"renewTime": "soon"}}), 400, "BadRequest"),
        (json!({"metadata": {}}), 422, "Invalid"),
        (json!({"kind": "Pod", "metadata": {"name": "l"}}), 400, "BadRequest"),
        (json!("text"), 400, "BadRequest"),
    ];
    for (body, code, reason) in cases {
        let (status, answer) = t.post_json(LEASES, &body).await;
        assert_eq!((status, answer["reason"].as_str()), (code, Some(reason)), "{body} → {answer}");
        assert_eq!(answer["kind"], "Status");
    }
    let response = t.http.post(t.url(LEASES)).body("{not json").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let (status, _) = put(&t, "other", &lease("l", "a")).await;
    assert_eq!(status, 400, "the body names another lease than the URL");
    let response = t.http.get(t.url(&format!("{LEASES}?watch=true"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn kube_rs_uses_leases_with_optimistic_concurrency() {
    let t = start().await;
    let kubeconfig = t.dir.path().join("kubeconfig");
    t.sim.write_kubeconfig(&kubeconfig, "default").unwrap();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let new = Lease {
        metadata: ObjectMeta { name: Some("leader".into()), ..ObjectMeta::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                k8s_openapi::jiff::Timestamp::now(),
            )),
            ..LeaseSpec::default()
        }),
    };
    let created = leases.create(&PostParams::default(), &new).await.unwrap();
    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let replaced = leases.replace("leader", &PostParams::default(), &mine).await.unwrap();
    assert_eq!(replaced.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let conflict = leases.replace("leader", &PostParams::default(), &mine).await.unwrap_err();
    assert!(matches!(&conflict, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"), "{conflict:?}");
    assert!(leases.get_opt("other").await.unwrap().is_none());
    let deleted = leases.delete("leader", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right(), "leases answer a Status on delete");
    let (status, gone) = t.get_json(&format!("{LEASES}/leader")).await;
    assert_eq!(status, 404);
    assert_matches_fixture(&fixture("status_lease_not_found.json"), &gone, &["name", "message"]);
}

#[tokio::test]
async fn kubectl_gets_leases() {
    let t = start().await;
    let kubeconfig = t.dir.path().join("kubeconfig");
    let home = t.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    t.sim.write_kubeconfig(&kubeconfig, "default").unwrap();
    assert_eq!(t.post_json(LEASES, &lease("rdev-api-pod-watch", "replica-1")).await.0, 201);
    let run = tokio::process::Command::new("kubectl")
        .args(["get", "leases", "-o", "jsonpath={.items[*].spec.holderIdentity}"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &home)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(20), run).await.expect("kubectl hangs").expect("kubectl runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "replica-1");
    let run = tokio::process::Command::new("kubectl")
        .args(["get", "leases"])
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &home)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(20), run).await.expect("kubectl hangs").expect("kubectl runs");
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && listed.contains("rdev-api-pod-watch"), "{listed}");
}
