//! The process executor's "pods": a project's pod is its local workspace directory. Starting
//! one creates the directory and a state file; stopping removes the state file but keeps the
//! files, so a restart finds the workspace as it was. The pod log records life-cycle lines.
//!
//! The state file and the log live in `<root>/.pods/`, outside the workspace: commands see
//! their workspace, and must not be able to forge their pod's state or log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::pod::{PodPhase, PodSpec, PodStatus};
use domain::ports::PodManager;
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};
use tokio::io::AsyncWriteExt;

use crate::workspace::{create_private_dir, Workspaces};

/// Numbers the files a state is written to before it is renamed into place.
static ASIDE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The directory under the workspaces root that holds pod state; `.` keeps it apart from
/// every project's workspace.
const STATE_DIR: &str = ".pods";

/// Local workspaces managed as pods (`pod_name` = `local-<project>`).
#[derive(Debug, Clone)]
pub struct LocalPods {
    workspaces: Workspaces,
    state_dir: PathBuf,
}

impl LocalPods {
    /// Pods under `workspaces_root`, with workspaces owned by the server's user. A sandboxed
    /// executor's own pods come from `ProcessExecutor::pods`.
    pub fn new(workspaces_root: PathBuf) -> Self {
        Self::over(Workspaces::new(workspaces_root, None))
    }

    pub(crate) fn over(workspaces: Workspaces) -> Self {
        let state_dir = workspaces.root().join(STATE_DIR);
        Self { workspaces, state_dir }
    }

    /// The file marking a running pod; holds its start time (RFC 3339).
    fn state_file(&self, project: &ProjectName) -> PathBuf {
        self.state_dir.join(format!("{project}.state"))
    }

    fn log_file(&self, project: &ProjectName) -> PathBuf {
        self.state_dir.join(format!("{project}.log"))
    }

    async fn log_line(&self, project: &ProjectName, line: &str) -> DomainResult<()> {
        let path = self.log_file(project);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(|e| io_error(&path, &e))?;
        let stamped = format!("{} {line}\n", Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
        file.write_all(stamped.as_bytes()).await.map_err(|e| io_error(&path, &e))
    }
}

fn io_error(dir: &Path, e: &std::io::Error) -> DomainError {
    DomainError::Unavailable(format!("workspace {}: {e}", dir.display()))
}

fn running(project: &ProjectName, started_at: DateTime<Utc>) -> PodStatus {
    PodStatus {
        phase: PodPhase::Running,
        ready: true,
        pod_name: Some(format!("local-{project}")),
        started_at: Some(started_at),
        reason: None,
    }
}

#[async_trait]
impl PodManager for LocalPods {
    async fn status(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        let state = self.state_file(project);
        match tokio::fs::read_to_string(&state).await {
            Ok(text) => {
                let started = DateTime::parse_from_rfc3339(text.trim())
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| DomainError::Internal(format!("{}: {e}", state.display())))?;
                Ok(running(project, started))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PodStatus::stopped()),
            Err(e) => Err(io_error(&state, &e)),
        }
    }

    async fn start(&self, spec: &PodSpec) -> DomainResult<PodStatus> {
        let current = self.status(&spec.project).await?;
        if current.phase == PodPhase::Running {
            return Ok(current);
        }
        let dir = self.workspaces.dir(&spec.project);
        self.workspaces.prepare(&spec.project).map_err(|e| io_error(&dir, &e))?;
        create_private_dir(&self.state_dir).map_err(|e| io_error(&self.state_dir, &e))?;
        let now = domain::to_micros_precision(Utc::now());
        let stamp = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        let state = self.state_file(&spec.project);
        // Written aside and renamed into place: a concurrent `status` (two commands of the
        // project starting at once) reads the old file or the new one, never a half-written one.
        let unique = ASIDE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let aside = state.with_extension(format!("state.{}-{unique}", std::process::id()));
        tokio::fs::write(&aside, stamp).await.map_err(|e| io_error(&aside, &e))?;
        tokio::fs::rename(&aside, &state).await.map_err(|e| io_error(&state, &e))?;
        self.log_line(&spec.project, &format!("workspace started for project {}", spec.project)).await?;
        Ok(running(&spec.project, now))
    }

    async fn wait_ready(&self, project: &ProjectName, _timeout: Duration) -> DomainResult<PodStatus> {
        // A local workspace is ready as soon as it exists; there is nothing to wait for.
        self.status(project).await
    }

    async fn stop(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        match tokio::fs::remove_file(self.state_file(project)).await {
            Ok(()) => self.log_line(project, "workspace stopped").await?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&self.state_file(project), &e)),
        }
        Ok(PodStatus::stopped())
    }

    async fn logs(&self, project: &ProjectName, tail: u32) -> DomainResult<Vec<String>> {
        if self.status(project).await?.phase != PodPhase::Running {
            return Ok(Vec::new());
        }
        let path = self.log_file(project);
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_error(&path, &e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(tail as usize);
        Ok(lines[skip..].iter().map(|l| (*l).to_owned()).collect())
    }
}
