//! Contract of `SignalBus`: what every implementation (in-process, Postgres NOTIFY) must do.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use uuid::Uuid;

use crate::ids::{ApiKeyId, CommandId};
use crate::ports::SignalBus;
use crate::signal::Signal;

/// How long a published signal may take to reach a subscriber (DESIGN: revocation within 1 s).
pub const SIGNAL_DEADLINE: Duration = Duration::from_secs(1);

/// Runs the suite on two buses that share one store (`pair()`; the same bus twice for
/// in-process implementations): publishing on either reaches subscribers of both, in order.
pub async fn signal_bus(pair: (Arc<dyn SignalBus>, Arc<dyn SignalBus>)) {
    let (a, b) = pair;
    let mut on_a = a.subscribe();
    let mut on_b = b.subscribe();
    let key = ApiKeyId::from_uuid(Uuid::now_v7());
    let command = CommandId::from_uuid(Uuid::now_v7());
    a.publish(Signal::KeyChanged(key)).await.expect("publish on a");
    a.publish(Signal::CommandChanged(command)).await.expect("publish on a");
    b.publish(Signal::WorkQueued).await.expect("publish on b");
    let expected = [Signal::KeyChanged(key), Signal::CommandChanged(command), Signal::WorkQueued];
    for (name, stream) in [("a", &mut on_a), ("b", &mut on_b)] {
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let next = tokio::time::timeout(SIGNAL_DEADLINE, stream.next()).await;
            match next {
                Ok(Some(Signal::Resync)) => continue,
                Ok(Some(signal)) => seen.push(signal),
                Ok(None) => panic!("subscription on {name} ended while its bus lives"),
                Err(_) => panic!("subscriber on {name} saw {seen:?} of {expected:?} within {SIGNAL_DEADLINE:?}"),
            }
        }
        // Signals from one publisher keep their order; the two publishers may interleave.
        let from_a: Vec<_> = seen.iter().filter(|s| !matches!(s, Signal::WorkQueued)).collect();
        assert_eq!(from_a, vec![&expected[0], &expected[1]], "order of a's signals on {name}");
        assert!(seen.contains(&Signal::WorkQueued), "b's signal reached {name}");
    }
    let late = a.subscribe();
    drop(late);
    a.publish(Signal::WorkQueued).await.expect("publish after a subscriber left");
}
