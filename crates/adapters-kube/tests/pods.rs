//! The kube pod manager against kube-sim: the shared contract, and the pod it creates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use adapters_kube::{MANAGED_BY, MANAGED_BY_LABEL, PROJECT_LABEL};
use common::{spec, Harness, NAMESPACE};
use domain::pod::PodPhase;
use domain::ports::PodManager;
use domain::testing::pods::pod_manager_contract;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

#[tokio::test(flavor = "multi_thread")]
async fn kube_backend_meets_the_pod_manager_contract() {
    let h = Harness::start().await;
    pod_manager_contract(&h.backend, &spec("pods-contract")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pod_carries_labels_image_workdir_env_and_resources() {
    let h = Harness::start().await;
    let status = h.ready_pod("shaped").await;
    assert_eq!(status.pod_name.as_deref(), Some("rdev-shaped"));
    assert_eq!(status.phase, PodPhase::Running);

    let api: Api<Pod> = Api::namespaced(h.backend.client().clone(), NAMESPACE);
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY},{PROJECT_LABEL}=shaped");
    let pods = api.list(&kube::api::ListParams::default().labels(&selector)).await.unwrap();
    assert_eq!(pods.items.len(), 1, "one pod per project, found by its labels");
    let pod = serde_json::to_value(&pods.items[0]).unwrap();
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["name"], "main");
    assert_eq!(c["image"], "busybox:1.36");
    assert_eq!(c["workingDir"], "/workspace");
    assert_eq!(c["env"], serde_json::json!([{"name": "POD_LEVEL", "value": "from-pod"}]));
    assert_eq!(c["resources"]["limits"], serde_json::json!({"cpu": "250m", "memory": "128Mi"}));
    assert_eq!(c["resources"]["requests"], c["resources"]["limits"]);
    assert_eq!(pod["spec"]["restartPolicy"], "Always");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_pod_can_be_started_again() {
    let h = Harness::start().await;
    let first = h.ready_pod("again").await;
    h.backend.stop(&spec("again").project).await.unwrap();
    // Starting while the old pod is still terminating waits it out, then creates a new one.
    let restarted = h.backend.start(&spec("again")).await.unwrap();
    assert!(matches!(restarted.phase, PodPhase::Pending | PodPhase::Running), "{restarted:?}");
    let ready = h.backend.wait_ready(&spec("again").project, common::READY).await.unwrap();
    assert!(ready.ready, "{ready:?}");
    assert_eq!(ready.pod_name, first.pod_name);
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_the_container_log_tail() {
    let h = Harness::start().await;
    h.ready_pod("chatty").await;
    let url = format!("{}/_sim/pods/{NAMESPACE}/rdev-chatty/log", h.sim.base_url());
    h.http.post(url).body("one\ntwo\nthree\n").send().await.unwrap();
    let lines = h.backend.logs(&spec("chatty").project, 2).await.unwrap();
    assert_eq!(lines, vec!["two".to_owned(), "three".to_owned()]);
}
