//! `CommandService`: submit, read, wait for and cancel commands.

use std::sync::Arc;
use std::time::Duration;

use domain::api_key::Scope;
use domain::command::{
    Command, CommandSpec, CommandStatus, CommandStdin, EnvMap, Idempotency, NewCommand, Priority, TimeoutSeconds,
    WorkingDir,
};
use domain::ids::CommandId;
use domain::output::{CommandEvent, CommandOutput};
use domain::pagination::{Page, PageRequest};
use domain::ports::{Clock, CommandFilter, CommandRepository, Enqueued, QueueStats, WorkerCapacity};
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::access::Principal;
use crate::projects::ProjectService;
use crate::signalling::{Signals, SAFETY_POLL};

/// Longest `?wait=`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A command as a client asked for it, validated field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// What to run.
    pub spec: CommandSpec,
    /// Extra environment.
    pub env: EnvMap,
    /// Working directory.
    pub cwd: Option<WorkingDir>,
    /// Bytes for stdin.
    pub stdin: Option<CommandStdin>,
    /// Timeout; the project's default when `None`.
    pub timeout: Option<TimeoutSeconds>,
    /// Priority.
    pub priority: Priority,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

/// A command and, while it is queued, its place in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandView {
    /// The command.
    pub command: Command,
    /// 1-based position while queued.
    pub queue_position: Option<u64>,
}

/// The queue as `/v1/queue` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueView {
    /// Depth and running count.
    pub stats: QueueStats,
    /// Live replicas and their summed capacity.
    pub workers: WorkerCapacity,
}

/// Submits, reads, waits for and cancels commands.
pub struct CommandService {
    projects: Arc<ProjectService>,
    commands: Arc<dyn CommandRepository>,
    queue: Arc<dyn domain::ports::CommandQueue>,
    signals: Arc<Signals>,
    clock: Arc<dyn Clock>,
    max_queued: u32,
}

/// Default of `MAX_QUEUED_COMMANDS`: queued commands per project when the project sets none.
pub const DEFAULT_MAX_QUEUED_COMMANDS: u32 = 1000;

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService").finish_non_exhaustive()
    }
}

impl CommandService {
    /// A service over the command ports.
    pub fn new(
        projects: Arc<ProjectService>,
        commands: Arc<dyn CommandRepository>,
        queue: Arc<dyn domain::ports::CommandQueue>,
        signals: Arc<Signals>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { projects, commands, queue, signals, clock, max_queued: DEFAULT_MAX_QUEUED_COMMANDS }
    }

    /// Sets the queue cap of projects that have none of their own (`MAX_QUEUED_COMMANDS`).
    pub fn with_max_queued(mut self, max_queued: u32) -> Self {
        self.max_queued = max_queued;
        self
    }

    /// Queues a command (or replays an idempotent one). Needs `commands:write`.
    pub async fn submit(&self, actor: &Principal, project: &ProjectName, s: Submission) -> DomainResult<Enqueued> {
        let span = tracing::info_span!(
            "command.enqueue",
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            project = %project,
            priority = s.priority.as_str(),
            command_id = tracing::field::Empty,
        );
        let submitted = self.submit_in(actor, project, s, &span).instrument(span.clone()).await;
        if let Err(e) = &submitted {
            // Refusals of the client's input are its error, not ours (as a 4xx is for HTTP spans).
            if matches!(e, DomainError::Internal(_) | DomainError::Unavailable(_)) {
                span.record("otel.status_code", "ERROR");
            }
        }
        submitted
    }

    async fn submit_in(
        &self,
        actor: &Principal,
        project: &ProjectName,
        s: Submission,
        span: &tracing::Span,
    ) -> DomainResult<Enqueued> {
        actor.require(Scope::CommandsWrite)?;
        let project = self.projects.visible(actor, project).await?;
        let idempotency = match &s.idempotency_key {
            Some(key) => Some(Idempotency::new(key, fingerprint(&project.name, &s))?),
            None => None,
        };
        let new = NewCommand {
            id: CommandId::generate(),
            project_id: project.id,
            project: project.name.clone(),
            spec: s.spec,
            env: s.env,
            cwd: s.cwd,
            stdin: s.stdin,
            timeout: s.timeout.unwrap_or(project.default_timeout_seconds),
            priority: s.priority,
            created_by: actor.key_id,
            idempotency,
            queued_at: self.clock.now(),
            max_queued: project.max_queued_commands.unwrap_or(self.max_queued),
            // The enqueue span is the parent of the claim and the run, wherever they happen.
            trace: crate::trace_context::of_span(span),
        };
        span.record("command_id", tracing::field::display(new.id));
        let enqueued = self.commands.enqueue(new).await?;
        if !enqueued.replayed {
            tracing::info!(command_id = %enqueued.command.id, project = %project.name, "command queued");
            self.signals.wake_worker();
        }
        Ok(enqueued)
    }

    /// A visible command and its queue position. Needs `commands:read`.
    pub async fn get(&self, actor: &Principal, id: CommandId) -> DomainResult<CommandView> {
        let command = self.visible(actor, id).await?;
        self.view_of(command).await
    }

    async fn view_of(&self, command: Command) -> DomainResult<CommandView> {
        let id = command.id;
        let queue_position = match command.status {
            CommandStatus::Queued => self.commands.queue_position(id).await?,
            _ => None,
        };
        Ok(CommandView { command, queue_position })
    }

    async fn visible(&self, actor: &Principal, id: CommandId) -> DomainResult<Command> {
        actor.require(Scope::CommandsRead)?;
        let command = self.commands.get(id).await?;
        actor.see(&command.project).map_err(|_| DomainError::NotFound("command".into()))?;
        Ok(command)
    }

    /// A project's commands, optionally by status. Needs `commands:read`.
    pub async fn list(
        &self,
        actor: &Principal,
        project: &ProjectName,
        status: Option<CommandStatus>,
        page: PageRequest,
    ) -> DomainResult<Page<Command>> {
        actor.require(Scope::CommandsRead)?;
        self.projects.visible(actor, project).await?;
        self.commands.list(&CommandFilter { project: Some(project.clone()), status }, page).await
    }

    /// Cancels: a queued command at once, a running one is killed by whichever worker runs it.
    /// Needs `commands:write`.
    pub async fn cancel(&self, actor: &Principal, id: CommandId) -> DomainResult<Command> {
        actor.require(Scope::CommandsWrite)?;
        self.visible_for_write(actor, id).await?;
        let command = self.commands.request_cancel(id, self.clock.now()).await?;
        if command.status == CommandStatus::Running {
            self.signals.cancel_local(id);
        }
        self.signals.command_state_changed(id);
        Ok(command)
    }

    async fn visible_for_write(&self, actor: &Principal, id: CommandId) -> DomainResult<Command> {
        let command = self.commands.get(id).await?;
        actor.see(&command.project).map_err(|_| DomainError::NotFound("command".into()))?;
        Ok(command)
    }

    /// Waits up to `wait` (zero: not at all) for the command to end; returns it as it is then.
    /// Needs `commands:read` or `commands:write` (the submitter sees what it submitted).
    pub async fn wait(&self, actor: &Principal, id: CommandId, wait: Duration) -> DomainResult<CommandView> {
        actor.require(Scope::CommandsRead).or_else(|_| actor.require(Scope::CommandsWrite))?;
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let mut changes = self.signals.watch_command(id);
        loop {
            let view = self.view_of(self.visible_for_write(actor, id).await?).await?;
            if view.command.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(view);
            }
            // Woken by the command's own changes; a change no signal announced is found by the
            // replica's `SafetyPoll`, which wakes this same channel.
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, changes.changed()).await {
                // The hub dropped the channel (it keeps it while a receiver lives, so this is
                // not expected): fall back to polling rather than spinning.
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + SAFETY_POLL)).await;
            }
        }
    }

    /// The captured output. Needs `commands:read`.
    pub async fn output(&self, actor: &Principal, id: CommandId) -> DomainResult<CommandOutput> {
        self.visible(actor, id).await?;
        self.commands.output(id).await
    }

    /// Events after `after` (checks access each call). Needs `commands:read`.
    pub async fn events_after(
        &self,
        actor: &Principal,
        id: CommandId,
        after: i64,
        limit: u32,
    ) -> DomainResult<Vec<CommandEvent>> {
        self.visible(actor, id).await?;
        self.commands.events_after(id, after, limit).await
    }

    /// A receiver that ticks whenever command `id` changes, on any replica (subscribe before
    /// reading, so nothing slips between the read and the wait).
    pub fn watch(&self, id: CommandId) -> tokio::sync::watch::Receiver<u64> {
        self.signals.watch_command(id)
    }

    /// The replica's safety poll over the commands its waiters and streams watch (run it
    /// with `SafetyPoll::run`).
    pub fn safety_poll(&self) -> crate::signalling::SafetyPoll {
        crate::signalling::SafetyPoll::new(self.signals.clone(), self.commands.clone())
    }

    /// Depth, running and capacity. Needs `commands:read`.
    pub async fn queue(&self, actor: &Principal, live_since: chrono::TimeDelta) -> DomainResult<QueueView> {
        actor.require(Scope::CommandsRead)?;
        // A project-limited key sees only its own projects' queue, like every other read.
        let only = actor.projects.as_list();
        let stats = self.commands.stats(only.as_deref()).await?;
        let workers = self.queue.live_workers(self.clock.now() - live_since).await?;
        Ok(QueueView { stats, workers })
    }

    /// Publishes queue depth (per priority) and running count as gauges; called at each scrape
    /// so the figures cover every replica without a background task.
    pub async fn record_queue_gauges(&self) -> DomainResult<()> {
        let stats = self.commands.stats(None).await?;
        for (priority, depth) in &stats.depth {
            metrics::gauge!(crate::metrics::COMMANDS_QUEUED, "priority" => priority.as_str()).set(*depth as f64);
        }
        metrics::gauge!(crate::metrics::COMMANDS_RUNNING).set(stats.running as f64);
        Ok(())
    }
}

/// SHA-256 of everything that defines the request, so a replay with another body is detected.
fn fingerprint(project: &ProjectName, s: &Submission) -> String {
    let canonical = serde_json::json!({
        "project": project.as_str(),
        "spec": s.spec,
        "env": s.env,
        "cwd": s.cwd,
        "stdin": s.stdin,
        "timeout": s.timeout.map(u32::from),
        "priority": s.priority,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}
