//! Local workspaces pass the pod manager contract, and stopping keeps the workspace's files.
#![allow(clippy::expect_used)]

use adapters_process::LocalPods;
use domain::pod::{PodPhase, PodSpec};
use domain::ports::PodManager;
use domain::testing::pods::pod_manager_contract;
use domain::testing::sample_project;

#[tokio::test]
async fn local_pods_pass_the_pod_manager_contract() {
    let root = tempfile::tempdir().expect("tempdir");
    let pods = LocalPods::new(root.path().to_path_buf());
    let spec = PodSpec::from(&sample_project("pod-contract", 2));
    pod_manager_contract(&pods, &spec).await;
}

#[tokio::test]
async fn a_stopped_workspace_keeps_its_files_and_names_the_pod_local() {
    let root = tempfile::tempdir().expect("tempdir");
    let pods = LocalPods::new(root.path().to_path_buf());
    let spec = PodSpec::from(&sample_project("keep-files", 1));
    let started = pods.start(&spec).await.expect("start");
    assert_eq!(started.pod_name.as_deref(), Some("local-keep-files"));
    let file = root.path().join("keep-files").join("notes.txt");
    std::fs::write(&file, "kept").expect("write");
    pods.stop(&spec.project).await.expect("stop");
    assert_eq!(pods.status(&spec.project).await.expect("status").phase, PodPhase::Stopped);
    assert!(file.exists(), "stop keeps the workspace");
    pods.start(&spec).await.expect("restart");
    let logs = pods.logs(&spec.project, 10).await.expect("logs");
    assert_eq!(logs.len(), 3, "started, stopped, started: {logs:?}");
    assert_eq!(pods.logs(&spec.project, 1).await.expect("tail").len(), 1);
}
