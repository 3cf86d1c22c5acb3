//! The webhook store contract: one suite over `WebhookRepository`, `DeliveryQueue` and the
//! outbox writes of the command ports, run by the in-memory store, SQLite and Postgres.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeDelta;

use super::{now_micros, project_name, sample_command, sample_project, Store};
use crate::api_key::ProjectAccess;
use crate::command::{Command, CommandStatus, Completion, Idempotency, Priority, Termination, TerminationReason};
use crate::ids::WorkerId;
use crate::output::CommandOutput;
use crate::pagination::{Limit, PageRequest};
use crate::ports::{CommandRepository, ProjectRepository};
use crate::project::ProjectName;
use crate::webhook::{
    command_event, AttemptRecord, AttemptReport, Delivery, DeliveryFilter, DeliveryId, DeliveryQueue, DeliveryStatus,
    EventId, EventPayload, EventSet, EventType, LeaseRequest, LeasedDelivery, NextStep, OutboxEvent,
    PreviousWebhookSecret, Webhook, WebhookId, WebhookRepository, WebhookSecret, WebhookUrl,
};
use crate::{DomainError, Timestamp};

mod dispatch;

/// Every port a webhook-capable store provides.
pub trait WebhookStore: Store + WebhookRepository + DeliveryQueue {}

impl<T: Store + WebhookRepository + DeliveryQueue> WebhookStore for T {}

const LEASE: Duration = Duration::from_secs(60);

/// An enabled subscription to `events` of `projects` with a fresh secret.
pub fn sample_webhook(events: EventSet, projects: ProjectAccess) -> Webhook {
    let id = WebhookId::generate();
    let now = now_micros();
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(id.as_uuid().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    Webhook {
        id,
        url: WebhookUrl::parse(&format!("https://hooks.example.com/rdev/{id}")).expect("valid url"),
        events,
        projects,
        secret: WebhookSecret::from_key(&key).expect("valid key"),
        previous_secret: None,
        enabled: true,
        disabled_reason: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    }
}

/// An event of `event_type` for `project` (or aimed at `target`) with a small payload.
pub fn sample_event(event_type: EventType, project: Option<&str>, target: Option<WebhookId>) -> OutboxEvent {
    let at = now_micros();
    OutboxEvent {
        id: EventId::generate(),
        event_type,
        project: project.map(project_name),
        target,
        created_at: at,
        payload: EventPayload::new(event_type, at, serde_json::json!({"sample": true})).expect("small payload"),
    }
}

fn only(names: &[&str]) -> ProjectAccess {
    ProjectAccess::Only(names.iter().map(|n| project_name(n)).collect::<BTreeSet<ProjectName>>())
}

fn lease_at(now: Timestamp, limit: u32) -> LeaseRequest {
    LeaseRequest { owner: "contract".into(), now, lease: LEASE, limit, exclude: Vec::new() }
}

fn report(at: Timestamp, status: Option<u16>, snippet: Option<&str>, error: Option<&str>) -> AttemptReport {
    AttemptReport {
        at,
        status_code: status,
        latency_ms: 12,
        response_snippet: snippet.map(str::to_owned),
        error: error.map(str::to_owned),
    }
}

async fn deliveries_of<S: WebhookStore>(store: &S, webhook: WebhookId) -> Vec<Delivery> {
    let filter = DeliveryFilter { webhook, status: None };
    let page = PageRequest { after: None, limit: Limit::new(200).expect("limit") };
    store.list_deliveries(&filter, page).await.expect("list deliveries").items
}

/// Fans out and returns the sorted types of deliveries `webhook` got since the last call.
async fn new_types<S: WebhookStore>(store: &S, webhook: WebhookId, seen: &mut BTreeSet<DeliveryId>) -> Vec<EventType> {
    store.fan_out(now_micros(), 1000).await.expect("fan out");
    let mut types: Vec<EventType> =
        deliveries_of(store, webhook).await.into_iter().filter(|d| seen.insert(d.id)).map(|d| d.event_type).collect();
    types.sort();
    types
}

async fn lease_one<S: WebhookStore>(store: &S, now: Timestamp) -> LeasedDelivery {
    let mut leased = store.lease_due(&lease_at(now, 1)).await.expect("lease");
    assert_eq!(leased.len(), 1, "one due delivery expected");
    leased.remove(0)
}

/// Runs every scenario of the webhook store contract on fresh stores from `fresh`.
pub async fn webhook_store_contract<S: WebhookStore, F: Fn() -> Fut, Fut: Future<Output = S>>(fresh: F) {
    subscriptions_crud(fresh().await).await;
    command_transitions_write_their_events(fresh().await).await;
    command_events_carry_the_domain_payload(fresh().await).await;
    fan_out_respects_filters(fresh().await).await;
    fan_out_and_leases_are_exclusive(Arc::new(fresh().await)).await;
    dispatch::fan_out_and_lease_leases_what_it_creates(fresh().await).await;
    dispatch::fan_out_and_lease_is_exclusive(Arc::new(fresh().await)).await;
    attempts_are_recorded_in_order(fresh().await).await;
    attempts_are_recorded_in_batches(fresh().await).await;
    redeliver_and_listing(fresh().await).await;
    disabling_kills_pending_deliveries(fresh().await).await;
    purge_keeps_pending_deliveries(fresh().await).await;
}

async fn subscriptions_crud<S: WebhookStore>(store: S) {
    let hooks: Vec<Webhook> = (0..3).map(|_| sample_webhook(EventSet::all(), ProjectAccess::All)).collect();
    for w in &hooks {
        WebhookRepository::create(&store, w).await.expect("create webhook");
    }
    assert!(
        matches!(WebhookRepository::create(&store, &hooks[0]).await, Err(DomainError::Conflict(_))),
        "a taken id MUST be a Conflict"
    );
    assert_eq!(WebhookRepository::get(&store, hooks[1].id).await, Ok(hooks[1].clone()), "stored as given");
    assert!(matches!(WebhookRepository::get(&store, WebhookId::generate()).await, Err(DomainError::NotFound(_))));

    let two = PageRequest { after: None, limit: Limit::new(2).expect("limit") };
    let first = WebhookRepository::list(&store, two).await.expect("list");
    assert_eq!(first.items, hooks[..2].to_vec(), "ordered by id");
    let rest = WebhookRepository::list(&store, PageRequest { after: first.next, ..two }).await.expect("list");
    assert_eq!(rest.items, hooks[2..].to_vec());
    assert_eq!(rest.next, None);

    let mut changed = hooks[0].clone();
    changed.url = WebhookUrl::parse("https://other.example.com/x").expect("url");
    changed.events = EventSet::new([EventType::CommandFailed]).expect("events");
    changed.projects = only(&["web"]);
    changed.updated_at = now_micros() + TimeDelta::seconds(1);
    let mut ignored = changed.clone();
    ignored.enabled = false;
    ignored.secret = WebhookSecret::from_key(&[9; 32]).expect("key");
    let updated = WebhookRepository::update(&store, &ignored).await.expect("update");
    assert_eq!(updated, changed, "update replaces url, events, projects and updated_at only");
    assert_eq!(WebhookRepository::get(&store, hooks[0].id).await, Ok(changed.clone()));
    let mut ghost = changed.clone();
    ghost.id = WebhookId::generate();
    assert!(matches!(WebhookRepository::update(&store, &ghost).await, Err(DomainError::NotFound(_))));

    let at = now_micros();
    let new_secret = WebhookSecret::from_key(&[3; 48]).expect("key");
    let previous = PreviousWebhookSecret { secret: changed.secret.clone(), valid_until: at + TimeDelta::hours(1) };
    let rotated = store.rotate_secret(changed.id, &new_secret, Some(&previous), at).await.expect("rotate");
    assert_eq!((rotated.secret.clone(), rotated.previous_secret.clone()), (new_secret.clone(), Some(previous)));
    assert_eq!(rotated.updated_at, at);
    let rotated = store.rotate_secret(changed.id, &new_secret, None, at).await.expect("rotate");
    assert_eq!(rotated.previous_secret, None);
    assert!(matches!(
        store.rotate_secret(WebhookId::generate(), &new_secret, None, at).await,
        Err(DomainError::NotFound(_))
    ));

    WebhookRepository::delete(&store, hooks[2].id).await.expect("delete");
    assert!(matches!(WebhookRepository::get(&store, hooks[2].id).await, Err(DomainError::NotFound(_))));
    assert!(matches!(WebhookRepository::delete(&store, hooks[2].id).await, Err(DomainError::NotFound(_))));
    assert!(matches!(store.enable(hooks[2].id, at).await, Err(DomainError::NotFound(_))));
    assert!(matches!(store.disable(hooks[2].id, "x", at).await, Err(DomainError::NotFound(_))));
}

async fn command_transitions_write_their_events<S: WebhookStore>(store: S) {
    use EventType::*;
    let web = sample_project("web", 1);
    ProjectRepository::create(&store, &web).await.expect("project");
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("webhook");
    let seen = &mut BTreeSet::new();
    let worker = WorkerId::new("contract");

    let mut first = sample_command(&web, Priority::Normal, None);
    first.idempotency = Some(Idempotency::new("once", "fp".into()).expect("key"));
    CommandRepository::enqueue(&store, first.clone()).await.expect("enqueue");
    let queued = deliveries_of(&store, hook.id).await;
    assert!(queued.is_empty(), "nothing is delivered before fan-out");
    assert_eq!(new_types(&store, hook.id, seen).await, vec![CommandQueued], "enqueue writes command.queued");
    let delivery = deliveries_of(&store, hook.id).await.remove(0);
    let event = store.get_delivery(delivery.id).await.expect("delivery").event;
    assert_eq!(event.project, Some(web.name.clone()));
    let body: serde_json::Value = serde_json::from_str(event.payload.as_str()).expect("json payload");
    assert_eq!(body["type"], "command.queued");
    assert_eq!(body["data"]["id"], first.id.to_string());
    assert_eq!(body["data"]["status"], "queued");

    let mut replay = sample_command(&web, Priority::Normal, None);
    replay.idempotency = first.idempotency.clone();
    assert!(CommandRepository::enqueue(&store, replay).await.expect("replay").replayed);
    assert_eq!(new_types(&store, hook.id, seen).await, vec![], "a replayed enqueue MUST write no event");

    let claim = store.claim_next(&worker, now_micros(), LEASE).await.expect("claim").expect("claimable");
    assert_eq!(new_types(&store, hook.id, seen).await, vec![CommandStarted], "claim writes command.started");
    let done = Termination::Exited(0).completion();
    let out = CommandOutput::default();
    let stale = store.finish(claim.command.id, claim.fence + 1000, &done, &out, now_micros()).await.expect("finish");
    assert_eq!(stale, None);
    assert_eq!(new_types(&store, hook.id, seen).await, vec![], "a stale finish MUST write no event");
    store.finish(claim.command.id, claim.fence, &done, &out, now_micros()).await.expect("finish").expect("held");
    assert_eq!(new_types(&store, hook.id, seen).await, vec![CommandSucceeded]);

    let second = CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None)).await.expect("q");
    CommandRepository::request_cancel(&store, second.command.id, now_micros()).await.expect("cancel");
    assert_eq!(new_types(&store, hook.id, seen).await, vec![CommandQueued, CommandCancelled]);

    for (termination, expected) in [
        (Termination::TimedOut, CommandTimedOut),
        (Termination::Exited(2), CommandFailed),
        (Termination::Cancelled, CommandCancelled),
    ] {
        CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None)).await.expect("enqueue");
        let claim = store.claim_next(&worker, now_micros(), LEASE).await.expect("claim").expect("claimable");
        CommandRepository::request_cancel(&store, claim.command.id, now_micros()).await.expect("cancel running");
        assert_eq!(
            new_types(&store, hook.id, seen).await,
            vec![CommandQueued, CommandStarted],
            "a cancel request of a running command is no event"
        );
        let completion = termination.completion();
        store.finish(claim.command.id, claim.fence, &completion, &out, now_micros()).await.expect("finish");
        assert_eq!(new_types(&store, hook.id, seen).await, vec![expected]);
    }

    CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None)).await.expect("enqueue");
    let start = now_micros();
    store.claim_next(&worker, start, Duration::from_secs(1)).await.expect("claim").expect("claimable");
    let lost = store.reap_expired(start + TimeDelta::seconds(2)).await.expect("reap");
    assert_eq!(lost.len(), 1);
    assert_eq!(new_types(&store, hook.id, seen).await, vec![CommandQueued, CommandStarted, CommandLost]);
    assert!(store.reap_expired(start + TimeDelta::seconds(3)).await.expect("reap").is_empty());
    assert_eq!(new_types(&store, hook.id, seen).await, vec![]);
}

/// Fans out and returns the one payload `webhook` got since the last call.
async fn new_payload<S: WebhookStore>(
    store: &S,
    webhook: WebhookId,
    seen: &mut BTreeSet<DeliveryId>,
) -> serde_json::Value {
    store.fan_out(now_micros(), 1000).await.expect("fan out");
    let fresh: Vec<Delivery> = deliveries_of(store, webhook).await.into_iter().filter(|d| seen.insert(d.id)).collect();
    assert_eq!(fresh.len(), 1, "one new delivery expected");
    let event = store.get_delivery(fresh[0].id).await.expect("delivery").event;
    serde_json::from_str(event.payload.as_str()).expect("json payload")
}

fn domain_payload(command: &Command, at: Timestamp) -> serde_json::Value {
    serde_json::from_str(command_event(command, at).payload.as_str()).expect("json payload")
}

/// Stores that build the outbox payload themselves (in SQL, say) MUST build what
/// `command_event` builds, field for field, long errors cut the same way.
async fn command_events_carry_the_domain_payload<S: WebhookStore>(store: S) {
    let web = sample_project("web", 1);
    ProjectRepository::create(&store, &web).await.expect("project");
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("webhook");
    let seen = &mut BTreeSet::new();

    let queued = CommandRepository::enqueue(&store, sample_command(&web, Priority::High, None)).await.expect("q");
    let expected = domain_payload(&queued.command, queued.command.queued_at);
    assert_eq!(new_payload(&store, hook.id, seen).await, expected, "command.queued");

    let started_at = now_micros();
    let claim = store.claim_next(&WorkerId::new("contract"), started_at, LEASE).await.expect("claim").expect("one");
    assert_eq!(claim.command.status, CommandStatus::Running);
    let expected = domain_payload(&claim.command, started_at);
    assert_eq!(new_payload(&store, hook.id, seen).await, expected, "command.started");

    let failed = Completion {
        status: CommandStatus::Failed,
        exit_code: Some(3),
        reason: TerminationReason::Exited,
        error: Some("é∑".repeat(3000)),
    };
    let finished_at = now_micros();
    let out = CommandOutput::default();
    let ended = store.finish(claim.command.id, claim.fence, &failed, &out, finished_at).await.expect("finish");
    let ended = ended.expect("held");
    let expected = domain_payload(&ended, finished_at);
    assert_eq!(new_payload(&store, hook.id, seen).await, expected, "command.failed with a long error");
}

async fn fan_out_respects_filters<S: WebhookStore>(store: S) {
    use EventType::*;
    let a = sample_webhook(EventSet::new([CommandSucceeded]).expect("events"), ProjectAccess::All);
    let b = sample_webhook(EventSet::all(), only(&["web"]));
    let mut c = sample_webhook(EventSet::all(), ProjectAccess::All);
    c.enabled = false;
    c.disabled_reason = Some("a client disabled it".into());
    for w in [&a, &b, &c] {
        WebhookRepository::create(&store, w).await.expect("create");
    }
    let events = [
        sample_event(CommandSucceeded, Some("api"), None),
        sample_event(CommandQueued, Some("web"), None),
        sample_event(CommandSucceeded, Some("web"), None),
        sample_event(PodFailed, Some("web"), None),
        sample_event(Ping, None, Some(c.id)),
        sample_event(Ping, None, Some(a.id)),
        sample_event(PodReady, None, None),
    ];
    for e in &events {
        store.append_event(e).await.expect("append");
    }
    let done = store.fan_out(now_micros(), 100).await.expect("fan out");
    assert_eq!((done.events, done.deliveries), (7, 6));
    assert_eq!(store.fan_out(now_micros(), 100).await.expect("fan out").events, 0, "each event fans out once");
    let ids = |ds: Vec<Delivery>| ds.into_iter().map(|d| d.event_id).collect::<BTreeSet<_>>();
    let expect = |is: &[usize]| is.iter().map(|i| events[*i].id).collect::<BTreeSet<_>>();
    assert_eq!(ids(deliveries_of(&store, a.id).await), expect(&[0, 2, 5]), "type filter; pings go to their target");
    assert_eq!(ids(deliveries_of(&store, b.id).await), expect(&[1, 2, 3]), "project filter");
    assert_eq!(ids(deliveries_of(&store, c.id).await), expect(&[]), "disabled endpoints get nothing");
    let d = deliveries_of(&store, a.id).await.remove(0);
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(d.attempts, 0);
    assert_eq!(store.get_delivery(d.id).await.expect("detail").event, events[0], "events are stored as given");

    for _ in 0..3 {
        store.append_event(&sample_event(PodReady, Some("web"), None)).await.expect("append");
    }
    let again = store.append_event(&events[0]).await;
    assert!(matches!(again, Err(DomainError::Conflict(_))), "an event id is stored once: {again:?}");
    assert_eq!(store.fan_out(now_micros(), 2).await.expect("fan out").events, 2, "at most limit events");
    assert_eq!(store.fan_out(now_micros(), 2).await.expect("fan out").events, 1);
}

async fn fan_out_and_leases_are_exclusive<S: WebhookStore>(store: Arc<S>) {
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&*store, &hook).await.expect("create");
    for _ in 0..30 {
        store.append_event(&sample_event(EventType::PodReady, Some("web"), None)).await.expect("append");
    }
    let fan_outs: Vec<_> = (0..3)
        .map(|_| {
            let s = Arc::clone(&store);
            tokio::spawn(async move { s.fan_out(now_micros(), 1000).await.expect("fan out") })
        })
        .collect();
    let (mut events, mut deliveries) = (0, 0);
    for f in fan_outs {
        let done = f.await.expect("task");
        events += done.events;
        deliveries += done.deliveries;
    }
    assert_eq!((events, deliveries), (30, 30), "concurrent fan-outs dispatch each event exactly once");

    let now = now_micros();
    let leases: Vec<_> = (0..6)
        .map(|i| {
            let s = Arc::clone(&store);
            tokio::spawn(async move {
                let request = LeaseRequest { owner: format!("d{i}"), now, lease: LEASE, limit: 10, exclude: vec![] };
                s.lease_due(&request).await.expect("lease")
            })
        })
        .collect();
    let mut leased = Vec::new();
    for l in leases {
        leased.extend(l.await.expect("task"));
    }
    let ids: BTreeSet<_> = leased.iter().map(|l| l.delivery.id).collect();
    assert_eq!((leased.len(), ids.len()), (30, 30), "every delivery leased once, none twice");
    assert!(leased.iter().all(|l| l.webhook == hook && l.lease_until == now + TimeDelta::seconds(60)));
    assert!(store.lease_due(&lease_at(now + TimeDelta::seconds(59), 100)).await.expect("lease").is_empty());

    let later = now + TimeDelta::seconds(61);
    let excluded = LeaseRequest { exclude: vec![hook.id], ..lease_at(later, 100) };
    assert!(store.lease_due(&excluded).await.expect("lease").is_empty(), "excluded endpoints are skipped");
    let again = store.lease_due(&lease_at(later, 100)).await.expect("lease");
    assert_eq!(again.len(), 30, "expired leases can be taken again");
    let old = &leased[0];
    let new_fence = again.iter().find(|l| l.delivery.id == old.delivery.id).map(|l| l.fence).expect("re-leased");
    assert!(new_fence > old.fence, "a new lease has a higher fence");
    let r = report(later, Some(200), None, None);
    assert_eq!(store.record_attempt(old.delivery.id, old.fence, &r, NextStep::Succeeded).await, Ok(None));
    assert!(
        store.get_delivery(old.delivery.id).await.expect("detail").attempts.is_empty(),
        "stale writes change nothing"
    );
}

async fn attempts_are_recorded_in_order<S: WebhookStore>(store: S) {
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("create");
    store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("append");
    store.fan_out(now_micros(), 10).await.expect("fan out");
    let t1 = now_micros();
    let first = lease_one(&store, t1).await;
    assert_eq!(first.delivery.next_attempt_at.map(|n| n <= t1), Some(true));

    let long = "é".repeat(15 * 1024);
    let r1 = report(t1, Some(500), Some(&long), None);
    let retry_at = t1 + TimeDelta::seconds(5);
    let d = store.record_attempt(first.delivery.id, first.fence, &r1, NextStep::Retry { at: retry_at }).await;
    let d = d.expect("record").expect("held");
    assert_eq!(
        (d.status, d.attempts, d.next_attempt_at, d.last_attempt_at),
        (DeliveryStatus::Pending, 1, Some(retry_at), Some(t1))
    );
    assert_eq!(WebhookRepository::get(&store, hook.id).await.expect("get").failing_since, Some(t1));
    let again = store.record_attempt(first.delivery.id, first.fence, &r1, NextStep::Succeeded).await;
    assert_eq!(again, Ok(None), "a recorded attempt ends the lease");
    assert!(
        store.lease_due(&lease_at(retry_at - TimeDelta::milliseconds(1), 10)).await.expect("lease").is_empty(),
        "not due yet"
    );

    let second = lease_one(&store, retry_at).await;
    assert!(second.fence > first.fence);
    let t2 = retry_at + TimeDelta::seconds(15);
    let r2 = report(t2, None, None, Some("timed out after 15 s"));
    let d = store.record_attempt(second.delivery.id, second.fence, &r2, NextStep::Retry { at: t2 }).await;
    assert_eq!(d.expect("record").expect("held").attempts, 2);
    assert_eq!(
        WebhookRepository::get(&store, hook.id).await.expect("get").failing_since,
        Some(t1),
        "kept while failing"
    );

    let third = lease_one(&store, t2).await;
    let r3 = report(t2, Some(204), Some("ok"), None);
    let d = store.record_attempt(third.delivery.id, third.fence, &r3, NextStep::Succeeded).await;
    let d = d.expect("record").expect("held");
    assert_eq!((d.status, d.attempts, d.next_attempt_at), (DeliveryStatus::Succeeded, 3, None));
    assert_eq!(WebhookRepository::get(&store, hook.id).await.expect("get").failing_since, None, "cleared by a success");
    let detail = store.get_delivery(d.id).await.expect("detail");
    let numbers: Vec<u32> = detail.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(detail.attempts[0], r1.clone().numbered(1), "snippets are cut at 20 KiB on a char boundary");
    assert!(detail.attempts[0]
        .response_snippet
        .as_ref()
        .is_some_and(|s| s.len() <= 20 * 1024 && s.len() > 20 * 1024 - 2));
    assert_eq!(detail.attempts[1], r2.clone().numbered(2));
    assert_eq!(detail.attempts[2], r3.clone().numbered(3));
    let unknown = DeliveryId::generate();
    let last = store.last_attempts(&[unknown, d.id]).await.expect("last attempts");
    assert_eq!(last, vec![(d.id, r3.clone().numbered(3))], "only the latest attempt, only of known deliveries");
    assert_eq!(store.last_attempts(&[]).await.expect("none"), Vec::new());
    assert_eq!(
        store.record_attempt(d.id, third.fence, &r1, NextStep::Succeeded).await,
        Ok(None),
        "finished deliveries take no attempts"
    );
    assert!(matches!(
        store.record_attempt(DeliveryId::generate(), 1, &r1, NextStep::Succeeded).await,
        Err(DomainError::NotFound(_))
    ));

    for _ in 0..2 {
        store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("append");
    }
    store.fan_out(now_micros(), 10).await.expect("fan out");
    let now = now_micros();
    let failing = lease_one(&store, now).await;
    let d = store.record_attempt(failing.delivery.id, failing.fence, &r2, NextStep::Failed).await;
    assert_eq!(d.expect("record").expect("held").status, DeliveryStatus::Failed);

    let released = lease_one(&store, now).await;
    let back_at = now + TimeDelta::seconds(30);
    assert_eq!(store.release(released.delivery.id, released.fence, back_at).await, Ok(true));
    assert_eq!(store.release(released.delivery.id, released.fence, back_at).await, Ok(false));
    let detail = store.get_delivery(released.delivery.id).await.expect("detail");
    assert_eq!(
        (detail.delivery.status, detail.delivery.attempts, detail.delivery.next_attempt_at),
        (DeliveryStatus::Pending, 0, Some(back_at))
    );
    assert_eq!(store.record_attempt(released.delivery.id, released.fence, &r3, NextStep::Succeeded).await, Ok(None));
    assert!(store.lease_due(&lease_at(now, 10)).await.expect("lease").is_empty(), "released until back_at");
    assert_eq!(lease_one(&store, back_at).await.delivery.id, released.delivery.id);
}

fn record(leased: &LeasedDelivery, report: AttemptReport, next: NextStep) -> AttemptRecord {
    AttemptRecord { id: leased.delivery.id, fence: leased.fence, report, next }
}

/// `record_attempts` gives each item what `record_attempt` would have given it, in order, in
/// one call: stale fences and unknown ids affect only their own item.
async fn attempts_are_recorded_in_batches<S: WebhookStore>(store: S) {
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    let other = sample_webhook(EventSet::all(), ProjectAccess::All);
    for (w, n) in [(&hook, 3), (&other, 1)] {
        WebhookRepository::create(&store, w).await.expect("create");
        for _ in 0..n {
            store.append_event(&sample_event(EventType::Ping, None, Some(w.id))).await.expect("append");
        }
    }
    store.fan_out(now_micros(), 10).await.expect("fan out");
    let t0 = now_micros();
    let leased = store.lease_due(&lease_at(t0, 10)).await.expect("lease");
    assert_eq!(leased.len(), 4);
    let (mine, theirs): (Vec<_>, Vec<_>) = leased.into_iter().partition(|l| l.webhook.id == hook.id);
    store.disable(other.id, "a client disabled it", t0).await.expect("disable");
    assert_eq!(store.record_attempts(&[]).await, Ok(Vec::new()), "an empty batch records nothing");

    let (t1, t2) = (t0 + TimeDelta::milliseconds(1), t0 + TimeDelta::milliseconds(2));
    let long = "é".repeat(15 * 1024);
    let ok = report(t1, Some(200), Some(&long), None);
    let failed = report(t2, Some(500), None, Some("server error"));
    let retry_at = t2 + TimeDelta::seconds(5);
    let mut stale = record(&mine[2], ok.clone(), NextStep::Succeeded);
    stale.fence += 1000;
    let unknown = AttemptRecord { id: DeliveryId::generate(), ..stale.clone() };
    let batch = [
        record(&mine[0], ok.clone(), NextStep::Succeeded),
        record(&mine[1], failed.clone(), NextStep::Retry { at: retry_at }),
        stale,
        unknown,
        record(&theirs[0], failed.clone(), NextStep::Retry { at: retry_at }),
    ];
    let results = store.record_attempts(&batch).await.expect("record a batch");
    assert_eq!(results.len(), 5, "one result per item, in order");
    let first = results[0].clone().expect("recorded").expect("held");
    assert_eq!((first.id, first.status, first.attempts), (mine[0].delivery.id, DeliveryStatus::Succeeded, 1));
    let second = results[1].clone().expect("recorded").expect("held");
    assert_eq!(
        (second.id, second.status, second.attempts, second.next_attempt_at, second.last_attempt_at),
        (mine[1].delivery.id, DeliveryStatus::Pending, 1, Some(retry_at), Some(t2))
    );
    assert_eq!(results[2], Ok(None), "a stale fence changes nothing, and only its own item");
    assert!(matches!(results[3], Err(DomainError::NotFound(_))), "an unknown id is its item's NotFound");
    let dead = results[4].clone().expect("recorded").expect("a leased delivery outlives the disable");
    assert_eq!((dead.status, dead.next_attempt_at), (DeliveryStatus::Dead, None), "no retry for a disabled endpoint");

    let detail = store.get_delivery(mine[0].delivery.id).await.expect("detail");
    assert_eq!(detail.attempts, vec![ok.clone().numbered(1)], "snippets are cut as one at a time");
    assert_eq!(
        store.get_delivery(mine[1].delivery.id).await.expect("detail").attempts,
        vec![failed.clone().numbered(1)]
    );
    assert!(store.get_delivery(mine[2].delivery.id).await.expect("detail").attempts.is_empty());
    assert_eq!(
        WebhookRepository::get(&store, hook.id).await.expect("get").failing_since,
        Some(t2),
        "a failure after a success in one batch starts a run of failures, as one after the other"
    );
    assert_eq!(
        store.record_attempts(&batch[..1]).await.expect("again"),
        vec![Ok(None)],
        "a recorded attempt ends the lease"
    );

    let t3 = t2 + TimeDelta::milliseconds(1);
    let later = report(t3, None, None, Some("timed out"));
    let results = store.record_attempts(&[record(&mine[2], later.clone(), NextStep::Failed)]).await.expect("record");
    assert_eq!(results[0].clone().expect("recorded").expect("held").status, DeliveryStatus::Failed);
    assert_eq!(
        WebhookRepository::get(&store, hook.id).await.expect("get").failing_since,
        Some(t2),
        "kept while failing"
    );
    let again = lease_one(&store, retry_at).await;
    assert_eq!(again.delivery.id, mine[1].delivery.id);
    let t4 = retry_at + TimeDelta::milliseconds(1);
    let results =
        store.record_attempts(&[record(&again, report(t4, Some(204), None, None), NextStep::Succeeded)]).await;
    let d = results.expect("record")[0].clone().expect("recorded").expect("held");
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Succeeded, 2), "numbered after the last");
    assert_eq!(WebhookRepository::get(&store, hook.id).await.expect("get").failing_since, None, "cleared by a success");
}

async fn redeliver_and_listing<S: WebhookStore>(store: S) {
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("create");
    store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("append");
    store.fan_out(now_micros(), 10).await.expect("fan out");
    let now = now_micros();
    let leased = lease_one(&store, now).await;
    let original = leased.delivery.id;
    store
        .record_attempt(original, leased.fence, &report(now, Some(200), None, None), NextStep::Succeeded)
        .await
        .expect("record");

    let new_id = DeliveryId::generate();
    let again = store.redeliver(original, new_id, now).await.expect("redeliver");
    assert_eq!(again.id, new_id);
    assert_eq!((again.webhook_id, again.event_id, again.event_type), (hook.id, leased.event.id, EventType::Ping));
    assert_eq!(
        (again.status, again.attempts, again.next_attempt_at, again.redelivery_of),
        (DeliveryStatus::Pending, 0, Some(now), Some(original))
    );
    assert_eq!(store.get_delivery(new_id).await.expect("detail").event, leased.event);
    let mut last = store.last_attempts(&[new_id, original]).await.expect("last attempts");
    last.sort_by_key(|(id, _)| *id);
    assert_eq!(last.len(), 1, "a delivery without attempts has no last attempt: {last:?}");
    assert_eq!((last[0].0, last[0].1.status_code), (original, Some(200)));
    assert_eq!(lease_one(&store, now).await.delivery.id, new_id, "a redelivery is due at once");
    assert!(matches!(
        store.redeliver(DeliveryId::generate(), DeliveryId::generate(), now).await,
        Err(DomainError::NotFound(_))
    ));
    assert!(matches!(store.get_delivery(DeliveryId::generate()).await, Err(DomainError::NotFound(_))));

    let all: Vec<DeliveryId> = deliveries_of(&store, hook.id).await.iter().map(|d| d.id).collect();
    assert_eq!(all, vec![original, new_id], "ordered by id");
    let pending = DeliveryFilter { webhook: hook.id, status: Some(DeliveryStatus::Pending) };
    let page = store.list_deliveries(&pending, PageRequest::default()).await.expect("list");
    assert_eq!(page.items.iter().map(|d| d.id).collect::<Vec<_>>(), vec![new_id]);
    let one = PageRequest { after: None, limit: Limit::new(1).expect("limit") };
    let filter = DeliveryFilter { webhook: hook.id, status: None };
    let first = store.list_deliveries(&filter, one).await.expect("list");
    let second = store.list_deliveries(&filter, PageRequest { after: first.next, ..one }).await.expect("list");
    assert_eq!(second.items.iter().map(|d| d.id).collect::<Vec<_>>(), vec![new_id]);
    let other = DeliveryFilter { webhook: WebhookId::generate(), status: None };
    assert!(store.list_deliveries(&other, PageRequest::default()).await.expect("list").items.is_empty());

    store.disable(hook.id, "gone", now).await.expect("disable");
    assert!(matches!(store.redeliver(original, DeliveryId::generate(), now).await, Err(DomainError::Conflict(_))));
    WebhookRepository::delete(&store, hook.id).await.expect("delete");
    assert!(matches!(store.get_delivery(original).await, Err(DomainError::NotFound(_))), "deleted with its webhook");
}

async fn disabling_kills_pending_deliveries<S: WebhookStore>(store: S) {
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    let other = sample_webhook(EventSet::all(), ProjectAccess::All);
    for w in [&hook, &other] {
        WebhookRepository::create(&store, w).await.expect("create");
        for _ in 0..2 {
            store.append_event(&sample_event(EventType::Ping, None, Some(w.id))).await.expect("append");
        }
    }
    store.fan_out(now_micros(), 10).await.expect("fan out");
    let now = now_micros();
    let done = store.disable(hook.id, "the endpoint answered 410 Gone", now).await.expect("disable");
    assert!(done.was_enabled);
    assert!(!done.webhook.enabled);
    assert_eq!(done.webhook.disabled_reason.as_deref(), Some("the endpoint answered 410 Gone"));
    let twice = store.disable(hook.id, "another reason", now).await.expect("disable");
    assert!(!twice.was_enabled, "a second disable is reported as such");
    assert_eq!(
        twice.webhook.disabled_reason.as_deref(),
        Some("the endpoint answered 410 Gone"),
        "the first reason stays"
    );
    assert!(deliveries_of(&store, hook.id)
        .await
        .iter()
        .all(|d| d.status == DeliveryStatus::Dead && d.next_attempt_at.is_none()));
    store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("append");
    assert_eq!(store.fan_out(now, 10).await.expect("fan out").deliveries, 0, "disabled endpoints get no deliveries");

    let in_flight = store.lease_due(&lease_at(now, 10)).await.expect("lease");
    assert_eq!(in_flight.iter().map(|l| l.webhook.id).collect::<BTreeSet<_>>(), BTreeSet::from([other.id]));
    store.disable(other.id, "a client disabled it", now).await.expect("disable");
    let leased = &in_flight[0];
    let r = report(now, Some(503), None, None);
    let d = store.record_attempt(leased.delivery.id, leased.fence, &r, NextStep::Retry { at: now }).await;
    assert_eq!(
        d.expect("record").expect("a leased delivery outlives the disable").status,
        DeliveryStatus::Dead,
        "no retry for a disabled endpoint"
    );
    assert!(store.lease_due(&lease_at(now + TimeDelta::hours(1), 10)).await.expect("lease").is_empty());

    let enabled = store.enable(hook.id, now).await.expect("enable");
    assert!(enabled.enabled);
    assert_eq!((enabled.disabled_reason, enabled.failing_since), (None, None));

    // Enabled again while an attempt was in flight: what decides its retry is the subscription
    // as it is when the attempt is recorded.
    store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("append");
    assert_eq!(store.fan_out(now, 10).await.expect("fan out").deliveries, 1);
    let leased = lease_one(&store, now).await;
    store.disable(hook.id, "a client disabled it", now).await.expect("disable");
    store.enable(hook.id, now).await.expect("enable");
    let retry_at = now + TimeDelta::seconds(30);
    let d = store.record_attempt(leased.delivery.id, leased.fence, &r, NextStep::Retry { at: retry_at }).await;
    let d = d.expect("record").expect("held");
    assert_eq!((d.status, d.next_attempt_at), (DeliveryStatus::Pending, Some(retry_at)), "retried: enabled again");
}

async fn purge_keeps_pending_deliveries<S: WebhookStore>(store: S) {
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("create");
    for _ in 0..3 {
        store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("append");
    }
    let now = now_micros();
    store.fan_out(now, 10).await.expect("fan out");
    let leased = store.lease_due(&lease_at(now, 10)).await.expect("lease");
    let r = report(now, Some(200), None, None);
    store.record_attempt(leased[0].delivery.id, leased[0].fence, &r, NextStep::Succeeded).await.expect("record");
    store.record_attempt(leased[1].delivery.id, leased[1].fence, &r, NextStep::Failed).await.expect("record");
    assert_eq!(store.purge(now - TimeDelta::hours(1)).await, Ok(0), "nothing is that old");
    assert_eq!(store.purge(now + TimeDelta::seconds(1)).await, Ok(2), "finished deliveries go");
    assert!(matches!(store.get_delivery(leased[0].delivery.id).await, Err(DomainError::NotFound(_))));
    let kept = store.get_delivery(leased[2].delivery.id).await.expect("pending deliveries stay");
    assert_eq!(kept.event, leased[2].event, "and so do their events");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;

    #[tokio::test]
    async fn memory_store_passes_the_webhook_store_contract() {
        webhook_store_contract(|| async { MemoryStore::new() }).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_passes_it_on_a_multi_threaded_runtime() {
        webhook_store_contract(|| async { MemoryStore::new() }).await;
    }
}
