//! A project's development pod as clients see it, and what starting one needs.

use serde::{Deserialize, Serialize};

use crate::command::EnvMap;
use crate::project::{Project, ProjectName, Resources};
use crate::Timestamp;

/// Where a project's pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodPhase {
    /// No pod exists.
    Stopped,
    /// Created, not yet running (scheduling, pulling the image).
    Pending,
    /// Running; see `ready` for readiness.
    Running,
    /// The pod failed (image pull error, crash, eviction); `reason` says why.
    Failed,
    /// Deletion requested, not yet gone.
    Stopping,
}

impl PodPhase {
    /// Every phase.
    pub const ALL: [PodPhase; 5] = [Self::Stopped, Self::Pending, Self::Running, Self::Failed, Self::Stopping];

    /// The wire name (`stopped`, `pending`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Stopping => "stopping",
        }
    }
}

/// The state of a project's pod (`GET /v1/projects/{name}/pod`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    /// Life-cycle phase.
    pub phase: PodPhase,
    /// True when commands can run in it now.
    pub ready: bool,
    /// The pod's name (`local-<project>` for the process executor).
    pub pod_name: Option<String>,
    /// When it started running.
    pub started_at: Option<Timestamp>,
    /// Why it is not ready or failed, when known.
    pub reason: Option<String>,
}

impl PodStatus {
    /// The status of a project that has no pod.
    pub fn stopped() -> Self {
        Self { phase: PodPhase::Stopped, ready: false, pod_name: None, started_at: None, reason: None }
    }
}

/// One change of a managed pod's state, as the cluster-wide pod watch reports it
/// ([`crate::ports::PodWatch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodChange {
    /// The project whose pod changed.
    pub project: ProjectName,
    /// The state it is in now.
    pub status: PodStatus,
    /// Names this occurrence of the state the same way for every observer and every leader
    /// (the pod's uid, the state, the restart or end it follows), so that a change reported
    /// twice, by two leaders one after the other, is recognised as one.
    pub occurrence: String,
}

/// What a pod is created from: the project's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Owner project (also a label on the pod).
    pub project: ProjectName,
    /// Container image.
    pub image: String,
    /// Working directory of the container.
    pub workdir: String,
    /// Environment of the container.
    pub env: EnvMap,
    /// CPU and memory requests and limits.
    pub resources: Resources,
}

impl From<&Project> for PodSpec {
    fn from(project: &Project) -> Self {
        Self {
            project: project.name.clone(),
            image: project.image.clone(),
            workdir: project.workdir.clone(),
            env: project.env.clone(),
            resources: project.resources.clone(),
        }
    }
}
