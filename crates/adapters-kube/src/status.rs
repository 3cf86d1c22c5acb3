//! Reading a Kubernetes pod: the `PodStatus` clients see, and the facts the executor needs
//! (ready, gone, OOM-killed).

use domain::pod::{PodPhase, PodStatus};
use domain::Timestamp;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Waiting reasons after which the container will not start without someone changing something:
/// the pod counts as `failed`, so nobody waits out a timeout for it.
const HOPELESS_WAITING_REASONS: [&str; 8] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The state clients see for `pod`, reading the container named `container`.
pub fn pod_status(pod: &Pod, container: &str) -> PodStatus {
    let name = pod.metadata.name.clone();
    let status = pod.status.as_ref();
    let main = container_status(pod, container);
    let k8s_phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let waiting = main.and_then(|c| c.state.as_ref()).and_then(|s| s.waiting.as_ref());
    let hopeless = waiting.and_then(|w| w.reason.as_deref()).is_some_and(|r| HOPELESS_WAITING_REASONS.contains(&r));

    let phase = if pod.metadata.deletion_timestamp.is_some() {
        PodPhase::Stopping
    } else {
        match k8s_phase {
            "Running" if !hopeless => PodPhase::Running,
            "Pending" if !hopeless => PodPhase::Pending,
            // A pod with restartPolicy Always never completes on purpose: Succeeded is a failure too.
            "Failed" | "Succeeded" | "Running" | "Pending" => PodPhase::Failed,
            _ => PodPhase::Pending,
        }
    };
    let ready = phase == PodPhase::Running && condition_true(pod, "Ready");
    let started_at = if matches!(phase, PodPhase::Running | PodPhase::Stopping) {
        main.and_then(|c| c.state.as_ref())
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .or_else(|| status.and_then(|s| s.start_time.as_ref()))
            .and_then(to_chrono)
    } else {
        None
    };
    let reason = if ready { None } else { not_ready_reason(pod, main, k8s_phase) };
    PodStatus { phase, ready, pod_name: name, started_at, reason }
}

/// The status of the container named `name`.
pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == name)
}

/// Whether the pod is being deleted, or is not the pod with `uid` any more (deleted and
/// recreated under the same name).
pub fn is_going_away(pod: &Pod, uid: Option<&str>) -> bool {
    pod.metadata.deletion_timestamp.is_some() || (uid.is_some() && pod.metadata.uid.as_deref() != uid)
}

/// Why the pod ended for good (phase `Failed` or `Succeeded`, e.g. an eviction), `None` while
/// it may still run commands or restart its container.
pub fn ended(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref()?;
    if !matches!(phase, "Failed" | "Succeeded") {
        return None;
    }
    Some(
        status
            .reason
            .as_deref()
            .map_or_else(|| format!("ended ({phase})"), |reason| with_message(reason, status.message.as_deref())),
    )
}

/// How many times the container has restarted (0 when unknown).
pub fn restart_count(pod: &Pod, container: &str) -> i32 {
    container_status(pod, container).map_or(0, |c| c.restart_count)
}

/// Whether the container was OOM-killed after `since`, or has restarted since `restarts_before`
/// with an OOM kill as its last end.
pub fn oom_killed_since(pod: &Pod, container: &str, since: Timestamp, restarts_before: i32) -> bool {
    let Some(main) = container_status(pod, container) else { return false };
    let terminations: [Option<&ContainerStateTerminated>; 2] = [
        main.state.as_ref().and_then(|s| s.terminated.as_ref()),
        main.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
    ];
    let restarted = main.restart_count > restarts_before;
    terminations.into_iter().flatten().any(|t| {
        // API timestamps have whole seconds: allow one second of rounding before `since`.
        let recent =
            t.finished_at.as_ref().and_then(to_chrono).is_some_and(|at| at >= since - chrono::TimeDelta::seconds(1));
        t.reason.as_deref() == Some("OOMKilled") && (recent || restarted)
    })
}

/// The `workingDir` the pod's container was created with.
pub fn working_dir<'a>(pod: &'a Pod, container: &str) -> Option<&'a str> {
    pod.spec.as_ref()?.containers.iter().find(|c| c.name == container)?.working_dir.as_deref()
}

fn condition_true(pod: &Pod, kind: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

/// Why a pod is not ready, most specific first: the pod's own reason (eviction), the container's
/// waiting or terminated reason, an unschedulable pod, then the Ready condition's reason.
fn not_ready_reason(pod: &Pod, main: Option<&ContainerStatus>, k8s_phase: &str) -> Option<String> {
    let status = pod.status.as_ref();
    if let Some(reason) = status.and_then(|s| s.reason.as_deref()) {
        return Some(with_message(reason, status.and_then(|s| s.message.as_deref())));
    }
    let state = main.and_then(|c| c.state.as_ref());
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        if let Some(reason) = w.reason.as_deref() {
            return Some(with_message(reason, w.message.as_deref()));
        }
    }
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        let reason = t.reason.clone().unwrap_or_else(|| format!("exited with code {}", t.exit_code));
        return Some(with_message(&reason, t.message.as_deref()));
    }
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let failing = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status != "True");
    failing("PodScheduled")
        .or_else(|| failing("Ready"))
        .and_then(|c| c.reason.as_deref().map(|r| with_message(r, c.message.as_deref())))
        .or_else(|| (k8s_phase == "Pending").then(|| "Pending".to_owned()))
}

fn with_message(reason: &str, message: Option<&str>) -> String {
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(message) => format!("{reason}: {message}"),
        None => reason.to_owned(),
    }
}

pub(crate) fn to_chrono(time: &Time) -> Option<Timestamp> {
    let subsec = u32::try_from(time.0.subsec_nanosecond()).unwrap_or(0);
    chrono::DateTime::from_timestamp(time.0.as_second(), subsec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn recorded(name: &str) -> Pod {
        let path = format!("{}/testdata/pods/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_creating_pod_is_pending_with_the_waiting_reason() {
        let status = pod_status(&recorded("pending-creating"), "main");
        assert_eq!(status.phase, PodPhase::Pending);
        assert!(!status.ready);
        assert_eq!(status.pod_name.as_deref(), Some("rdev-demo"));
        assert_eq!(status.started_at, None);
        assert_eq!(status.reason.as_deref(), Some("ContainerCreating"));
    }

    #[test]
    fn a_running_ready_pod_says_when_its_container_started() {
        let status = pod_status(&recorded("running-ready"), "main");
        assert_eq!(status.phase, PodPhase::Running);
        assert!(status.ready);
        assert_eq!(status.started_at, Some(at("2026-11-25T10:00:02Z")));
        assert_eq!(status.reason, None);
        assert_eq!(working_dir(&recorded("running-ready"), "main"), Some("/workspace"));
    }

    #[test]
    fn an_image_that_cannot_be_pulled_fails_the_pod() {
        let status = pod_status(&recorded("image-pull-backoff"), "main");
        assert_eq!(status.phase, PodPhase::Failed);
        assert!(status.reason.as_deref().unwrap().starts_with("ImagePullBackOff: Back-off pulling image"));
    }

    #[test]
    fn an_evicted_pod_is_failed_with_the_eviction_reason() {
        let status = pod_status(&recorded("evicted"), "main");
        assert_eq!(status.phase, PodPhase::Failed);
        assert_eq!(status.reason.as_deref(), Some("Evicted: The node was low on resource: memory."));
        assert_eq!(ended(&recorded("evicted")).as_deref(), Some("Evicted: The node was low on resource: memory."));
        assert_eq!(ended(&recorded("running-ready")), None);
    }

    #[test]
    fn a_pod_being_deleted_is_stopping_and_not_ready() {
        let pod = recorded("terminating");
        let status = pod_status(&pod, "main");
        assert_eq!(status.phase, PodPhase::Stopping);
        assert!(!status.ready);
        assert!(is_going_away(&pod, None));
        assert!(!is_going_away(&recorded("running-ready"), Some("0b8f4d3e-8c1a-4c55-9d1e-2f3a4b5c6d7e")));
        assert!(is_going_away(&recorded("running-ready"), Some("another-uid")));
    }

    #[test]
    fn an_oom_kill_is_seen_in_the_last_state_after_a_restart() {
        let pod = recorded("oom-restarted");
        assert_eq!(restart_count(&pod, "main"), 1);
        assert!(oom_killed_since(&pod, "main", at("2026-11-25T10:05:00Z"), 1), "recent kill");
        assert!(oom_killed_since(&pod, "main", at("2026-11-25T11:00:00Z"), 0), "restarted since");
        assert!(!oom_killed_since(&pod, "main", at("2026-11-25T11:00:00Z"), 1), "an old kill is not this one");
        assert!(!oom_killed_since(&recorded("running-ready"), "main", at("2026-11-25T10:00:00Z"), 0));
        let status = pod_status(&pod, "main");
        assert!(status.ready && status.phase == PodPhase::Running);
    }
}
