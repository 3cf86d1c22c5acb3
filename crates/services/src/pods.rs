//! `PodService`: the project's development pod as clients see it (status, start, stop, logs),
//! with the same visibility rules as projects, and `PodEvents`, which turns pod states into
//! `pod.*` webhook events: the states a replica causes itself, or, when a cluster-wide pod
//! watch runs (`crate::pod_watch`), only the changes that watch reports.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain::api_key::Scope;
use domain::pod::{PodChange, PodPhase, PodSpec, PodStatus};
use domain::ports::PodManager;
use domain::project::ProjectName;
use domain::webhook::{pod_event_type, EventType};
use domain::DomainResult;

use crate::access::Principal;
use crate::projects::ProjectService;
use crate::webhooks::WebhookService;

/// How often a stopping pod is looked at until it is gone.
const STOP_POLL: Duration = Duration::from_millis(500);

/// Who announces pod states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announcer {
    /// Each replica announces the states it observes itself (the process executor).
    Replica,
    /// The cluster-wide pod watch announces every change, once; replicas announce nothing.
    ClusterWatch,
}

/// Announces pod states as `pod.ready` / `pod.failed` / `pod.stopped` webhook events: each
/// change once per replica, not every observation of the same state; or, behind a cluster-wide
/// pod watch, each change once cluster-wide.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds a service without Debug")]
pub struct PodEvents {
    webhooks: Arc<WebhookService>,
    last: Arc<Mutex<HashMap<ProjectName, EventType>>>,
    announcer: Announcer,
}

impl PodEvents {
    /// Events go to `webhooks`, announced by the replica that observes them.
    pub fn new(webhooks: Arc<WebhookService>) -> Self {
        Self { webhooks, last: Arc::default(), announcer: Announcer::Replica }
    }

    /// Events go to `webhooks`, announced only from what the cluster-wide pod watch reports
    /// ([`PodEvents::reported`]); what a replica observes itself ([`PodEvents::observed`])
    /// is announced by the watch when it happens, so it is not announced again here.
    pub fn cluster_watched(webhooks: Arc<WebhookService>) -> Self {
        Self { announcer: Announcer::ClusterWatch, ..Self::new(webhooks) }
    }

    /// Whether a cluster-wide pod watch announces the events.
    pub fn is_cluster_watched(&self) -> bool {
        self.announcer == Announcer::ClusterWatch
    }

    /// Announces a change the cluster-wide pod watch reported (once per occurrence, whichever
    /// leader reports it).
    ///
    /// # Errors
    /// When the event cannot be recorded; the watch then offers the change again.
    pub async fn reported(&self, change: &PodChange) -> DomainResult<()> {
        self.webhooks.pod_change_reported(change).await
    }

    /// Records that `project`'s pod was seen in `status`; announces it when that state is an
    /// event and differs from the last one this replica announced for the project. Behind a
    /// cluster-wide pod watch it announces nothing: the watch sees the same change.
    pub async fn observed(&self, project: &ProjectName, status: &PodStatus) {
        if self.announcer == Announcer::ClusterWatch {
            return;
        }
        let Some(kind) = pod_event_type(status) else { return };
        if self.remember(project, Some(kind)) == Some(kind) {
            return;
        }
        if let Err(e) = self.webhooks.pod_changed(project, status).await {
            // Forget it, so the next observation of this state tries again.
            self.remember(project, None);
            tracing::warn!(project = %project, error = %e, "could not record a pod event for webhooks");
        }
    }

    /// Sets (or clears) the last announced state; returns the previous one.
    fn remember(&self, project: &ProjectName, kind: Option<EventType>) -> Option<EventType> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match kind {
            Some(kind) => last.insert(project.clone(), kind),
            None => last.remove(project),
        }
    }
}

/// The state a followed pod is expected to settle in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Settle {
    Ready,
    Gone,
}

/// Reads and drives projects' pods.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds a trait object without Debug")]
pub struct PodService {
    projects: Arc<ProjectService>,
    pods: Arc<dyn PodManager>,
    events: PodEvents,
    settle_timeout: Duration,
    following: Arc<Mutex<HashSet<(ProjectName, Settle)>>>,
}

impl PodService {
    /// Pods of the projects `projects` knows, managed by `pods`; state changes go to `events`,
    /// followed for at most `settle_timeout` after a start or stop.
    pub fn new(
        projects: Arc<ProjectService>,
        pods: Arc<dyn PodManager>,
        events: PodEvents,
        settle_timeout: Duration,
    ) -> Self {
        Self { projects, pods, events, settle_timeout, following: Arc::default() }
    }

    /// The pod's state. Needs `projects:read`; 404 for projects the key may not see.
    pub async fn status(&self, actor: &Principal, name: &ProjectName) -> DomainResult<PodStatus> {
        let project = self.projects.get(actor, name).await?;
        self.pods.status(&project.name).await
    }

    /// Starts the pod from the project's current settings (idempotent). Needs `projects:write`.
    /// Answers at once; `pod.ready` (or `pod.failed`) follows when the pod gets there.
    pub async fn start(&self, actor: &Principal, name: &ProjectName) -> DomainResult<PodStatus> {
        actor.require(Scope::ProjectsWrite)?;
        let project = self.projects.visible(actor, name).await?;
        let status = self.pods.start(&PodSpec::from(&project)).await?;
        tracing::info!(project = %project.name, phase = status.phase.as_str(), "pod start requested");
        self.events.observed(&project.name, &status).await;
        if !status.ready && status.phase != PodPhase::Failed {
            self.follow(project.name, Settle::Ready);
        }
        Ok(status)
    }

    /// Stops the pod (idempotent). Needs `projects:write`. Answers at once; `pod.stopped`
    /// follows when the pod is gone.
    pub async fn stop(&self, actor: &Principal, name: &ProjectName) -> DomainResult<PodStatus> {
        actor.require(Scope::ProjectsWrite)?;
        let project = self.projects.visible(actor, name).await?;
        let status = self.pods.stop(&project.name).await?;
        tracing::info!(project = %project.name, phase = status.phase.as_str(), "pod stop requested");
        self.events.observed(&project.name, &status).await;
        if status.phase == PodPhase::Stopping {
            self.follow(project.name, Settle::Gone);
        }
        Ok(status)
    }

    /// The last `tail` log lines. Needs `projects:read`.
    pub async fn logs(&self, actor: &Principal, name: &ProjectName, tail: u32) -> DomainResult<Vec<String>> {
        let project = self.projects.get(actor, name).await?;
        self.pods.logs(&project.name, tail).await
    }

    /// Watches `project`'s pod in the background until it settles (or the timeout passes) and
    /// announces where it settled. One follower per project and target at a time.
    fn follow(&self, project: ProjectName, until: Settle) {
        let key = (project, until);
        if !self.following.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone()) {
            return;
        }
        let (pods, events, following, timeout) =
            (self.pods.clone(), self.events.clone(), self.following.clone(), self.settle_timeout);
        tokio::spawn(async move {
            let project = &key.0;
            let settled = match until {
                Settle::Ready => pods.wait_ready(project, timeout).await,
                Settle::Gone => wait_gone(pods.as_ref(), project, timeout).await,
            };
            match settled {
                Ok(status) => events.observed(project, &status).await,
                Err(e) => tracing::warn!(project = %project, error = %e, "lost sight of a pod while it settled"),
            }
            following.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
        });
    }
}

/// Polls `project`'s pod until it is gone or `timeout` passed; returns the last state seen.
async fn wait_gone(pods: &dyn PodManager, project: &ProjectName, timeout: Duration) -> DomainResult<PodStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = pods.status(project).await?;
        if status.phase == PodPhase::Stopped || tokio::time::Instant::now() >= deadline {
            return Ok(status);
        }
        tokio::time::sleep(STOP_POLL).await;
    }
}
