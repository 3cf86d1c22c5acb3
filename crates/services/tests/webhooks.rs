//! The webhook dispatcher end to end: the real HTTP sender against receivers on loopback, over
//! the in-memory store and SQLite, with a schedule shrunk to milliseconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use adapters_sqlite::SqliteStore;
use adapters_webhook::testing::{verify_with_python, PythonVerifier, Received, Receiver, Reply};
use adapters_webhook::{HttpWebhookSender, SenderConfig};
use async_trait::async_trait;
use domain::api_key::ProjectAccess;
use domain::breaker::BreakerConfig;
use domain::command::Priority;
use domain::pagination::{Page, PageRequest};
use domain::ports::{AuditFilter, AuditLog, CommandRepository, ProjectRepository};
use domain::testing::webhooks::{sample_event, sample_webhook};
use domain::testing::{project_name, sample_command, sample_project, MemoryStore};
use domain::webhook::{
    Attempt, AttemptRecord, AttemptReport, Delivery, DeliveryDetail, DeliveryFilter, DeliveryId, DeliveryQueue,
    DeliveryStatus, EventSet, EventType, FanOut, FannedOutAndLeased, LeaseRequest, LeasedDelivery, NextStep,
    OutboxEvent, RetryPolicy, RetrySchedule, WebhookId, WebhookRepository, WebhookUrl, ENDPOINT_BREAKER,
};
use domain::{DomainError, DomainResult, Timestamp};
use services::access::Principal;
use services::audit::AuditService;
use services::clock::SystemClock;
use services::signalling::Signals;
use services::webhooks::{DispatcherConfig, DispatcherPorts, NewWebhook, WebhookDispatcher, WebhookService};
use tokio_util::sync::CancellationToken;

/// Every port these tests need from a store.
trait Stores: WebhookRepository + DeliveryQueue + AuditLog + CommandRepository + ProjectRepository + 'static {}
impl<T: WebhookRepository + DeliveryQueue + AuditLog + CommandRepository + ProjectRepository + 'static> Stores for T {}

const SEND_TIMEOUT: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(5);

fn config(owner: &str) -> DispatcherConfig {
    DispatcherConfig {
        concurrency: 8,
        lease: Duration::from_secs(5),
        poll_every: Duration::from_millis(10),
        retry: RetryPolicy {
            schedule: RetrySchedule::new(vec![Duration::from_millis(50); 20]),
            jitter: 0.2,
            slow_down_floor: Duration::from_millis(50),
            max_retry_after: Duration::from_millis(200),
            disable_after: Duration::from_secs(60),
        },
        breaker: BreakerConfig { min_calls: 10_000, ..ENDPOINT_BREAKER },
        shutdown_grace: Duration::from_millis(500),
        ..DispatcherConfig::new(owner)
    }
}

struct Harness<S: Stores> {
    store: Arc<S>,
    service: WebhookService,
    shutdown: CancellationToken,
    dispatchers: Vec<tokio::task::JoinHandle<()>>,
}

fn sender() -> Arc<HttpWebhookSender> {
    let config = SenderConfig { timeout: SEND_TIMEOUT, allow_private_targets: true, ..SenderConfig::default() };
    Arc::new(HttpWebhookSender::new(config).unwrap())
}

fn start<S: Stores>(store: Arc<S>, configs: Vec<DispatcherConfig>) -> Harness<S> {
    start_with(store.clone(), store, configs)
}

/// `start`, with the dispatchers' outbox and deliveries behind `deliveries`.
fn start_with<S: Stores>(
    store: Arc<S>,
    deliveries: Arc<dyn DeliveryQueue>,
    configs: Vec<DispatcherConfig>,
) -> Harness<S> {
    let signals = Arc::new(Signals::default());
    let clock = Arc::new(SystemClock);
    let sender = sender();
    let service = WebhookService::new(store.clone(), store.clone(), sender.clone(), clock.clone(), signals.clone());
    let shutdown = CancellationToken::new();
    let dispatchers = configs
        .into_iter()
        .map(|config| {
            let ports = DispatcherPorts {
                webhooks: store.clone(),
                deliveries: deliveries.clone(),
                sender: sender.clone(),
                audit: AuditService::new(store.clone()),
                clock: clock.clone(),
                signals: signals.clone(),
            };
            tokio::spawn(WebhookDispatcher::new(ports, config).run(shutdown.clone()))
        })
        .collect();
    Harness { store, service, shutdown, dispatchers }
}

impl<S: Stores> Harness<S> {
    async fn subscribe(&self, receiver: &Receiver, events: EventSet, projects: ProjectAccess) -> WebhookId {
        let new = NewWebhook { url: WebhookUrl::parse(&receiver.url("/hook")).unwrap(), events, projects };
        self.service.create(&Principal::system(), new).await.unwrap().0.id
    }

    async fn deliveries(&self, webhook: WebhookId) -> Vec<DeliveryDetail> {
        let page = self.service.list_deliveries(&Principal::system(), webhook, None, PageRequest::default()).await;
        let mut details = Vec::new();
        for d in page.unwrap().items {
            details.push(self.service.get_delivery(&Principal::system(), d.id).await.unwrap());
        }
        details
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for d in self.dispatchers {
            tokio::time::timeout(Duration::from_secs(3), d).await.expect("dispatcher stops").unwrap();
        }
    }
}

/// Polls `check` every 10 ms until it holds or `WAIT` passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ids(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.header("webhook-id").unwrap_or_default().to_owned()).collect()
}

async fn sqlite(dir: &Path) -> Arc<SqliteStore> {
    let store = SqliteStore::open(&format!("sqlite://{}/{}.db", dir.display(), uuid::Uuid::now_v7())).unwrap();
    store.migrate().unwrap();
    Arc::new(store)
}

async fn retried_with_the_same_webhook_id<S: Stores>(store: Arc<S>) {
    let receiver = Receiver::start().await.unwrap();
    receiver.script([Reply::status(500).with_body("try later")]);
    let h = start(store, vec![config("a")]);
    let hook = h.subscribe(&receiver, EventSet::all(), ProjectAccess::All).await;
    h.service.test(&Principal::system(), hook).await.unwrap();
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2);
    assert_eq!(ids(&got)[0], ids(&got)[1], "the retry carries the same webhook-id");
    assert_eq!(got[0].body, got[1].body);
    eventually("both attempts recorded", || async {
        h.deliveries(hook).await.first().is_some_and(|d| d.delivery.status == DeliveryStatus::Succeeded)
    })
    .await;
    let detail = h.deliveries(hook).await.remove(0);
    assert_eq!(detail.delivery.id.to_string(), ids(&got)[0]);
    let attempts: Vec<_> =
        detail.attempts.iter().map(|a| (a.number, a.status_code, a.response_snippet.clone())).collect();
    assert_eq!(attempts, vec![(1, Some(500), Some("try later".into())), (2, Some(204), None)]);
    h.stop().await;
}

#[tokio::test]
async fn a_receiver_answering_500_then_200_gets_a_retry_with_the_same_webhook_id() {
    retried_with_the_same_webhook_id(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn the_same_retry_works_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    retried_with_the_same_webhook_id(sqlite(dir.path()).await).await;
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_off_at_the_timeout() {
    let receiver = Receiver::start().await.unwrap();
    receiver.script([Reply::Hang]);
    let h = start(Arc::new(MemoryStore::new()), vec![config("a")]);
    let hook = h.subscribe(&receiver, EventSet::all(), ProjectAccess::All).await;
    h.service.test(&Principal::system(), hook).await.unwrap();
    eventually("delivered after the timeout", || async {
        h.deliveries(hook).await.first().is_some_and(|d| d.delivery.status == DeliveryStatus::Succeeded)
    })
    .await;
    let detail = h.deliveries(hook).await.remove(0);
    let first = &detail.attempts[0];
    assert_eq!(first.status_code, None);
    assert!(first.error.as_deref().is_some_and(|e| e.starts_with("timeout")), "{first:?}");
    assert!((300..2000).contains(&first.latency_ms), "cut off at 300 ms, took {} ms", first.latency_ms);
    assert_eq!(detail.attempts[1].status_code, Some(204));
    h.stop().await;
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_every_event_once_it_is_back() {
    let receiver = Receiver::start().await.unwrap();
    let h = start(Arc::new(MemoryStore::new()), vec![config("a")]);
    let hook = h.subscribe(&receiver, EventSet::all(), ProjectAccess::All).await;
    receiver.go_down();
    for _ in 0..5 {
        h.service.test(&Principal::system(), hook).await.unwrap();
    }
    eventually("several failed attempts each", || async {
        h.deliveries(hook).await.iter().filter(|d| d.attempts.len() >= 2).count() == 5
    })
    .await;
    receiver.come_back().unwrap();
    let got = receiver.wait_for(5, WAIT).await;
    eventually("all succeeded", || async {
        h.deliveries(hook).await.iter().all(|d| d.delivery.status == DeliveryStatus::Succeeded)
    })
    .await;
    let expected: BTreeSet<String> = h.deliveries(hook).await.iter().map(|d| d.delivery.id.to_string()).collect();
    assert_eq!(ids(&got).into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(receiver.received().len(), 5, "each event once");
    h.stop().await;
}

#[tokio::test]
async fn redeliver_sends_the_same_event_under_a_new_webhook_id() {
    let receiver = Receiver::start().await.unwrap();
    let h = start(Arc::new(MemoryStore::new()), vec![config("a")]);
    let hook = h.subscribe(&receiver, EventSet::all(), ProjectAccess::All).await;
    h.service.test(&Principal::system(), hook).await.unwrap();
    receiver.wait_for(1, WAIT).await;
    let first = h.deliveries(hook).await.remove(0).delivery;
    let again = h.service.redeliver(&Principal::system(), first.id).await.unwrap();
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(ids(&got), vec![first.id.to_string(), again.id.to_string()]);
    assert_eq!(got[0].body, got[1].body);
    h.stop().await;
}

#[tokio::test]
async fn a_dead_endpoint_is_disabled_after_the_threshold() {
    let receiver = Receiver::start().await.unwrap();
    receiver.set_default(Reply::status(500));
    let mut cfg = config("a");
    cfg.retry.disable_after = Duration::from_millis(300);
    let h = start(Arc::new(MemoryStore::new()), vec![cfg]);
    let hook = h.subscribe(&receiver, EventSet::all(), ProjectAccess::All).await;
    h.service.test(&Principal::system(), hook).await.unwrap();
    eventually("the endpoint is disabled", || async {
        !h.service.get(&Principal::system(), hook).await.unwrap().enabled
    })
    .await;
    let webhook = h.service.get(&Principal::system(), hook).await.unwrap();
    assert!(webhook.disabled_reason.as_deref().is_some_and(|r| r.contains("failed since")));
    assert!(receiver.received().len() >= 2, "it was retried before being disabled");
    let filter = AuditFilter { action: Some("webhooks.disable".into()), ..AuditFilter::default() };
    let audit = AuditLog::list(&*h.store, &filter, PageRequest::default()).await.unwrap();
    assert_eq!(audit.items.len(), 1);
    let delivery = h.deliveries(hook).await.remove(0).delivery;
    assert!(matches!(delivery.status, DeliveryStatus::Dead), "its pending delivery is dropped");
    let sent = receiver.received().len();
    // Fixed sleep: proves nothing more is sent; nothing happens to wait for.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(receiver.received().len(), sent, "nothing more is sent");
    h.stop().await;
}

#[tokio::test]
async fn event_and_project_filters_are_respected_over_http() {
    let (a, b) = (Receiver::start().await.unwrap(), Receiver::start().await.unwrap());
    let h = start(Arc::new(MemoryStore::new()), vec![config("a")]);
    for name in ["web", "api"] {
        ProjectRepository::create(&*h.store, &sample_project(name, 1)).await.unwrap();
    }
    h.subscribe(&a, EventSet::new([EventType::CommandQueued]).unwrap(), ProjectAccess::All).await;
    let api_only = ProjectAccess::Only([project_name("api")].into());
    h.subscribe(&b, EventSet::all(), api_only).await;
    for name in ["web", "api"] {
        let project = ProjectRepository::get(&*h.store, &project_name(name)).await.unwrap();
        let command = sample_command(&project, Priority::Normal, None);
        CommandRepository::enqueue(&*h.store, command.clone()).await.unwrap();
        CommandRepository::request_cancel(&*h.store, command.id, domain::testing::now_micros()).await.unwrap();
    }
    a.wait_for(2, WAIT).await;
    b.wait_for(2, WAIT).await;
    // Fixed sleep: proves no unwanted event is sent; nothing happens to wait for.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let summary = |r: &Received| {
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        format!("{} {}", body["type"].as_str().unwrap(), body["data"]["project"].as_str().unwrap())
    };
    let mut got_a: Vec<String> = a.received().iter().map(summary).collect();
    got_a.sort();
    assert_eq!(got_a, vec!["command.queued api", "command.queued web"], "only the wanted type, from every project");
    let mut got_b: Vec<String> = b.received().iter().map(summary).collect();
    got_b.sort();
    assert_eq!(got_b, vec!["command.cancelled api", "command.queued api"], "every type, only from api");
    h.stop().await;
}

#[tokio::test]
async fn a_rotated_secret_verifies_with_the_python_reference_library_end_to_end() {
    let receiver = Receiver::start().await.unwrap();
    let h = start(Arc::new(MemoryStore::new()), vec![config("a")]);
    let hook = h.subscribe(&receiver, EventSet::all(), ProjectAccess::All).await;
    let old = h.service.get(&Principal::system(), hook).await.unwrap().secret;
    let (_, new) = h.service.rotate_secret(&Principal::system(), hook, Duration::from_secs(3600)).await.unwrap();
    h.service.test(&Principal::system(), hook).await.unwrap();
    let received = receiver.wait_for(1, WAIT).await.remove(0);
    let wrong = domain::webhook::WebhookSecret::from_key(&[7; 32]).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    match verify_with_python(dir, &received, &[new.expose(), old.expose()], wrong.expose()) {
        Ok(PythonVerifier::Verified(out)) => assert_eq!(out, "verified 2"),
        Ok(PythonVerifier::Skipped) => eprintln!("SKIPPED on request: the Python standardwebhooks verifier"),
        Err(why) => panic!("{why}"),
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_on_one_sqlite_store_deliver_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await.unwrap();
    let h = start(sqlite(dir.path()).await, vec![config("replica-a"), config("replica-b")]);
    let hook = h.subscribe(&receiver, EventSet::all(), ProjectAccess::All).await;
    for _ in 0..30 {
        h.service.test(&Principal::system(), hook).await.unwrap();
    }
    let got = receiver.wait_for(30, WAIT).await;
    // Fixed sleep: proves no delivery is sent twice; nothing happens to wait for.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = receiver.received();
    let distinct: BTreeSet<String> = ids(&all).into_iter().collect();
    assert_eq!((got.len() >= 30, all.len(), distinct.len()), (true, 30, 30), "every delivery exactly once");
    h.stop().await;
}

/// A store whose first `failures` calls of `fan_out_and_lease` fail as a database that is away.
struct FailingFanOuts {
    inner: Arc<MemoryStore>,
    failures: AtomicU32,
}

#[async_trait]
impl DeliveryQueue for FailingFanOuts {
    async fn append_event(&self, event: &OutboxEvent) -> DomainResult<()> {
        self.inner.append_event(event).await
    }
    async fn fan_out(&self, now: Timestamp, limit: u32) -> DomainResult<FanOut> {
        self.inner.fan_out(now, limit).await
    }
    async fn lease_due(&self, request: &LeaseRequest) -> DomainResult<Vec<LeasedDelivery>> {
        self.inner.lease_due(request).await
    }
    async fn fan_out_and_lease(&self, fan_out_limit: u32, request: &LeaseRequest) -> DomainResult<FannedOutAndLeased> {
        if self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(DomainError::Unavailable("database restarting".into()));
        }
        self.inner.fan_out_and_lease(fan_out_limit, request).await
    }
    async fn record_attempt(
        &self,
        id: DeliveryId,
        fence: i64,
        report: &AttemptReport,
        next: NextStep,
    ) -> DomainResult<Option<Delivery>> {
        self.inner.record_attempt(id, fence, report, next).await
    }
    async fn record_attempts(&self, attempts: &[AttemptRecord]) -> DomainResult<Vec<DomainResult<Option<Delivery>>>> {
        self.inner.record_attempts(attempts).await
    }
    async fn release(&self, id: DeliveryId, fence: i64, next_attempt_at: Timestamp) -> DomainResult<bool> {
        self.inner.release(id, fence, next_attempt_at).await
    }
    async fn redeliver(&self, id: DeliveryId, new_id: DeliveryId, now: Timestamp) -> DomainResult<Delivery> {
        self.inner.redeliver(id, new_id, now).await
    }
    async fn list_deliveries(&self, filter: &DeliveryFilter, page: PageRequest) -> DomainResult<Page<Delivery>> {
        self.inner.list_deliveries(filter, page).await
    }
    async fn get_delivery(&self, id: DeliveryId) -> DomainResult<DeliveryDetail> {
        self.inner.get_delivery(id).await
    }
    async fn last_attempts(&self, ids: &[DeliveryId]) -> DomainResult<Vec<(DeliveryId, Attempt)>> {
        self.inner.last_attempts(ids).await
    }
    async fn purge(&self, before: Timestamp) -> DomainResult<u64> {
        self.inner.purge(before).await
    }
}

#[tokio::test]
async fn an_event_whose_fan_out_and_lease_failed_is_delivered_once_at_a_later_turn() {
    let receiver = Receiver::start().await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let mut hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    hook.url = WebhookUrl::parse(&receiver.url("/hook")).unwrap();
    WebhookRepository::create(&*store, &hook).await.unwrap();
    // Pending before the dispatcher starts, so its first turns meet the failures with it.
    store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.unwrap();
    let flaky = Arc::new(FailingFanOuts { inner: store.clone(), failures: AtomicU32::new(3) });
    let h = start_with(store, flaky.clone(), vec![config("a")]);
    assert_eq!(receiver.wait_for(1, WAIT).await.len(), 1, "delivered once the store answers again");
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0, "every failure was met first");
    eventually("recorded as succeeded", || async {
        h.deliveries(hook.id).await.first().is_some_and(|d| d.delivery.status == DeliveryStatus::Succeeded)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(receiver.received().len(), 1, "and only once");
    h.stop().await;
}
