//! The pod watch against kube-sim: leader election through the Lease, changes nobody asked
//! for (eviction, OOM kill), re-lists after 410, and an API that is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters_kube::{pod_name, KubePodWatch, PodWatchConfig, REPORTED_ANNOTATION};
use async_trait::async_trait;
use common::{spec, Harness, NAMESPACE};
use domain::ids::WorkerId;
use domain::pod::{PodChange, PodPhase};
use domain::ports::{PodChangeSink, PodManager, PodWatch};
use domain::testing::project_name;
use domain::{DomainError, DomainResult};
use kube_sim::Faults;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A two-second lease: renewed every 0.67 s, a dead leader replaced within ~2.7 s.
fn config() -> PodWatchConfig {
    PodWatchConfig {
        backoff: (Duration::from_millis(100), Duration::from_secs(1)),
        ..PodWatchConfig::new(Duration::from_secs(2))
    }
}

/// Records every change it takes; refuses them while `refuse` is set.
#[derive(Default)]
struct Recorder {
    changes: Mutex<Vec<PodChange>>,
    refuse: Mutex<bool>,
}

#[async_trait]
impl PodChangeSink for Recorder {
    async fn changed(&self, change: &PodChange) -> DomainResult<()> {
        if *self.refuse.lock().unwrap() {
            return Err(DomainError::Unavailable("refused by the test".into()));
        }
        self.changes.lock().unwrap().push(change.clone());
        Ok(())
    }
}

impl Recorder {
    fn seen(&self) -> Vec<(String, PodPhase, Option<String>)> {
        self.changes
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.project.as_str().to_owned(), c.status.phase, c.status.reason.clone()))
            .collect()
    }

    fn occurrences(&self) -> Vec<String> {
        self.changes.lock().unwrap().iter().map(|c| c.occurrence.clone()).collect()
    }

    /// Waits (at most `limit`) until `done` holds for what was seen.
    async fn until(&self, limit: Duration, done: impl Fn(&[(String, PodPhase, Option<String>)]) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.seen()) {
            assert!(tokio::time::Instant::now() < deadline, "not reported in time; seen: {:?}", self.seen());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task).await.expect("the watch stops").unwrap();
    }
}

fn spawn(h: &Harness, holder: &str, sink: &Arc<Recorder>) -> Running {
    let watch = KubePodWatch::new(&h.backend, config());
    let (sink, holder, cancel) = (Arc::clone(sink), WorkerId::new(holder.to_owned()), CancellationToken::new());
    let token = cancel.clone();
    let task = tokio::spawn(async move { watch.run(&holder, sink.as_ref(), token).await });
    Running { cancel, task }
}

async fn lease_holder(h: &Harness) -> Option<String> {
    let url =
        format!("{}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/rdev-api-pod-watch", h.sim.base_url());
    let lease: serde_json::Value = h.http.get(url).send().await.unwrap().json().await.unwrap();
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

async fn wait_leader(h: &Harness, holder: &str) {
    for _ in 0..100 {
        if lease_holder(h).await.as_deref() == Some(holder) {
            // The leader lists after taking the lease; give it that moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{holder} never led");
}

const SOON: Duration = Duration::from_secs(5);

fn count(seen: &[(String, PodPhase, Option<String>)], phase: PodPhase) -> usize {
    seen.iter().filter(|(_, p, _)| *p == phase).count()
}

#[tokio::test]
async fn an_eviction_is_reported_once_as_failed_evicted() {
    let h = Harness::start().await;
    let sink = Arc::new(Recorder::default());
    let watch = spawn(&h, "replica-a", &sink);
    wait_leader(&h, "replica-a").await;
    h.ready_pod("ev").await;
    sink.until(SOON, |s| count(s, PodPhase::Running) == 1).await;
    let pod = pod_name(&project_name("ev"));
    assert_eq!(h.control_post(&format!("/_sim/pods/{NAMESPACE}/{pod}/evict")).await, 200);
    sink.until(SOON, |s| count(s, PodPhase::Failed) == 1).await;
    // Bookmarks and renewals pass; nothing is repeated.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = sink.seen();
    assert_eq!(count(&seen, PodPhase::Failed), 1, "{seen:?}");
    let reason = seen.iter().find(|(_, p, _)| *p == PodPhase::Failed).unwrap().2.clone().unwrap();
    assert!(reason.starts_with("Evicted: The node was low on resource: memory."), "{reason}");
    watch.stop().await;
    assert_eq!(lease_holder(&h).await, None, "a stopped watch gives the lease up");
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_failed_oom_killed_then_ready() {
    let h = Harness::start().await;
    let sink = Arc::new(Recorder::default());
    let watch = spawn(&h, "replica-a", &sink);
    wait_leader(&h, "replica-a").await;
    h.ready_pod("oom").await;
    sink.until(SOON, |s| count(s, PodPhase::Running) == 1).await;
    let pod = pod_name(&project_name("oom"));
    assert_eq!(h.control_post(&format!("/_sim/pods/{NAMESPACE}/{pod}/oom")).await, 200);
    sink.until(SOON, |s| s.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = sink.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!((seen[1].1, seen[1].2.as_deref()), (PodPhase::Failed, Some("OOMKilled")));
    assert_eq!(seen[2].1, PodPhase::Running, "the container restarted");
    watch.stop().await;
}

#[tokio::test]
async fn a_deleted_pod_is_reported_stopped_once() {
    let h = Harness::start().await;
    let sink = Arc::new(Recorder::default());
    let watch = spawn(&h, "replica-a", &sink);
    wait_leader(&h, "replica-a").await;
    h.ready_pod("gone").await;
    h.backend.stop(&project_name("gone")).await.unwrap();
    sink.until(SOON, |s| count(s, PodPhase::Stopped) == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let seen = sink.seen();
    assert_eq!(seen.iter().map(|s| s.1).collect::<Vec<_>>(), [PodPhase::Running, PodPhase::Stopped], "{seen:?}");
    watch.stop().await;
}

#[tokio::test]
async fn only_the_leader_reports_and_a_successor_continues_without_repeats() {
    let h = Harness::start().await;
    let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let watch_a = spawn(&h, "replica-a", &a);
    wait_leader(&h, "replica-a").await;
    let watch_b = spawn(&h, "replica-b", &b);
    h.ready_pod("shared").await;
    a.until(SOON, |s| s.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(b.seen().is_empty(), "a follower reports nothing: {:?}", b.seen());

    // A gives the lease up; B takes it at once and reports only what A had not.
    watch_a.stop().await;
    let started = tokio::time::Instant::now();
    wait_leader(&h, "replica-b").await;
    assert!(started.elapsed() < Duration::from_secs(2), "taken over within the lease");
    h.backend.stop(&project_name("shared")).await.unwrap();
    b.until(SOON, |s| s.len() == 1).await;
    assert_eq!(b.seen()[0].1, PodPhase::Stopped, "{:?}", b.seen());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.seen().len() + b.seen().len(), 2, "a: {:?}, b: {:?}", a.seen(), b.seen());
    watch_b.stop().await;
}

#[tokio::test]
async fn a_leader_that_dies_is_replaced_after_the_lease_and_the_gap_is_reported() {
    let h = Harness::start().await;
    let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let watch_a = spawn(&h, "replica-a", &a);
    wait_leader(&h, "replica-a").await;
    let watch_b = spawn(&h, "replica-b", &b);
    h.ready_pod("crash").await;
    a.until(SOON, |s| s.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // a renewal saves the reported state
                                                          // A dies without giving the lease up; the pod is evicted while nobody leads.
    watch_a.task.abort();
    let died = tokio::time::Instant::now();
    let pod = pod_name(&project_name("crash"));
    assert_eq!(h.control_post(&format!("/_sim/pods/{NAMESPACE}/{pod}/evict")).await, 200);
    b.until(Duration::from_secs(6), |s| s.len() == 1).await;
    let waited = died.elapsed();
    assert!(waited >= Duration::from_millis(1500), "B waited for the lease to run out ({waited:?})");
    assert_eq!(b.seen()[0].1, PodPhase::Failed);
    assert_eq!(lease_holder(&h).await.as_deref(), Some("replica-b"));
    assert_eq!(a.seen().len(), 1, "A reported nothing after it died");
    watch_b.stop().await;
}

#[tokio::test]
async fn a_410_makes_it_relist_without_repeating_itself() {
    let h = Harness::start().await;
    let sink = Arc::new(Recorder::default());
    let watch = spawn(&h, "replica-a", &sink);
    wait_leader(&h, "replica-a").await;
    h.ready_pod("one").await;
    h.ready_pod("two").await;
    sink.until(SOON, |s| s.len() == 2).await;
    h.sim.compact();
    h.backend.stop(&project_name("one")).await.unwrap();
    h.sim.compact();
    sink.until(SOON, |s| s.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let occurrences = sink.occurrences();
    let mut unique = occurrences.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), occurrences.len(), "no change twice: {occurrences:?}");
    assert_eq!(sink.seen()[2].1, PodPhase::Stopped);
    watch.stop().await;
}

#[tokio::test]
async fn a_refused_change_is_offered_again() {
    let h = Harness::start().await;
    let sink = Arc::new(Recorder::default());
    let watch = spawn(&h, "replica-a", &sink);
    wait_leader(&h, "replica-a").await;
    *sink.refuse.lock().unwrap() = true;
    h.ready_pod("retry").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    *sink.refuse.lock().unwrap() = false;
    sink.until(SOON, |s| s.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sink.seen().len(), 1);
    watch.stop().await;
    // What was reported is saved with the lease for the next leader.
    let url =
        format!("{}/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/rdev-api-pod-watch", h.sim.base_url());
    let lease: serde_json::Value = h.http.get(url).send().await.unwrap().json().await.unwrap();
    let saved = lease["metadata"]["annotations"][REPORTED_ANNOTATION].as_str().unwrap();
    assert!(saved.contains("\"retry\""), "{saved}");
}

#[tokio::test]
async fn an_unreachable_api_is_retried_with_backoff_not_in_a_loop() {
    let h = Harness::start().await;
    let sink = Arc::new(Recorder::default());
    let watch = spawn(&h, "replica-a", &sink);
    wait_leader(&h, "replica-a").await;
    h.sim.set_faults(Faults { refuse_connections: Some(true), ..Faults::default() });
    let before = h.sim.api_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = h.sim.api_requests() - before;
    // Renewals every 0.67 s while leading, then lease reads and watch retries, each backing off.
    assert!(during <= 25, "{during} requests in 3 s: the watch spins");
    assert!(during >= 2, "it keeps trying ({during})");
    h.sim.clear_faults();
    // It leads again and follows pods as before.
    wait_leader(&h, "replica-a").await;
    h.backend.start(&spec("after")).await.unwrap();
    sink.until(Duration::from_secs(8), |s| s.iter().any(|(p, phase, _)| p == "after" && *phase == PodPhase::Running))
        .await;
    watch.stop().await;
}
