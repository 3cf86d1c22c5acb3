//! The webhook store contract, part two: `DeliveryQueue::fan_out_and_lease`, the dispatcher's
//! one step from outbox events to leased deliveries, and a disable racing a lease it made.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::TimeDelta;

use super::{deliveries_of, lease_at, only, report, sample_event, sample_webhook, WebhookStore};
use crate::api_key::ProjectAccess;
use crate::testing::now_micros;
use crate::webhook::{DeliveryStatus, EventSet, EventType, LeaseRequest, NextStep, WebhookRepository};

/// One call fans out and leases: older due deliveries first, then the new ones in outbox
/// order; excluded endpoints' new deliveries stay unleased, disabled endpoints get none, and
/// events past the fan-out limit wait for the next call.
pub(super) async fn fan_out_and_lease_leases_what_it_creates<S: WebhookStore>(store: S) {
    use EventType::*;
    let a = sample_webhook(EventSet::all(), ProjectAccess::All);
    let b = sample_webhook(EventSet::new([CommandSucceeded]).expect("events"), only(&["web"]));
    let open = sample_webhook(EventSet::all(), ProjectAccess::All);
    let mut off = sample_webhook(EventSet::all(), ProjectAccess::All);
    off.enabled = false;
    off.disabled_reason = Some("a client disabled it".into());
    for w in [&a, &b, &open, &off] {
        WebhookRepository::create(&store, w).await.expect("create");
    }
    let older = sample_event(Ping, None, Some(a.id));
    store.append_event(&older).await.expect("append");
    let t0 = now_micros();
    assert_eq!(store.fan_out(t0, 10).await.expect("fan out").deliveries, 1);
    let events = [
        sample_event(CommandSucceeded, Some("web"), None),
        sample_event(PodReady, Some("api"), None),
        sample_event(Ping, None, Some(b.id)),
    ];
    for e in &events {
        store.append_event(e).await.expect("append");
    }

    let now = t0 + TimeDelta::seconds(1);
    let request = LeaseRequest { exclude: vec![open.id], ..lease_at(now, 3) };
    let done = store.fan_out_and_lease(2, &request).await.expect("fan out and lease");
    assert_eq!((done.fan_out.events, done.fan_out.deliveries), (2, 5), "a, b and open; then a and open");
    let got: Vec<_> = done.leased.iter().map(|l| (l.event.id, l.webhook.id)).collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(!done.left_unleased, "what it did not lease was excluded or beyond its room");
    assert_eq!(got[0], (older.id, a.id), "what was due before comes first");
    assert_eq!(
        got[1..].iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([(events[0].id, a.id), (events[0].id, b.id)]),
        "then the new deliveries in outbox order, excluded endpoints left out"
    );
    for l in &done.leased {
        assert_eq!(l.lease_until, now + TimeDelta::seconds(60));
        assert_eq!((l.delivery.status, l.delivery.attempts), (DeliveryStatus::Pending, 0));
        assert_eq!(l.delivery.event_id, l.event.id);
        assert_eq!(l.delivery.webhook_id, l.webhook.id);
        assert_eq!(l.webhook, if l.webhook.id == a.id { a.clone() } else { b.clone() }, "the subscription as stored");
    }
    assert_eq!(done.leased[1].event, events[0], "the event as appended");
    let ids: BTreeSet<_> = done.leased.iter().map(|l| l.delivery.id).collect();
    assert_eq!(ids.len(), 3);

    let rest = store.lease_due(&lease_at(now, 10)).await.expect("lease");
    let rest: BTreeSet<_> = rest.iter().map(|l| (l.event.id, l.webhook.id)).collect();
    assert_eq!(
        rest,
        BTreeSet::from([(events[0].id, open.id), (events[1].id, a.id), (events[1].id, open.id)]),
        "what the call created and did not lease is due"
    );
    let next = store.fan_out_and_lease(10, &lease_at(now, 10)).await.expect("fan out and lease");
    assert_eq!((next.fan_out.events, next.fan_out.deliveries), (1, 1), "the event past the limit");
    assert!(!next.left_unleased);
    assert_eq!(next.leased.iter().map(|l| (l.event.id, l.webhook.id)).collect::<Vec<_>>(), vec![(events[2].id, b.id)]);
    let idle = store.fan_out_and_lease(10, &lease_at(now, 10)).await.expect("fan out and lease");
    assert_eq!((idle.fan_out.events, idle.fan_out.deliveries, idle.leased.len()), (0, 0, 0));
    assert!(deliveries_of(&store, off.id).await.is_empty(), "disabled endpoints get nothing");

    // A delivery the call leased outlives a disable, and its attempt then ends it.
    let ping = &next.leased[0];
    store.disable(b.id, "a client disabled it", now).await.expect("disable");
    let r = report(now, Some(503), None, None);
    let d = store.record_attempt(ping.delivery.id, ping.fence, &r, NextStep::Retry { at: now }).await;
    assert_eq!(d.expect("record").expect("held").status, DeliveryStatus::Dead, "no retry for a disabled endpoint");
    let d = store.get_delivery(ping.delivery.id).await.expect("detail").delivery;
    assert_eq!((d.attempts, d.next_attempt_at), (1, None));

    // A lease the call made on a delivery it created runs out like any other: the delivery is
    // due again under a new fence, and an attempt under the old one records nothing.
    let created = &done.leased[1];
    let later = now + TimeDelta::seconds(61);
    let again = store.lease_due(&lease_at(later, 100)).await.expect("lease");
    let relet = again.iter().find(|l| l.delivery.id == created.delivery.id).expect("due again once its lease ran out");
    assert!(relet.fence > created.fence, "a new fence: {} after {}", relet.fence, created.fence);
    let r = report(later, Some(200), None, None);
    let stale = store.record_attempt(created.delivery.id, created.fence, &r, NextStep::Succeeded).await;
    assert!(stale.expect("record").is_none(), "the old fence no longer holds it");
    let d = store.get_delivery(created.delivery.id).await.expect("detail").delivery;
    assert_eq!((d.status, d.attempts), (DeliveryStatus::Pending, 0), "nothing recorded under the old fence");
}

/// Concurrent calls dispatch each event once and lease each delivery once, and leave the
/// deliveries they did not lease for others.
pub(super) async fn fan_out_and_lease_is_exclusive<S: WebhookStore>(store: Arc<S>) {
    for _ in 0..2 {
        WebhookRepository::create(&*store, &sample_webhook(EventSet::all(), ProjectAccess::All)).await.expect("create");
    }
    for _ in 0..30 {
        store.append_event(&sample_event(EventType::PodReady, Some("web"), None)).await.expect("append");
    }
    let now = now_micros();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let s = Arc::clone(&store);
            tokio::spawn(async move {
                let request = LeaseRequest { owner: format!("d{i}"), ..lease_at(now, 7) };
                s.fan_out_and_lease(10, &request).await.expect("fan out and lease")
            })
        })
        .collect();
    let (mut events, mut deliveries, mut leased) = (0, 0, Vec::new());
    for c in calls {
        let done = c.await.expect("task");
        events += done.fan_out.events;
        deliveries += done.fan_out.deliveries;
        leased.extend(done.leased.into_iter().map(|l| l.delivery.id));
    }
    assert_eq!((events, deliveries), (30, 60), "each of the 30 events dispatched once, to both endpoints");
    let rest = store.fan_out_and_lease(100, &lease_at(now, 100)).await.expect("fan out and lease");
    assert_eq!(rest.fan_out.events, 0);
    leased.extend(rest.leased.into_iter().map(|l| l.delivery.id));
    let ids: BTreeSet<_> = leased.iter().copied().collect();
    assert_eq!((leased.len(), ids.len()), (60, 60), "every delivery leased once, none twice");
}
