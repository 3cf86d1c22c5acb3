//! rdev-api's embedded executor: each command is a local child process, confined by default
//! to a sandbox that shows it its project's workspace at the project's workdir and nothing of
//! the server (the "pod" when `EXECUTOR=process`).
//!
//! Commands get a clean environment, their output is streamed and captured head-and-tail, and
//! a timeout or cancel kills every process of the command (SIGTERM, a grace period, SIGKILL);
//! in the sandbox, the end of the command's PID namespace kills whatever it left behind.

mod group;
mod pods;
mod run;
pub mod sandbox;
mod spawn;
mod workspace;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use domain::command::{EnvMap, Termination};
use domain::ids::CommandId;
use domain::ports::{ExecRequest, ExecResult, Executor, OutputSink};
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use pods::LocalPods;
pub use sandbox::{NetworkMode, Sandbox, SandboxConfig};
pub use spawn::DEFAULT_PATH;

use crate::run::RunSetup;
use crate::workspace::Workspaces;

/// Where workspaces live, how commands are confined and how kills are paced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Parent of every project's workspace (`<root>/<project>`); created on demand, mode 0700.
    pub workspaces_root: PathBuf,
    /// How long a killed command gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// How commands are confined.
    pub sandbox: Sandbox,
}

/// Runs commands as local child processes (the `process` executor).
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    config: ProcessConfig,
    workspaces: Workspaces,
}

/// The project whose workspace the start-up probe uses; `.` keeps it apart from real projects.
const PROBE_WORKSPACE: &str = ".sandbox-probe";

impl ProcessExecutor {
    /// An executor over `config`; nothing is touched until the first command or check.
    pub fn new(config: ProcessConfig) -> Self {
        let workspaces = Workspaces::new(config.workspaces_root.clone(), workspace_owner(&config.sandbox));
        Self { config, workspaces }
    }

    /// The workspace directory of `project` (which may not exist yet).
    pub fn workspace_dir(&self, project: &ProjectName) -> PathBuf {
        self.workspaces.dir(project)
    }

    /// The configuration this executor runs with.
    pub fn config(&self) -> &ProcessConfig {
        &self.config
    }

    /// The local "pods" of this executor's workspaces.
    pub fn pods(&self) -> LocalPods {
        LocalPods::over(self.workspaces.clone())
    }

    /// Runs `true` in the sandbox once, so a server whose kernel or container forbids the
    /// sandbox refuses to start instead of failing every command.
    ///
    /// # Errors
    /// Why the sandbox cannot run a command (the helper's own words); `Ok` when it is off.
    pub async fn probe_sandbox(&self) -> Result<(), String> {
        if self.config.sandbox == Sandbox::Off {
            return Ok(());
        }
        let workspace = self.config.workspaces_root.join(PROBE_WORKSPACE);
        self.workspaces.prepare_dir(&workspace).map_err(|e| format!("{}: {e}", workspace.display()))?;
        let probe = ExecRequest {
            command_id: CommandId::generate(),
            project: ProjectName::parse("sandbox-probe").map_err(|e| e.to_string())?,
            workdir: "/workspace".to_owned(),
            argv: vec!["true".to_owned()],
            env: EnvMap::default(),
            cwd: None,
            stdin: None,
            timeout: Duration::from_secs(10),
            max_output_bytes: 4096,
        };
        let setup =
            RunSetup { workspace: &workspace, sandbox: &self.config.sandbox, kill_grace: self.config.kill_grace };
        let result = run::execute(probe, setup, &NoOutput, CancellationToken::new()).await;
        match result.termination {
            Termination::Exited(0) => Ok(()),
            Termination::StartFailed(reason) => Err(reason),
            other => Err(format!("`true` in the sandbox ended {other:?}; stderr: {}", result.stderr.text())),
        }
    }
}

/// Who owns workspaces: the command user when root runs sandboxed commands as another user.
fn workspace_owner(sandbox: &Sandbox) -> Option<(u32, u32)> {
    match sandbox {
        Sandbox::On(config) if nix::unistd::geteuid().is_root() => Some((config.uid, config.gid)),
        _ => None,
    }
}

/// A sink for the probe, whose output nobody reads.
#[derive(Debug)]
struct NoOutput;

#[async_trait]
impl OutputSink for NoOutput {
    async fn emit(&self, _: domain::output::OutputStream, _: &[u8]) {}
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn run(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult {
        let span = tracing::info_span!(
            "process_exec",
            project = %request.project,
            command_id = %request.command_id,
        );
        let workspace = match self.workspaces.prepare(&request.project) {
            Ok(dir) => dir,
            Err(e) => {
                let dir = self.workspaces.dir(&request.project);
                return ExecResult {
                    termination: Termination::StartFailed(format!(
                        "cannot create the workspace {}: {e}",
                        dir.display()
                    )),
                    stdout: Default::default(),
                    stderr: Default::default(),
                };
            }
        };
        let setup =
            RunSetup { workspace: &workspace, sandbox: &self.config.sandbox, kill_grace: self.config.kill_grace };
        run::execute(request, setup, sink, cancel).instrument(span).await
    }

    async fn check(&self) -> DomainResult<()> {
        let root = &self.config.workspaces_root;
        workspace::create_private_dir(root).map_err(|e| {
            tracing::warn!(root = %root.display(), error = %e, "workspaces root is not usable");
            DomainError::Unavailable(format!("workspaces root {} is not usable: {e}", root.display()))
        })
    }
}
