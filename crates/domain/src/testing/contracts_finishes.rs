//! Contract suite for finishes that race (`CommandQueue::finish` called concurrently, as a
//! worker's slots call it when their commands end together): whatever a store writes together,
//! each command ends exactly once, a fence that no longer holds changes nothing, and every
//! finish gets its own answer.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{now_micros, sample_command, sample_project, Store};
use crate::command::{CommandStatus, Completion, Priority, Termination, TerminationReason};
use crate::ids::{CommandId, WorkerId};
use crate::output::{CommandOutput, EventKind};
use crate::ports::{Claim, CommandQueue, CommandRepository, ProjectRepository};
use crate::{DomainError, DomainResult};

const LEASE: Duration = Duration::from_secs(60);

/// Runs every check on fresh stores.
pub(crate) async fn run<S: Store, F: Fn() -> Fut, Fut: Future<Output = S>>(fresh: F) {
    concurrent_finishes_are_exactly_once_and_fenced(Arc::new(fresh().await)).await;
}

async fn claim_all<S: Store>(store: &S, worker: &WorkerId, n: usize) -> Vec<Claim> {
    let mut claims = Vec::new();
    while claims.len() < n {
        let batch = CommandQueue::claim_batch(store, worker, now_micros(), LEASE, n - claims.len()).await;
        let batch = batch.expect("claim");
        assert!(!batch.is_empty(), "every queued command is claimable");
        claims.extend(batch);
    }
    claims
}

fn output(text: &str) -> CommandOutput {
    CommandOutput { stdout: text.to_owned(), stderr: format!("{text} on stderr"), ..CommandOutput::default() }
}

async fn kinds<S: Store>(store: &S, id: CommandId) -> Vec<EventKind> {
    let events = CommandRepository::events_after(store, id, 0, 100).await.expect("events");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "gap-free events of {id}");
    events.into_iter().map(|e| e.kind).collect()
}

/// One finish to race: which command, under which fence, with what.
struct Finish {
    id: CommandId,
    fence: i64,
    completion: Completion,
    output: CommandOutput,
}

/// Commands ending together, some finished twice under their fence, some only under a fence
/// that no longer holds (another command's, or the one from before a hand-back), one unknown:
/// each held command ends once with one of its finishes' values, the others are untouched,
/// and each finish's answer is what it would be alone.
async fn concurrent_finishes_are_exactly_once_and_fenced<S: Store>(store: Arc<S>) {
    let me = WorkerId::new("slots");
    let busy = sample_project("busy", 64);
    ProjectRepository::create(store.as_ref(), &busy).await.expect("project");
    for _ in 0..12 {
        CommandRepository::enqueue(store.as_ref(), sample_command(&busy, Priority::Normal, None))
            .await
            .expect("enqueue");
    }
    let mut claims = claim_all(store.as_ref(), &me, 12).await;
    // Two go back to the queue and are claimed again: their first fences no longer hold.
    let before: Vec<Claim> = claims.drain(10..).collect();
    for old in &before {
        assert_eq!(CommandQueue::hand_back(store.as_ref(), old.command.id, old.fence, now_micros()).await, Ok(true));
    }
    let again = claim_all(store.as_ref(), &me, 2).await;
    let fence_of = |id: CommandId| again.iter().find(|c| c.command.id == id).map(|c| c.fence).expect("claimed again");

    let ok = |text: &str| (Termination::Exited(0).completion(), output(text));
    let failed = Completion {
        status: CommandStatus::Failed,
        exit_code: None,
        reason: TerminationReason::StartFailed,
        error: Some("no such file".into()),
    };
    let mut finishes = Vec::new();
    // 0..3: two finishes each under the right fence.
    for (i, c) in claims[..3].iter().enumerate() {
        for who in ["a", "b"] {
            let (completion, output) = ok(&format!("{who}{i}"));
            finishes.push(Finish { id: c.command.id, fence: c.fence, completion, output });
        }
    }
    // 3..6: one each; 3 fails without an exit code.
    for (i, c) in claims[3..6].iter().enumerate() {
        let (completion, output) = if i == 0 { (failed.clone(), output("x")) } else { ok(&format!("one{i}")) };
        finishes.push(Finish { id: c.command.id, fence: c.fence, completion, output });
    }
    // 6 and 7: only under another command's fence.
    for (c, other) in [(&claims[6], &claims[8]), (&claims[7], &claims[0])] {
        let (completion, output) = ok("stale");
        finishes.push(Finish { id: c.command.id, fence: other.fence, completion, output });
    }
    // 10 and 11: under the fence from before the hand-back and under the new one.
    for old in &before {
        let id = old.command.id;
        finishes.push(Finish { id, fence: old.fence, completion: ok("old").0, output: output("old") });
        finishes.push(Finish { id, fence: fence_of(id), completion: ok("new").0, output: output("new") });
    }
    let unknown = CommandId::generate();
    finishes.push(Finish { id: unknown, fence: claims[1].fence, completion: ok("ghost").0, output: output("ghost") });

    let tasks: Vec<_> = finishes
        .iter()
        .map(|f| {
            let (store, id, fence, c, o) = (Arc::clone(&store), f.id, f.fence, f.completion.clone(), f.output.clone());
            tokio::spawn(async move { CommandQueue::finish(store.as_ref(), id, fence, &c, &o, now_micros()).await })
        })
        .collect();
    let mut answers: Vec<DomainResult<Option<crate::command::Command>>> = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("finish task"));
    }
    let answer = |i: usize| answers[i].clone();

    for i in 0..3 {
        let (a, b) = (answer(2 * i), answer(2 * i + 1));
        let won: Vec<_> = [&a, &b].into_iter().filter(|r| matches!(r, Ok(Some(_)))).collect();
        assert_eq!(won.len(), 1, "exactly one of two racing finishes ends command {i}: {a:?} / {b:?}");
        assert!(matches!(a, Ok(Some(_)) | Ok(None)) && matches!(b, Ok(Some(_)) | Ok(None)));
        let winner = if a.as_ref().is_ok_and(Option::is_some) { &finishes[2 * i] } else { &finishes[2 * i + 1] };
        let id = claims[i].command.id;
        assert_eq!(
            CommandRepository::output(store.as_ref(), id).await,
            Ok(winner.output.clone()),
            "the winner's output"
        );
        assert_eq!(
            kinds(store.as_ref(), id).await,
            [
                EventKind::Status(CommandStatus::Queued),
                EventKind::Status(CommandStatus::Running),
                EventKind::Status(CommandStatus::Succeeded),
                EventKind::Exit
            ],
            "one end, one set of events"
        );
    }
    for (k, c) in claims[3..6].iter().enumerate() {
        let done = answer(6 + k).expect("finish").expect("held");
        let want = &finishes[6 + k];
        assert_eq!(done.id, c.command.id, "each finish answers its own command");
        assert_eq!((done.status, done.exit_code), (want.completion.status, want.completion.exit_code));
        assert_eq!(done.termination_reason, Some(want.completion.reason));
        assert_eq!(done.error, want.completion.error);
        assert_eq!(CommandRepository::output(store.as_ref(), c.command.id).await, Ok(want.output.clone()));
        assert_eq!(kinds(store.as_ref(), c.command.id).await.len(), 4);
    }
    for (k, c) in claims[6..8].iter().enumerate() {
        assert_eq!(answer(9 + k), Ok(None), "a fence that does not hold changes nothing");
        let still = CommandRepository::get(store.as_ref(), c.command.id).await.expect("get");
        assert_eq!((still.status, still.finished_at), (CommandStatus::Running, None));
        assert_eq!(kinds(store.as_ref(), c.command.id).await.len(), 2, "no events from a stale finish");
        let until = now_micros() + chrono::TimeDelta::seconds(60);
        let lease = CommandQueue::renew_lease(store.as_ref(), c.command.id, c.fence, until).await;
        assert!(lease.expect("renew").held, "the holder keeps its lease");
    }
    for (k, old) in before.iter().enumerate() {
        assert_eq!(answer(11 + 2 * k), Ok(None), "the fence from before the hand-back does not hold");
        let done = answer(12 + 2 * k).expect("finish").expect("the new fence holds");
        assert_eq!((done.id, done.status), (old.command.id, CommandStatus::Succeeded));
        assert_eq!(CommandRepository::output(store.as_ref(), old.command.id).await, Ok(output("new")));
        assert_eq!(kinds(store.as_ref(), old.command.id).await.len(), 6, "queued, running, queued, running, end");
    }
    assert!(matches!(answer(15), Err(DomainError::NotFound(_))), "an unknown command: {:?}", answer(15));

    // The store goes on: the held ones among the stale-fenced commands end under their fences.
    for c in &claims[6..8] {
        let (completion, output) = ok("late");
        let done = CommandQueue::finish(store.as_ref(), c.command.id, c.fence, &completion, &output, now_micros());
        assert_eq!(done.await.expect("finish").map(|d| d.status), Some(CommandStatus::Succeeded));
    }
}
