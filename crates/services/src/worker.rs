//! `QueueWorker`: claims commands in priority order under the replica's cap, runs them on the
//! executor while renewing their lease, and records how they ended. Never re-runs a command.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use domain::audit::{AuditEntry, AuditOutcome};
use domain::command::Termination;
use domain::command::{Command, CommandStatus, CommandStdin, Completion, TerminationReason};
use domain::ids::WorkerId;
use domain::output::CommandOutput;
use domain::pod::PodSpec;
use domain::ports::{Claim, Clock, CommandQueue, ExecRequest, Executor, PodManager, ProjectRepository};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditService;
use crate::breaker::CircuitBreaker;
use crate::liveness::Liveness;
use crate::metrics as m;
use crate::pods::PodEvents;
use crate::signalling::Signals;
use crate::trace_context;
use crate::worker_sink::{SinkTarget, StoreSink};
use tracing::Instrument;

/// How the worker behaves; defaults follow DESIGN.md §3.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This replica's worker id.
    pub worker_id: WorkerId,
    /// `CONCURRENT_COMMANDS`.
    pub concurrency: usize,
    /// Lease length (60 s).
    pub lease: Duration,
    /// How often a running command's lease is renewed and its cancel flag read (a cancel
    /// request signalled by any replica is read at once).
    pub renew_every: Duration,
    /// Fallback poll when no wake-up arrives.
    pub poll_every: Duration,
    /// How often expired leases are reaped.
    pub reap_every: Duration,
    /// `MAX_OUTPUT_BYTES`.
    pub max_output_bytes: usize,
    /// On shutdown, how long running commands may take before they are handed back as lost.
    pub shutdown_grace: Duration,
    /// How long a command waits for its project's pod to become ready before it fails.
    pub pod_ready_timeout: Duration,
}

impl WorkerConfig {
    /// Defaults for `worker_id` with `concurrency` slots.
    pub fn new(worker_id: WorkerId, concurrency: usize) -> Self {
        Self {
            worker_id,
            concurrency,
            lease: Duration::from_secs(60),
            renew_every: Duration::from_secs(15),
            poll_every: Duration::from_secs(1),
            reap_every: Duration::from_secs(15),
            max_output_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(25),
            pod_ready_timeout: Duration::from_secs(120),
        }
    }
}

/// The ports a worker uses.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds trait objects that have no Debug")]
pub struct WorkerPorts {
    /// The queue.
    pub queue: Arc<dyn CommandQueue>,
    /// Projects, for workdir and env.
    pub projects: Arc<dyn ProjectRepository>,
    /// Where commands run.
    pub executor: Arc<dyn Executor>,
    /// The projects' pods; a command's pod is started first when it is not ready.
    pub pods: Arc<dyn PodManager>,
    /// Where the states of pods this worker starts are announced.
    pub pod_events: PodEvents,
    /// While this breaker is open nothing is claimed, so commands wait in the queue.
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// Where starts and ends are recorded.
    pub audit: AuditService,
    /// In-process signals.
    pub signals: Arc<Signals>,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

/// Runs queued commands until shut down.
pub struct QueueWorker {
    ports: WorkerPorts,
    config: WorkerConfig,
    liveness: Arc<Liveness>,
    shutting_down: CancellationToken,
}

impl std::fmt::Debug for QueueWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueWorker").field("config", &self.config).finish_non_exhaustive()
    }
}

impl QueueWorker {
    /// A worker over `ports`.
    pub fn new(ports: WorkerPorts, config: WorkerConfig) -> Arc<Self> {
        let liveness = Liveness::new(
            Arc::clone(&ports.queue),
            Arc::clone(&ports.clock),
            Arc::clone(&ports.signals),
            ports.audit.clone(),
            config.worker_id.clone(),
            u32::try_from(config.concurrency).unwrap_or(u32::MAX),
            config.reap_every,
        );
        Arc::new(Self { ports, config, liveness, shutting_down: CancellationToken::new() })
    }

    /// Claims and runs commands until `shutdown` fires (nothing is claimed from that moment),
    /// then lets running commands finish for `shutdown_grace`, kills the rest, which end `lost`
    /// (they are never re-run), and gives the replica's presence up.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut running = JoinSet::new();
        let liveness_stop = CancellationToken::new();
        let liveness = tokio::spawn(Arc::clone(&self.liveness).run(liveness_stop.clone()));
        tracing::info!(worker = %self.config.worker_id, concurrency = self.config.concurrency, "queue worker started");
        while !shutdown.is_cancelled() {
            self.fill_slots(&slots, &mut running, &shutdown).await;
            while running.try_join_next().is_some() {}
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.ports.signals.work_arrived() => {}
                () = tokio::time::sleep(self.config.poll_every) => {}
            }
        }
        self.drain(running).await;
        // Presence and leases are kept up through the drain, so no other replica takes the
        // commands that are still finishing for lost.
        liveness_stop.cancel();
        // A task cancelled by the runtime shutting down did not panic; only a panic is an error.
        if let Err(e) = liveness.await {
            if e.is_panic() {
                tracing::error!(error = %e, "the liveness task panicked");
            }
        }
    }

    async fn fill_slots(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        running: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        // Without its presence this replica would look dead to the others, which would declare
        // whatever it claimed lost.
        if !self.liveness.present() {
            return;
        }
        if let Some(breaker) = &self.ports.breaker {
            // Ask the backend before claiming (through the breaker, so this is also the
            // half-open probe): while it is down, commands wait in the queue rather than being
            // claimed. One claimed in the instant before an outage goes back (`hand_back`).
            if slots.available_permits() == 0 || !breaker.admits_work() || self.ports.executor.check().await.is_err() {
                return;
            }
        }
        // Checked before every claim: a drain stops claims at once, not after a round of them.
        while !shutdown.is_cancelled() {
            // Every free slot is taken before the claim and one is handed to each claimed
            // command; the slots nothing was claimed for go back when `slots_taken` drops.
            let free = u32::try_from(slots.available_permits()).unwrap_or(u32::MAX);
            if free == 0 {
                break;
            }
            let Ok(mut slots_taken) = Arc::clone(slots).try_acquire_many_owned(free) else { break };
            let asked = std::time::SystemTime::now();
            let claimed = self
                .ports
                .queue
                .claim_batch(&self.config.worker_id, self.ports.clock.now(), self.config.lease, free as usize)
                .await;
            let claims = match claimed {
                Ok(claims) if claims.is_empty() => break,
                Ok(claims) => claims,
                Err(e) => {
                    metrics::counter!(m::STORE_ERRORS_TOTAL, "operation" => "claim").increment(1);
                    tracing::warn!(error = %e, "claiming commands failed");
                    break;
                }
            };
            for claim in claims {
                trace_context::record_claim(&claim.command, &self.config.worker_id, asked);
                let me = Arc::clone(self);
                // A batch holds at most `free` claims, so each one finds its slot.
                let slot = slots_taken.split(1);
                running.spawn(async move { me.execute(claim, slot).await });
            }
        }
    }

    async fn drain(&self, mut running: JoinSet<()>) {
        self.shutting_down.cancel();
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = running.join_next() => if next.is_none() { break },
                () = &mut grace => {
                    tracing::warn!(left = running.len(), "shutdown grace over: handing back running commands");
                    self.ports.signals.running_tokens().iter().for_each(CancellationToken::cancel);
                    while running.join_next().await.is_some() {}
                    break;
                }
            }
        }
        tracing::info!("queue worker stopped");
    }

    /// Runs a claimed command inside its `command.run` span, which continues the trace of the
    /// request that queued it (on whichever replica that was).
    async fn execute(self: Arc<Self>, claim: Claim, slot: Option<OwnedSemaphorePermit>) {
        let command = &claim.command;
        let span = tracing::info_span!(
            "command.run",
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            command_id = %command.id,
            project = %command.project,
            priority = command.priority.as_str(),
            replica = %self.config.worker_id,
            command.status = tracing::field::Empty,
            command.exit_code = tracing::field::Empty,
            command.termination_reason = tracing::field::Empty,
        );
        trace_context::continue_trace(&span, command.trace.as_ref());
        self.execute_in(claim, slot, span.clone()).instrument(span).await;
    }

    async fn execute_in(self: Arc<Self>, claim: Claim, _slot: Option<OwnedSemaphorePermit>, span: tracing::Span) {
        let Claim { command, fence } = claim;
        let cancel = CancellationToken::new();
        let poke = self.ports.signals.register(command.id, cancel.clone());
        self.ports.signals.command_state_changed(command.id);
        metrics::gauge!(m::COMMANDS_ACTIVE).increment(1.0);
        if let Some(started) = command.started_at {
            let waited = (started - command.queued_at).to_std().unwrap_or_default();
            metrics::histogram!(m::COMMAND_QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
        }
        // The lease is kept from the claim on: anything awaited before the run (the audit
        // append, which may wait behind a replica stopped inside its own append) must not let
        // it run out.
        let lease_lost = CancellationToken::new();
        let renewer = tokio::spawn(Arc::clone(&self).keep_lease(
            command.clone(),
            fence,
            poke,
            cancel.clone(),
            lease_lost.clone(),
        ));
        // Written beside the start rather than before it: the record is on the command's
        // critical path otherwise (about a millisecond on SQLite, more while another write
        // holds the lock). It is awaited before anything else is recorded, so the chain still
        // has the start before the end.
        let start_recorded = self.audit_start(&command);
        let prepared = match self.prepare(&command, &cancel).await {
            Ok(request) => self.confirm_lease(&command, fence, &lease_lost).await.map(|()| request),
            Err(termination) => Err(termination),
        };
        let (termination, output) = match prepared {
            Ok(request) => {
                let sink = StoreSink::new(
                    Arc::clone(&self.ports.queue),
                    Arc::clone(&self.ports.clock),
                    Arc::clone(&self.ports.signals),
                    SinkTarget { command: &command, fence, replica: &self.config.worker_id },
                    self.config.max_output_bytes,
                );
                let exec = tracing::info_span!("command.exec", otel.status_code = tracing::field::Empty);
                let r = self.ports.executor.run(request, &sink, cancel.clone()).instrument(exec.clone()).await;
                if r.termination.completion().status != CommandStatus::Succeeded {
                    exec.record("otel.status_code", "ERROR");
                }
                (r.termination, output_of(r.stdout, r.stderr))
            }
            Err(termination) => (termination, CommandOutput::default()),
        };
        if let Err(e) = start_recorded.await {
            tracing::error!(command_id = %command.id, error = %e, "the audit record of the start failed");
        }
        let handed_back = match &termination {
            Termination::Unreachable(why) if !cancel.is_cancelled() && !lease_lost.is_cancelled() => {
                self.hand_back(&command, fence, why).await
            }
            _ => false,
        };
        let completion = self.completion_for(&termination, &cancel);
        if handed_back {
            span.record("command.status", CommandStatus::Queued.as_str());
        } else {
            record_outcome(&span, &completion);
            if lease_lost.is_cancelled() {
                tracing::warn!(command_id = %command.id, "lease lost while running: result discarded");
            } else {
                self.record_end(&command, fence, &completion, &output).await;
            }
        }
        // Only now: while the result waits for a store that is briefly away (`record_end`
        // retries), the lease must hold, or another replica declares a finished command lost.
        renewer.abort();
        self.ports.signals.unregister(command.id);
        metrics::gauge!(m::COMMANDS_ACTIVE).decrement(1.0);
        self.ports.signals.command_state_changed(command.id);
        self.ports.signals.wake_worker();
    }

    /// A cancel during shutdown is the replica killing the command, not the client's.
    fn completion_for(&self, t: &Termination, cancel: &CancellationToken) -> Completion {
        let completion = t.completion();
        if completion.reason == TerminationReason::Cancelled
            && cancel.is_cancelled()
            && self.shutting_down.is_cancelled()
        {
            return Completion {
                status: CommandStatus::Lost,
                exit_code: None,
                reason: TerminationReason::ReplicaShutdown,
                error: Some(domain::command::REPLICA_SHUT_DOWN.into()),
            };
        }
        completion
    }

    /// Renews the lease right before the command starts: preparing (a pod start, a slow store,
    /// an overloaded replica) may have outlasted it, and a command another replica already
    /// declared lost must never start.
    async fn confirm_lease(
        &self,
        command: &Command,
        fence: i64,
        lease_lost: &CancellationToken,
    ) -> Result<(), Termination> {
        let until = self.ports.clock.now() + TimeDelta::from_std(self.config.lease).unwrap_or(TimeDelta::seconds(20));
        match self.ports.queue.renew_lease(command.id, fence, until).await {
            Ok(status) if status.held => Ok(()),
            Ok(_) => {
                tracing::warn!(command_id = %command.id, "the lease ran out before the command started: not starting it");
                lease_lost.cancel();
                Err(Termination::Cancelled)
            }
            Err(e) => Err(Termination::Unreachable(format!("the store could not confirm the lease: {e}"))),
        }
    }

    /// Puts a command that never started back in the queue, retrying a store that is briefly
    /// away; false when it could not be (its fence is stale, a client cancelled it, the store
    /// stayed away), and it ends as it is.
    async fn hand_back(&self, command: &Command, fence: i64, why: &str) -> bool {
        let mut attempt = 0;
        let handed = loop {
            match self.ports.queue.hand_back(command.id, fence, self.ports.clock.now()).await {
                Err(e) if attempt < HAND_BACK_RETRIES => {
                    attempt += 1;
                    tracing::warn!(command_id = %command.id, error = %e, attempt, "handing the command back failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
                }
                other => break other,
            }
        };
        match handed {
            Ok(true) => {
                metrics::counter!(m::COMMANDS_HANDED_BACK_TOTAL).increment(1);
                tracing::warn!(command_id = %command.id, reason = why, "backend unreachable: command handed back to the queue");
                let mut entry =
                    system_entry(self.ports.clock.now(), "command.hand_back", command, AuditOutcome::Failure, None);
                entry.detail = Some(format!("not started, back in the queue: {why}"));
                self.ports.audit.record(entry).await;
                // Not before the backend is back: this replica's next claim waits for the
                // breaker, and a pause keeps a worker without one from spinning.
                tokio::time::sleep(HAND_BACK_PAUSE).await;
                self.ports.signals.wake_worker();
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(command_id = %command.id, error = %e, "handing the command back failed");
                false
            }
        }
    }

    /// Reads the project, makes sure its pod is ready, and builds the request; the termination
    /// says why the command cannot start.
    async fn prepare(&self, command: &Command, cancel: &CancellationToken) -> Result<ExecRequest, Termination> {
        let project = self.ports.projects.get(&command.project).await.map_err(|e| {
            tracing::error!(command_id = %command.id, error = %e, "could not read the command's project");
            match e {
                // Nothing started: a store that is away (a database restart) hands it back.
                domain::DomainError::Unavailable(_) => {
                    Termination::Unreachable(format!("the project could not be read: {e}"))
                }
                _ => Termination::StartFailed(format!("the project could not be read: {e}")),
            }
        })?;
        let spec = PodSpec::from(&project);
        let ensure =
            tracing::info_span!("pod.ensure", project = %command.project, otel.status_code = tracing::field::Empty);
        tokio::select! {
            ready = self.ensure_pod(&spec).instrument(ensure.clone()) => ready.map_err(|failure| {
                ensure.record("otel.status_code", "ERROR");
                tracing::warn!(command_id = %command.id, reason = %failure.reason(), "pod not ready");
                failure.into_termination()
            })?,
            () = cancel.cancelled() => return Err(Termination::Cancelled),
        }
        Ok(Self::request_for(command, &project, self.config.max_output_bytes))
    }

    /// Starts the project's pod when it is not ready and waits for it.
    async fn ensure_pod(&self, spec: &PodSpec) -> Result<(), PodFailure> {
        let pods = &self.ports.pods;
        let status = pods.status(&spec.project).await.map_err(PodFailure::from)?;
        if status.ready {
            return Ok(());
        }
        tracing::info!(project = %spec.project, phase = status.phase.as_str(), "starting the project's pod");
        pods.start(spec).await.map_err(PodFailure::from)?;
        let status = pods.wait_ready(&spec.project, self.config.pod_ready_timeout).await.map_err(PodFailure::from)?;
        self.ports.pod_events.observed(&spec.project, &status).await;
        if status.ready {
            Ok(())
        } else {
            Err(PodFailure::NotReady(status.reason.unwrap_or_else(|| format!("pod is {}", status.phase.as_str()))))
        }
    }

    fn request_for(command: &Command, project: &domain::project::Project, max_output_bytes: usize) -> ExecRequest {
        ExecRequest {
            command_id: command.id,
            project: command.project.clone(),
            workdir: project.workdir.clone(),
            argv: command.spec.to_argv(),
            env: project.env.merged_with(&command.env),
            cwd: command.cwd.clone().map(String::from),
            stdin: command.stdin.clone().map(CommandStdin::into_bytes),
            timeout: command.timeout.as_duration(),
            max_output_bytes,
        }
    }

    async fn keep_lease(
        self: Arc<Self>,
        command: Command,
        fence: i64,
        poke: Arc<tokio::sync::Notify>,
        cancel: CancellationToken,
        lost: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.config.renew_every);
        tick.tick().await;
        loop {
            // A poke (a cancel request seen by any replica) renews at once, which also reads the
            // cancel flag; otherwise the lease is renewed on the tick.
            tokio::select! {
                _ = tick.tick() => {}
                () = poke.notified() => {}
            }
            let until =
                self.ports.clock.now() + TimeDelta::from_std(self.config.lease).unwrap_or(TimeDelta::seconds(60));
            match self.ports.queue.renew_lease(command.id, fence, until).await {
                Ok(status) if !status.held => {
                    lost.cancel();
                    cancel.cancel();
                    return;
                }
                Ok(status) if status.cancel_requested => cancel.cancel(),
                Ok(_) => {}
                Err(e) => tracing::warn!(command_id = %command.id, error = %e, "lease renewal failed"),
            }
        }
    }

    async fn record_end(&self, command: &Command, fence: i64, completion: &Completion, output: &CommandOutput) {
        let mut attempt = 0;
        loop {
            let now = self.ports.clock.now();
            // The end's record is built from the completion, which is what `finish` stores.
            let ended = Command {
                status: completion.status,
                exit_code: completion.exit_code,
                termination_reason: Some(completion.reason),
                ..command.clone()
            };
            let end = end_entry(now, &ended);
            match self.ports.queue.finish_audited(command.id, fence, completion, output, now, end).await {
                Ok((Some(done), record)) => {
                    metrics::counter!(m::COMMANDS_TOTAL, "status" => done.status.as_str()).increment(1);
                    if done.termination_reason == Some(TerminationReason::ReplicaShutdown) {
                        metrics::counter!(m::COMMANDS_LOST_TOTAL, "cause" => "shutdown").increment(1);
                    }
                    if let (Some(s), Some(f)) = (done.started_at, done.finished_at) {
                        metrics::histogram!(m::COMMAND_DURATION_SECONDS)
                            .record((f - s).to_std().unwrap_or_default().as_secs_f64());
                    }
                    tracing::info!(command_id = %done.id, status = %done.status, exit_code = ?done.exit_code, "command finished");
                    match record {
                        Some(record) => self.ports.audit.appended(&record).await,
                        None => self.audit_end(&done).await,
                    }
                    return;
                }
                Ok((None, _)) => {
                    tracing::warn!(command_id = %command.id, "finish refused: the lease was lost meanwhile");
                    return;
                }
                // The store may be briefly away; the lease still protects the row, so retry
                // for a while rather than lose the result.
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    tracing::warn!(command_id = %command.id, error = %e, attempt, "recording the result failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
                }
                Err(e) => {
                    tracing::error!(command_id = %command.id, error = %e, "result lost: the store stayed unavailable");
                    return;
                }
            }
        }
    }

    /// Records the start in a task of its own; the handle says when it is written.
    fn audit_start(&self, c: &Command) -> tokio::task::JoinHandle<()> {
        let audit = self.ports.audit.clone();
        let entry = system_entry(self.ports.clock.now(), "command.start", c, AuditOutcome::Success, None);
        tokio::spawn(async move { audit.record(entry).await }.in_current_span())
    }

    async fn audit_end(&self, c: &Command) {
        self.ports.audit.record(end_entry(self.ports.clock.now(), c)).await;
    }
}

/// Pauses a worker slot after a hand-back, so an unreachable backend is not retried in a loop.
const HAND_BACK_PAUSE: Duration = Duration::from_secs(1);
/// Hand-backs retried while the store is away (about 4 s in all) before the command ends as it is.
const HAND_BACK_RETRIES: u32 = 5;

/// Why a command's pod could not be made ready.
#[derive(Debug)]
enum PodFailure {
    /// The backend could not be reached (or its breaker is open): nothing started.
    Unreachable(String),
    /// The backend answered, and the pod did not become ready.
    NotReady(String),
}

impl PodFailure {
    fn reason(&self) -> &str {
        match self {
            Self::Unreachable(why) | Self::NotReady(why) => why,
        }
    }

    fn into_termination(self) -> Termination {
        match self {
            Self::Unreachable(why) => Termination::Unreachable(format!("the project's pod cannot be reached: {why}")),
            Self::NotReady(why) => Termination::StartFailed(format!("the project's pod is not ready: {why}")),
        }
    }
}

impl From<domain::DomainError> for PodFailure {
    fn from(e: domain::DomainError) -> Self {
        match e {
            domain::DomainError::Unavailable(_) | domain::DomainError::CircuitOpen { .. } => {
                Self::Unreachable(e.to_string())
            }
            other => Self::NotReady(other.to_string()),
        }
    }
}

/// The audit record of a command's end.
pub(crate) fn end_entry(at: domain::Timestamp, c: &Command) -> AuditEntry {
    let outcome = if c.status == CommandStatus::Succeeded { AuditOutcome::Success } else { AuditOutcome::Failure };
    let detail = format!(
        "status={} exit_code={:?} reason={:?}",
        c.status,
        c.exit_code,
        c.termination_reason.map(|r| r.as_str())
    );
    system_entry(at, "command.end", c, outcome, Some(detail))
}

/// Notes how the command ended on its run span; anything but success marks the span an error.
fn record_outcome(span: &tracing::Span, completion: &Completion) {
    span.record("command.status", completion.status.as_str());
    span.record("command.termination_reason", completion.reason.as_str());
    if let Some(code) = completion.exit_code {
        span.record("command.exit_code", code);
    }
    if completion.status != CommandStatus::Succeeded {
        span.record("otel.status_code", "ERROR");
    }
}

fn output_of(stdout: domain::output::CapturedOutput, stderr: domain::output::CapturedOutput) -> CommandOutput {
    CommandOutput {
        stdout: stdout.text(),
        stderr: stderr.text(),
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
    }
}

fn system_entry(
    at: domain::Timestamp,
    action: &str,
    c: &Command,
    outcome: AuditOutcome,
    detail: Option<String>,
) -> AuditEntry {
    AuditEntry {
        at,
        actor: c.created_by,
        client_ip: None,
        action: action.into(),
        resource: format!("command/{}", c.id),
        project: Some(c.project.to_string()),
        outcome,
        detail,
        request_id: None,
        trace_id: c.trace.as_ref().map(|t| t.trace_id().to_owned()),
        count: 1,
    }
}
