//! `PodWatchService`: runs the cluster-wide pod watch (`PodWatch`) on this replica and announces
//! every change it reports through `PodEvents`, so that each pod change becomes exactly one
//! `pod.*` webhook event cluster-wide: one leader reports (the lease), each change once per
//! occurrence (the watch), and a change two leaders report in turn is one outbox event (its id
//! is derived from the occurrence).

use std::sync::Arc;

use async_trait::async_trait;
use domain::ids::WorkerId;
use domain::pod::PodChange;
use domain::ports::{PodChangeSink, PodWatch};
use domain::DomainResult;
use tokio_util::sync::CancellationToken;

use crate::pods::PodEvents;

/// Follows every managed pod while this replica leads, announcing each change.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "holds a trait object without Debug")]
pub struct PodWatchService {
    watch: Arc<dyn PodWatch>,
    events: PodEvents,
    replica: WorkerId,
}

/// Hands reported changes to `PodEvents`.
struct Announce<'a>(&'a PodEvents);

#[async_trait]
impl PodChangeSink for Announce<'_> {
    async fn changed(&self, change: &PodChange) -> DomainResult<()> {
        self.0.reported(change).await
    }
}

impl PodWatchService {
    /// `watch` campaigns as `replica`; changes are announced through `events`, which must be
    /// [`PodEvents::cluster_watched`] (otherwise replicas announce what they see as well).
    pub fn new(watch: Arc<dyn PodWatch>, events: PodEvents, replica: WorkerId) -> Self {
        if !events.is_cluster_watched() {
            tracing::warn!("the pod watch runs beside replica-local pod events: changes may be announced twice");
        }
        Self { watch, events, replica }
    }

    /// Runs until `shutdown` fires; then the lease is given up and this returns.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(replica = %self.replica, "pod watch campaigning");
        self.watch.run(&self.replica, &Announce(&self.events), shutdown).await;
        tracing::info!(replica = %self.replica, "pod watch stopped");
    }
}
