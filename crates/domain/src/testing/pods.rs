//! Contract of `PodManager`: what the local-workspace and Kubernetes implementations must do.

use std::time::Duration;

use crate::pod::{PodPhase, PodSpec};
use crate::ports::PodManager;

/// How long a pod may take to become ready, or to go away, in the suite.
pub const POD_DEADLINE: Duration = Duration::from_secs(20);

/// Runs the suite with a spec for a project that has no pod yet.
pub async fn pod_manager_contract(pods: &dyn PodManager, spec: &PodSpec) {
    let project = &spec.project;
    let before = pods.status(project).await.expect("status before start");
    assert_eq!(before.phase, PodPhase::Stopped, "no pod before start: {before:?}");
    assert!(!before.ready && before.pod_name.is_none(), "a stopped pod has no name: {before:?}");
    assert!(pods.logs(project, 10).await.expect("logs without a pod").is_empty(), "no pod, no logs");

    let started = pods.start(spec).await.expect("start");
    assert!(
        matches!(started.phase, PodPhase::Pending | PodPhase::Running),
        "start answers pending or running: {started:?}"
    );
    let name = started.pod_name.clone().expect("a started pod has a name");
    let again = pods.start(spec).await.expect("start is idempotent");
    assert_eq!(again.pod_name.as_deref(), Some(name.as_str()), "a second start reuses the pod");

    let ready = pods.wait_ready(project, POD_DEADLINE).await.expect("wait_ready");
    assert!(ready.ready && ready.phase == PodPhase::Running, "pod ready in time: {ready:?}");
    assert!(ready.started_at.is_some(), "a running pod says when it started: {ready:?}");
    let status = pods.status(project).await.expect("status when running");
    assert_eq!(status.pod_name.as_deref(), Some(name.as_str()));
    assert!(status.ready);
    pods.logs(project, 5).await.expect("logs of a running pod");

    let stopping = pods.stop(project).await.expect("stop");
    assert!(matches!(stopping.phase, PodPhase::Stopping | PodPhase::Stopped), "stop: {stopping:?}");
    let deadline = tokio::time::Instant::now() + POD_DEADLINE;
    loop {
        let status = pods.status(project).await.expect("status after stop");
        if status.phase == PodPhase::Stopped {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "pod gone in time: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pods.stop(project).await.expect("stopping a stopped pod is fine");
}
