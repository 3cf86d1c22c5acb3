//! Contract suite for batch claims (`CommandQueue::claim_batch`): the rules of a single claim,
//! held for a whole batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{now_micros, sample_command, sample_project, Store};
use crate::command::{CommandStatus, Priority, Termination};
use crate::ids::{CommandId, WorkerId};
use crate::output::CommandOutput;
use crate::ports::{Claim, CommandQueue, CommandRepository, ProjectRepository};
use crate::project::Project;

const LEASE: Duration = Duration::from_secs(60);

async fn enqueue<S: Store>(store: &S, project: &Project, priority: Priority) -> CommandId {
    CommandRepository::enqueue(store, sample_command(project, priority, None)).await.expect("enqueue").command.id
}

async fn batch<S: Store>(store: &S, worker: &WorkerId, max: usize) -> Vec<Claim> {
    let claims = CommandQueue::claim_batch(store, worker, now_micros(), LEASE, max).await.expect("claim batch");
    assert!(claims.len() <= max, "a batch holds at most what was asked for");
    for claim in &claims {
        assert_eq!(claim.command.status, CommandStatus::Running);
        assert!(claim.command.started_at.is_some());
    }
    claims
}

/// Everything claimable, asking again while a batch came back non-empty (a batch MAY hold fewer).
async fn drain<S: Store>(store: &S, worker: &WorkerId, max: usize) -> Vec<Claim> {
    let mut all = Vec::new();
    loop {
        let claims = batch(store, worker, max).await;
        if claims.is_empty() {
            return all;
        }
        all.extend(claims);
    }
}

/// Runs every batch-claim check on fresh stores.
pub(crate) async fn run<S: Store, F: Fn() -> Fut, Fut: std::future::Future<Output = S>>(fresh: F) {
    batches_follow_priority_and_caps(fresh().await).await;
    concurrent_batches_are_exclusive_and_respect_caps(Arc::new(fresh().await)).await;
}

/// A batch is in dequeue order (priority, then age), never takes a project past its cap, and
/// leaves a full project's commands queued until one of its commands ends.
async fn batches_follow_priority_and_caps<S: Store>(store: S) {
    let me = WorkerId::new("batch");
    let (wide, solo, spare) = (sample_project("wide", 2), sample_project("solo", 1), sample_project("spare", 10));
    for p in [&wide, &solo, &spare] {
        ProjectRepository::create(&store, p).await.expect("project");
    }
    assert!(batch(&store, &me, 8).await.is_empty(), "nothing queued, nothing claimed");
    let mut w = Vec::new();
    for p in [Priority::Low, Priority::Critical, Priority::Normal, Priority::High] {
        w.push(enqueue(&store, &wide, p).await);
    }
    let s = [enqueue(&store, &solo, Priority::High).await, enqueue(&store, &solo, Priority::Critical).await];
    let x = enqueue(&store, &spare, Priority::Normal).await;
    assert!(batch(&store, &me, 0).await.is_empty(), "a batch of none claims nothing");

    let first = batch(&store, &me, 1).await;
    assert_eq!(first.iter().map(|c| c.command.id).collect::<Vec<_>>(), [w[1]], "one: the head of the queue");
    let rest = drain(&store, &me, 10).await;
    let ids: Vec<CommandId> = rest.iter().map(|c| c.command.id).collect();
    assert_eq!(ids, [s[1], w[3], x], "dequeue order; each project's best up to its cap, and no more");
    assert!(batch(&store, &me, 10).await.is_empty(), "every project with work is full");

    let fences: HashSet<i64> = first.iter().chain(&rest).map(|c| c.fence).collect();
    assert_eq!(fences.len(), 4, "every claim has its own fence");
    let done = Termination::Exited(0).completion();
    CommandQueue::finish(&store, w[1], first[0].fence, &done, &CommandOutput::default(), now_micros())
        .await
        .expect("finish")
        .expect("fresh fence");
    let next = drain(&store, &me, 10).await;
    assert_eq!(
        next.iter().map(|c| c.command.id).collect::<Vec<_>>(),
        [w[2]],
        "the freed slot goes to the next in line"
    );
}

/// Batch claimers racing over the same projects never take one command twice and never run a
/// project past its cap.
async fn concurrent_batches_are_exclusive_and_respect_caps<S: Store>(store: Arc<S>) {
    let mut project_of = HashMap::new();
    for name in ["red", "green", "blue"] {
        let p = sample_project(name, 3);
        ProjectRepository::create(store.as_ref(), &p).await.expect("project");
        for i in 0..10 {
            let priority = if i % 2 == 0 { Priority::Normal } else { Priority::High };
            project_of.insert(enqueue(store.as_ref(), &p, priority).await, p.name.clone());
        }
    }
    let claimers: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { drain(store.as_ref(), &WorkerId::new(format!("b{i}")), 4).await })
        })
        .collect();
    let (mut seen, mut fences, mut per_project) = (HashSet::new(), HashSet::new(), HashMap::new());
    for claimer in claimers {
        for claim in claimer.await.expect("claimer") {
            assert!(seen.insert(claim.command.id), "command {} was claimed twice", claim.command.id);
            assert!(fences.insert(claim.fence), "fence {} was handed out twice", claim.fence);
            *per_project.entry(project_of[&claim.command.id].clone()).or_insert(0) += 1;
            assert_eq!(claim.command.priority, Priority::High, "each project's best went first");
        }
    }
    assert_eq!(per_project.len(), 3, "every project got its share");
    assert!(per_project.values().all(|n| *n == 3), "each project ran exactly its cap: {per_project:?}");
}
