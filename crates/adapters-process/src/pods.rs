//! The process executor's "pods": a project's pod is its local workspace directory. Starting
//! one creates the directory and a state file; stopping removes the state file but keeps the
//! files, so a restart finds the workspace as it was. The pod log records life-cycle lines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::pod::{PodPhase, PodSpec, PodStatus};
use domain::ports::PodManager;
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};
use tokio::io::AsyncWriteExt;

/// Marks a running local pod; holds its start time (RFC 3339).
const STATE_FILE: &str = ".rdev-pod";
/// The local pod's log.
const LOG_FILE: &str = ".rdev-pod.log";

/// Local workspaces managed as pods (`pod_name` = `local-<project>`).
#[derive(Debug, Clone)]
pub struct LocalPods {
    workspaces_root: PathBuf,
}

impl LocalPods {
    /// Pods under `workspaces_root` (the same root the `ProcessExecutor` uses).
    pub fn new(workspaces_root: PathBuf) -> Self {
        Self { workspaces_root }
    }

    fn dir(&self, project: &ProjectName) -> PathBuf {
        // A `ProjectName` is `^[a-z][a-z0-9-]*$`, so it is always one safe path component.
        self.workspaces_root.join(project.as_str())
    }

    async fn log_line(&self, dir: &Path, line: &str) -> DomainResult<()> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .await
            .map_err(|e| io_error(dir, &e))?;
        let stamped = format!("{} {line}\n", Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true));
        file.write_all(stamped.as_bytes()).await.map_err(|e| io_error(dir, &e))
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
        let state = self.dir(project).join(STATE_FILE);
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
        let dir = self.dir(&spec.project);
        tokio::fs::create_dir_all(&dir).await.map_err(|e| io_error(&dir, &e))?;
        let now = domain::to_micros_precision(Utc::now());
        let stamp = now.to_rfc3339_opts(SecondsFormat::Micros, true);
        tokio::fs::write(dir.join(STATE_FILE), stamp).await.map_err(|e| io_error(&dir, &e))?;
        self.log_line(&dir, &format!("workspace started for project {}", spec.project)).await?;
        Ok(running(&spec.project, now))
    }

    async fn wait_ready(&self, project: &ProjectName, _timeout: Duration) -> DomainResult<PodStatus> {
        // A local workspace is ready as soon as it exists; there is nothing to wait for.
        self.status(project).await
    }

    async fn stop(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        let dir = self.dir(project);
        match tokio::fs::remove_file(dir.join(STATE_FILE)).await {
            Ok(()) => self.log_line(&dir, "workspace stopped").await?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&dir, &e)),
        }
        Ok(PodStatus::stopped())
    }

    async fn logs(&self, project: &ProjectName, tail: u32) -> DomainResult<Vec<String>> {
        if self.status(project).await?.phase != PodPhase::Running {
            return Ok(Vec::new());
        }
        let path = self.dir(project).join(LOG_FILE);
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
