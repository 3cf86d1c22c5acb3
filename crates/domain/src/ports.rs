//! The ports: what services need from the outside world. Each method's doc says what every
//! implementation MUST do; `crate::testing` checks exactly those sentences.

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::api_key::{ApiKey, KeyHash, PreviousSecret, ProjectAccess};
use crate::audit::{AuditCheckpoint, AuditEntry, AuditOutcome, AuditRecord};
use crate::command::{Command, CommandStatus, Completion, EnvMap, NewCommand, Priority, Termination};
use crate::ids::{ApiKeyId, CommandId, WorkerId};
use crate::output::{CapturedOutput, CommandEvent, CommandOutput, OutputStream};
use crate::pagination::{Page, PageRequest};
use crate::pod::{PodChange, PodSpec, PodStatus};
use crate::project::{Project, ProjectName};
use crate::rate_limit::{RateDecision, RateLimitPolicy, UnusedGrant, WindowGrant, WindowLease};
use crate::signal::Signal;
use crate::{DomainResult, Timestamp};

/// The current time. Services never read the system clock directly, so tests can move time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in UTC.
    fn now(&self) -> Timestamp;
}

/// Fresh ids. Production uses UUID v7 (time-ordered), so ids sort by creation.
pub trait IdSource: Send + Sync + std::fmt::Debug {
    /// A new unique id.
    fn new_id(&self) -> Uuid;
}

/// Projects by name.
#[async_trait]
pub trait ProjectRepository: Send + Sync {
    /// Stores a new project. MUST return `Conflict` when the name is taken.
    async fn create(&self, project: &Project) -> DomainResult<()>;
    /// MUST return `NotFound` when no project has this name.
    async fn get(&self, name: &ProjectName) -> DomainResult<Project>;
    /// Projects visible through `access`, ordered by id (creation order), paged by id.
    async fn list(&self, access: &ProjectAccess, page: PageRequest) -> DomainResult<Page<Project>>;
    /// Replaces a project's settings. MUST return `NotFound` when it does not exist.
    async fn update(&self, project: &Project) -> DomainResult<()>;
    /// Deletes a project and its finished commands. MUST return `NotFound` when it does not
    /// exist and `Conflict` while any of its commands is queued or running.
    async fn delete(&self, name: &ProjectName) -> DomainResult<()>;
}

/// API keys, found by the hash of their secret.
#[async_trait]
pub trait ApiKeyRepository: Send + Sync {
    /// Stores a new key.
    async fn create(&self, key: &ApiKey) -> DomainResult<()>;
    /// MUST return `NotFound` for an unknown id.
    async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey>;
    /// The key whose current or previous (rotated) hash is `hash`, revoked or not; `None` if none.
    async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>>;
    /// Keys ordered by id, paged by id.
    async fn list(&self, page: PageRequest) -> DomainResult<Page<ApiKey>>;
    /// Sets `revoked_at` (kept if already revoked) and returns the key. MUST return `NotFound`.
    async fn revoke(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<ApiKey>;
    /// Replaces the secret's hash and prefix; `previous` keeps the old hash valid for a while.
    /// MUST return `NotFound` for an unknown id and `Conflict` for a revoked key.
    async fn rotate(
        &self,
        id: ApiKeyId,
        hash: KeyHash,
        prefix: &str,
        previous: Option<PreviousSecret>,
    ) -> DomainResult<ApiKey>;
    /// Records a use. Unknown ids are ignored.
    async fn touch(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<()>;
    /// How many keys exist (the bootstrap key is made only on an empty store).
    async fn count(&self) -> DomainResult<u64>;
}

/// A stored enqueue: the command, and whether it is a replay of an earlier request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The command as stored.
    pub command: Command,
    /// True when an earlier request with the same idempotency key created it.
    pub replayed: bool,
}

/// Which commands to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandFilter {
    /// Only this project's.
    pub project: Option<ProjectName>,
    /// Only in this status.
    pub status: Option<CommandStatus>,
}

/// Queue depth and load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Queued commands per priority, highest first.
    pub depth: Vec<(Priority, u64)>,
    /// Running commands.
    pub running: u64,
}

/// Commands as clients see them.
#[async_trait]
pub trait CommandRepository: Send + Sync {
    /// Stores a queued command with its first event (`Status(Queued)`, seq 1).
    /// With an idempotency key already used by the same `created_by` within 24 h, MUST store
    /// nothing and return the first command with `replayed: true` when the fingerprint matches,
    /// or `Conflict` when it differs. MUST return `NotFound` when the project does not exist.
    async fn enqueue(&self, command: NewCommand) -> DomainResult<Enqueued>;
    /// MUST return `NotFound` for an unknown id.
    async fn get(&self, id: CommandId) -> DomainResult<Command>;
    /// Commands ordered by id (enqueue order), paged by id.
    async fn list(&self, filter: &CommandFilter, page: PageRequest) -> DomainResult<Page<Command>>;
    /// Cancels: a queued command becomes `Cancelled` at once (events `Status(Cancelled)`, `Exit`);
    /// a running one gets `cancel_requested` for its worker to act on. Returns the command.
    /// MUST return `NotFound` for an unknown id and `Conflict` when it already ended.
    async fn request_cancel(&self, id: CommandId, at: Timestamp) -> DomainResult<Command>;
    /// 1-based place in the dequeue order (priority, then enqueue order) while queued, else `None`.
    /// MUST return `NotFound` for an unknown id.
    async fn queue_position(&self, id: CommandId) -> DomainResult<Option<u64>>;
    /// Depth per priority and the running count, over `projects` only when given (a
    /// project-limited caller sees its own projects' figures), over all projects otherwise.
    async fn stats(&self, projects: Option<&[ProjectName]>) -> DomainResult<QueueStats>;
    /// Events with `seq > after`, in order, at most `limit`.
    async fn events_after(&self, id: CommandId, after: i64, limit: u32) -> DomainResult<Vec<CommandEvent>>;
    /// The `seq` of the last event of each of `ids` that exists, in any order; unknown ids are
    /// left out. One round trip for many commands: the event streams' shared safety poll.
    async fn last_event_seqs(&self, ids: &[CommandId]) -> DomainResult<Vec<(CommandId, i64)>>;
    /// The captured output of a command (empty until it ends). MUST return `NotFound` for an unknown id.
    async fn output(&self, id: CommandId) -> DomainResult<CommandOutput>;
    /// Retention: deletes at most `limit` commands that finished before `before`, oldest end
    /// first, with their output and events, and returns how many went. MUST never delete a
    /// queued or running command (nor anything of the audit log).
    async fn purge_finished(&self, before: Timestamp, limit: u32) -> DomainResult<u64>;
}

/// A claimed command and the fence that proves the claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The command, now `Running`.
    pub command: Command,
    /// Rises on every claim in the store; writes with an older fence change nothing.
    pub fence: i64,
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    /// False when the lease was lost (reaped, or another fence): stop and write nothing.
    pub held: bool,
    /// A client asked to cancel the command.
    pub cancel_requested: bool,
}

/// Workers registered recently, for `/v1/queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerCapacity {
    /// Live replicas.
    pub replicas: u32,
    /// Sum of their `CONCURRENT_COMMANDS`.
    pub capacity: u32,
}

/// How long a presence confirmed without a session lasts (stores without sessions, such as
/// SQLite, judge presence by the last confirmation; workers confirm every half second).
pub const PRESENCE_TTL: Duration = Duration::from_secs(3);

/// The queue as workers see it. Commands are never claimed twice and never re-run: a command
/// that started and lost its worker ends `lost`; only one that provably never started (its
/// backend unreachable before the exec) is handed back to the queue.
#[async_trait]
pub trait CommandQueue: Send + Sync {
    /// Claims the queued command with the highest priority, then the earliest enqueue, among
    /// projects running fewer than their `max_concurrent_commands`; marks it `Running` with
    /// `started_at = now`, a lease until `now + lease`, a fresh fence and the event
    /// `Status(Running)`. MUST return `None` when nothing is claimable, and MUST never hand the
    /// same command out twice, even to concurrent callers.
    async fn claim_next(&self, worker: &WorkerId, now: Timestamp, lease: Duration) -> DomainResult<Option<Claim>>;
    /// Claims up to `max` commands under the rules of `claim_next`, in dequeue order: a worker
    /// with `max` free slots fills them in one call. MAY return fewer than are claimable (the
    /// caller asks again while it has room); MUST return none when nothing is claimable. The
    /// default claims one at a time; a store with round trips to save does it in one.
    async fn claim_batch(
        &self,
        worker: &WorkerId,
        now: Timestamp,
        lease: Duration,
        max: usize,
    ) -> DomainResult<Vec<Claim>> {
        let mut claims = Vec::new();
        while claims.len() < max {
            match self.claim_next(worker, now, lease).await {
                Ok(Some(claim)) => claims.push(claim),
                Ok(None) => break,
                // What is claimed already must be run, or it would end lost: the error waits
                // for the next call.
                Err(_) if !claims.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(claims)
    }
    /// Extends the lease to `until` if `fence` still holds it (`held: false` otherwise).
    async fn renew_lease(&self, id: CommandId, fence: i64, until: Timestamp) -> DomainResult<LeaseStatus>;
    /// Appends an output event if `fence` still holds the command; returns whether it did.
    async fn append_output(
        &self,
        id: CommandId,
        fence: i64,
        stream: OutputStream,
        data: &str,
        at: Timestamp,
    ) -> DomainResult<bool>;
    /// Ends a running command: status, exit code, reason, error, output, `finished_at`, and the
    /// events `Status(final)` then `Exit`. MUST change nothing and return `None` when `fence`
    /// no longer holds it (a stale worker's late write). Finishes that race (a worker's slots
    /// ending together; a store MAY write them together) MUST each get the answer they would
    /// get alone: a command ends once, the other finishes of it return `None`.
    async fn finish(
        &self,
        id: CommandId,
        fence: i64,
        completion: &Completion,
        output: &CommandOutput,
        at: Timestamp,
    ) -> DomainResult<Option<Command>>;
    /// `finish`, and `end` (the audit record of that end) appended to the audit log in the
    /// same transaction, where the store holds both: one write on the command's path instead
    /// of two. Returns the finished command and the appended record. A `None` record means the
    /// store appended nothing and the caller records `end` itself (the default, for stores and
    /// decorators that keep them apart). MUST append nothing when `fence` no longer holds.
    async fn finish_audited(
        &self,
        id: CommandId,
        fence: i64,
        completion: &Completion,
        output: &CommandOutput,
        at: Timestamp,
        end: AuditEntry,
    ) -> DomainResult<(Option<Command>, Option<AuditRecord>)> {
        let _ = end;
        Ok((self.finish(id, fence, completion, output, at).await?, None))
    }
    /// Marks every running command whose lease ended before `now` as `Lost` (reason
    /// `worker_lost`, events `Status(Lost)`, `Exit`) and returns them. Never re-queues.
    async fn reap_expired(&self, now: Timestamp) -> DomainResult<Vec<Command>>;
    /// Hands a claimed command that never started back to the queue, at its old place
    /// (priority, then enqueue order): `Queued` again without `started_at`, lease or owner, with
    /// the event `Status(Queued)`. MUST change nothing and return false when `fence` no longer
    /// holds it or a client asked to cancel it (the worker then ends it itself).
    async fn hand_back(&self, id: CommandId, fence: i64, at: Timestamp) -> DomainResult<bool>;
    /// Takes, or confirms, `worker`'s presence: the sign that a live replica stands behind the
    /// commands it owns. It lasts as long as the replica's session with the store (its database
    /// connection) or, where the store has no sessions, as long as it is confirmed at least
    /// every [`PRESENCE_TTL`]. Returns whether it is held now, taken again after a lost session
    /// if need be. A worker claims nothing while it does not hold its presence.
    async fn hold_presence(&self, worker: &WorkerId, now: Timestamp) -> DomainResult<bool>;
    /// Gives `worker`'s presence up at once (a replica that drained, or a test's dead replica).
    async fn release_presence(&self, worker: &WorkerId) -> DomainResult<()>;
    /// Owners of running commands whose presence is not held at `now`: their replica died or
    /// lost its session with the store.
    async fn absent_owners(&self, now: Timestamp) -> DomainResult<Vec<WorkerId>>;
    /// Marks every running command of `owner` as `Lost` (reason `worker_lost`, events
    /// `Status(Lost)`, `Exit`) if its presence is still not held at `now`, and returns them.
    /// MUST change nothing while `owner` holds its presence. Never re-queues.
    async fn reap_absent(&self, owner: &WorkerId, now: Timestamp) -> DomainResult<Vec<Command>>;
    /// Records that `worker` is alive with `capacity` slots.
    async fn heartbeat(&self, worker: &WorkerId, capacity: u32, now: Timestamp) -> DomainResult<()>;
    /// Workers whose last heartbeat is at or after `since`.
    async fn live_workers(&self, since: Timestamp) -> DomainResult<WorkerCapacity>;
    /// Takes or renews the lease of the replica-wide `job` (retention) for `owner` until
    /// `until`, when nobody holds it, its lease ended before `now`, or `owner` holds it already.
    /// Returns whether `owner` holds it now; MUST be true for one owner at a time.
    async fn try_job_lease(&self, job: &str, owner: &WorkerId, now: Timestamp, until: Timestamp) -> DomainResult<bool>;
}

/// Which audit records to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this key's actions.
    pub actor: Option<ApiKeyId>,
    /// Only this action.
    pub action: Option<String>,
    /// Only this project's.
    pub project: Option<String>,
    /// At or after.
    pub since: Option<Timestamp>,
    /// Before.
    pub until: Option<Timestamp>,
    /// Only this outcome.
    pub outcome: Option<AuditOutcome>,
    /// Project visibility of the reader: `Some(list)` returns only records of those projects
    /// (never records without a project); `None` returns every record.
    pub visible_projects: Option<Vec<String>>,
}

/// The append-only, hash-chained audit log.
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends a record chained to the last one (`seq` = last + 1, `prev_hash` = last hash),
    /// atomically even under concurrent appends.
    async fn append(&self, entry: AuditEntry) -> DomainResult<AuditRecord>;
    /// Records matching `filter`, in sequence order, paged by `seq`.
    async fn list(&self, filter: &AuditFilter, page: PageRequest) -> DomainResult<Page<AuditRecord>>;
    /// Records with `seq > after`, in order, at most `limit` (for verification).
    async fn scan(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditRecord>>;
    /// The last record, if any.
    async fn latest(&self) -> DomainResult<Option<AuditRecord>>;
    /// Stores a signed checkpoint; one for a `seq` already checkpointed is ignored (replicas
    /// may race to sign the same state).
    async fn add_checkpoint(&self, checkpoint: AuditCheckpoint) -> DomainResult<()>;
    /// Checkpoints with `seq > after`, in order, at most `limit`.
    async fn checkpoints(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditCheckpoint>>;
}

/// Sliding-window counters, shared by every replica that uses the same store.
#[async_trait]
pub trait RateLimitStore: Send + Sync {
    /// Atomically: first subtracts `unused` from the window it names, then takes up to `want`
    /// requests of `key`'s current window at `now` — as many as `RateLimitPolicy::room`
    /// allows — and counts them. Returns the counts it decided on.
    async fn take(
        &self,
        key: &str,
        policy: RateLimitPolicy,
        now: Timestamp,
        want: u64,
        unused: Option<UnusedGrant>,
    ) -> DomainResult<WindowGrant>;

    /// Decides one request for `key` with `policy` at `now` (see `RateLimitPolicy::decide`) and
    /// counts it when allowed, atomically.
    async fn acquire(&self, key: &str, policy: RateLimitPolicy, now: Timestamp) -> DomainResult<RateDecision> {
        let pos = policy.position(now);
        let grant = self.take(key, policy, now, 1, None).await?;
        if grant.granted == 0 {
            return Ok(RateDecision::refused(&policy, grant.previous, grant.current, pos));
        }
        Ok(WindowLease::new(pos, grant).admit(&policy, pos).unwrap_or_else(|| {
            // A fresh lease of one in its own window always admits; refusing is the safe side.
            RateDecision::refused(&policy, grant.previous, grant.current + 1, pos)
        }))
    }
}

/// Whether the store answers at all (readiness).
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// `Unavailable` when the backend cannot serve.
    async fn check(&self) -> DomainResult<()>;
}

/// What an executor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command (for logs and naming).
    pub command_id: CommandId,
    /// The project whose pod or workspace runs it.
    pub project: ProjectName,
    /// The project's workdir; relative `cwd`s are taken from here.
    pub workdir: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The complete environment of the command (project env merged with the command's).
    pub env: EnvMap,
    /// Working directory, absolute or relative to `workdir`.
    pub cwd: Option<String>,
    /// Bytes for stdin (stdin is closed after them, or at once when `None`).
    pub stdin: Option<Vec<u8>>,
    /// Kill the command after this long.
    pub timeout: Duration,
    /// Per-stream capture cap (head and tail kept).
    pub max_output_bytes: usize,
}

/// How an execution ended and what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    /// How it ended.
    pub termination: Termination,
    /// Captured stdout.
    pub stdout: CapturedOutput,
    /// Captured stderr.
    pub stderr: CapturedOutput,
}

/// Receives output as the command produces it.
#[async_trait]
pub trait OutputSink: Send + Sync {
    /// Called with each chunk, in order per stream.
    async fn emit(&self, stream: OutputStream, data: &[u8]);
    /// Called once when the command has started (spawned, or its exec stream open), before
    /// any output; executors that cannot tell call it never. Sinks that do not care ignore it.
    async fn started(&self) {}
}

/// Runs commands somewhere (local processes, Kubernetes pods).
#[async_trait]
pub trait Executor: Send + Sync {
    /// Runs `request` to the end. MUST stream output to `sink`; MUST kill the whole process tree
    /// (not just the stream) at the timeout → `TimedOut`, or when `cancel` fires → `Cancelled`;
    /// MUST report `StartFailed` when it cannot start (missing cwd, unknown program); MUST never
    /// report an exit code that did not arrive.
    async fn run(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult;
    /// `Unavailable` when the backend cannot run commands now.
    async fn check(&self) -> DomainResult<()>;
}

/// Signals between replicas that share a store (LISTEN/NOTIFY on Postgres, in-process otherwise).
#[async_trait]
pub trait SignalBus: Send + Sync {
    /// Delivers `signal` to every subscription of every replica on the same store, this one
    /// included. Best effort: the store stays the truth, so a lost signal only delays.
    async fn publish(&self, signal: Signal) -> DomainResult<()>;
    /// Every signal published after this call. MUST yield `Signal::Resync` instead of silently
    /// dropping signals (lag, reconnect); the stream ends only when the bus is dropped.
    fn subscribe(&self) -> futures::stream::BoxStream<'static, Signal>;
}

/// Development pods, one per project (Kubernetes pods, or local workspaces).
#[async_trait]
pub trait PodManager: Send + Sync {
    /// The pod's current state; `PodStatus::stopped()` when there is none.
    async fn status(&self, project: &ProjectName) -> DomainResult<PodStatus>;
    /// Creates the pod from `spec` unless one exists (idempotent) and returns its state at once
    /// (usually `pending`). `Unavailable` when the backend cannot be reached.
    async fn start(&self, spec: &PodSpec) -> DomainResult<PodStatus>;
    /// Waits until the pod is ready, `failed`, or `timeout` passed; returns the last state seen.
    async fn wait_ready(&self, project: &ProjectName, timeout: Duration) -> DomainResult<PodStatus>;
    /// Deletes the pod if there is one (idempotent); returns `stopping` or `stopped`.
    async fn stop(&self, project: &ProjectName) -> DomainResult<PodStatus>;
    /// The last `tail` lines of the pod's log (empty when there is no pod).
    async fn logs(&self, project: &ProjectName, tail: u32) -> DomainResult<Vec<String>>;
}

/// Where a [`PodWatch`] reports the changes it sees.
#[async_trait]
pub trait PodChangeSink: Send + Sync {
    /// Takes one change (announces it). `Err` means it was not taken: the watch MUST offer the
    /// change again later rather than count it as reported.
    async fn changed(&self, change: &PodChange) -> DomainResult<()>;
}

/// Follows every pod rdev-api manages, cluster-wide, on one replica at a time: the one that
/// holds the cluster-wide lease. Every implementation MUST:
///
/// - report to the sink only while it holds the lease, and stop reporting before the lease
///   can have run out for the other replicas (so two leaders never report in one lease term);
/// - report a pod only when it enters a state that is an event (ready, failed, stopped; see
///   [`crate::webhook::pod_event_type`]), once per [`PodChange::occurrence`]: not again on a
///   re-list (a watch that expired), a repeated event or an unrelated update of the pod;
/// - report `failed` with the pod's or the container's reason (`Evicted`, `OOMKilled`, …) for
///   failures nobody asked for (an OOM kill of a container that restarts counts), and
///   `stopped` for a pod that is gone, including one that went while no replica led;
/// - on taking the lease over, report what the previous leader had not reported; it MAY
///   repeat a change the previous leader reported in its last moments, with the same
///   `occurrence`, so the sink can recognise it;
/// - keep retrying with backoff, never spinning, while the cluster API cannot be reached.
#[async_trait]
pub trait PodWatch: Send + Sync {
    /// Campaigns for the lease as `holder` and, while holding it, reports each change to
    /// `sink`, until `cancel` fires; then stops reporting, gives the lease up so that another
    /// replica can lead at once, and returns.
    async fn run(&self, holder: &WorkerId, sink: &dyn PodChangeSink, cancel: CancellationToken);
}

/// The completion a queued command gets when it is cancelled before it ran.
pub fn cancelled_before_start() -> Completion {
    Termination::Cancelled.completion()
}

/// Shared handles are repositories too, so decorators can wrap `Arc<dyn ApiKeyRepository>`.
#[async_trait]
impl<T: ApiKeyRepository + ?Sized> ApiKeyRepository for std::sync::Arc<T> {
    async fn create(&self, key: &ApiKey) -> DomainResult<()> {
        (**self).create(key).await
    }
    async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey> {
        (**self).get(id).await
    }
    async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>> {
        (**self).find_by_hash(hash).await
    }
    async fn list(&self, page: PageRequest) -> DomainResult<Page<ApiKey>> {
        (**self).list(page).await
    }
    async fn revoke(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<ApiKey> {
        (**self).revoke(id, at).await
    }
    async fn rotate(
        &self,
        id: ApiKeyId,
        hash: KeyHash,
        prefix: &str,
        previous: Option<PreviousSecret>,
    ) -> DomainResult<ApiKey> {
        (**self).rotate(id, hash, prefix, previous).await
    }
    async fn touch(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<()> {
        (**self).touch(id, at).await
    }
    async fn count(&self) -> DomainResult<u64> {
        (**self).count().await
    }
}
