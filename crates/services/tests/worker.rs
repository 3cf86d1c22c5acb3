//! The queue worker on its own: the memory store and fakes of the executor, the pods and the
//! webhook sender, so death, drain and outages can be staged exactly and quickly.
//!
//! Every test runs on paused tokio time (`start_paused`) with a [`TokioClock`]: store leases and
//! presence, the worker's renewals and reaps, the breaker and the fakes' simulated durations all
//! move on one virtual clock, which advances only when every task is waiting. So a test that
//! spans a minute of the worker's life is deterministic and takes milliseconds, and waiting is
//! always for a condition, bounded in virtual time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::command::{
    CommandSpec, CommandStatus, Completion, Priority, Termination, TerminationReason, TimeoutSeconds,
    ABSENT_OWNER_LOST, LEASE_EXPIRED_LOST, REPLICA_SHUT_DOWN,
};
use domain::ids::{CommandId, WorkerId};
use domain::output::EventKind;
use domain::output::{CommandOutput, OutputStream};
use domain::ports::{
    Claim, Clock, CommandQueue, CommandRepository, LeaseStatus, PodManager, ProjectRepository, WorkerCapacity,
};
use domain::project::Project;
use domain::testing::fakes::{FakeExecutor, FakePods, FakeSender};
use domain::testing::{sample_command, sample_project, MemoryStore, TokioClock};
use domain::{DomainError, DomainResult, Timestamp};
use services::audit::AuditService;
use services::breaker::{BreakerConfig, BreakerPods, CircuitBreaker};
use services::pods::PodEvents;
use services::signalling::Signals;
use services::webhooks::WebhookService;
use services::worker::{QueueWorker, WorkerConfig, WorkerPorts};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One replica: its worker and the fakes it drives.
struct Replica {
    worker: Arc<QueueWorker>,
    executor: Arc<FakeExecutor>,
}

fn replica(
    store: &Arc<MemoryStore>,
    clock: TokioClock,
    name: &str,
    grace: Duration,
    pods: Arc<dyn PodManager>,
) -> Replica {
    replica_with(store, clock, name, grace, pods, None)
}

fn replica_with(
    store: &Arc<MemoryStore>,
    clock: TokioClock,
    name: &str,
    grace: Duration,
    pods: Arc<dyn PodManager>,
    breaker: Option<Arc<CircuitBreaker>>,
) -> Replica {
    build(store, store.clone(), clock, name, pods, breaker, |config| config.shutdown_grace = grace)
}

/// A replica over `store`, whose queue port is `queue` (the store itself, or a decorator of it).
/// Every replica of a test shares one `clock`, as replicas share the wall clock.
fn build(
    store: &Arc<MemoryStore>,
    queue: Arc<dyn CommandQueue>,
    clock: TokioClock,
    name: &str,
    pods: Arc<dyn PodManager>,
    breaker: Option<Arc<CircuitBreaker>>,
    tune: impl FnOnce(&mut WorkerConfig),
) -> Replica {
    let clock = Arc::new(clock);
    let executor = Arc::new(FakeExecutor::new());
    let webhooks = Arc::new(WebhookService::new(
        store.clone(),
        store.clone(),
        Arc::new(FakeSender::new()),
        clock.clone(),
        Arc::new(Signals::default()),
    ));
    let ports = WorkerPorts {
        queue,
        projects: store.clone(),
        executor: executor.clone(),
        pods,
        pod_events: PodEvents::new(webhooks),
        breaker,
        audit: AuditService::new(store.clone()),
        signals: Arc::new(Signals::default()),
        clock,
    };
    let mut config = WorkerConfig::new(WorkerId::new(name), 4);
    config.poll_every = Duration::from_millis(20);
    config.renew_every = Duration::from_millis(50);
    tune(&mut config);
    Replica { worker: QueueWorker::new(ports, config), executor }
}

/// A fresh store holding one project, and the clock every replica of the test shares.
async fn world() -> (Arc<MemoryStore>, TokioClock, Project) {
    let store = Arc::new(MemoryStore::new());
    let web = sample_project("web", 10);
    ProjectRepository::create(store.as_ref(), &web).await.unwrap();
    (store, TokioClock::new(), web)
}

async fn enqueue(store: &MemoryStore, project: &Project, argv: &[&str]) -> CommandId {
    enqueue_with_timeout(store, project, argv, 30).await
}

async fn enqueue_with_timeout(store: &MemoryStore, project: &Project, argv: &[&str], seconds: u32) -> CommandId {
    let mut new = sample_command(project, Priority::Normal, None);
    new.spec = CommandSpec::Argv(argv.iter().map(|a| (*a).to_owned()).collect());
    new.timeout = TimeoutSeconds::new(seconds).unwrap();
    CommandRepository::enqueue(store, new).await.unwrap().command.id
}

async fn status(store: &MemoryStore, id: CommandId) -> CommandStatus {
    CommandRepository::get(store, id).await.unwrap().status
}

async fn event_kinds(store: &MemoryStore, id: CommandId) -> Vec<EventKind> {
    CommandRepository::events_after(store, id, 0, 100).await.unwrap().into_iter().map(|e| e.kind).collect()
}

/// How many times the command's events say it ended (exactly once, whatever happened).
async fn ends(store: &MemoryStore, id: CommandId) -> usize {
    event_kinds(store, id).await.iter().filter(|k| **k == EventKind::Exit).count()
}

/// Lets `by` of virtual time pass: every timer due meanwhile fires, in order, and every task
/// runs until it waits again, at no wall-clock cost. On its own it only serves to show that
/// something does *not* happen within `by`.
async fn pass(by: Duration) {
    tokio::time::sleep(by).await;
}

/// Virtual time between two looks at a condition: small next to every period the worker has.
const STEP: Duration = Duration::from_millis(10);

/// Waits until `condition` holds, at most `limit` of virtual time; returns how long it took.
async fn until<F, Fut>(what: &str, limit: Duration, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        pass(STEP).await;
    }
    start.elapsed()
}

/// Waits (at most `limit`) until the command is in `want`; returns how long that took.
async fn until_status(store: &MemoryStore, id: CommandId, want: CommandStatus, limit: Duration) -> Duration {
    until(&format!("{id} in {want}"), limit, || async { status(store, id).await == want }).await
}

/// Waits (at most `limit`) until the command is running in `executor`, not merely claimed.
async fn until_started(executor: &FakeExecutor, id: CommandId, limit: Duration) {
    until(&format!("{id} started"), limit, || async { executor.started().contains(&id) }).await;
}

/// Runs one replica over `store` until `body` is done.
async fn with_replica<F: Future<Output = ()>>(replica: &Replica, body: F) {
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&replica.worker).run(stop.clone()));
    body.await;
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dead_replicas_command_is_lost_within_seconds_and_never_runs_again() {
    let (store, clock, web) = world().await;
    // The doomed replica reaches the store through a link that can be cut: once cut, nothing it
    // does (renewals, presence, a finish) reaches the store again, as after a kill -9.
    let link = Scripted::over(&store, clock);
    let doomed = build(&store, link.clone(), clock, "doomed", Arc::new(FakePods::new()), None, |config| {
        config.shutdown_grace = Duration::from_secs(25);
    });
    tokio::spawn(Arc::clone(&doomed.worker).run(CancellationToken::new()));
    let id = enqueue(&store, &web, &["sleep-ms", "60000"]).await;
    until_status(&store, id, CommandStatus::Running, Duration::from_secs(5)).await;
    until_started(&doomed.executor, id, Duration::from_secs(5)).await;

    let survivor = replica(&store, clock, "survivor", Duration::from_secs(25), Arc::new(FakePods::new()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&survivor.worker).run(stop.clone()));
    // kill -9: the replica is silent from now on, and the store sees its session end.
    link.severed.store(true, Ordering::SeqCst);
    let died = Instant::now();
    CommandQueue::release_presence(store.as_ref(), &WorkerId::new("doomed")).await.unwrap();
    until_status(&store, id, CommandStatus::Lost, Duration::from_secs(5)).await;
    let detected = died.elapsed();
    assert!(detected >= Duration::from_secs(2), "the absence grace rides out a restart: {detected:?}");
    let lost = CommandRepository::get(store.as_ref(), id).await.unwrap();
    assert_eq!(lost.termination_reason, Some(TerminationReason::WorkerLost));
    assert_eq!(lost.error.as_deref(), Some(ABSENT_OWNER_LOST));

    pass(Duration::from_millis(300)).await;
    assert!(survivor.executor.started().is_empty(), "a lost command is never run again");
    assert_eq!(doomed.executor.started(), vec![id]);
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_drain_claims_nothing_more_lets_quick_commands_finish_and_ends_the_rest_lost() {
    let (store, clock, web) = world().await;
    let replica = replica(&store, clock, "draining", Duration::from_millis(800), Arc::new(FakePods::new()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&replica.worker).run(stop.clone()));
    let quick = enqueue(&store, &web, &["sleep-ms", "300"]).await;
    let slow = enqueue(&store, &web, &["sleep-ms", "60000"]).await;
    for id in [quick, slow] {
        until_status(&store, id, CommandStatus::Running, Duration::from_secs(5)).await;
    }
    stop.cancel();
    let drain_started = Instant::now();
    let late = enqueue(&store, &web, &["echo"]).await;
    tokio::time::timeout(Duration::from_secs(10), running).await.expect("the drain ends").unwrap();
    let took = drain_started.elapsed();
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(5), "grace then stop: {took:?}");

    assert_eq!(status(&store, quick).await, CommandStatus::Succeeded, "finished within the grace");
    let killed = CommandRepository::get(store.as_ref(), slow).await.unwrap();
    assert_eq!(
        (killed.status, killed.termination_reason, killed.error.as_deref()),
        (CommandStatus::Lost, Some(TerminationReason::ReplicaShutdown), Some(REPLICA_SHUT_DOWN))
    );
    assert_eq!(status(&store, late).await, CommandStatus::Queued, "nothing claimed once the drain began");
    assert!(!replica.executor.started().contains(&late));
    let others = CommandQueue::absent_owners(store.as_ref(), clock.now()).await.unwrap();
    assert!(others.is_empty(), "nothing of the drained replica is left running: {others:?}");
}

#[tokio::test(start_paused = true)]
async fn an_outage_hands_claimed_commands_back_and_they_run_once_the_backend_returns() {
    let (store, clock, web) = world().await;
    let pods = FakePods::new();
    pods.set_unreachable(true);
    let breaker = CircuitBreaker::new(
        "kubernetes-test",
        BreakerConfig { open_for: Duration::from_secs(2), min_calls: 2, ..BreakerConfig::default() },
    );
    let guarded = Arc::new(BreakerPods::new(pods.clone(), Arc::clone(&breaker)));
    let replica = replica_with(&store, clock, "outage", Duration::from_secs(5), guarded, Some(breaker.clone()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&replica.worker).run(stop.clone()));
    let id = enqueue(&store, &web, &["echo"]).await;

    // Claimed, found unreachable, handed back: queued again without running, until the
    // breaker opens and nothing is claimed at all.
    until("the breaker opens after the failed starts", Duration::from_secs(10), || async { !breaker.admits_work() })
        .await;
    until_status(&store, id, CommandStatus::Queued, Duration::from_secs(3)).await;
    let kinds = event_kinds(&store, id).await;
    assert!(kinds.contains(&EventKind::Status(CommandStatus::Running)), "it was claimed: {kinds:?}");
    assert!(!kinds.contains(&EventKind::Exit), "it never ended: {kinds:?}");
    assert!(replica.executor.started().is_empty(), "nothing started while the backend was away");

    pods.set_unreachable(false);
    until_status(&store, id, CommandStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(replica.executor.started(), vec![id], "run exactly once, once the backend was back");
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn pods_behind_an_open_breaker_hand_the_command_back_rather_than_fail_it() {
    let (store, clock, web) = world().await;
    // The pods' breaker is open (it guards another path, so this worker does not wait for it
    // before claiming): the claimed command meets `CircuitOpen` at its pod, which is not the
    // command's fault.
    let pods = FakePods::new();
    pods.set_circuit_open(true);
    let r = replica(&store, clock, "behind-breaker", Duration::from_secs(5), Arc::new(pods.clone()));
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["echo"]).await;
        until("claimed, then handed back", Duration::from_secs(5), || async {
            let kinds = event_kinds(&store, id).await;
            kinds.contains(&EventKind::Status(CommandStatus::Running))
                && status(&store, id).await == CommandStatus::Queued
        })
        .await;
        // However often it is tried while the breaker stays open, it is never failed.
        pass(Duration::from_secs(5)).await;
        let kinds = event_kinds(&store, id).await;
        assert!(!kinds.contains(&EventKind::Exit), "handed back, never ended: {kinds:?}");
        let claims = kinds.iter().filter(|k| **k == EventKind::Status(CommandStatus::Running)).count();
        assert!(claims >= 2, "claimed again after each hand-back: {kinds:?}");
        assert!(r.executor.started().is_empty(), "nothing started behind the open breaker");

        pods.set_circuit_open(false);
        until_status(&store, id, CommandStatus::Succeeded, Duration::from_secs(10)).await;
        assert_eq!(r.executor.started(), vec![id], "run exactly once, once the breaker closed");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn cancels_timeouts_and_exits_end_as_they_happened() {
    let (store, clock, web) = world().await;
    let r = replica(&store, clock, "plain", Duration::from_secs(5), Arc::new(FakePods::new()));
    with_replica(&r, async {
        let queued_cancel = enqueue_with_timeout(&store, &web, &["echo"], 30).await;
        CommandRepository::request_cancel(store.as_ref(), queued_cancel, clock.now()).await.unwrap();
        let running_cancel = enqueue(&store, &web, &["sleep-ms", "60000"]).await;
        let timed_out = enqueue_with_timeout(&store, &web, &["sleep-ms", "60000"], 1).await;
        let failed = enqueue(&store, &web, &["exit", "3"]).await;
        until_status(&store, running_cancel, CommandStatus::Running, Duration::from_secs(5)).await;
        until_started(&r.executor, running_cancel, Duration::from_secs(5)).await;
        CommandRepository::request_cancel(store.as_ref(), running_cancel, clock.now()).await.unwrap();
        until_status(&store, running_cancel, CommandStatus::Cancelled, Duration::from_secs(5)).await;
        until_status(&store, timed_out, CommandStatus::TimedOut, Duration::from_secs(5)).await;
        until_status(&store, failed, CommandStatus::Failed, Duration::from_secs(5)).await;
        let exit = CommandRepository::get(store.as_ref(), failed).await.unwrap();
        assert_eq!((exit.exit_code, exit.termination_reason), (Some(3), Some(TerminationReason::Exited)));
        assert_eq!(status(&store, queued_cancel).await, CommandStatus::Cancelled);
        assert!(!r.executor.started().contains(&queued_cancel), "cancelled before it ran");
        let out = CommandRepository::output(store.as_ref(), failed).await.unwrap();
        assert_eq!(out.stdout, "started\n", "the output is stored with the end");
        let cancelled = CommandRepository::get(store.as_ref(), running_cancel).await.unwrap();
        assert_eq!(cancelled.termination_reason, Some(TerminationReason::Cancelled));
        assert!(r.executor.ended().contains(&(running_cancel, Termination::Cancelled)), "killed in the executor");
        let timeout = CommandRepository::get(store.as_ref(), timed_out).await.unwrap();
        assert_eq!(timeout.termination_reason, Some(TerminationReason::Timeout));
        let ran = timeout.finished_at.unwrap() - timeout.started_at.unwrap();
        assert!(
            ran >= chrono::TimeDelta::seconds(1) && ran < chrono::TimeDelta::seconds(2),
            "ended at its timeout: {ran}"
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_command_cancelled_while_its_pod_starts_ends_cancelled_and_never_starts() {
    let (store, clock, web) = world().await;
    // The pod takes 10 s to become ready: the command is claimed (running in the store) but not
    // yet started in the executor for all that time.
    let pods = FakePods::new();
    pods.set_ready_after(Duration::from_secs(10));
    let r = replica(&store, clock, "slow-pod", Duration::from_secs(5), Arc::new(pods));
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["echo"]).await;
        until_status(&store, id, CommandStatus::Running, Duration::from_secs(5)).await;
        assert!(r.executor.started().is_empty(), "claimed, not started");
        CommandRepository::request_cancel(store.as_ref(), id, clock.now()).await.unwrap();
        let took = until_status(&store, id, CommandStatus::Cancelled, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(1), "the cancel is read at the next renewal, not after the pod: {took:?}");
        let cancelled = CommandRepository::get(store.as_ref(), id).await.unwrap();
        assert_eq!(cancelled.termination_reason, Some(TerminationReason::Cancelled));
        // Past the moment the pod would have been ready: the command still never starts.
        pass(Duration::from_secs(15)).await;
        assert!(r.executor.started().is_empty(), "a command cancelled before its start never starts");
        assert_eq!(ends(&store, id).await, 1, "one end only");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_command_running_many_leases_long_keeps_its_lease_and_succeeds() {
    let (store, clock, web) = world().await;
    // A 1 s lease, renewed every 300 ms, and this replica's own reaper looking for expired
    // leases at every liveness tick: a ten-second command outlives ten leases.
    let r = build(&store, store.clone(), clock, "renewing", Arc::new(FakePods::new()), None, |config| {
        config.lease = Duration::from_secs(1);
        config.renew_every = Duration::from_millis(300);
        config.reap_every = Duration::from_millis(100);
    });
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["sleep-ms", "10000"]).await;
        until_started(&r.executor, id, Duration::from_secs(5)).await;
        pass(Duration::from_secs(5)).await;
        assert_eq!(status(&store, id).await, CommandStatus::Running, "five leases later, still held");
        until_status(&store, id, CommandStatus::Succeeded, Duration::from_secs(10)).await;
        assert_eq!(r.executor.ended(), vec![(id, Termination::Exited(0))]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_command_whose_lease_was_taken_keeps_the_reapers_verdict_not_the_late_result() {
    let (store, clock, web) = world().await;
    let r = replica(&store, clock, "silent", Duration::from_secs(5), Arc::new(FakePods::new()));
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["sleep-ms", "60000"]).await;
        until_status(&store, id, CommandStatus::Running, Duration::from_secs(5)).await;
        // Claimed is not yet started: a reap before the start is the other test's case (the
        // command never starts). This one wants the command running in the executor.
        until_started(&r.executor, id, Duration::from_secs(5)).await;
        // Another replica's reaper, later than this lease: the command is lost from then on.
        let later = clock.now() + chrono::TimeDelta::minutes(5);
        let reaped = CommandQueue::reap_expired(store.as_ref(), later).await.unwrap();
        assert_eq!(reaped.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
        // The worker learns at its next renewal, kills the command, and writes nothing.
        until("the worker killed the command", Duration::from_secs(5), || async {
            r.executor.ended().iter().any(|(ended, _)| *ended == id)
        })
        .await;
        assert_eq!(r.executor.ended(), vec![(id, Termination::Cancelled)]);
        // A wrong late write would land right after the run ended; there is no event to wait
        // for when the right thing (nothing) happens, so let some (virtual) time pass.
        pass(Duration::from_millis(200)).await;
        let lost = CommandRepository::get(store.as_ref(), id).await.unwrap();
        assert_eq!((lost.status, lost.error.as_deref()), (CommandStatus::Lost, Some(LEASE_EXPIRED_LOST)));
        assert_eq!(ends(&store, id).await, 1, "one end only");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_fence_refuses_the_finish_of_a_worker_whose_lease_ran_out() {
    let (store, clock, web) = world().await;
    // Once the command runs, the store stops answering this worker's renewals (a cut link to
    // it), so the worker never learns that its lease ran out; the reaper declares the command
    // lost, and when the run ends the worker still tries to record its result.
    let flaky = Scripted::over(&store, clock);
    let r = build(&store, flaky.clone(), clock, "cut-off", Arc::new(FakePods::new()), None, |config| {
        config.lease = Duration::from_secs(1);
        config.reap_every = Duration::from_millis(100);
    });
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["sleep-ms", "3000"]).await;
        until_started(&r.executor, id, Duration::from_secs(5)).await;
        flaky.fail_renewals.store(true, Ordering::SeqCst);
        until_status(&store, id, CommandStatus::Lost, Duration::from_secs(3)).await;
        assert!(r.executor.ended().is_empty(), "lost while still running");
        until("the worker tried to record the result", Duration::from_secs(5), || async {
            flaky.refused_finishes.load(Ordering::SeqCst) > 0
        })
        .await;
        assert_eq!(r.executor.ended(), vec![(id, Termination::Exited(0))], "the run itself succeeded");
        let lost = CommandRepository::get(store.as_ref(), id).await.unwrap();
        assert_eq!(
            (lost.status, lost.exit_code, lost.error.as_deref()),
            (CommandStatus::Lost, None, Some(LEASE_EXPIRED_LOST)),
            "the stale fence recorded nothing"
        );
        assert_eq!(ends(&store, id).await, 1, "one end only");
    })
    .await;
}

/// The memory queue with scripted trouble: its first `failures_left` finishes fail as an
/// unreachable store does; while `reap_on_renew` is set a renewal finds the command reaped by
/// another replica first (its lease ran out while the worker was busy elsewhere); while
/// `fail_renewals` is set renewals fail as an unreachable store does; once `severed` is set no
/// call ever answers (the replica behind it is gone). Finishes the fence refused are counted.
struct Scripted {
    inner: Arc<MemoryStore>,
    clock: TokioClock,
    failures_left: AtomicU32,
    reap_on_renew: AtomicBool,
    fail_renewals: AtomicBool,
    severed: AtomicBool,
    refused_finishes: AtomicU32,
}

impl Scripted {
    /// `inner` without trouble until a test scripts some.
    fn over(inner: &Arc<MemoryStore>, clock: TokioClock) -> Arc<Self> {
        Arc::new(Self {
            inner: inner.clone(),
            clock,
            failures_left: 0.into(),
            reap_on_renew: false.into(),
            fail_renewals: false.into(),
            severed: false.into(),
            refused_finishes: 0.into(),
        })
    }

    /// Never returns once the link is severed: a call from a dead replica never arrives.
    async fn link(&self) {
        if self.severed.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait::async_trait]
impl CommandQueue for Scripted {
    async fn claim_next(&self, w: &WorkerId, now: Timestamp, lease: Duration) -> DomainResult<Option<Claim>> {
        self.link().await;
        self.inner.claim_next(w, now, lease).await
    }
    async fn renew_lease(&self, id: CommandId, fence: i64, until: Timestamp) -> DomainResult<LeaseStatus> {
        self.link().await;
        if self.fail_renewals.load(Ordering::SeqCst) {
            return Err(DomainError::Unavailable("the store is away".into()));
        }
        if self.reap_on_renew.load(Ordering::SeqCst) {
            let later = self.clock.now() + chrono::TimeDelta::minutes(5);
            self.inner.reap_expired(later).await?;
        }
        self.inner.renew_lease(id, fence, until).await
    }
    async fn append_output(
        &self,
        id: CommandId,
        f: i64,
        s: OutputStream,
        d: &str,
        at: Timestamp,
    ) -> DomainResult<bool> {
        self.link().await;
        self.inner.append_output(id, f, s, d, at).await
    }
    async fn finish(
        &self,
        id: CommandId,
        fence: i64,
        c: &Completion,
        o: &CommandOutput,
        at: Timestamp,
    ) -> DomainResult<Option<domain::command::Command>> {
        self.link().await;
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            return Err(DomainError::Unavailable("the store is away".into()));
        }
        let finished = self.inner.finish(id, fence, c, o, at).await?;
        if finished.is_none() {
            self.refused_finishes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(finished)
    }
    async fn reap_expired(&self, now: Timestamp) -> DomainResult<Vec<domain::command::Command>> {
        self.link().await;
        self.inner.reap_expired(now).await
    }
    async fn hand_back(&self, id: CommandId, fence: i64, at: Timestamp) -> DomainResult<bool> {
        self.link().await;
        self.inner.hand_back(id, fence, at).await
    }
    async fn hold_presence(&self, w: &WorkerId, now: Timestamp) -> DomainResult<bool> {
        self.link().await;
        self.inner.hold_presence(w, now).await
    }
    async fn release_presence(&self, w: &WorkerId) -> DomainResult<()> {
        self.link().await;
        self.inner.release_presence(w).await
    }
    async fn absent_owners(&self, now: Timestamp) -> DomainResult<Vec<WorkerId>> {
        self.link().await;
        self.inner.absent_owners(now).await
    }
    async fn reap_absent(&self, w: &WorkerId, now: Timestamp) -> DomainResult<Vec<domain::command::Command>> {
        self.link().await;
        self.inner.reap_absent(w, now).await
    }
    async fn heartbeat(&self, w: &WorkerId, capacity: u32, now: Timestamp) -> DomainResult<()> {
        self.link().await;
        self.inner.heartbeat(w, capacity, now).await
    }
    async fn live_workers(&self, since: Timestamp) -> DomainResult<WorkerCapacity> {
        self.link().await;
        self.inner.live_workers(since).await
    }
    async fn try_job_lease(&self, job: &str, w: &WorkerId, now: Timestamp, until: Timestamp) -> DomainResult<bool> {
        self.link().await;
        self.inner.try_job_lease(job, w, now, until).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_result_the_store_refused_for_a_while_is_recorded_once_it_is_back() {
    let (store, clock, web) = world().await;
    // Three failures take 1.5 s of retries, far past a 400 ms lease: the lease must be kept
    // while the result waits, or the worker's own reaper declares the finished command lost.
    let flaky = Scripted::over(&store, clock);
    flaky.failures_left.store(3, Ordering::SeqCst);
    let r = build(&store, flaky.clone(), clock, "patient", Arc::new(FakePods::new()), None, |config| {
        config.lease = Duration::from_millis(400);
        config.reap_every = Duration::from_millis(100);
    });
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["exit", "0"]).await;
        let took = until_status(&store, id, CommandStatus::Succeeded, Duration::from_secs(10)).await;
        assert_eq!(flaky.failures_left.load(Ordering::SeqCst), 0, "every failure was met");
        assert!(took >= Duration::from_millis(1500), "recorded after the retries, past the lease: {took:?}");
        assert_eq!(r.executor.started(), vec![id], "retried the write, not the command");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_command_declared_lost_before_it_started_never_starts() {
    let (store, clock, web) = world().await;
    // The lease check right before the start finds the command already reaped.
    let flaky = Scripted::over(&store, clock);
    flaky.reap_on_renew.store(true, Ordering::SeqCst);
    let r = build(&store, flaky, clock, "overloaded", Arc::new(FakePods::new()), None, |config| {
        config.renew_every = Duration::from_secs(60);
    });
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["exit", "0"]).await;
        until_status(&store, id, CommandStatus::Lost, Duration::from_secs(5)).await;
        // Nothing to wait for when the right thing (no start) happens: give a wrong start time.
        pass(Duration::from_millis(200)).await;
        assert!(r.executor.started().is_empty(), "a lost command never starts");
        let lost = CommandRepository::get(store.as_ref(), id).await.unwrap();
        assert_eq!((lost.status, lost.error.as_deref()), (CommandStatus::Lost, Some(LEASE_EXPIRED_LOST)));
    })
    .await;
}
