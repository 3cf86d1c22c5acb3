//! The pod life cycle: create (idempotently), watch until ready, delete, read logs.

use std::time::Duration;

use domain::pod::{PodPhase, PodSpec, PodStatus};
use domain::project::ProjectName;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::runtime::wait::await_condition;
use tokio::time::Instant;

use crate::error::{bounded, KubeError};
use crate::manifest::{pod_manifest, pod_name};
use crate::status::pod_status;
use crate::KubeBackend;

/// How often a wait polls the pod when the watch cannot be used.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How many times `start` tries to create after finding a pod on its way out.
const CREATE_ATTEMPTS: usize = 3;

impl KubeBackend {
    /// The pod of `name`, `None` when there is none.
    /// Every read also updates what the executor knows about ready pods; a failed one forgets
    /// the pod, so that the next command reads it (and reports an outage as such) rather than
    /// meeting the outage in its exec, where it could not tell whether the command started.
    pub(crate) async fn get_pod(&self, name: &str) -> Result<Option<Pod>, KubeError> {
        match bounded("get pod", self.config.api_timeout, self.pods.get_opt(name)).await {
            Ok(pod) => {
                self.ready.note_read(name, pod.as_ref());
                Ok(pod)
            }
            Err(e) => {
                self.ready.forget(name);
                Err(e)
            }
        }
    }

    fn status_of(&self, pod: &Pod) -> PodStatus {
        pod_status(pod, &self.config.container_name)
    }

    /// The pod's state; `stopped` when there is none.
    ///
    /// # Errors
    /// `ApiUnavailable` (and other API errors) when the pod cannot be read.
    pub async fn pod_status(&self, project: &ProjectName) -> Result<PodStatus, KubeError> {
        Ok(self.get_pod(&pod_name(project)).await?.map_or_else(PodStatus::stopped, |p| self.status_of(&p)))
    }

    /// Creates the project's pod unless it exists, and returns its state at once. A pod that is
    /// terminating, or that ended for good (phase Failed or Succeeded), is replaced: waited out
    /// (up to `ready_timeout`) or deleted first.
    ///
    /// # Errors
    /// `ApiUnavailable` when the API cannot be reached; `Conflict` when an old pod does not go
    /// away in time; `Api` when the pod is refused (invalid image name, quota).
    pub async fn start_pod(&self, spec: &PodSpec) -> Result<PodStatus, KubeError> {
        let name = pod_name(&spec.project);
        let manifest = pod_manifest(spec, &self.config);
        let limit = self.config.api_timeout;
        for _ in 0..CREATE_ATTEMPTS {
            match bounded("create pod", limit, self.pods.create(&PostParams::default(), &manifest)).await {
                Ok(pod) => {
                    self.ready.forget(&name);
                    tracing::info!(pod = %name, "pod created");
                    return Ok(self.status_of(&pod));
                }
                Err(KubeError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            let Some(existing) = self.get_pod(&name).await? else { continue };
            let finished = existing
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Failed" || p == "Succeeded");
            if existing.metadata.deletion_timestamp.is_none() && !finished {
                return Ok(self.status_of(&existing));
            }
            if finished {
                tracing::info!(pod = %name, "replacing a pod that ended");
                self.delete_pod(&name).await?;
            }
            self.wait_gone(&name, existing.metadata.uid.as_deref()).await?;
        }
        Err(KubeError::Conflict(format!("pod {name} keeps being replaced; try again")))
    }

    /// Waits until the pod with `uid` (any pod named `name` when `None`) no longer exists.
    async fn wait_gone(&self, name: &str, uid: Option<&str>) -> Result<(), KubeError> {
        let uid = uid.map(str::to_owned);
        let gone = move |pod: Option<&Pod>| pod.is_none_or(|p| uid.is_some() && p.metadata.uid != uid);
        let last = self.wait_for(name, self.config.ready_timeout, gone.clone()).await?;
        if gone(last.as_ref()) {
            Ok(())
        } else {
            Err(KubeError::Conflict(format!("pod {name} is still stopping; try again")))
        }
    }

    /// Waits until the pod is ready, failed, stopping or gone, or `timeout` passed, and returns
    /// the last state seen.
    ///
    /// # Errors
    /// `ApiUnavailable` when the pod can be neither watched nor read.
    pub async fn wait_pod_ready(&self, project: &ProjectName, timeout: Duration) -> Result<PodStatus, KubeError> {
        let container = self.config.container_name.clone();
        let settled = move |pod: Option<&Pod>| {
            pod.is_none_or(|p| {
                let s = pod_status(p, &container);
                s.ready || matches!(s.phase, PodPhase::Failed | PodPhase::Stopping)
            })
        };
        let last = self.wait_for(&pod_name(project), timeout, settled).await?;
        Ok(last.map_or_else(PodStatus::stopped, |p| self.status_of(&p)))
    }

    /// Watches the pod until `done` holds or `timeout` passes, and returns the last pod seen.
    /// kube-runtime's watch ends at its first error, so after one this polls instead.
    async fn wait_for<F>(&self, name: &str, timeout: Duration, done: F) -> Result<Option<Pod>, KubeError>
    where
        F: Fn(Option<&Pod>) -> bool + Clone + Send + Sync + 'static,
    {
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout(timeout, await_condition(self.pods.clone(), name, done.clone())).await {
            Ok(Ok(pod)) => {
                self.ready.note_read(name, pod.as_ref());
                return Ok(pod);
            }
            Ok(Err(e)) => tracing::debug!(pod = %name, error = %e, "pod watch failed; polling instead"),
            Err(_) => return self.get_pod(name).await,
        }
        loop {
            let pod = self.get_pod(name).await?;
            let now = Instant::now();
            if done(pod.as_ref()) || now >= deadline {
                return Ok(pod);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    /// Deletes the pod by name; a missing pod is fine.
    async fn delete_pod(&self, name: &str) -> Result<Option<Pod>, KubeError> {
        self.ready.forget(name);
        match bounded("delete pod", self.config.api_timeout, self.pods.delete(name, &DeleteParams::default())).await {
            Ok(either) => Ok(either.left()),
            Err(KubeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the project's pod if there is one; returns `stopping` or `stopped`.
    ///
    /// # Errors
    /// `ApiUnavailable` when the API cannot be reached.
    pub async fn stop_pod(&self, project: &ProjectName) -> Result<PodStatus, KubeError> {
        let name = pod_name(project);
        let deleted = self.delete_pod(&name).await?;
        tracing::info!(pod = %name, existed = deleted.is_some(), "pod deletion requested");
        Ok(match deleted {
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => self.status_of(&pod),
            _ => PodStatus::stopped(),
        })
    }

    /// The last `tail` lines of the pod's container log; empty without a pod or before the
    /// container started.
    ///
    /// # Errors
    /// `ApiUnavailable` when the API cannot be reached.
    pub async fn pod_logs(&self, project: &ProjectName, tail: u32) -> Result<Vec<String>, KubeError> {
        let params = LogParams {
            container: Some(self.config.container_name.clone()),
            tail_lines: Some(i64::from(tail)),
            ..LogParams::default()
        };
        match bounded("pod logs", self.config.api_timeout, self.pods.logs(&pod_name(project), &params)).await {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            // 400 is "container … is waiting to start": no log yet.
            Err(KubeError::NotFound(_) | KubeError::Api { code: 400, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}
