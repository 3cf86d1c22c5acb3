//! The retention job: deletes finished commands (with their output and events) after
//! `COMMAND_RETENTION`, and webhook deliveries (with their attempts) after `WEBHOOK_RETENTION`,
//! so storage stays bounded. It never touches queued or running commands, nor the audit log.
//! Replicas take turns through a job lease in the store, so one replica at a time runs it.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;
use domain::ids::WorkerId;
use domain::ports::{Clock, CommandQueue, CommandRepository};
use domain::webhook::DeliveryQueue;
use domain::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::metrics::RETENTION_DELETED_TOTAL;

/// The job's name in the store's job leases.
const JOB: &str = "retention";

/// How long data is kept and how often the job looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Finished commands older than this (by `finished_at`) go.
    pub commands: Duration,
    /// Webhook deliveries older than this (by creation) go.
    pub webhooks: Duration,
    /// Pause between passes.
    pub every: Duration,
    /// Commands deleted per statement, so one pass never holds a long transaction.
    pub batch: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let thirty_days = Duration::from_secs(30 * 24 * 3600);
        Self { commands: thirty_days, webhooks: thirty_days, every: Duration::from_secs(3600), batch: 500 }
    }
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    /// Finished commands (with output and events).
    pub commands: u64,
    /// Webhook deliveries (with attempts).
    pub webhook_deliveries: u64,
}

/// The ports the job needs.
#[expect(missing_debug_implementations, reason = "trait objects without Debug")]
pub struct RetentionPorts {
    /// Where finished commands are deleted.
    pub commands: Arc<dyn CommandRepository>,
    /// Where the job lease is held.
    pub queue: Arc<dyn CommandQueue>,
    /// Where old deliveries are deleted.
    pub deliveries: Arc<dyn DeliveryQueue>,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

/// Runs retention passes on whichever replica holds the job lease.
pub struct RetentionJob {
    ports: RetentionPorts,
    owner: WorkerId,
    config: RetentionConfig,
}

impl std::fmt::Debug for RetentionJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetentionJob").field("owner", &self.owner).field("config", &self.config).finish_non_exhaustive()
    }
}

fn ago(now: Timestamp, age: Duration) -> Timestamp {
    TimeDelta::from_std(age)
        .ok()
        .and_then(|age| now.checked_sub_signed(age))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

impl RetentionJob {
    /// A job for replica `owner`.
    pub fn new(ports: RetentionPorts, owner: WorkerId, config: RetentionConfig) -> Self {
        Self { ports, owner, config }
    }

    /// Runs a pass at once and then every `every`, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            self.run_once().await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.config.every) => {}
            }
        }
    }

    /// One pass; `None` when another replica holds the job (or the store could not say).
    pub async fn run_once(&self) -> Option<Purged> {
        let now = self.ports.clock.now();
        // The lease outlasts the pause between passes, so the replica that has the job keeps it
        // while it lives, and another takes over within two pauses once it is gone.
        let until = now + TimeDelta::from_std(self.config.every * 2).unwrap_or(TimeDelta::hours(2));
        match self.ports.queue.try_job_lease(JOB, &self.owner, now, until).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "retention: could not take the job lease; trying again later");
                return None;
            }
        }
        let purged = Purged {
            commands: self.purge_commands(ago(now, self.config.commands)).await,
            webhook_deliveries: self.purge_deliveries(ago(now, self.config.webhooks)).await,
        };
        if purged != Purged::default() {
            tracing::info!(
                commands = purged.commands,
                webhook_deliveries = purged.webhook_deliveries,
                "retention pass"
            );
        }
        Some(purged)
    }

    async fn purge_commands(&self, before: Timestamp) -> u64 {
        let mut total = 0;
        loop {
            match self.ports.commands.purge_finished(before, self.config.batch).await {
                Ok(n) => {
                    metrics::counter!(RETENTION_DELETED_TOTAL, "kind" => "commands").increment(n);
                    total += n;
                    if n < u64::from(self.config.batch) {
                        return total;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: deleting old commands failed; the next pass goes on");
                    return total;
                }
            }
        }
    }

    async fn purge_deliveries(&self, before: Timestamp) -> u64 {
        match self.ports.deliveries.purge(before).await {
            Ok(n) => {
                metrics::counter!(RETENTION_DELETED_TOTAL, "kind" => "webhook_deliveries").increment(n);
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention: deleting old webhook deliveries failed; the next pass goes on");
                0
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use domain::command::Priority;
    use domain::ports::ProjectRepository;
    use domain::testing::{now_micros, sample_command, sample_project, ManualClock, MemoryStore};

    use super::*;

    fn job(store: &Arc<MemoryStore>, clock: &Arc<ManualClock>, owner: &str) -> RetentionJob {
        let ports = RetentionPorts {
            commands: store.clone(),
            queue: store.clone(),
            deliveries: store.clone(),
            clock: clock.clone(),
        };
        let config = RetentionConfig { commands: Duration::from_secs(60), batch: 2, ..RetentionConfig::default() };
        RetentionJob::new(ports, WorkerId::new(owner), config)
    }

    #[tokio::test]
    async fn old_finished_commands_go_in_batches_on_one_replica_at_a_time() {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_fixed_start());
        let p = sample_project("web", 1);
        ProjectRepository::create(store.as_ref(), &p).await.expect("project");
        for _ in 0..5 {
            let id = store.enqueue(sample_command(&p, Priority::Normal, None)).await.expect("enqueue").command.id;
            store.request_cancel(id, now_micros()).await.expect("cancel");
        }
        let queued = store.enqueue(sample_command(&p, Priority::Normal, None)).await.expect("enqueue").command.id;
        let (a, b) = (job(&store, &clock, "a"), job(&store, &clock, "b"));
        clock.advance(now_micros() - clock.now() + TimeDelta::seconds(61));
        assert_eq!(b.run_once().await.map(|p| p.commands), Some(5), "batches until none is left");
        assert_eq!(a.run_once().await, None, "b holds the job");
        assert!(CommandRepository::get(store.as_ref(), queued).await.is_ok(), "a queued command stays");
    }
}
