//! The queue worker on its own: the memory store and fakes of the executor, the pods and the
//! webhook sender, so death, drain and outages can be staged exactly and quickly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::command::{CommandSpec, CommandStatus, Priority, TerminationReason, ABSENT_OWNER_LOST, REPLICA_SHUT_DOWN};
use domain::ids::{CommandId, WorkerId};
use domain::output::EventKind;
use domain::ports::{CommandQueue, CommandRepository, PodManager, ProjectRepository};
use domain::project::Project;
use domain::testing::fakes::{FakeExecutor, FakePods, FakeSender};
use domain::testing::{sample_command, sample_project, MemoryStore};
use services::audit::AuditService;
use services::breaker::{BreakerConfig, BreakerPods, CircuitBreaker};
use services::clock::SystemClock;
use services::pods::PodEvents;
use services::queue_bus::QueueBus;
use services::webhooks::{DispatchWake, WebhookService};
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
    let clock = Arc::new(SystemClock);
    let executor = Arc::new(FakeExecutor::new());
    let webhooks = Arc::new(WebhookService::new(
        store.clone(),
        store.clone(),
        Arc::new(FakeSender::new()),
        clock.clone(),
        Arc::new(DispatchWake::default()),
    ));
    let ports = WorkerPorts {
        queue: store.clone(),
        projects: store.clone(),
        executor: executor.clone(),
        pods,
        pod_events: PodEvents::new(webhooks),
        breaker,
        audit: AuditService::new(store.clone()),
        bus: Arc::new(QueueBus::default()),
        clock,
    };
    let mut config = WorkerConfig::new(WorkerId::new(name), 4);
    config.poll_every = Duration::from_millis(20);
    config.shutdown_grace = grace;
    Replica { worker: QueueWorker::new(ports, config), executor }
}

async fn project(store: &MemoryStore) -> Project {
    let web = sample_project("web", 10);
    ProjectRepository::create(store, &web).await.unwrap();
    web
}

async fn enqueue(store: &MemoryStore, project: &Project, argv: &[&str]) -> CommandId {
    let mut new = sample_command(project, Priority::Normal, None);
    new.spec = CommandSpec::Argv(argv.iter().map(|a| (*a).to_owned()).collect());
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
