//! Group commit: requests that arrive while batches are being written wait, and are written
//! together in the next batch. A store that writes a batch in one statement then pays one round
//! trip per batch instead of one per request, and nobody waits for a timer: a request that
//! finds a writer free is written at once.
//!
//! Batches are written by tasks of their own (at most `BatchLimits::writers` at a time, each
//! writing one batch after the other until the queue is empty), spawned by requests that find
//! fewer writers than that. More than one writer keeps a request from waiting for a whole batch
//! in flight before its own starts; requests that arrive in one burst still share a batch,
//! because a spawned writer takes everything queued when it first runs. No caller writes: a
//! caller dropped mid-batch (a request future abandoned at shutdown, a timed-out client) can
//! neither strand the callers queued behind it nor cut its own write short. Its item is written
//! all the same, because what a caller submits (a command's end) must happen whether or not
//! anyone waits for the answer.
//!
//! The number of writers is counted under the queue's lock and given back exactly once per
//! writer: by the writer that finds the queue empty (under the same lock, so a request queued
//! after that finds the place free and starts a writer), or by its guard when the writer ends
//! any other way (it panicked, or its task was dropped, run or not, with its runtime). When that
//! writer was the last one, the guard fails the waiting callers with `Abandoned`; while others
//! run they serve the queue, since each writes until it finds the queue empty.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// Writes one batch and answers one result per item, in the items' order.
pub(crate) type Flush<T, R> = Arc<dyn Fn(Vec<T>) -> BoxFuture<'static, Vec<R>> + Send + Sync>;

/// How large one batch may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Items per batch (at least one).
    pub(crate) items: usize,
    /// Sum of the items' weights per batch; an item heavier than this still goes, alone.
    pub(crate) weight: usize,
    /// Batches in flight at once (at least one).
    pub(crate) writers: usize,
}

/// A request's batch ended without an answer for it: the writing task panicked, its runtime
/// shut down, or the writer answered fewer results than it was given items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch was abandoned before it answered")]
pub(crate) struct Abandoned;

/// What waits to be written, and how many tasks are writing.
struct Queue<T, R> {
    waiting: VecDeque<(T, oneshot::Sender<R>)>,
    /// Writing tasks that run; each takes what queued meanwhile into its next batch.
    writers: usize,
}

struct Shared<T, R> {
    queue: Mutex<Queue<T, R>>,
    limits: BatchLimits,
    weigh: fn(&T) -> usize,
    flush: Flush<T, R>,
}

/// Writes submitted items in batches, at most `BatchLimits::writers` in flight. Cheap to clone:
/// clones share one queue.
pub(crate) struct GroupCommit<T, R>(Arc<Shared<T, R>>);

impl<T, R> Clone for GroupCommit<T, R> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T, R> std::fmt::Debug for GroupCommit<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("limits", &self.0.limits).finish_non_exhaustive()
    }
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Batches of at most `limits` (items weighed by `weigh`), each written by `flush`.
    pub(crate) fn new(limits: BatchLimits, weigh: fn(&T) -> usize, flush: Flush<T, R>) -> Self {
        let limits = BatchLimits { items: limits.items.max(1), writers: limits.writers.max(1), ..limits };
        let queue = Mutex::new(Queue { waiting: VecDeque::new(), writers: 0 });
        Self(Arc::new(Shared { queue, limits, weigh, flush }))
    }

    /// Writes `item` with whatever else is waiting, and answers its result. Must be called
    /// within a tokio runtime (the batch is written by a task of its own).
    pub(crate) async fn submit(&self, item: T) -> Result<R, Abandoned> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.0.lock();
            queue.waiting.push_back((item, reply));
            let start = queue.writers < self.0.limits.writers;
            queue.writers += usize::from(start);
            start
        };
        if start {
            // The guard exists before the task does: a task dropped before its first poll (its
            // runtime shut down) or a spawn that panics (no runtime) still gives the place back.
            tokio::spawn(drain(Writer { shared: Arc::clone(&self.0), done: false }));
        }
        answer.await.map_err(|_| Abandoned)
    }
}

impl<T, R> Shared<T, R> {
    fn lock(&self) -> MutexGuard<'_, Queue<T, R>> {
        // Every step under the lock leaves the queue consistent (no await, nothing that
        // panics half-way), so a poisoned lock still holds a usable queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next batch from the head of the queue, within the limits; `None`, and one writer
    /// fewer, when the queue is empty. Both under one lock, so an item queued just after a
    /// writer found the queue empty finds a free writer's place and starts a new task.
    fn next_batch(&self) -> Option<Vec<(T, oneshot::Sender<R>)>> {
        let mut queue = self.lock();
        if queue.waiting.is_empty() {
            queue.writers -= 1;
            return None;
        }
        let (mut count, mut weight) = (0, 0_usize);
        for (item, _) in &queue.waiting {
            let w = (self.weigh)(item);
            if count == self.limits.items || (count > 0 && weight.saturating_add(w) > self.limits.weight) {
                break;
            }
            count += 1;
            weight = weight.saturating_add(w);
        }
        Some(queue.waiting.drain(..count).collect())
    }
}

/// Writes batches until the queue is empty.
async fn drain<T, R>(mut writer: Writer<T, R>) {
    while let Some(batch) = writer.shared.next_batch() {
        let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        let expected = replies.len();
        let results = (writer.shared.flush)(items).await;
        if results.len() != expected {
            // The callers left without a result get `Abandoned` when their sender drops.
            tracing::error!(expected, answered = results.len(), "a batch answered the wrong number of results");
        }
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may be gone; its item was written all the same.
            let _ = reply.send(result);
        }
    }
    // `next_batch` gave the place back with the `None` that ended the loop.
    writer.done = true;
}

/// One writer's place among `BatchLimits::writers`, taken by the submit that spawns it. Cleans
/// up after a writer that ends before it found the queue empty (its write panicked, or its task
/// was dropped with its runtime, even before it first ran): its place goes back, and when it was
/// the last writer the waiting callers get `Abandoned` instead of waiting for good (while others
/// run, they write what waits); the next submit starts a new writer.
struct Writer<T, R> {
    shared: Arc<Shared<T, R>>,
    /// The place was given back by `next_batch`.
    done: bool,
}

impl<T, R> Drop for Writer<T, R> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waiting = {
            let mut queue = self.shared.lock();
            queue.writers -= 1;
            // Other writers still serve the queue; without them nobody would.
            if queue.writers == 0 {
                std::mem::take(&mut queue.waiting)
            } else {
                VecDeque::new()
            }
        };
        // Dropped outside the lock: each drop wakes a caller.
        drop(waiting);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::sync::{mpsc, Semaphore};

    use super::*;

    /// A writer that reports each batch as it starts, then waits for a permit of `gate` per
    /// batch before answering every item doubled; item 13 panics.
    struct Harness {
        commit: GroupCommit<u32, u32>,
        started: mpsc::UnboundedReceiver<Vec<u32>>,
        gate: Arc<Semaphore>,
    }

    fn harness(limits: BatchLimits) -> Harness {
        let (tx, started) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let permits = Arc::clone(&gate);
        let flush: Flush<u32, u32> = Arc::new(move |items: Vec<u32>| {
            let (tx, permits) = (tx.clone(), Arc::clone(&permits));
            async move {
                let _ = tx.send(items.clone());
                permits.acquire().await.expect("gate open").forget();
                assert!(!items.contains(&13), "item 13 makes the writer panic");
                items.into_iter().map(|i| i * 2).collect()
            }
            .boxed()
        });
        Harness { commit: GroupCommit::new(limits, |i| *i as usize, flush), started, gate }
    }

    const WIDE: BatchLimits = BatchLimits { items: 64, weight: usize::MAX, writers: 1 };

    fn submit(h: &Harness, item: u32) -> tokio::task::JoinHandle<Result<u32, Abandoned>> {
        let commit = h.commit.clone();
        tokio::spawn(async move { commit.submit(item).await })
    }

    /// Lets spawned tasks run until they wait (a current-thread runtime runs nothing else).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_lone_item_is_written_at_once_and_answered() {
        let mut h = harness(WIDE);
        h.gate.add_permits(1);
        assert_eq!(h.commit.submit(21).await, Ok(42));
        assert_eq!(h.started.recv().await, Some(vec![21]), "written alone, without waiting for company");
    }

    #[tokio::test]
    async fn items_that_arrive_during_a_batch_share_the_next_one() {
        let mut h = harness(WIDE);
        let first = submit(&h, 1);
        assert_eq!(h.started.recv().await, Some(vec![1]));
        let rest: Vec<_> = (2..=4).map(|i| submit(&h, i)).collect();
        settle().await;
        h.gate.add_permits(2);
        assert_eq!(h.started.recv().await, Some(vec![2, 3, 4]), "one batch for all that queued meanwhile");
        assert_eq!(first.await.expect("task"), Ok(2));
        for (i, task) in (2..=4).zip(rest) {
            assert_eq!(task.await.expect("task"), Ok(i * 2), "each caller gets its own result");
        }
    }

    #[tokio::test]
    async fn batches_stay_within_their_limits() {
        let mut h = harness(BatchLimits { items: 3, weight: 10, writers: 1 });
        let first = submit(&h, 1);
        assert_eq!(h.started.recv().await, Some(vec![1]));
        let rest: Vec<_> = [2, 2, 2, 2, 6, 5, 20, 1].into_iter().map(|i| submit(&h, i)).collect();
        settle().await;
        h.gate.add_permits(10);
        let mut batches = Vec::new();
        for _ in 0..5 {
            batches.push(h.started.recv().await.expect("batch"));
        }
        assert_eq!(batches, [vec![2, 2, 2], vec![2, 6], vec![5], vec![20], vec![1]], "3 items, weight 10, heavy alone");
        first.await.expect("task").expect("answered");
        for task in rest {
            task.await.expect("task").expect("answered");
        }
    }

    #[tokio::test]
    async fn a_second_writer_starts_while_a_batch_is_in_flight_and_a_burst_still_shares_one() {
        let mut h = harness(BatchLimits { writers: 2, ..WIDE });
        let first = submit(&h, 1);
        assert_eq!(h.started.recv().await, Some(vec![1]));
        let burst = h.commit.clone();
        let burst = tokio::spawn(async move { futures::future::join_all((2..=4).map(|i| burst.submit(i))).await });
        assert_eq!(h.started.recv().await, Some(vec![2, 3, 4]), "not behind the batch in flight, and together");
        let late = submit(&h, 5);
        settle().await;
        h.gate.add_permits(3);
        assert_eq!(h.started.recv().await, Some(vec![5]), "a writer that is done takes what queued");
        assert_eq!(first.await.expect("task"), Ok(2));
        assert_eq!(burst.await.expect("task"), [Ok(4), Ok(6), Ok(8)]);
        assert_eq!(late.await.expect("task"), Ok(10));
    }

    /// Submits `item` and waits until its batch has started (it then waits at the gate).
    async fn started_alone(h: &mut Harness, item: u32) -> tokio::task::JoinHandle<Result<u32, Abandoned>> {
        let task = submit(h, item);
        assert_eq!(h.started.recv().await, Some(vec![item]), "a free writer takes it at once");
        task
    }

    #[tokio::test]
    async fn writers_never_exceed_their_limit_and_each_gives_its_place_back() {
        let mut h = harness(BatchLimits { writers: 2, ..WIDE });
        let one = started_alone(&mut h, 1).await;
        let two = started_alone(&mut h, 2).await;
        let queued: Vec<_> = (3..=4).map(|i| submit(&h, i)).collect();
        settle().await;
        assert!(h.started.try_recv().is_err(), "no third batch while two are in flight");
        h.gate.add_permits(1);
        assert_eq!(h.started.recv().await, Some(vec![3, 4]), "the writer that is done takes what queued");
        h.gate.add_permits(2);
        assert_eq!(one.await.expect("task"), Ok(2));
        assert_eq!(two.await.expect("task"), Ok(4));
        for (i, task) in (3..=4).zip(queued) {
            assert_eq!(task.await.expect("task"), Ok(i * 2));
        }
        settle().await;
        // Both places came back: two batches are in flight at once again, and no more.
        let five = started_alone(&mut h, 5).await;
        let six = started_alone(&mut h, 6).await;
        let seven = submit(&h, 7);
        settle().await;
        assert!(h.started.try_recv().is_err(), "still two at most");
        h.gate.add_permits(3);
        assert_eq!((five.await.expect("task"), six.await.expect("task")), (Ok(10), Ok(12)));
        assert_eq!(seven.await.expect("task"), Ok(14));
    }

    #[tokio::test]
    async fn a_writer_that_panics_while_another_runs_leaves_the_waiting_callers_to_it() {
        let mut h = harness(BatchLimits { writers: 2, ..WIDE });
        let doomed = started_alone(&mut h, 13).await;
        let running = started_alone(&mut h, 1).await;
        let behind: Vec<_> = [7, 8].into_iter().map(|i| submit(&h, i)).collect();
        settle().await;
        // The gate is fair: the first permit goes to the panicking writer, which waited first.
        h.gate.add_permits(1);
        assert_eq!(doomed.await.expect("task"), Err(Abandoned), "its own batch fails");
        settle().await;
        assert!(h.started.try_recv().is_err(), "the other writer is still busy");
        h.gate.add_permits(2);
        assert_eq!(h.started.recv().await, Some(vec![7, 8]), "the writer left running writes them");
        assert_eq!(running.await.expect("task"), Ok(2));
        for (i, task) in [7, 8].into_iter().zip(behind) {
            assert_eq!(task.await.expect("task"), Ok(i * 2), "not abandoned while a writer runs");
        }
        settle().await;
        let a = started_alone(&mut h, 20).await;
        let b = started_alone(&mut h, 21).await;
        h.gate.add_permits(2);
        assert_eq!((a.await.expect("task"), b.await.expect("task")), (Ok(40), Ok(42)), "both places are free");
    }

    #[tokio::test]
    async fn the_last_writer_to_panic_fails_the_waiting_callers() {
        let mut h = harness(BatchLimits { writers: 2, ..WIDE });
        let first = started_alone(&mut h, 13).await;
        let second = started_alone(&mut h, 13).await;
        let behind = submit(&h, 7);
        settle().await;
        h.gate.add_permits(1);
        assert_eq!(first.await.expect("task"), Err(Abandoned));
        settle().await;
        h.gate.add_permits(1);
        assert_eq!(second.await.expect("task"), Err(Abandoned));
        let told = tokio::time::timeout(Duration::from_secs(5), behind).await.expect("told, not left waiting");
        assert_eq!(told.expect("task"), Err(Abandoned));
        h.gate.add_permits(1);
        assert_eq!(h.commit.submit(8).await, Ok(16), "a new writer starts");
    }

    #[test]
    fn a_writer_dropped_with_its_runtime_before_it_ran_gives_its_place_back() {
        let mut h = harness(WIDE);
        let commit = h.commit.clone();
        let mut first = Box::pin(commit.submit(1));
        let dead = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        {
            // Entered, never run: the submit spawns its writer there, and nothing polls it.
            let _entered = dead.enter();
            let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
            assert!(first.as_mut().poll(&mut cx).is_pending(), "queued");
        }
        drop(dead);
        let live = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        live.block_on(async {
            let told = tokio::time::timeout(Duration::from_secs(5), first).await;
            assert_eq!(told.expect("told, not left waiting"), Err(Abandoned));
            h.gate.add_permits(1);
            let next = tokio::time::timeout(Duration::from_secs(5), h.commit.submit(2)).await;
            assert_eq!(next.expect("the only place is free again"), Ok(4));
            assert_eq!(h.started.recv().await, Some(vec![2]));
        });
    }

    #[tokio::test]
    async fn a_caller_dropped_mid_batch_strands_nobody_and_its_item_is_still_written() {
        let mut h = harness(WIDE);
        let leader = submit(&h, 1);
        assert_eq!(h.started.recv().await, Some(vec![1]), "the first caller's batch is in flight");
        let queued = submit(&h, 2);
        let dropped_while_queued = submit(&h, 3);
        let other = submit(&h, 4);
        settle().await;
        leader.abort();
        dropped_while_queued.abort();
        assert!(leader.await.expect_err("aborted").is_cancelled());
        h.gate.add_permits(2);
        assert_eq!(h.started.recv().await, Some(vec![2, 3, 4]), "written though one caller left");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), queued).await.expect("answered").expect("task"), Ok(4));
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), other).await.expect("answered").expect("task"), Ok(8));
        h.gate.add_permits(1);
        assert_eq!(h.commit.submit(5).await, Ok(10), "later callers are written as before");
    }

    #[tokio::test]
    async fn a_batch_whose_writer_panics_fails_its_callers_and_the_next_submit_works() {
        let mut h = harness(WIDE);
        let doomed = submit(&h, 13);
        assert_eq!(h.started.recv().await, Some(vec![13]));
        let behind = submit(&h, 7);
        settle().await;
        h.gate.add_permits(1);
        assert_eq!(doomed.await.expect("task"), Err(Abandoned));
        assert_eq!(behind.await.expect("task"), Err(Abandoned), "queued callers are told, not left waiting");
        h.gate.add_permits(1);
        assert_eq!(h.commit.submit(8).await, Ok(16), "a new writer starts");
    }
}
