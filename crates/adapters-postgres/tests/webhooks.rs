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
use domain::webhook::{DeliveryId, DeliveryQueue, EventSet, EventType, LeaseRequest, WebhookRepository};

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
