//! `MemoryStore`: every store port over plain collections behind one mutex. It is the
//! reference the contract suites are written against, and the fake services tests use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::api_key::{ApiKey, KeyHash, PreviousSecret, ProjectAccess};
use crate::audit::{seal, AuditCheckpoint, AuditEntry, AuditRecord, GENESIS_HASH};
use crate::command::{dequeue_order, Command, CommandStatus, Completion, NewCommand};
use crate::ids::{ApiKeyId, AuditId, CommandId, WorkerId};
use crate::output::{CommandEvent, CommandOutput, EventKind, OutputStream};
use crate::pagination::{Page, PageRequest};
use crate::ports::*;
use crate::project::{Project, ProjectName};
use crate::rate_limit::{RateLimitPolicy, UnusedGrant, WindowGrant};
use crate::{DomainError, DomainResult, Timestamp};

use super::memory_webhooks::WebhookTables;

#[derive(Debug, Clone)]
struct Row {
    command: Command,
    seq: i64,
    fence: i64,
    lease_until: Option<Timestamp>,
    owner: Option<WorkerId>,
    idempotency: Option<(String, String)>,
    output: CommandOutput,
    events: Vec<CommandEvent>,
}

impl Row {
    fn push_event(&mut self, kind: EventKind, at: Timestamp) {
        let seq = self.events.len() as i64 + 1;
        self.events.push(CommandEvent { seq, kind, at });
    }

    fn end(&mut self, c: &Completion, at: Timestamp) {
        self.command.status = c.status;
        self.command.exit_code = c.exit_code;
        self.command.termination_reason = Some(c.reason);
        self.command.error = c.error.clone();
        self.command.finished_at = Some(at);
        self.lease_until = None;
        self.owner = None;
        self.push_event(EventKind::Status(c.status), at);
        self.push_event(EventKind::Exit, at);
    }
}

#[derive(Debug, Default)]
struct State {
    projects: BTreeMap<ProjectName, Project>,
    keys: BTreeMap<ApiKeyId, ApiKey>,
    commands: BTreeMap<CommandId, Row>,
    next_seq: i64,
    next_fence: i64,
    audit: Vec<AuditRecord>,
    checkpoints: BTreeMap<i64, AuditCheckpoint>,
    windows: HashMap<(String, i64), u64>,
    workers: HashMap<String, (u32, Timestamp)>,
    job_leases: HashMap<String, (WorkerId, Timestamp)>,
    present: HashSet<WorkerId>,
    webhooks: WebhookTables,
}

/// Every store port in memory. Cheap to create; one per test.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the webhook tables under the store's lock.
    pub(super) fn with_webhooks<T>(&self, f: impl FnOnce(&mut WebhookTables) -> T) -> T {
        f(&mut self.lock().webhooks)
    }

    /// Overwrites an audit record behind the log's back, as an attacker with database access
    /// could; for tests of `verify`.
    pub fn tamper_audit(&self, seq: i64, action: &str) {
        if let Some(r) = self.lock().audit.iter_mut().find(|r| r.seq == seq) {
            r.entry.action = action.to_owned();
        }
    }
}

fn not_found(what: &str) -> DomainError {
    DomainError::NotFound(what.to_owned())
}

pub(super) fn page_after<T: Clone>(
    items: impl Iterator<Item = T>,
    page: PageRequest,
    key: impl Fn(&T) -> u128,
) -> Page<T> {
    let after = page.after.map(|c| c.key());
    let fetched: Vec<T> =
        items.filter(|i| after.is_none_or(|a| key(i) > a)).take(page.limit.get() as usize + 1).collect();
    Page::from_overfetch(fetched, page.limit, key)
}

#[async_trait]
impl ProjectRepository for MemoryStore {
    async fn create(&self, project: &Project) -> DomainResult<()> {
        let mut s = self.lock();
        if s.projects.contains_key(&project.name) {
            return Err(DomainError::Conflict(format!("project {} already exists", project.name)));
        }
        s.projects.insert(project.name.clone(), project.clone());
        Ok(())
    }

    async fn get(&self, name: &ProjectName) -> DomainResult<Project> {
        self.lock().projects.get(name).cloned().ok_or_else(|| not_found("project"))
    }

    async fn list(&self, access: &ProjectAccess, page: PageRequest) -> DomainResult<Page<Project>> {
        let s = self.lock();
        let mut all: Vec<Project> = s.projects.values().filter(|p| access.allows(&p.name)).cloned().collect();
        all.sort_by_key(|p| p.id);
        Ok(page_after(all.into_iter(), page, |p| p.id.as_uuid().as_u128()))
    }

    async fn update(&self, project: &Project) -> DomainResult<()> {
        let mut s = self.lock();
        let slot = s.projects.get_mut(&project.name).ok_or_else(|| not_found("project"))?;
        *slot = project.clone();
        Ok(())
    }

    async fn delete(&self, name: &ProjectName) -> DomainResult<()> {
        let mut s = self.lock();
        if !s.projects.contains_key(name) {
            return Err(not_found("project"));
        }
        if s.commands.values().any(|r| &r.command.project == name && !r.command.status.is_terminal()) {
            return Err(DomainError::Conflict("the project has queued or running commands".into()));
        }
        s.commands.retain(|_, r| &r.command.project != name);
        s.projects.remove(name);
        Ok(())
    }
}

#[async_trait]
impl ApiKeyRepository for MemoryStore {
    async fn create(&self, key: &ApiKey) -> DomainResult<()> {
        self.lock().keys.insert(key.id, key.clone());
        Ok(())
    }

    async fn get(&self, id: ApiKeyId) -> DomainResult<ApiKey> {
        self.lock().keys.get(&id).cloned().ok_or_else(|| not_found("API key"))
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> DomainResult<Option<ApiKey>> {
        let s = self.lock();
        Ok(s.keys.values().find(|k| &k.hash == hash || k.previous.is_some_and(|p| &p.hash == hash)).cloned())
    }

    async fn list(&self, page: PageRequest) -> DomainResult<Page<ApiKey>> {
        let s = self.lock();
        Ok(page_after(s.keys.values().cloned(), page, |k| k.id.as_uuid().as_u128()))
    }

    async fn revoke(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<ApiKey> {
        let mut s = self.lock();
        let key = s.keys.get_mut(&id).ok_or_else(|| not_found("API key"))?;
        key.revoked_at.get_or_insert(at);
        Ok(key.clone())
    }

    async fn rotate(
        &self,
        id: ApiKeyId,
        hash: KeyHash,
        prefix: &str,
        previous: Option<PreviousSecret>,
    ) -> DomainResult<ApiKey> {
        let mut s = self.lock();
        let key = s.keys.get_mut(&id).ok_or_else(|| not_found("API key"))?;
        if key.revoked_at.is_some() {
            return Err(DomainError::Conflict("a revoked key cannot be rotated".into()));
        }
        key.hash = hash;
        key.prefix = prefix.to_owned();
        key.previous = previous;
        Ok(key.clone())
    }

    async fn touch(&self, id: ApiKeyId, at: Timestamp) -> DomainResult<()> {
        if let Some(k) = self.lock().keys.get_mut(&id) {
            k.last_used_at = Some(at);
        }
        Ok(())
    }

    async fn count(&self) -> DomainResult<u64> {
        Ok(self.lock().keys.len() as u64)
    }
}

fn ordered_queued(s: &State) -> Vec<&Row> {
    let mut queued: Vec<&Row> = s.commands.values().filter(|r| r.command.status == CommandStatus::Queued).collect();
    queued.sort_by(|a, b| dequeue_order((a.command.priority, a.seq), (b.command.priority, b.seq)));
    queued
}

#[async_trait]
impl CommandRepository for MemoryStore {
    async fn enqueue(&self, new: NewCommand) -> DomainResult<Enqueued> {
        let mut s = self.lock();
        if !s.projects.values().any(|p| p.id == new.project_id) {
            return Err(not_found("project"));
        }
        if let Some(idem) = &new.idempotency {
            let since = new.queued_at - crate::command::Idempotency::RETENTION;
            let earlier = s.commands.values().find(|r| {
                r.command.created_by == new.created_by
                    && r.command.queued_at > since
                    && r.idempotency.as_ref().is_some_and(|(k, _)| k == &idem.key)
            });
            if let Some(row) = earlier {
                let same = row.idempotency.as_ref().is_some_and(|(_, f)| f == &idem.fingerprint);
                return if same {
                    Ok(Enqueued { command: row.command.clone(), replayed: true })
                } else {
                    Err(DomainError::Conflict("Idempotency-Key was used with a different request".into()))
                };
            }
        }
        let queued = s
            .commands
            .values()
            .filter(|r| r.command.project_id == new.project_id && r.command.status == CommandStatus::Queued)
            .count();
        if queued >= new.max_queued as usize {
            return Err(DomainError::QueueFull { limit: new.max_queued });
        }
        s.next_seq += 1;
        let idempotency = new.idempotency.as_ref().map(|i| (i.key.clone(), i.fingerprint.clone()));
        let at = new.queued_at;
        let mut row = Row {
            command: new.into_command(),
            seq: s.next_seq,
            fence: 0,
            lease_until: None,
            owner: None,
            idempotency,
            output: CommandOutput::default(),
            events: Vec::new(),
        };
        row.push_event(EventKind::Status(CommandStatus::Queued), at);
        let command = row.command.clone();
        s.commands.insert(command.id, row);
        s.webhooks.record_command(&command, at);
        Ok(Enqueued { command, replayed: false })
    }

    async fn get(&self, id: CommandId) -> DomainResult<Command> {
        self.lock().commands.get(&id).map(|r| r.command.clone()).ok_or_else(|| not_found("command"))
    }

    async fn list(&self, filter: &CommandFilter, page: PageRequest) -> DomainResult<Page<Command>> {
        let s = self.lock();
        let matching = s.commands.values().map(|r| r.command.clone()).filter(|c| {
            filter.project.as_ref().is_none_or(|p| &c.project == p) && filter.status.is_none_or(|st| c.status == st)
        });
        Ok(page_after(matching, page, |c| c.id.as_uuid().as_u128()))
    }

    async fn request_cancel(&self, id: CommandId, at: Timestamp) -> DomainResult<Command> {
        let mut guard = self.lock();
        let s = &mut *guard;
        let row = s.commands.get_mut(&id).ok_or_else(|| not_found("command"))?;
        match row.command.status {
            CommandStatus::Queued => {
                row.end(&cancelled_before_start(), at);
                s.webhooks.record_command(&row.command, at);
            }
            CommandStatus::Running => row.command.cancel_requested = true,
            _ => return Err(DomainError::Conflict("the command has already ended".into())),
        }
        Ok(row.command.clone())
    }

    async fn queue_position(&self, id: CommandId) -> DomainResult<Option<u64>> {
        let s = self.lock();
        let row = s.commands.get(&id).ok_or_else(|| not_found("command"))?;
        if row.command.status != CommandStatus::Queued {
            return Ok(None);
        }
        Ok(ordered_queued(&s).iter().position(|r| r.command.id == id).map(|p| p as u64 + 1))
    }

    async fn stats(&self, projects: Option<&[ProjectName]>) -> DomainResult<QueueStats> {
        let s = self.lock();
        let count = |st: CommandStatus, p: Option<crate::command::Priority>| {
            s.commands
                .values()
                .filter(|r| r.command.status == st && p.is_none_or(|p| r.command.priority == p))
                .filter(|r| projects.is_none_or(|only| only.contains(&r.command.project)))
                .count() as u64
        };
        let depth =
            crate::command::Priority::ALL.iter().map(|p| (*p, count(CommandStatus::Queued, Some(*p)))).collect();
        Ok(QueueStats { depth, running: count(CommandStatus::Running, None) })
    }

    async fn events_after(&self, id: CommandId, after: i64, limit: u32) -> DomainResult<Vec<CommandEvent>> {
        let s = self.lock();
        let row = s.commands.get(&id).ok_or_else(|| not_found("command"))?;
        Ok(row.events.iter().filter(|e| e.seq > after).take(limit as usize).cloned().collect())
    }

    async fn last_event_seqs(&self, ids: &[CommandId]) -> DomainResult<Vec<(CommandId, i64)>> {
        let s = self.lock();
        Ok(ids.iter().filter_map(|id| s.commands.get(id).and_then(|r| r.events.last()).map(|e| (*id, e.seq))).collect())
    }

    async fn output(&self, id: CommandId) -> DomainResult<CommandOutput> {
        self.lock().commands.get(&id).map(|r| r.output.clone()).ok_or_else(|| not_found("command"))
    }

    async fn purge_finished(&self, before: Timestamp, limit: u32) -> DomainResult<u64> {
        let mut s = self.lock();
        let mut old: Vec<(Timestamp, CommandId)> = s
            .commands
            .values()
            .filter(|r| r.command.status.is_terminal())
            .filter_map(|r| r.command.finished_at.filter(|at| *at < before).map(|at| (at, r.command.id)))
            .collect();
        old.sort();
        old.truncate(limit as usize);
        for (_, id) in &old {
            s.commands.remove(id);
        }
        Ok(old.len() as u64)
    }
}

fn running_in(s: &State, project: &ProjectName) -> u32 {
    s.commands.values().filter(|r| &r.command.project == project && r.command.status == CommandStatus::Running).count()
        as u32
}

#[async_trait]
impl CommandQueue for MemoryStore {
    async fn claim_next(&self, worker: &WorkerId, now: Timestamp, lease: Duration) -> DomainResult<Option<Claim>> {
        let mut s = self.lock();
        let pick = ordered_queued(&s)
            .into_iter()
            .find(|r| {
                let cap = s.projects.get(&r.command.project).map_or(0, |p| p.max_concurrent_commands);
                running_in(&s, &r.command.project) < cap
            })
            .map(|r| r.command.id);
        let Some(id) = pick else { return Ok(None) };
        s.next_fence += 1;
        let fence = s.next_fence;
        let lease = chrono::TimeDelta::from_std(lease).map_err(|e| DomainError::Internal(e.to_string()))?;
        let row = s.commands.get_mut(&id).ok_or_else(|| not_found("command"))?;
        row.command.status = CommandStatus::Running;
        row.command.started_at = Some(now);
        row.fence = fence;
        row.lease_until = Some(now + lease);
        row.owner = Some(worker.clone());
        row.push_event(EventKind::Status(CommandStatus::Running), now);
        let command = row.command.clone();
        s.webhooks.record_command(&command, now);
        Ok(Some(Claim { command, fence }))
    }

    async fn renew_lease(&self, id: CommandId, fence: i64, until: Timestamp) -> DomainResult<LeaseStatus> {
        let mut s = self.lock();
        let row = s.commands.get_mut(&id).ok_or_else(|| not_found("command"))?;
        let held = row.command.status == CommandStatus::Running && row.fence == fence;
        if held {
            row.lease_until = Some(until);
        }
        Ok(LeaseStatus { held, cancel_requested: row.command.cancel_requested })
    }

    async fn append_output(
        &self,
        id: CommandId,
        fence: i64,
        stream: OutputStream,
        data: &str,
        at: Timestamp,
    ) -> DomainResult<bool> {
        let mut s = self.lock();
        let row = s.commands.get_mut(&id).ok_or_else(|| not_found("command"))?;
        if row.command.status != CommandStatus::Running || row.fence != fence {
            return Ok(false);
        }
        row.push_event(EventKind::Output { stream, data: data.to_owned() }, at);
        Ok(true)
    }

    async fn finish(
        &self,
        id: CommandId,
        fence: i64,
        completion: &Completion,
        output: &CommandOutput,
        at: Timestamp,
    ) -> DomainResult<Option<Command>> {
        let mut s = self.lock();
        let row = s.commands.get_mut(&id).ok_or_else(|| not_found("command"))?;
        if row.command.status != CommandStatus::Running || row.fence != fence {
            return Ok(None);
        }
        row.output = output.clone();
        row.end(completion, at);
        let command = row.command.clone();
        s.webhooks.record_command(&command, at);
        Ok(Some(command))
    }

    async fn reap_expired(&self, now: Timestamp) -> DomainResult<Vec<Command>> {
        let mut s = self.lock();
        let lost = Completion::worker_lost(crate::command::LEASE_EXPIRED_LOST);
        let mut reaped = Vec::new();
        for row in s.commands.values_mut() {
            if row.command.status == CommandStatus::Running && row.lease_until.is_some_and(|l| l < now) {
                row.end(&lost, now);
                reaped.push(row.command.clone());
            }
        }
        for command in &reaped {
            s.webhooks.record_command(command, now);
        }
        Ok(reaped)
    }

    async fn hand_back(&self, id: CommandId, fence: i64, at: Timestamp) -> DomainResult<bool> {
        let mut s = self.lock();
        let row = s.commands.get_mut(&id).ok_or_else(|| not_found("command"))?;
        if row.command.status != CommandStatus::Running || row.fence != fence || row.command.cancel_requested {
            return Ok(false);
        }
        row.command.status = CommandStatus::Queued;
        row.command.started_at = None;
        row.lease_until = None;
        row.owner = None;
        row.push_event(EventKind::Status(CommandStatus::Queued), at);
        Ok(true)
    }

    async fn hold_presence(&self, worker: &WorkerId, _now: Timestamp) -> DomainResult<bool> {
        self.lock().present.insert(worker.clone());
        Ok(true)
    }

    async fn release_presence(&self, worker: &WorkerId) -> DomainResult<()> {
        self.lock().present.remove(worker);
        Ok(())
    }

    async fn absent_owners(&self, _now: Timestamp) -> DomainResult<Vec<WorkerId>> {
        let s = self.lock();
        let absent: HashSet<&WorkerId> = s
            .commands
            .values()
            .filter(|r| r.command.status == CommandStatus::Running)
            .filter_map(|r| r.owner.as_ref())
            .filter(|o| !s.present.contains(*o))
            .collect();
        Ok(absent.into_iter().cloned().collect())
    }

    async fn reap_absent(&self, owner: &WorkerId, now: Timestamp) -> DomainResult<Vec<Command>> {
        let mut s = self.lock();
        if s.present.contains(owner) {
            return Ok(Vec::new());
        }
        let mut reaped = Vec::new();
        for row in s.commands.values_mut() {
            if row.command.status == CommandStatus::Running && row.owner.as_ref() == Some(owner) {
                row.end(&Completion::worker_lost(crate::command::ABSENT_OWNER_LOST), now);
                reaped.push(row.command.clone());
            }
        }
        for command in &reaped {
            s.webhooks.record_command(command, now);
        }
        Ok(reaped)
    }

    async fn heartbeat(&self, worker: &WorkerId, capacity: u32, now: Timestamp) -> DomainResult<()> {
        self.lock().workers.insert(worker.as_str().to_owned(), (capacity, now));
        Ok(())
    }

    async fn live_workers(&self, since: Timestamp) -> DomainResult<WorkerCapacity> {
        let s = self.lock();
        let live: Vec<u32> = s.workers.values().filter(|(_, seen)| *seen >= since).map(|(c, _)| *c).collect();
        Ok(WorkerCapacity { replicas: live.len() as u32, capacity: live.iter().sum() })
    }

    async fn try_job_lease(&self, job: &str, owner: &WorkerId, now: Timestamp, until: Timestamp) -> DomainResult<bool> {
        let mut s = self.lock();
        let free = s.job_leases.get(job).is_none_or(|(holder, end)| holder == owner || *end < now);
        if free {
            s.job_leases.insert(job.to_owned(), (owner.clone(), until));
        }
        Ok(free)
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn append(&self, entry: AuditEntry) -> DomainResult<AuditRecord> {
        let mut s = self.lock();
        let (seq, prev) = s.audit.last().map_or((0, GENESIS_HASH), |r| (r.seq, r.hash));
        let record = seal(AuditId::generate(), seq + 1, entry, prev);
        s.audit.push(record.clone());
        Ok(record)
    }

    async fn list(&self, filter: &AuditFilter, page: PageRequest) -> DomainResult<Page<AuditRecord>> {
        let s = self.lock();
        let matching = s.audit.iter().filter(|r| audit_matches(filter, &r.entry)).cloned();
        Ok(page_after(matching, page, |r| r.seq as u128))
    }

    async fn scan(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditRecord>> {
        Ok(self.lock().audit.iter().filter(|r| r.seq > after).take(limit as usize).cloned().collect())
    }

    async fn latest(&self) -> DomainResult<Option<AuditRecord>> {
        Ok(self.lock().audit.last().cloned())
    }

    async fn add_checkpoint(&self, checkpoint: AuditCheckpoint) -> DomainResult<()> {
        self.lock().checkpoints.entry(checkpoint.seq).or_insert(checkpoint);
        Ok(())
    }

    async fn checkpoints(&self, after: i64, limit: u32) -> DomainResult<Vec<AuditCheckpoint>> {
        let s = self.lock();
        Ok(s.checkpoints.range(after.saturating_add(1)..).take(limit as usize).map(|(_, c)| c.clone()).collect())
    }
}

/// Whether an entry passes a filter; the reference semantics of `AuditFilter`.
pub fn audit_matches(f: &AuditFilter, e: &AuditEntry) -> bool {
    f.actor.is_none_or(|a| e.actor == Some(a))
        && f.action.as_ref().is_none_or(|a| &e.action == a)
        && f.project.as_ref().is_none_or(|p| e.project.as_ref() == Some(p))
        && f.since.is_none_or(|t| e.at >= t)
        && f.until.is_none_or(|t| e.at < t)
        && f.outcome.is_none_or(|o| e.outcome == o)
        && f.visible_projects.as_ref().is_none_or(|v| e.project.as_ref().is_some_and(|p| v.contains(p)))
}

#[async_trait]
impl RateLimitStore for MemoryStore {
    async fn take(
        &self,
        key: &str,
        policy: RateLimitPolicy,
        now: Timestamp,
        want: u64,
        unused: Option<UnusedGrant>,
    ) -> DomainResult<WindowGrant> {
        let mut s = self.lock();
        if let Some(unused) = unused {
            if let Some(n) = s.windows.get_mut(&(key.to_owned(), unused.window_start)) {
                *n = n.saturating_sub(unused.count);
            }
        }
        let pos = policy.position(now);
        let previous = s.windows.get(&(key.to_owned(), pos.previous_start)).copied().unwrap_or(0);
        let current = s.windows.get(&(key.to_owned(), pos.current_start)).copied().unwrap_or(0);
        let granted = policy.room(previous, current, pos, want);
        if granted > 0 {
            *s.windows.entry((key.to_owned(), pos.current_start)).or_insert(0) += granted;
        }
        s.windows.retain(|(k, start), _| k != key || *start >= pos.previous_start);
        Ok(WindowGrant { previous, current, granted })
    }
}

#[async_trait]
impl HealthCheck for MemoryStore {
    async fn check(&self) -> DomainResult<()> {
        Ok(())
    }
}
