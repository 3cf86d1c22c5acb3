//! The service and the dispatcher over `MemoryStore`, a manual clock and a scripted sender.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use domain::api_key::{ProjectAccess, Scope, ScopeSet};
use domain::breaker::BreakerConfig;
use domain::command::Priority;
use domain::pagination::PageRequest;
use domain::ports::{AuditFilter, AuditLog, Clock, CommandRepository, ProjectRepository};
use domain::testing::{project_name, sample_command, sample_project, ManualClock, MemoryStore};
use domain::webhook::{
    DeliveryStatus, EventSet, EventType, RetryPolicy, RetrySchedule, SendError, SendErrorKind, SendOutcome, WebhookId,
    WebhookRequest, WebhookSender, WebhookUrl, ENDPOINT_BREAKER,
};
use domain::{DomainError, DomainResult};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::access::Principal;
use crate::audit::AuditService;
use crate::signalling::Signals;

/// Answers from a script, then with a default; refuses targets on `10.0.0.1`.
#[derive(Debug)]
struct FakeSender {
    script: Mutex<VecDeque<SendOutcome>>,
    default: Mutex<SendOutcome>,
    sent: Mutex<Vec<WebhookRequest>>,
}

impl FakeSender {
    fn new() -> Self {
        Self { script: Mutex::new(VecDeque::new()), default: Mutex::new(answer(200)), sent: Mutex::new(Vec::new()) }
    }

    fn script(&self, outcomes: impl IntoIterator<Item = SendOutcome>) {
        self.script.lock().unwrap().extend(outcomes);
    }

    fn set_default(&self, outcome: SendOutcome) {
        *self.default.lock().unwrap() = outcome;
    }

    fn sent(&self) -> Vec<WebhookRequest> {
        self.sent.lock().unwrap().clone()
    }
}

#[async_trait]
impl WebhookSender for FakeSender {
    async fn check_target(&self, url: &WebhookUrl) -> DomainResult<()> {
        if url.as_str().contains("10.0.0.1") {
            Err(DomainError::invalid("url", "10.0.0.1 is a private address"))
        } else {
            Ok(())
        }
    }

    async fn send(&self, request: &WebhookRequest) -> SendOutcome {
        self.sent.lock().unwrap().push(request.clone());
        // Like a real request, let other sends start meanwhile (breaker probes depend on it).
        tokio::task::yield_now().await;
        let next = self.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| self.default.lock().unwrap().clone())
    }
}

fn answer(status: u16) -> SendOutcome {
    SendOutcome { status: Some(status), latency: Duration::from_millis(3), ..SendOutcome::default() }
}

fn timeout() -> SendOutcome {
    let error = SendError { kind: SendErrorKind::Timeout, message: "no answer in 15 s".into() };
    SendOutcome { error: Some(error), latency: Duration::from_secs(15), ..SendOutcome::default() }
}

struct Fixture {
    store: Arc<MemoryStore>,
    clock: Arc<ManualClock>,
    sender: Arc<FakeSender>,
    service: WebhookService,
    dispatcher: Arc<WebhookDispatcher>,
}

fn config() -> DispatcherConfig {
    DispatcherConfig {
        retry: RetryPolicy {
            schedule: RetrySchedule::new(vec![
                Duration::from_secs(5),
                Duration::from_secs(60),
                Duration::from_secs(600),
            ]),
            jitter: 0.0,
            slow_down_floor: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(3600),
            disable_after: Duration::from_secs(3600),
        },
        breaker: BreakerConfig { min_calls: 1000, ..ENDPOINT_BREAKER },
        ..DispatcherConfig::new("test")
    }
}

fn fixture_with(config: DispatcherConfig) -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::at_fixed_start());
    let sender = Arc::new(FakeSender::new());
    let signals = Arc::new(Signals::default());
    let service = WebhookService::new(store.clone(), store.clone(), sender.clone(), clock.clone(), signals.clone());
    let ports = DispatcherPorts {
        webhooks: store.clone(),
        deliveries: store.clone(),
        sender: sender.clone(),
        audit: AuditService::new(store.clone()),
        clock: clock.clone(),
        signals,
    };
    let dispatcher = WebhookDispatcher::new(ports, config);
    Fixture { store, clock, sender, service, dispatcher }
}

fn fixture() -> Fixture {
    fixture_with(config())
}

fn admin() -> Principal {
    Principal::system()
}

fn limited(projects: &[&str]) -> Principal {
    Principal {
        scopes: ScopeSet::new([Scope::WebhooksManage]).unwrap(),
        projects: ProjectAccess::Only(projects.iter().map(|p| project_name(p)).collect()),
        ..Principal::system()
    }
}

fn only(projects: &[&str]) -> ProjectAccess {
    ProjectAccess::Only(projects.iter().map(|p| project_name(p)).collect())
}

fn new_hook(url: &str, events: EventSet, projects: ProjectAccess) -> NewWebhook {
    NewWebhook { url: WebhookUrl::parse(url).unwrap(), events, projects }
}

async fn create(f: &Fixture) -> WebhookId {
    let hook = new_hook("https://hooks.example.com/a", EventSet::all(), ProjectAccess::All);
    f.service.create(&admin(), hook).await.unwrap().0.id
}

async fn only_delivery(f: &Fixture, id: WebhookId) -> domain::webhook::DeliveryDetail {
    let page = f.service.list_deliveries(&admin(), id, None, PageRequest::default()).await.unwrap();
    assert_eq!(page.items.len(), 1);
    f.service.get_delivery(&admin(), page.items[0].id).await.unwrap()
}

#[tokio::test]
async fn creation_shows_the_secret_once_and_refuses_private_targets() {
    let f = fixture();
    let (hook, secret) = f
        .service
        .create(&admin(), new_hook("https://hooks.example.com/a", EventSet::all(), ProjectAccess::All))
        .await
        .unwrap();
    assert!(secret.expose().starts_with("whsec_"));
    assert_eq!(hook.secret, secret);
    assert!(hook.enabled);
    let private = new_hook("http://10.0.0.1/hook", EventSet::all(), ProjectAccess::All);
    assert!(matches!(f.service.create(&admin(), private).await, Err(DomainError::Invalid(_))));
    let empty = new_hook("https://hooks.example.com/b", EventSet::all(), only(&[]));
    assert!(matches!(f.service.create(&admin(), empty).await, Err(DomainError::Invalid(_))));
    let reader = Principal { scopes: ScopeSet::new([Scope::ProjectsRead]).unwrap(), ..admin() };
    assert!(matches!(f.service.get(&reader, hook.id).await, Err(DomainError::Forbidden(_))));
}

#[tokio::test]
async fn keys_limited_to_projects_manage_only_subscriptions_within_them() {
    let f = fixture();
    let web_key = limited(&["web"]);
    let everything = new_hook("https://hooks.example.com/a", EventSet::all(), ProjectAccess::All);
    assert!(matches!(f.service.create(&web_key, everything.clone()).await, Err(DomainError::Forbidden(_))));
    let all_hook = f.service.create(&admin(), everything).await.unwrap().0;
    let web_hook = f
        .service
        .create(&web_key, new_hook("https://hooks.example.com/w", EventSet::all(), only(&["web"])))
        .await
        .unwrap()
        .0;
    let listed = f.service.list(&web_key, PageRequest::default()).await.unwrap();
    assert_eq!(listed.items.iter().map(|w| w.id).collect::<Vec<_>>(), vec![web_hook.id]);
    assert!(matches!(f.service.get(&web_key, all_hook.id).await, Err(DomainError::NotFound(_))));
    assert!(matches!(f.service.delete(&web_key, all_hook.id).await, Err(DomainError::NotFound(_))));
    assert_eq!(f.service.list(&admin(), PageRequest::default()).await.unwrap().items.len(), 2);
}

#[tokio::test]
async fn a_failed_attempt_is_retried_on_schedule_with_the_same_webhook_id() {
    let f = fixture();
    let id = create(&f).await;
    f.sender.script([answer(500)]);
    f.service.test(&admin(), id).await.unwrap();
    assert_eq!(f.dispatcher.run_once().await, 1);
    let detail = only_delivery(&f, id).await;
    assert_eq!(detail.delivery.status, DeliveryStatus::Pending);
    assert_eq!(detail.delivery.next_attempt_at, Some(f.clock.now() + TimeDelta::seconds(5)));
    assert_eq!(detail.attempts[0].status_code, Some(500));
    assert_eq!(f.dispatcher.run_once().await, 0, "not due for 5 s");
    f.clock.advance(TimeDelta::seconds(5));
    assert_eq!(f.dispatcher.run_once().await, 1);
    let detail = only_delivery(&f, id).await;
    assert_eq!(detail.delivery.status, DeliveryStatus::Succeeded);
    let codes: Vec<_> = detail.attempts.iter().map(|a| (a.number, a.status_code)).collect();
    assert_eq!(codes, vec![(1, Some(500)), (2, Some(200))]);
    let ids: BTreeSet<_> = f.sender.sent().iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids, BTreeSet::from([detail.delivery.id.to_string()]), "one webhook-id for every retry");
    let body: serde_json::Value = serde_json::from_str(&f.sender.sent()[0].payload).unwrap();
    assert_eq!(body["type"], "ping");
}

#[tokio::test]
async fn timeouts_429_and_retry_after_push_the_next_attempt_out() {
    let f = fixture();
    let id = create(&f).await;
    let mut slow = answer(503);
    slow.retry_after = Some(Duration::from_secs(120));
    f.sender.script([timeout(), answer(429), slow]);
    f.service.test(&admin(), id).await.unwrap();
    let mut waits = Vec::new();
    for _ in 0..3 {
        let start = f.clock.now();
        f.dispatcher.run_once().await;
        let next = only_delivery(&f, id).await.delivery.next_attempt_at.unwrap();
        waits.push((next - start).num_seconds());
        f.clock.advance(next - start);
    }
    assert_eq!(
        waits,
        vec![60, 60, 600],
        "timeout: the 60 s floor; 429: the floor over 60 s; 503 asking 120 s: the 600 s schedule wins"
    );
    let detail = only_delivery(&f, id).await;
    assert!(detail.attempts[0].error.as_deref().is_some_and(|e| e.starts_with("timeout")));
}

#[tokio::test]
async fn an_exhausted_schedule_fails_the_delivery() {
    let mut cfg = config();
    cfg.retry.schedule = RetrySchedule::new(vec![Duration::from_secs(5)]);
    let f = fixture_with(cfg);
    let id = create(&f).await;
    f.sender.set_default(answer(500));
    f.service.test(&admin(), id).await.unwrap();
    f.dispatcher.run_once().await;
    f.clock.advance(TimeDelta::seconds(5));
    f.dispatcher.run_once().await;
    let detail = only_delivery(&f, id).await;
    assert_eq!((detail.delivery.status, detail.delivery.attempts), (DeliveryStatus::Failed, 2));
    assert!(f.service.get(&admin(), id).await.unwrap().enabled, "two failures in 5 s disable nothing");
}

#[tokio::test]
async fn gone_disables_the_endpoint_with_a_reason_and_an_audit_record() {
    let f = fixture();
    let id = create(&f).await;
    f.sender.set_default(answer(410));
    f.service.test(&admin(), id).await.unwrap();
    f.service.test(&admin(), id).await.unwrap();
    f.dispatcher.run_once().await;
    let hook = f.service.get(&admin(), id).await.unwrap();
    assert!(!hook.enabled);
    assert!(hook.disabled_reason.as_deref().is_some_and(|r| r.contains("410")));
    let statuses: Vec<_> = f
        .service
        .list_deliveries(&admin(), id, None, PageRequest::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.status)
        .collect();
    assert_eq!(statuses, vec![DeliveryStatus::Dead, DeliveryStatus::Dead]);
    let filter = AuditFilter { action: Some("webhooks.disable".into()), ..AuditFilter::default() };
    let records = AuditLog::list(&*f.store, &filter, PageRequest::default()).await.unwrap();
    assert_eq!(records.items.len(), 1, "disabled (and recorded) once though two deliveries saw 410");
    assert_eq!(records.items[0].entry.resource, format!("webhook/{id}"));
    assert!(matches!(f.service.test(&admin(), id).await, Err(DomainError::Conflict(_))));
}

#[tokio::test]
async fn an_endpoint_failing_for_the_whole_threshold_is_disabled() {
    let mut cfg = config();
    cfg.retry.schedule = RetrySchedule::new(vec![Duration::from_secs(1200); 10]);
    let f = fixture_with(cfg);
    let id = create(&f).await;
    f.sender.set_default(answer(500));
    f.service.test(&admin(), id).await.unwrap();
    for round in 0..3 {
        f.dispatcher.run_once().await;
        assert!(f.service.get(&admin(), id).await.unwrap().enabled, "still within the hour after round {round}");
        f.clock.advance(TimeDelta::seconds(1200));
    }
    f.dispatcher.run_once().await;
    let hook = f.service.get(&admin(), id).await.unwrap();
    assert!(!hook.enabled, "an hour of failures disables it");
    assert!(hook.disabled_reason.as_deref().is_some_and(|r| r.contains("failed since")));
    let enabled = f.service.update(&admin(), id, WebhookPatch { enabled: Some(true), ..WebhookPatch::default() }).await;
    assert_eq!(enabled.map(|w| (w.enabled, w.failing_since, w.disabled_reason)), Ok((true, None, None)));
}

#[tokio::test]
async fn an_open_breaker_holds_back_only_its_endpoint() {
    let mut cfg = config();
    cfg.breaker = BreakerConfig {
        window: Duration::from_secs(60),
        min_calls: 2,
        failure_rate: 0.5,
        open_for: Duration::from_secs(120),
        probes: 1,
    };
    let f = fixture_with(cfg);
    let bad = create(&f).await;
    let good = f
        .service
        .create(&admin(), new_hook("https://good.example.com/", EventSet::all(), ProjectAccess::All))
        .await
        .unwrap()
        .0
        .id;
    f.sender.set_default(timeout());
    f.service.test(&admin(), bad).await.unwrap();
    f.service.test(&admin(), bad).await.unwrap();
    f.dispatcher.run_once().await;
    assert_eq!(f.sender.sent().len(), 2);
    f.sender.set_default(answer(200));
    f.clock.advance(TimeDelta::seconds(60));
    f.service.test(&admin(), good).await.unwrap();
    f.dispatcher.run_once().await;
    let hosts: Vec<String> = f.sender.sent()[2..].iter().map(|r| r.url.as_str().to_owned()).collect();
    assert_eq!(
        hosts,
        vec!["https://good.example.com/".to_owned()],
        "the open breaker keeps the bad endpoint's retries back"
    );
    f.clock.advance(TimeDelta::seconds(61));
    f.dispatcher.run_once().await;
    let probes = f.sender.sent().len() - 3;
    assert_eq!(probes, 1, "half-open: one probe, the other delivery waits");
    f.clock.advance(TimeDelta::seconds(1));
    f.dispatcher.run_once().await;
    assert_eq!(f.sender.sent().len(), 5, "the probe succeeded, the breaker closed");
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_grace_period() {
    let f = fixture();
    let id = create(&f).await;
    let old = f.service.get(&admin(), id).await.unwrap().secret;
    let (hook, new) = f.service.rotate_secret(&admin(), id, Duration::from_secs(3600)).await.unwrap();
    assert_ne!(new, old);
    assert_eq!(hook.previous_secret.map(|p| p.secret), Some(old.clone()));
    f.service.test(&admin(), id).await.unwrap();
    f.dispatcher.run_once().await;
    assert_eq!(f.sender.sent()[0].secrets, vec![new.clone(), old]);
    f.clock.advance(TimeDelta::hours(2));
    f.service.test(&admin(), id).await.unwrap();
    f.dispatcher.run_once().await;
    assert_eq!(f.sender.sent()[1].secrets, vec![new], "the old secret stops signing after the grace");
    let too_long = f.service.rotate_secret(&admin(), id, MAX_ROTATION_GRACE + Duration::from_secs(1)).await;
    assert!(matches!(too_long, Err(DomainError::Invalid(_))));
}

#[tokio::test]
async fn redelivery_sends_the_event_again_under_a_new_id() {
    let f = fixture();
    let id = create(&f).await;
    f.service.test(&admin(), id).await.unwrap();
    f.dispatcher.run_once().await;
    let first = only_delivery(&f, id).await.delivery;
    let again = f.service.redeliver(&admin(), first.id).await.unwrap();
    assert_eq!((again.redelivery_of, again.event_id), (Some(first.id), first.event_id));
    f.dispatcher.run_once().await;
    let sent = f.sender.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].message_id, again.id.to_string());
    assert_eq!(sent[0].payload, sent[1].payload);
}

#[tokio::test]
async fn command_events_reach_matching_subscriptions_only() {
    let f = fixture();
    for name in ["web", "api"] {
        ProjectRepository::create(&*f.store, &sample_project(name, 1)).await.unwrap();
    }
    let finished_only = EventSet::new([EventType::CommandSucceeded]).unwrap();
    f.service.create(&admin(), new_hook("https://a.example.com/", finished_only, ProjectAccess::All)).await.unwrap();
    f.service.create(&admin(), new_hook("https://b.example.com/", EventSet::all(), only(&["web"]))).await.unwrap();
    let api = ProjectRepository::get(&*f.store, &project_name("api")).await.unwrap();
    let queued = CommandRepository::enqueue(&*f.store, sample_command(&api, Priority::Normal, None)).await.unwrap();
    f.dispatcher.run_once().await;
    assert!(f.sender.sent().is_empty(), "api's command.queued matches neither");
    let web = ProjectRepository::get(&*f.store, &project_name("web")).await.unwrap();
    CommandRepository::enqueue(&*f.store, sample_command(&web, Priority::Normal, None)).await.unwrap();
    f.dispatcher.run_once().await;
    let sent = f.sender.sent();
    assert_eq!(sent.iter().map(|r| r.url.as_str()).collect::<Vec<_>>(), vec!["https://b.example.com/"]);
    let body: serde_json::Value = serde_json::from_str(&sent[0].payload).unwrap();
    assert_eq!(body["type"], "command.queued");
    assert_ne!(body["data"]["id"], queued.command.id.to_string());
}

#[tokio::test]
async fn the_loop_delivers_on_a_wake_and_stops_on_shutdown() {
    let f = fixture();
    let id = create(&f).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Arc::clone(&f.dispatcher).run(shutdown.clone()));
    f.service.test(&admin(), id).await.unwrap();
    for _ in 0..100 {
        if !f.sender.sent().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(f.sender.sent().len(), 1, "woken by the ping, long before the 1 s poll");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), running).await.expect("stops promptly").unwrap();
}

#[tokio::test]
async fn pod_events_announce_each_change_once_not_each_sighting() {
    use domain::pod::{PodPhase, PodStatus};
    use domain::webhook::DeliveryQueue;

    let f = fixture();
    let id = create(&f).await;
    let announcer = WebhookService::new(
        f.store.clone(),
        f.store.clone(),
        f.sender.clone(),
        f.clock.clone(),
        Arc::new(Signals::default()),
    );
    let events = crate::pods::PodEvents::new(Arc::new(announcer));
    let web = project_name("web");
    let status =
        |phase: PodPhase, ready: bool| PodStatus { phase, ready, pod_name: None, started_at: None, reason: None };
    for seen in [
        status(PodPhase::Pending, false),
        status(PodPhase::Running, true),
        status(PodPhase::Running, true),
        status(PodPhase::Stopping, false),
        status(PodPhase::Stopped, false),
        status(PodPhase::Running, true),
    ] {
        events.observed(&web, &seen).await;
    }
    f.store.fan_out(f.clock.now(), 100).await.unwrap();
    let page = f.service.list_deliveries(&admin(), id, None, PageRequest::default()).await.unwrap();
    let mut kinds = Vec::new();
    for delivery in page.items {
        kinds.push(f.service.get_delivery(&admin(), delivery.id).await.unwrap().event.event_type.as_str());
    }
    kinds.sort_unstable();
    assert_eq!(kinds, ["pod.ready", "pod.ready", "pod.stopped"], "ready, stopped, ready again: three events");
}

/// Reports a fixed list of changes, the way two leaders in turn might: with a repeat.
struct ScriptedWatch {
    changes: Vec<domain::pod::PodChange>,
    taken: Mutex<Vec<bool>>,
}

#[async_trait]
impl domain::ports::PodWatch for ScriptedWatch {
    async fn run(
        &self,
        _holder: &domain::ids::WorkerId,
        sink: &dyn domain::ports::PodChangeSink,
        cancel: CancellationToken,
    ) {
        for change in &self.changes {
            let taken = sink.changed(change).await.is_ok();
            self.taken.lock().unwrap().push(taken);
        }
        cancel.cancelled().await;
    }
}

#[tokio::test]
async fn a_watched_pod_change_is_one_event_however_often_it_is_reported() {
    use domain::pod::{PodChange, PodPhase, PodStatus};
    use domain::webhook::DeliveryQueue;

    let f = fixture();
    let id = create(&f).await;
    let announcer = WebhookService::new(
        f.store.clone(),
        f.store.clone(),
        f.sender.clone(),
        f.clock.clone(),
        Arc::new(Signals::default()),
    );
    let events = crate::pods::PodEvents::cluster_watched(Arc::new(announcer));
    let change = |phase: PodPhase, occurrence: &str| PodChange {
        project: project_name("web"),
        status: PodStatus { phase, ready: phase == PodPhase::Running, ..PodStatus::stopped() },
        occurrence: occurrence.into(),
    };
    // What a replica sees itself is the watch's to announce, not the replica's.
    events.observed(&project_name("web"), &change(PodPhase::Running, "-").status).await;
    let script = Arc::new(ScriptedWatch {
        changes: vec![
            change(PodPhase::Running, "u1/ready/0"),
            change(PodPhase::Failed, "u1/failed/0"),
            change(PodPhase::Failed, "u1/failed/0"),
            change(PodPhase::Stopped, "u1/stopped"),
        ],
        taken: Mutex::default(),
    });
    let service =
        crate::pod_watch::PodWatchService::new(script.clone(), events, domain::ids::WorkerId::new("replica-1"));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(service.run(shutdown.clone()));
    while script.taken.lock().unwrap().len() < 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(2), running).await.expect("stops").unwrap();
    assert_eq!(*script.taken.lock().unwrap(), [true; 4], "a repeat is taken (already recorded), not refused");
    f.store.fan_out(f.clock.now(), 100).await.unwrap();
    let page = f.service.list_deliveries(&admin(), id, None, PageRequest::default()).await.unwrap();
    let mut kinds = Vec::new();
    for delivery in page.items {
        kinds.push(f.service.get_delivery(&admin(), delivery.id).await.unwrap().event.event_type.as_str());
    }
    kinds.sort_unstable();
    assert_eq!(kinds, ["pod.failed", "pod.ready", "pod.stopped"], "one event per change");
}
