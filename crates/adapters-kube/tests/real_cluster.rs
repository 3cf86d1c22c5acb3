//! The same contracts against a real cluster, on demand (no cluster runs in CI):
//!
//! ```sh
//! kind create cluster --name rdev            # or any cluster; KUBECONFIG picks it
//! KUBECONFIG=~/.kube/config RDEV_KUBE_TEST_NAMESPACE=default \
//!   cargo test -p adapters-kube --test real_cluster -- --ignored --test-threads=1
//! ```
//!
//! `RDEV_KUBE_TEST_IMAGE` (default `busybox:1.36`) must have `sh` and `setsid`. The tests create
//! and delete pods named `rdev-rdev-real-*` in the namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use adapters_kube::{KubeBackend, KubeConfig};
use domain::command::EnvMap;
use domain::pod::PodSpec;
use domain::ports::PodManager;
use domain::project::Resources;
use domain::testing::executor::{executor_contract, CONTRACT_WORKDIR};
use domain::testing::pods::pod_manager_contract;
use domain::testing::project_name;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn backend() -> KubeBackend {
    let kubeconfig = std::env::var_os("KUBECONFIG").expect("set KUBECONFIG to the cluster to test against");
    let config = KubeConfig::new(setting("RDEV_KUBE_TEST_NAMESPACE", "default"));
    KubeBackend::from_kubeconfig(Some(std::path::Path::new(&kubeconfig)), config).await.unwrap()
}

fn spec(project: &str) -> PodSpec {
    PodSpec {
        project: project_name(project),
        image: setting("RDEV_KUBE_TEST_IMAGE", "busybox:1.36"),
        workdir: CONTRACT_WORKDIR.into(),
        env: EnvMap::parse(BTreeMap::new()).unwrap(),
        resources: Resources { cpu: Some("250m".into()), memory: Some("128Mi".into()) },
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real cluster: KUBECONFIG=… cargo test -p adapters-kube --test real_cluster -- --ignored"]
async fn real_cluster_meets_the_pod_manager_contract() {
    pod_manager_contract(&backend().await, &spec("rdev-real-pods")).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real cluster: KUBECONFIG=… cargo test -p adapters-kube --test real_cluster -- --ignored"]
async fn real_cluster_meets_the_executor_contract() {
    let backend = backend().await;
    let spec = spec("rdev-real-exec");
    backend.start(&spec).await.unwrap();
    let ready = backend.wait_ready(&spec.project, Duration::from_secs(180)).await.unwrap();
    assert!(ready.ready, "pod ready: {ready:?}");
    executor_contract(&backend, &spec.project).await;
    backend.stop(&spec.project).await.unwrap();
}
