//! rdev-api's embedded executor: each command is a local child process in its own process
//! group, run in the project's workspace directory (the "pod" when `EXECUTOR=process`).
//!
//! Commands get a clean environment, their output is streamed and captured head-and-tail, and
//! a timeout or cancel kills the whole process group (SIGTERM, a grace period, then SIGKILL).

mod group;
mod pods;
mod run;
mod spawn;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use domain::ports::{ExecRequest, ExecResult, Executor, OutputSink};
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use pods::LocalPods;
pub use spawn::DEFAULT_PATH;

/// Where workspaces live and how kills are paced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Parent of every project's workspace (`<root>/<project>`); created on demand.
    pub workspaces_root: PathBuf,
    /// How long a killed command gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// Runs commands as local child processes (the `process` executor).
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    config: ProcessConfig,
}

impl ProcessExecutor {
    /// An executor over `config`; nothing is touched until the first command or check.
    pub fn new(config: ProcessConfig) -> Self {
        Self { config }
    }

    /// The workspace directory of `project` (which may not exist yet).
    pub fn workspace_dir(&self, project: &ProjectName) -> PathBuf {
        // A `ProjectName` is `^[a-z][a-z0-9-]*$`, so it is always one safe path component.
        self.config.workspaces_root.join(project.as_str())
    }

    /// The configuration this executor runs with.
    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn run(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult {
        let span = tracing::info_span!(
            "process_exec",
            project = %request.project,
            command_id = %request.command_id,
        );
        let workspace = self.workspace_dir(&request.project);
        run::execute(request, workspace, self.config.kill_grace, sink, cancel).instrument(span).await
    }

    async fn check(&self) -> DomainResult<()> {
        let root = &self.config.workspaces_root;
        tokio::fs::create_dir_all(root).await.map_err(|e| {
            tracing::warn!(root = %root.display(), error = %e, "workspaces root is not usable");
            DomainError::Unavailable(format!("workspaces root {} is not usable: {e}", root.display()))
        })
    }
}
