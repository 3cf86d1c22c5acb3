//! The command entity: a validated command ready to be queued, and a command with its run.

use crate::api_key::ApiKeyId;
use crate::ids::{CommandId, ProjectId};
use crate::project::ProjectName;
use crate::trace::TraceContext;
use crate::Timestamp;

use super::{
    CommandSpec, CommandStatus, CommandStdin, EnvMap, Idempotency, Priority, TerminationReason, TimeoutSeconds,
    WorkingDir,
};

/// A validated command ready to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCommand {
    /// Id assigned by the service.
    pub id: CommandId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Owning project's name (denormalised for reads).
    pub project: ProjectName,
    /// What to run.
    pub spec: CommandSpec,
    /// Command environment (project env merged under it at run time).
    pub env: EnvMap,
    /// Working directory, absolute or relative to the project's workdir.
    pub cwd: Option<WorkingDir>,
    /// Bytes fed to stdin.
    pub stdin: Option<CommandStdin>,
    /// Kill after this long.
    pub timeout: TimeoutSeconds,
    /// Queue priority.
    pub priority: Priority,
    /// Key that asked for it (none from the CLI).
    pub created_by: Option<ApiKeyId>,
    /// Idempotency key, when the client sent one.
    pub idempotency: Option<Idempotency>,
    /// Enqueue time.
    pub queued_at: Timestamp,
    /// The project's effective queue cap: the store refuses the command with `QueueFull` when
    /// the project already has this many queued, checked atomically with the insert.
    pub max_queued: u32,
    /// The trace of the request that queued it, which its run on any replica joins.
    pub trace: Option<TraceContext>,
}

/// A command and everything known about its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Stable id.
    pub id: CommandId,
    /// Owning project.
    pub project_id: ProjectId,
    /// Owning project's name.
    pub project: ProjectName,
    /// What to run.
    pub spec: CommandSpec,
    /// Command environment.
    pub env: EnvMap,
    /// Working directory.
    pub cwd: Option<WorkingDir>,
    /// Bytes fed to stdin.
    pub stdin: Option<CommandStdin>,
    /// Timeout.
    pub timeout: TimeoutSeconds,
    /// Priority.
    pub priority: Priority,
    /// Current status.
    pub status: CommandStatus,
    /// Exit code, only when one really arrived.
    pub exit_code: Option<i32>,
    /// Why it ended.
    pub termination_reason: Option<TerminationReason>,
    /// Failure detail that is not an exit code.
    pub error: Option<String>,
    /// Key that asked for it.
    pub created_by: Option<ApiKeyId>,
    /// Whether a client asked to cancel it while it ran.
    pub cancel_requested: bool,
    /// Enqueue time.
    pub queued_at: Timestamp,
    /// Claim time.
    pub started_at: Option<Timestamp>,
    /// End time.
    pub finished_at: Option<Timestamp>,
    /// The trace of the request that queued it, which its run joins.
    pub trace: Option<TraceContext>,
}

impl NewCommand {
    /// The queued command this becomes once stored.
    pub fn into_command(self) -> Command {
        Command {
            id: self.id,
            project_id: self.project_id,
            project: self.project,
            spec: self.spec,
            env: self.env,
            cwd: self.cwd,
            stdin: self.stdin,
            timeout: self.timeout,
            priority: self.priority,
            status: CommandStatus::Queued,
            exit_code: None,
            termination_reason: None,
            error: None,
            created_by: self.created_by,
            cancel_requested: false,
            queued_at: self.queued_at,
            started_at: None,
            finished_at: None,
            trace: self.trace,
        }
    }
}
