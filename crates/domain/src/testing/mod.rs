//! Test support (feature `testing`): an in-memory implementation of every store port, a
//! manual clock and one that follows tokio's (paused) time, sample values, and one contract
//! suite per port that every implementation runs.

mod contracts_claims;
mod contracts_commands;
mod contracts_finishes;
mod contracts_store;
pub mod executor;
pub mod fakes;
mod memory;
mod memory_webhooks;
pub mod pods;
pub mod signals;
pub mod webhooks;

use std::sync::Mutex;

use chrono::TimeDelta;

pub use memory::MemoryStore;

use crate::api_key::{ApiKey, ApiKeySecret, ProjectAccess, Scope, ScopeSet};
use crate::command::{CommandSpec, EnvMap, NewCommand, Priority, TimeoutSeconds};
use crate::ids::{ApiKeyId, CommandId, ProjectId};
use crate::network::CidrList;
use crate::ports::{
    ApiKeyRepository, AuditLog, Clock, CommandQueue, CommandRepository, HealthCheck, ProjectRepository, RateLimitStore,
};
use crate::project::{Project, ProjectName, Resources};
use crate::Timestamp;

/// Every store port at once: what the SQLite and Postgres adapters and `MemoryStore` provide.
pub trait Store:
    ProjectRepository
    + ApiKeyRepository
    + CommandRepository
    + CommandQueue
    + AuditLog
    + RateLimitStore
    + HealthCheck
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: ProjectRepository
        + ApiKeyRepository
        + CommandRepository
        + CommandQueue
        + AuditLog
        + RateLimitStore
        + HealthCheck
        + Send
        + Sync
        + 'static
{
}

/// The contract suites, one per store port.
pub mod contracts {
    pub use super::contracts_commands::{command_queue, command_repository};
    pub use super::contracts_store::{api_key_repository, audit_log, project_repository, rate_limit_store};
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    /// A clock at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Mutex::new(start))
    }

    /// A clock at a fixed, whole-microsecond moment.
    pub fn at_fixed_start() -> Self {
        Self::new(fixed_start())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: TimeDelta) {
        let mut t = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A clock that reads tokio's time, for tests on paused time (`#[tokio::test(start_paused =
/// true)]`, `tokio::time::advance`): store timestamps (leases, presence, output) then move
/// exactly with the timers of the code under test and of the fakes, at no wall-clock cost, where
/// a `ManualClock` would stand still while those timers ran, and the system clock would not
/// follow them at all.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock at the wall-clock "now" (so timestamps taken with [`now_micros`] stay
    /// comparable), moving with tokio's time from here on.
    pub fn new() -> Self {
        Self::starting_at(now_micros())
    }

    /// A clock at `start`, moving with tokio's time from here on.
    pub fn starting_at(start: Timestamp) -> Self {
        Self { start, origin: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = TimeDelta::from_std(self.origin.elapsed()).unwrap_or(TimeDelta::MAX);
        crate::to_micros_precision(self.start + elapsed)
    }
}

/// 2026-01-01T00:00:00Z.
pub fn fixed_start() -> Timestamp {
    chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

/// A whole-microsecond "now", so values survive every store's precision unchanged.
pub fn now_micros() -> Timestamp {
    crate::to_micros_precision(chrono::Utc::now())
}

/// A valid project name; panics on an invalid one (tests only).
pub fn project_name(name: &str) -> ProjectName {
    ProjectName::parse(name).unwrap_or_else(|e| panic!("bad test project name {name}: {e}"))
}

/// A project with sensible settings and the given cap.
pub fn sample_project(name: &str, max_concurrent_commands: u32) -> Project {
    let now = now_micros();
    Project {
        id: ProjectId::generate(),
        name: project_name(name),
        image: "alpine:3.20".into(),
        workdir: "/workspace".into(),
        env: EnvMap::default(),
        resources: Resources { cpu: Some("500m".into()), memory: Some("256Mi".into()) },
        max_concurrent_commands,
        default_timeout_seconds: TimeoutSeconds::new(600).unwrap_or_else(|e| panic!("{e}")),
        max_queued_commands: None,
        created_at: now,
        updated_at: now,
    }
}

/// A queued command of `project` with `priority`, created by `by`.
pub fn sample_command(project: &Project, priority: Priority, by: Option<ApiKeyId>) -> NewCommand {
    NewCommand {
        id: CommandId::generate(),
        project_id: project.id,
        project: project.name.clone(),
        spec: CommandSpec::Argv(vec!["echo".into(), "hi".into()]),
        env: EnvMap::default(),
        cwd: None,
        stdin: None,
        timeout: TimeoutSeconds::new(30).unwrap_or_else(|e| panic!("{e}")),
        priority,
        created_by: by,
        idempotency: None,
        queued_at: now_micros(),
        max_queued: 1000,
        trace: None,
    }
}

/// A key with `scopes` and its secret.
pub fn sample_key(name: &str, scopes: &[Scope], projects: ProjectAccess) -> (ApiKey, ApiKeySecret) {
    let mut bytes = [0u8; 32];
    let id = ApiKeyId::generate();
    bytes[..16].copy_from_slice(id.as_uuid().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    let secret = ApiKeySecret::from_random_bytes(bytes);
    let key = ApiKey {
        id,
        name: name.into(),
        prefix: secret.display_prefix(),
        hash: secret.hash(),
        previous: None,
        scopes: ScopeSet::new(scopes.iter().copied()).unwrap_or_else(|e| panic!("{e}")),
        projects,
        allowed_ips: CidrList::default(),
        rate_limit_rps: None,
        expires_at: None,
        created_at: now_micros(),
        revoked_at: None,
        last_used_at: None,
    };
    (key, secret)
}
