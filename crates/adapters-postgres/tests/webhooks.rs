//! Webhook deliveries on PostgreSQL with several replicas (stores) on one database.
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use adapters_postgres::testing::TestDatabase;
use adapters_postgres::PgStore;
use domain::api_key::ProjectAccess;
use domain::testing::now_micros;
use domain::testing::webhooks::{sample_event, sample_webhook};
use domain::webhook::{
    AttemptRecord, AttemptReport, DeliveryId, DeliveryQueue, DeliveryStatus, EventSet, EventType, LeaseRequest,
    NextStep, WebhookId, WebhookRepository,
};

const DELIVERIES: usize = 240;
const LEASERS_PER_STORE: usize = 4;
const BATCH: u32 = 7;

/// Leases batches until one comes back empty; every lease outlives the test, so nothing is
/// handed out twice unless two leasers got it at the same time.
async fn lease_all(store: PgStore, owner: String) -> Vec<DeliveryId> {
    let mut mine = Vec::new();
    // Bounded: a leaser that took nothing ever again would otherwise never stop.
    for _ in 0..DELIVERIES {
        let request = LeaseRequest {
            owner: owner.clone(),
            now: now_micros(),
            lease: Duration::from_secs(600),
            limit: BATCH,
            exclude: Vec::new(),
        };
        let leased = store.lease_due(&request).await.expect("lease");
        if leased.is_empty() {
            break;
        }
        mine.extend(leased.iter().map(|l| l.delivery.id));
    }
    mine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_leasing_concurrently_never_lease_one_delivery_twice() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.store().await, db.store().await);
    // Two subscriptions, so one event makes two deliveries and leases cross subscriptions.
    for _ in 0..2 {
        WebhookRepository::create(&a, &sample_webhook(EventSet::all(), ProjectAccess::All)).await.expect("webhook");
    }
    for _ in 0..DELIVERIES / 2 {
        a.append_event(&sample_event(EventType::CommandQueued, Some("web"), None)).await.expect("event");
    }
    let fanned = b.fan_out(now_micros(), 1000).await.expect("fan out");
    assert_eq!(fanned.deliveries as usize, DELIVERIES);

    let mut leasers = Vec::new();
    for (name, store) in [("a", &a), ("b", &b)] {
        for i in 0..LEASERS_PER_STORE {
            leasers.push(tokio::spawn(lease_all(store.clone(), format!("{name}{i}"))));
        }
    }
    let mut seen = HashSet::new();
    let mut leasers_with_work = 0;
    for leaser in leasers {
        let mine = leaser.await.expect("leaser");
        leasers_with_work += usize::from(!mine.is_empty());
        for id in mine {
            assert!(seen.insert(id), "delivery {id} was leased twice");
        }
    }
    assert_eq!(seen.len(), DELIVERIES, "every due delivery is leased once");
    assert!(leasers_with_work > 1, "the leasers ran concurrently and shared the work");
}

fn lease_for(owner: &str, limit: u32) -> LeaseRequest {
    LeaseRequest {
        owner: owner.to_owned(),
        now: now_micros(),
        lease: Duration::from_secs(600),
        limit,
        exclude: Vec::new(),
    }
}

/// Returns once some session of `client`'s database waits for a lock; `what` says which wait
/// never came after 10 s.
async fn until_a_session_waits_for_a_lock(client: &tokio_postgres::Client, what: &str) {
    let waiting =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";
    let started = std::time::Instant::now();
    while client.query_one(waiting, &[]).await.expect("activity").get::<_, i64>(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fan-out whose statement began before a `disable` committed must not lease new deliveries
/// to that subscription: `disable` cannot see them to kill or mark them, so they would be sent
/// after it returned. Here the disable is held in flight, after its update of the subscription
/// and before it commits, by a delivery another session keeps locked (as a recording would),
/// while a fan-out runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_during_a_disable_leases_nothing_to_that_subscription() {
    let db = TestDatabase::create().await;
    let (a, b) = (db.store().await, db.store().await);
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    let other = sample_webhook(EventSet::all(), ProjectAccess::All);
    for w in [&hook, &other] {
        WebhookRepository::create(&a, w).await.expect("webhook");
    }
    a.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("event");
    assert_eq!(a.fan_out(now_micros(), 10).await.expect("fan out").deliveries, 1);

    let blocker = db.raw_client().await;
    blocker.batch_execute("BEGIN").await.expect("begin");
    let lock = format!("SELECT id FROM webhook_deliveries WHERE webhook_id = '{}' FOR UPDATE", hook.id.as_uuid());
    let held = blocker.execute(lock.as_str(), &[]).await.expect("lock the pending delivery");
    assert_eq!(held, 1);
    let disabling = {
        let b = b.clone();
        tokio::spawn(async move { b.disable(hook.id, "a client disabled it", now_micros()).await })
    };
    // The disable has set `enabled = false` (uncommitted) once it waits for the delivery.
    until_a_session_waits_for_a_lock(&blocker, "the disable never waited for the delivery").await;

    for w in [&hook, &other] {
        a.append_event(&sample_event(EventType::Ping, None, Some(w.id))).await.expect("event");
    }
    let done = a.fan_out_and_lease(10, &lease_for("a", 10)).await.expect("fan out and lease");
    assert_eq!((done.fan_out.events, done.fan_out.deliveries), (2, 2), "both events fanned out");
    let leased: Vec<WebhookId> = done.leased.iter().map(|l| l.webhook.id).collect();
    assert_eq!(leased, vec![other.id], "nothing leased to the subscription being disabled");
    assert!(done.left_unleased, "its new delivery was left unleased, and the answer says so");

    blocker.batch_execute("COMMIT").await.expect("commit");
    let disabled = disabling.await.expect("task").expect("disable");
    assert!(disabled.was_enabled);
    assert!(a.lease_due(&lease_for("a", 10)).await.expect("lease").is_empty(), "nothing due for the disabled one");
    let filter = domain::webhook::DeliveryFilter { webhook: hook.id, status: None };
    let mine = a.list_deliveries(&filter, domain::pagination::PageRequest::default()).await.expect("list").items;
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].status, DeliveryStatus::Dead, "pending when disabled, not leased: dead");
    assert_eq!(
        (mine[1].status, mine[1].attempts),
        (DeliveryStatus::Pending, 0),
        "made by the fan-out the disable did not see: never leased while the subscription is disabled"
    );
}

#[tokio::test]
async fn a_delete_aborted_to_break_a_deadlock_with_the_dispatcher_is_run_again() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("webhook");
    store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("event");
    assert_eq!(store.fan_out(now_micros(), 10).await.expect("fan out").deliveries, 1);

    // The dispatcher's side by hand, in the order its fan-out and lease takes locks: a delivery
    // of the subscription held, then the subscription's key share (a new delivery's foreign key).
    let dispatcher = db.raw_client().await;
    // Long, so that the delete is the side whose deadlock check runs first and is aborted.
    dispatcher.batch_execute("SET deadlock_timeout = '60s'; BEGIN").await.expect("begin");
    let lock = format!("SELECT id FROM webhook_deliveries WHERE webhook_id = '{}' FOR UPDATE", hook.id.as_uuid());
    assert_eq!(dispatcher.execute(lock.as_str(), &[]).await.expect("hold the delivery"), 1);
    let deleting = {
        let store = store.clone();
        tokio::spawn(async move { WebhookRepository::delete(&store, hook.id).await })
    };
    until_a_session_waits_for_a_lock(&dispatcher, "the delete never waited for the delivery").await;
    // Waits for the delete's row lock until PostgreSQL aborts the delete (its deadlock_timeout
    // of 1 s), then holds the key share the delete's second run waits for.
    let share = format!("SELECT id FROM webhooks WHERE id = '{}' FOR KEY SHARE", hook.id.as_uuid());
    assert_eq!(dispatcher.execute(share.as_str(), &[]).await.expect("key share"), 1);
    dispatcher.batch_execute("COMMIT").await.expect("commit");

    deleting.await.expect("task").expect("the delete went through on its second run");
    let gone = WebhookRepository::get(&store, hook.id).await;
    assert!(matches!(gone, Err(domain::DomainError::NotFound(_))), "deleted: {gone:?}");
}

#[tokio::test]
async fn a_fan_out_and_lease_that_a_webhook_delete_commits_under_is_run_again() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("webhook");
    store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("event");

    // A delete in flight: the statement still sees the subscription and makes it a delivery,
    // whose reference then waits for the delete and finds the subscription gone.
    let deleter = db.raw_client().await;
    deleter.batch_execute("BEGIN").await.expect("begin");
    let delete = format!("DELETE FROM webhooks WHERE id = '{}'", hook.id.as_uuid());
    assert_eq!(deleter.execute(delete.as_str(), &[]).await.expect("delete"), 1);
    let dispatching = {
        let store = store.clone();
        tokio::spawn(async move { store.fan_out_and_lease(10, &lease_for("a", 10)).await })
    };
    until_a_session_waits_for_a_lock(&deleter, "the fan-out never waited for the delete").await;
    deleter.batch_execute("COMMIT").await.expect("commit");

    let done = dispatching.await.expect("task").expect("run again after the delete, not failed");
    assert_eq!((done.fan_out.events, done.fan_out.deliveries), (1, 0), "the event went to nobody");
    assert!(done.leased.is_empty());
    let again = store.fan_out(now_micros(), 10).await.expect("fan out");
    assert_eq!(again.events, 0, "the event was dispatched once, by the second run");
}

#[tokio::test]
async fn attempts_recorded_in_a_batch_that_loses_a_deadlock_are_recorded_on_a_second_run() {
    let db = TestDatabase::create().await;
    let store = db.store().await;
    let hook = sample_webhook(EventSet::all(), ProjectAccess::All);
    WebhookRepository::create(&store, &hook).await.expect("webhook");
    for _ in 0..2 {
        store.append_event(&sample_event(EventType::Ping, None, Some(hook.id))).await.expect("event");
    }
    assert_eq!(store.fan_out(now_micros(), 10).await.expect("fan out").deliveries, 2);
    let mut leased = store.lease_due(&lease_for("a", 10)).await.expect("lease");
    leased.sort_by_key(|l| l.delivery.id.as_uuid());
    let attempts: Vec<AttemptRecord> = leased
        .iter()
        .map(|l| AttemptRecord {
            id: l.delivery.id,
            fence: l.fence,
            report: AttemptReport {
                at: now_micros(),
                status_code: Some(204),
                latency_ms: 3,
                response_snippet: None,
                error: None,
            },
            next: NextStep::Succeeded,
        })
        .collect();

    // Another transaction takes the two rows the other way round: the second first.
    let other = db.raw_client().await;
    // Long, so that the batch is the side whose deadlock check runs first and is aborted.
    other.batch_execute("SET deadlock_timeout = '60s'; BEGIN").await.expect("begin");
    let lock =
        |d: &AttemptRecord| format!("SELECT id FROM webhook_deliveries WHERE id = '{}' FOR UPDATE", d.id.as_uuid());
    assert_eq!(other.execute(lock(&attempts[1]).as_str(), &[]).await.expect("lock the second"), 1);
    let recording = {
        let (store, attempts) = (store.clone(), attempts.clone());
        tokio::spawn(async move { store.record_attempts(&attempts).await })
    };
    until_a_session_waits_for_a_lock(&other, "the batch never waited for the second row").await;
    // Waits for the first row, which the batch holds, until PostgreSQL aborts the batch.
    assert_eq!(other.execute(lock(&attempts[0]).as_str(), &[]).await.expect("lock the first"), 1);
    other.batch_execute("COMMIT").await.expect("commit");

    let results = recording.await.expect("task").expect("recorded on the second run");
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r.expect("item").expect("fence held").status, DeliveryStatus::Succeeded);
    }
}
