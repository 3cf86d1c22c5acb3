//! [`PodWatch`] on Kubernetes: leader election through a Lease in the pods' namespace, and,
//! while leading, a list + watch of the managed pods (kube-runtime's watcher: bookmarks, and a
//! re-list after `410 Gone`) whose changes are reported once per occurrence.

use std::time::Duration;

use async_trait::async_trait;
use domain::ids::WorkerId;
use domain::ports::{PodChangeSink, PodWatch};
use domain::project::ProjectName;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::leader::{Elector, Held, Observed};
use crate::manifest::managed_selector;
use crate::ready_pods::ReadyPods;
use crate::tracker::Tracker;
use crate::KubeBackend;

/// How the pod watch campaigns and paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodWatchConfig {
    /// Name of the Lease in the pods' namespace (`POD_WATCH_LEASE_NAME`).
    pub lease_name: String,
    /// How long the lease lasts without renewal (`leaseDurationSeconds`, whole seconds, at
    /// least one; `POD_WATCH_LEASE_SECONDS`).
    pub lease_duration: Duration,
    /// How often the leader renews it. The leader stops reporting when it could not renew for
    /// `lease_duration - renew_every`, before anyone else may take over.
    pub renew_every: Duration,
    /// How often a candidate looks at a lease held by another replica.
    pub retry_every: Duration,
    /// First and longest pause after a failed API call (doubling in between, with jitter).
    pub backoff: (Duration, Duration),
}

impl PodWatchConfig {
    /// Lease name used when none is configured.
    pub const DEFAULT_LEASE_NAME: &'static str = "rdev-api-pod-watch";

    /// A lease of `lease_duration` (15 s in production) renewed every third of it, candidates
    /// looking as often, and API failures retried after 0.8 s up to 30 s (client-go's watch
    /// backoff).
    pub fn new(lease_duration: Duration) -> Self {
        let lease_duration = lease_duration.max(Duration::from_secs(1));
        Self {
            lease_name: Self::DEFAULT_LEASE_NAME.to_owned(),
            lease_duration,
            renew_every: lease_duration / 3,
            retry_every: lease_duration / 3,
            backoff: (Duration::from_millis(800), Duration::from_secs(30)),
        }
    }
}

/// Exponential backoff with up to 25 % jitter, for API calls and the watch stream.
#[derive(Debug, Clone)]
struct Pause {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Pause {
    fn new((first, max): (Duration, Duration)) -> Self {
        Self { first, max, next: first }
    }
}

impl Iterator for Pause {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = base.mul_f64(rand_fraction() * 0.25);
        Some(base + jitter)
    }
}

impl Backoff for Pause {
    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A fraction in `[0, 1)` from the clock's nanoseconds: enough to spread retries of replicas.
fn rand_fraction() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// The Kubernetes pod watch.
#[derive(Clone)]
pub struct KubePodWatch {
    pods: Api<Pod>,
    leases: Api<Lease>,
    container: String,
    api_timeout: Duration,
    config: PodWatchConfig,
    ready: ReadyPods,
}

impl std::fmt::Debug for KubePodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePodWatch").field("config", &self.config).finish_non_exhaustive()
    }
}

impl KubePodWatch {
    /// Follows `backend`'s pods (its namespace, client and container), with its lease there.
    /// While leading, what it sees also keeps `backend`'s (and its clones') ready-pod cache
    /// current.
    pub fn new(backend: &KubeBackend, config: PodWatchConfig) -> Self {
        let namespace = &backend.config().namespace;
        Self {
            pods: Api::namespaced(backend.client().clone(), namespace),
            leases: Api::namespaced(backend.client().clone(), namespace),
            container: backend.config().container_name.clone(),
            api_timeout: backend.config().api_timeout,
            config,
            ready: backend.ready.clone(),
        }
    }

    /// When a lease renewed at `renewed_at` stops being ours to report under.
    fn report_until(&self, renewed_at: Instant) -> Instant {
        renewed_at + self.config.lease_duration.saturating_sub(self.config.renew_every)
    }

    /// Leads until the lease is lost, cannot be renewed in time, or `cancel` fires (then it is
    /// given up).
    async fn lead(&self, elector: &Elector, mut held: Held, sink: &dyn PodChangeSink, cancel: &CancellationToken) {
        let mut tracker = Tracker::new(&self.container, held.inherited.as_deref());
        let config = watcher::Config::default().labels(&managed_selector());
        let events = watcher(self.pods.clone(), config).backoff(Pause::new(self.config.backoff));
        let mut events = std::pin::pin!(events);
        let mut renew = tokio::time::interval_at(Instant::now() + self.config.renew_every, self.config.renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<Instant> = None;
        loop {
            let until = self.report_until(held.renewed_at);
            tokio::select! {
                () = cancel.cancelled() => {
                    elector.release(held, &tracker.snapshot()).await;
                    return;
                }
                () = tokio::time::sleep_until(until) => {
                    tracing::warn!(lease = %elector.name, "could not renew the lease in time; no longer reporting pod changes");
                    return;
                }
                _ = renew.tick() => {
                    if !still_ours(elector, elector.renew(&mut held, &tracker.snapshot()).await) {
                        return;
                    }
                    // Changes the sink refused before are offered again.
                    self.report(&mut tracker, &[], sink, self.report_until(held.renewed_at)).await;
                }
                event = events.next() => match event {
                    Some(Ok(event)) => {
                        if failing_since.take().is_some() {
                            tracing::info!("the pod watch is back");
                        }
                        match &event {
                            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.ready.note_event(pod, false),
                            watcher::Event::Delete(pod) => self.ready.note_event(pod, true),
                            watcher::Event::Init | watcher::Event::InitDone => {}
                        }
                        let projects = tracker.apply(event);
                        let adopted = tracker.take_adopted();
                        if adopted && !still_ours(elector, elector.renew(&mut held, &tracker.snapshot()).await) {
                            return;
                        }
                        if !projects.is_empty() {
                            self.report(&mut tracker, &projects, sink, until).await;
                        }
                    }
                    Some(Err(e)) => {
                        // The watcher retries by itself after the backoff; log once per outage.
                        if failing_since.is_none() {
                            failing_since = Some(Instant::now());
                            tracing::warn!(error = %e, "the pod watch failed; retrying with backoff");
                        } else {
                            tracing::debug!(error = %e, "the pod watch failed again");
                        }
                    }
                    None => return,
                },
            }
        }
    }

    /// Offers the pending changes of `projects` (all when empty) to the sink, in order, while
    /// the lease is still ours; a refused change stops that project's steps until next time.
    async fn report(&self, tracker: &mut Tracker, projects: &[ProjectName], sink: &dyn PodChangeSink, until: Instant) {
        let mut refused: Vec<ProjectName> = Vec::new();
        for step in tracker.pending(projects) {
            if refused.contains(&step.project) {
                continue;
            }
            if let Some(change) = &step.change {
                if Instant::now() >= until {
                    return;
                }
                tracing::info!(
                    project = %change.project,
                    phase = change.status.phase.as_str(),
                    reason = change.status.reason.as_deref().unwrap_or(""),
                    occurrence = %change.occurrence,
                    "pod changed"
                );
                if let Err(e) = sink.changed(change).await {
                    tracing::warn!(project = %change.project, error = %e, "a pod change was not taken; offering it again later");
                    refused.push(step.project.clone());
                    continue;
                }
            }
            tracker.remember(step.project, step.after);
        }
    }
}

/// Whether a renewal leaves the lease ours: a 409 means another replica wrote it (lost); any
/// other failure leaves it ours until it runs out.
fn still_ours(elector: &Elector, renewed: Result<(), crate::KubeError>) -> bool {
    match renewed {
        Ok(()) => true,
        Err(crate::KubeError::Conflict(why)) => {
            tracing::warn!(lease = %elector.name, %why, "lost the lease");
            false
        }
        Err(e) => {
            tracing::warn!(lease = %elector.name, error = %e, "could not renew the lease");
            true
        }
    }
}

#[async_trait]
impl PodWatch for KubePodWatch {
    async fn run(&self, holder: &WorkerId, sink: &dyn PodChangeSink, cancel: CancellationToken) {
        let elector = Elector {
            api: self.leases.clone(),
            name: self.config.lease_name.clone(),
            holder: holder.to_string(),
            duration: self.config.lease_duration,
            api_timeout: self.api_timeout,
        };
        let mut observed = Observed::default();
        let mut pause = Pause::new(self.config.backoff);
        let mut failing = false;
        loop {
            let wait = match elector.try_acquire(&mut observed).await {
                Ok(Some(held)) => {
                    pause.reset();
                    failing = false;
                    self.lead(&elector, held, sink, &cancel).await;
                    observed = Observed::default();
                    self.config.retry_every
                }
                Ok(None) => {
                    pause.reset();
                    failing = false;
                    self.config.retry_every
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(lease = %elector.name, error = %e, "cannot read the pod watch lease; retrying with backoff");
                    }
                    failing = true;
                    pause.next().unwrap_or(self.config.backoff.1)
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
