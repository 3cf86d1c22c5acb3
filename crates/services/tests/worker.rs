//! The queue worker on its own: the memory store and fakes of the executor, the pods and the
//! webhook sender, so death, drain and outages can be staged exactly and quickly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::command::{
    CommandSpec, CommandStatus, Completion, Priority, TerminationReason, TimeoutSeconds, ABSENT_OWNER_LOST,
    LEASE_EXPIRED_LOST, REPLICA_SHUT_DOWN,
};
use domain::ids::{CommandId, WorkerId};
use domain::output::EventKind;
use domain::output::{CommandOutput, OutputStream};
use domain::ports::{
    Claim, CommandQueue, CommandRepository, LeaseStatus, PodManager, ProjectRepository, WorkerCapacity,
};
use domain::project::Project;
use domain::testing::fakes::{FakeExecutor, FakePods, FakeSender};
use domain::testing::{sample_command, sample_project, MemoryStore};
use domain::{DomainError, DomainResult, Timestamp};
use services::audit::AuditService;
use services::breaker::{BreakerConfig, BreakerPods, CircuitBreaker};
use services::clock::SystemClock;
use services::pods::PodEvents;
use services::signalling::Signals;
use services::webhooks::WebhookService;
use services::worker::{QueueWorker, WorkerConfig, WorkerPorts};
use tokio_util::sync::CancellationToken;

/// One replica: its worker and the fakes it drives.
struct Replica {
    worker: Arc<QueueWorker>,
    executor: Arc<FakeExecutor>,
}

fn replica(store: &Arc<MemoryStore>, name: &str, grace: Duration, pods: Arc<dyn PodManager>) -> Replica {
    replica_with(store, name, grace, pods, None)
}

fn replica_with(
    store: &Arc<MemoryStore>,
    name: &str,
    grace: Duration,
    pods: Arc<dyn PodManager>,
    breaker: Option<Arc<CircuitBreaker>>,
) -> Replica {
    build(store, store.clone(), name, pods, breaker, |config| config.shutdown_grace = grace)
}

/// A replica over `store`, whose queue port is `queue` (the store itself, or a decorator of it).
fn build(
    store: &Arc<MemoryStore>,
    queue: Arc<dyn CommandQueue>,
    name: &str,
    pods: Arc<dyn PodManager>,
    breaker: Option<Arc<CircuitBreaker>>,
    tune: impl FnOnce(&mut WorkerConfig),
) -> Replica {
    let clock = Arc::new(SystemClock);
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

async fn project(store: &MemoryStore) -> Project {
    let web = sample_project("web", 10);
    ProjectRepository::create(store, &web).await.unwrap();
    web
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

/// Waits (at most `limit`) until the command is in `want`; returns how long that took.
async fn until_status(store: &MemoryStore, id: CommandId, want: CommandStatus, limit: Duration) -> Duration {
    let start = Instant::now();
    while status(store, id).await != want {
        assert!(start.elapsed() < limit, "{id} still {} after {limit:?}, {want} expected", status(store, id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_command_is_lost_within_seconds_and_never_runs_again() {
    let store = Arc::new(MemoryStore::new());
    let web = project(&store).await;
    // The doomed replica runs on a runtime of its own, so its death takes every task it has.
    let doomed_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let doomed = replica(&store, "doomed", Duration::from_secs(25), Arc::new(FakePods::new()));
    doomed_runtime.spawn(Arc::clone(&doomed.worker).run(CancellationToken::new()));
    let id = enqueue(&store, &web, &["sleep-ms", "60000"]).await;
    until_status(&store, id, CommandStatus::Running, Duration::from_secs(5)).await;

    let survivor = replica(&store, "survivor", Duration::from_secs(25), Arc::new(FakePods::new()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&survivor.worker).run(stop.clone()));
    // kill -9: every task gone at once, and the store sees the session end.
    doomed_runtime.shutdown_background();
    let died = Instant::now();
    CommandQueue::release_presence(store.as_ref(), &WorkerId::new("doomed")).await.unwrap();
    until_status(&store, id, CommandStatus::Lost, Duration::from_secs(5)).await;
    let detected = died.elapsed();
    assert!(detected >= Duration::from_secs(2), "the absence grace rides out a restart: {detected:?}");
    let lost = CommandRepository::get(store.as_ref(), id).await.unwrap();
    assert_eq!(lost.termination_reason, Some(TerminationReason::WorkerLost));
    assert_eq!(lost.error.as_deref(), Some(ABSENT_OWNER_LOST));

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(survivor.executor.started().is_empty(), "a lost command is never run again");
    assert_eq!(doomed.executor.started(), vec![id]);
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_claims_nothing_more_lets_quick_commands_finish_and_ends_the_rest_lost() {
    let store = Arc::new(MemoryStore::new());
    let web = project(&store).await;
    let replica = replica(&store, "draining", Duration::from_millis(800), Arc::new(FakePods::new()));
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
    let others = replica_absent_owners(&store).await;
    assert!(others.is_empty(), "nothing of the drained replica is left running: {others:?}");
}

async fn replica_absent_owners(store: &MemoryStore) -> Vec<WorkerId> {
    CommandQueue::absent_owners(store, domain::testing::now_micros()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_hands_claimed_commands_back_and_they_run_once_the_backend_returns() {
    let store = Arc::new(MemoryStore::new());
    let web = project(&store).await;
    let pods = FakePods::new();
    pods.set_unreachable(true);
    let breaker = CircuitBreaker::new(
        "kubernetes-test",
        BreakerConfig { open_for: Duration::from_secs(2), min_calls: 2, ..BreakerConfig::default() },
    );
    let guarded = Arc::new(BreakerPods::new(pods.clone(), Arc::clone(&breaker)));
    let replica = replica_with(&store, "outage", Duration::from_secs(5), guarded, Some(breaker.clone()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&replica.worker).run(stop.clone()));
    let id = enqueue(&store, &web, &["echo"]).await;

    // Claimed, found unreachable, handed back: queued again without running, until the
    // breaker opens and nothing is claimed at all.
    let deadline = Instant::now() + Duration::from_secs(10);
    while breaker.admits_work() {
        assert!(Instant::now() < deadline, "the breaker opens after the failed starts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_status(&store, id, CommandStatus::Queued, Duration::from_secs(3)).await;
    let events = CommandRepository::events_after(store.as_ref(), id, 0, 100).await.unwrap();
    let kinds: Vec<EventKind> = events.into_iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&EventKind::Status(CommandStatus::Running)), "it was claimed: {kinds:?}");
    assert!(!kinds.contains(&EventKind::Exit), "it never ended: {kinds:?}");
    assert!(replica.executor.started().is_empty(), "nothing started while the backend was away");

    pods.set_unreachable(false);
    until_status(&store, id, CommandStatus::Succeeded, Duration::from_secs(10)).await;
    assert_eq!(replica.executor.started(), vec![id], "run exactly once, once the backend was back");
    stop.cancel();
    running.await.unwrap();
}

/// Runs one replica over `store` until `body` is done.
async fn with_replica<F: std::future::Future<Output = ()>>(replica: &Replica, body: F) {
    let stop = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&replica.worker).run(stop.clone()));
    body.await;
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_timeouts_and_exits_end_as_they_happened() {
    let store = Arc::new(MemoryStore::new());
    let web = project(&store).await;
    let r = replica(&store, "plain", Duration::from_secs(5), Arc::new(FakePods::new()));
    with_replica(&r, async {
        let queued_cancel = enqueue_with_timeout(&store, &web, &["echo"], 30).await;
        CommandRepository::request_cancel(store.as_ref(), queued_cancel, domain::testing::now_micros()).await.unwrap();
        let running_cancel = enqueue(&store, &web, &["sleep-ms", "60000"]).await;
        let timed_out = enqueue_with_timeout(&store, &web, &["sleep-ms", "60000"], 1).await;
        let failed = enqueue(&store, &web, &["exit", "3"]).await;
        until_status(&store, running_cancel, CommandStatus::Running, Duration::from_secs(5)).await;
        CommandRepository::request_cancel(store.as_ref(), running_cancel, domain::testing::now_micros()).await.unwrap();
        until_status(&store, running_cancel, CommandStatus::Cancelled, Duration::from_secs(5)).await;
        until_status(&store, timed_out, CommandStatus::TimedOut, Duration::from_secs(5)).await;
        until_status(&store, failed, CommandStatus::Failed, Duration::from_secs(5)).await;
        let exit = CommandRepository::get(store.as_ref(), failed).await.unwrap();
        assert_eq!((exit.exit_code, exit.termination_reason), (Some(3), Some(TerminationReason::Exited)));
        assert_eq!(status(&store, queued_cancel).await, CommandStatus::Cancelled);
        assert!(!r.executor.started().contains(&queued_cancel), "cancelled before it ran");
        let out = CommandRepository::output(store.as_ref(), failed).await.unwrap();
        assert_eq!(out.stdout, "started\n", "the output is stored with the end");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_lease_was_taken_keeps_the_reapers_verdict_not_the_late_result() {
    let store = Arc::new(MemoryStore::new());
    let web = project(&store).await;
    let r = replica(&store, "silent", Duration::from_secs(5), Arc::new(FakePods::new()));
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["sleep-ms", "60000"]).await;
        until_status(&store, id, CommandStatus::Running, Duration::from_secs(5)).await;
        // Claimed is not yet started: a reap before the start is the other test's case (the
        // command never starts). This one wants the command running in the executor.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !r.executor.started().contains(&id) {
            assert!(Instant::now() < deadline, "the command started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Another replica's reaper, later than this lease: the command is lost from then on.
        let later = domain::testing::now_micros() + chrono::TimeDelta::minutes(5);
        let reaped = CommandQueue::reap_expired(store.as_ref(), later).await.unwrap();
        assert_eq!(reaped.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
        // The worker learns at its next renewal, kills the command, and writes nothing.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !r.executor.ended().iter().any(|(ended, _)| *ended == id) {
            assert!(Instant::now() < deadline, "the worker killed the command");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(r.executor.ended(), vec![(id, domain::command::Termination::Cancelled)]);
        // A wrong late write would land right after the run ended; there is no event to wait
        // for when the right thing (nothing) happens, so give it a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lost = CommandRepository::get(store.as_ref(), id).await.unwrap();
        assert_eq!((lost.status, lost.error.as_deref()), (CommandStatus::Lost, Some(LEASE_EXPIRED_LOST)));
        let events = CommandRepository::events_after(store.as_ref(), id, 0, 100).await.unwrap();
        assert_eq!(events.iter().filter(|e| e.kind == EventKind::Exit).count(), 1, "one end only");
    })
    .await;
}

/// The memory queue with scripted trouble: its first `failures_left` finishes fail as an
/// unreachable store does, and while `reap_on_renew` is set a renewal finds the command reaped
/// by another replica first (its lease ran out while the worker was busy elsewhere).
struct FlakyFinish {
    inner: Arc<MemoryStore>,
    failures_left: std::sync::atomic::AtomicU32,
    reap_on_renew: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl CommandQueue for FlakyFinish {
    async fn claim_next(&self, w: &WorkerId, now: Timestamp, lease: Duration) -> DomainResult<Option<Claim>> {
        self.inner.claim_next(w, now, lease).await
    }
    async fn renew_lease(&self, id: CommandId, fence: i64, until: Timestamp) -> DomainResult<LeaseStatus> {
        if self.reap_on_renew.load(std::sync::atomic::Ordering::SeqCst) {
            let later = domain::testing::now_micros() + chrono::TimeDelta::minutes(5);
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
        let left = self.failures_left.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(DomainError::Unavailable("the store is away".into()));
        }
        self.inner.finish(id, fence, c, o, at).await
    }
    async fn reap_expired(&self, now: Timestamp) -> DomainResult<Vec<domain::command::Command>> {
        self.inner.reap_expired(now).await
    }
    async fn hand_back(&self, id: CommandId, fence: i64, at: Timestamp) -> DomainResult<bool> {
        self.inner.hand_back(id, fence, at).await
    }
    async fn hold_presence(&self, w: &WorkerId, now: Timestamp) -> DomainResult<bool> {
        self.inner.hold_presence(w, now).await
    }
    async fn release_presence(&self, w: &WorkerId) -> DomainResult<()> {
        self.inner.release_presence(w).await
    }
    async fn absent_owners(&self, now: Timestamp) -> DomainResult<Vec<WorkerId>> {
        self.inner.absent_owners(now).await
    }
    async fn reap_absent(&self, w: &WorkerId, now: Timestamp) -> DomainResult<Vec<domain::command::Command>> {
        self.inner.reap_absent(w, now).await
    }
    async fn heartbeat(&self, w: &WorkerId, capacity: u32, now: Timestamp) -> DomainResult<()> {
        self.inner.heartbeat(w, capacity, now).await
    }
    async fn live_workers(&self, since: Timestamp) -> DomainResult<WorkerCapacity> {
        self.inner.live_workers(since).await
    }
    async fn try_job_lease(&self, job: &str, w: &WorkerId, now: Timestamp, until: Timestamp) -> DomainResult<bool> {
        self.inner.try_job_lease(job, w, now, until).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_store_refused_for_a_while_is_recorded_once_it_is_back() {
    let store = Arc::new(MemoryStore::new());
    let web = project(&store).await;
    // Three failures take 1.5 s of retries, far past a 400 ms lease: the lease must be kept
    // while the result waits, or the worker's own reaper declares the finished command lost.
    let flaky = Arc::new(FlakyFinish { inner: store.clone(), failures_left: 3.into(), reap_on_renew: false.into() });
    let r = build(&store, flaky.clone(), "patient", Arc::new(FakePods::new()), None, |config| {
        config.lease = Duration::from_millis(400);
        config.reap_every = Duration::from_millis(100);
    });
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["exit", "0"]).await;
        until_status(&store, id, CommandStatus::Succeeded, Duration::from_secs(10)).await;
        assert_eq!(flaky.failures_left.load(std::sync::atomic::Ordering::SeqCst), 0, "every failure was met");
        assert_eq!(r.executor.started(), vec![id], "retried the write, not the command");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_declared_lost_before_it_started_never_starts() {
    let store = Arc::new(MemoryStore::new());
    let web = project(&store).await;
    // The lease check right before the start finds the command already reaped.
    let flaky = Arc::new(FlakyFinish { inner: store.clone(), failures_left: 0.into(), reap_on_renew: true.into() });
    let r = build(&store, flaky, "overloaded", Arc::new(FakePods::new()), None, |config| {
        config.renew_every = Duration::from_secs(60);
    });
    with_replica(&r, async {
        let id = enqueue(&store, &web, &["exit", "0"]).await;
        until_status(&store, id, CommandStatus::Lost, Duration::from_secs(5)).await;
        // Nothing to wait for when the right thing (no start) happens: give a wrong start time.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(r.executor.started().is_empty(), "a lost command never starts");
        let lost = CommandRepository::get(store.as_ref(), id).await.unwrap();
        assert_eq!((lost.status, lost.error.as_deref()), (CommandStatus::Lost, Some(LEASE_EXPIRED_LOST)));
    })
    .await;
}
