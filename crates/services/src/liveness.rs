//! `Liveness`: keeps this replica's presence in the store and settles the commands of replicas
//! that are gone. A replica that dies (or loses its session with the store) is absent at once;
//! its commands end `lost` once it has stayed absent for a short grace, which rides out a
//! database restart that every replica reconnects from. A replica that is alive but silent
//! (stopped, cut off) keeps its session, so its commands end `lost` when their leases run out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::command::{Command, CommandStatus};
use domain::ids::WorkerId;
use domain::ports::{Clock, CommandQueue};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditService;
use crate::metrics as m;
use crate::signalling::Signals;

/// How often presence is confirmed (well inside `domain::ports::PRESENCE_TTL`) and absent
/// owners are looked for, so that a death is seen within half a second and reported within
/// `ABSENCE_GRACE` plus one tick more.
pub const PRESENCE_EVERY: Duration = Duration::from_millis(500);
/// How long an owner must stay absent before its commands are lost: long enough for a replica
/// to take its presence again after a database restart, short enough to report a death
/// within 5 s.
pub const ABSENCE_GRACE: Duration = Duration::from_secs(2);

/// Why a command was found lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostCause {
    /// Its replica's session with the store ended.
    Session,
    /// Its lease ran out.
    Lease,
}

impl LostCause {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Lease => "lease",
        }
    }
}

/// Presence, heartbeats and the reaping of other replicas' lost commands.
#[expect(missing_debug_implementations, reason = "holds trait objects that have no Debug")]
pub struct Liveness {
    queue: Arc<dyn CommandQueue>,
    clock: Arc<dyn Clock>,
    signals: Arc<Signals>,
    audit: AuditService,
    me: WorkerId,
    capacity: u32,
    reap_every: Duration,
    present: AtomicBool,
}

impl Liveness {
    /// Liveness of replica `me` with `capacity` slots; expired leases are looked for every `reap_every`.
    pub fn new(
        queue: Arc<dyn CommandQueue>,
        clock: Arc<dyn Clock>,
        signals: Arc<Signals>,
        audit: AuditService,
        me: WorkerId,
        capacity: u32,
        reap_every: Duration,
    ) -> Arc<Self> {
        Arc::new(Self { queue, clock, signals, audit, me, capacity, reap_every, present: AtomicBool::new(false) })
    }

    /// Whether this replica held its presence at the last look; it claims nothing otherwise.
    pub fn present(&self) -> bool {
        self.present.load(Ordering::Acquire)
    }

    /// Confirms presence, heartbeats and reaps until `stop` fires, then gives the presence up.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(PRESENCE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut absent_since: HashMap<WorkerId, Instant> = HashMap::new();
        let mut last_reap = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.confirm().await;
            self.settle_absent(&mut absent_since).await;
            if last_reap.elapsed() >= self.reap_every {
                last_reap = Instant::now();
                self.settle_expired().await;
            }
        }
        self.present.store(false, Ordering::Release);
        if let Err(e) = self.queue.release_presence(&self.me).await {
            tracing::warn!(error = %e, "giving the presence up failed; it ends with the session");
        }
    }

    async fn confirm(&self) {
        let now = self.clock.now();
        let held = match self.queue.hold_presence(&self.me, now).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "confirming this replica's presence failed");
                false
            }
        };
        if self.present.swap(held, Ordering::AcqRel) != held {
            if held {
                tracing::info!(worker = %self.me, "presence held: claiming commands");
            } else {
                tracing::warn!(worker = %self.me, "presence not held: claiming nothing until it is");
            }
        }
        if let Err(e) = self.queue.heartbeat(&self.me, self.capacity, now).await {
            tracing::warn!(error = %e, "worker heartbeat failed");
        }
    }

    /// Owners absent for `ABSENCE_GRACE` lose their commands; owners seen again are forgotten.
    async fn settle_absent(&self, absent_since: &mut HashMap<WorkerId, Instant>) {
        let absent = match self.queue.absent_owners(self.clock.now()).await {
            Ok(absent) => absent,
            Err(e) => {
                tracing::warn!(error = %e, "looking for absent replicas failed");
                return;
            }
        };
        absent_since.retain(|owner, _| absent.contains(owner));
        for owner in absent {
            let since = *absent_since.entry(owner.clone()).or_insert_with(Instant::now);
            if since.elapsed() < ABSENCE_GRACE {
                continue;
            }
            match self.queue.reap_absent(&owner, self.clock.now()).await {
                Ok(lost) => {
                    if !lost.is_empty() {
                        tracing::warn!(owner = %owner, commands = lost.len(), "replica gone: its commands are lost");
                    }
                    self.report(lost, LostCause::Session).await;
                    absent_since.remove(&owner);
                }
                Err(e) => tracing::warn!(owner = %owner, error = %e, "reaping an absent replica's commands failed"),
            }
        }
    }

    async fn settle_expired(&self) {
        match self.queue.reap_expired(self.clock.now()).await {
            Ok(lost) => self.report(lost, LostCause::Lease).await,
            Err(e) => tracing::warn!(error = %e, "reaping expired leases failed"),
        }
    }

    async fn report(&self, lost: Vec<Command>, cause: LostCause) {
        for command in lost {
            metrics::counter!(m::COMMANDS_LOST_TOTAL, "cause" => cause.as_str()).increment(1);
            metrics::counter!(m::COMMANDS_TOTAL, "status" => CommandStatus::Lost.as_str()).increment(1);
            tracing::warn!(command_id = %command.id, project = %command.project, cause = cause.as_str(), "command lost");
            // Recorded aside: an audit append may wait on a lock another (stopped) replica holds,
            // and the loop must go on confirming presence and reaping meanwhile.
            let (audit, entry) = (self.audit.clone(), crate::worker::end_entry(self.clock.now(), &command));
            tokio::spawn(async move { audit.record(entry).await });
            self.signals.command_state_changed(command.id);
        }
    }
}
