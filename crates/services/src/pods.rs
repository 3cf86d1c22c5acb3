//! `PodService`: the project's development pod as clients see it (status, start, stop, logs),
//! with the same visibility rules as projects.

use std::sync::Arc;

use domain::api_key::Scope;
use domain::pod::{PodSpec, PodStatus};
use domain::ports::PodManager;
use domain::project::ProjectName;
use domain::DomainResult;

use crate::access::Principal;
use crate::projects::ProjectService;
use crate::webhooks::WebhookService;

/// Reads and drives projects' pods.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds a trait object without Debug")]
pub struct PodService {
    projects: Arc<ProjectService>,
    pods: Arc<dyn PodManager>,
    webhooks: Option<Arc<WebhookService>>,
}

impl PodService {
    /// Pods of the projects `projects` knows, managed by `pods`; pod events go to `webhooks`.
    pub fn new(
        projects: Arc<ProjectService>,
        pods: Arc<dyn PodManager>,
        webhooks: Option<Arc<WebhookService>>,
    ) -> Self {
        Self { projects, pods, webhooks }
    }

    /// Emits `pod.ready` / `pod.failed` / `pod.stopped` for a state a client just caused.
    async fn announce(&self, project: &ProjectName, status: &PodStatus) {
        let Some(webhooks) = &self.webhooks else { return };
        if let Err(e) = webhooks.pod_changed(project, status).await {
            tracing::warn!(project = %project, error = %e, "could not record a pod event for webhooks");
        }
    }

    /// The pod's state. Needs `projects:read`; 404 for projects the key may not see.
    pub async fn status(&self, actor: &Principal, name: &ProjectName) -> DomainResult<PodStatus> {
        let project = self.projects.get(actor, name).await?;
        self.pods.status(&project.name).await
    }

    /// Starts the pod from the project's current settings (idempotent). Needs `projects:write`.
    pub async fn start(&self, actor: &Principal, name: &ProjectName) -> DomainResult<PodStatus> {
        actor.require(Scope::ProjectsWrite)?;
        let project = self.projects.visible(actor, name).await?;
        let status = self.pods.start(&PodSpec::from(&project)).await?;
        tracing::info!(project = %project.name, phase = status.phase.as_str(), "pod start requested");
        self.announce(&project.name, &status).await;
        Ok(status)
    }

    /// Stops the pod (idempotent). Needs `projects:write`.
    pub async fn stop(&self, actor: &Principal, name: &ProjectName) -> DomainResult<PodStatus> {
        actor.require(Scope::ProjectsWrite)?;
        let project = self.projects.visible(actor, name).await?;
        let status = self.pods.stop(&project.name).await?;
        tracing::info!(project = %project.name, phase = status.phase.as_str(), "pod stop requested");
        self.announce(&project.name, &status).await;
        Ok(status)
    }

    /// The last `tail` log lines. Needs `projects:read`.
    pub async fn logs(&self, actor: &Principal, name: &ProjectName, tail: u32) -> DomainResult<Vec<String>> {
        let project = self.projects.get(actor, name).await?;
        self.pods.logs(&project.name, tail).await
    }
}
