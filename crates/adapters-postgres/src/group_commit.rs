//! Group commit: requests that arrive while a batch is being written wait, and are written
//! together in the next batch. A store that writes a batch in one statement then pays one round
//! trip per batch instead of one per request, and nobody waits for a timer: a request that
//! finds nobody writing is written at once, alone.
//!
//! Batches are written by a task of their own, spawned by the request that finds nobody
//! writing, and that task writes until the queue is empty. No caller writes: a caller dropped
//! mid-batch (a request future abandoned at shutdown, a timed-out client) can neither strand
//! the callers queued behind it nor cut its own write short. Its item is written all the same,
//! because what a caller submits (a command's end) must happen whether or not anyone waits for
//! the answer.

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
}

/// A request's batch ended without an answer for it: the writing task panicked, its runtime
/// shut down, or the writer answered fewer results than it was given items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch was abandoned before it answered")]
pub(crate) struct Abandoned;

/// What waits to be written, and whether a task is writing.
struct Queue<T, R> {
    waiting: VecDeque<(T, oneshot::Sender<R>)>,
    /// A writing task runs; it takes what queues meanwhile into its next batch.
    flushing: bool,
}

struct Shared<T, R> {
    queue: Mutex<Queue<T, R>>,
    limits: BatchLimits,
    weigh: fn(&T) -> usize,
    flush: Flush<T, R>,
}

/// Writes submitted items in batches, one batch in flight at a time. Cheap to clone: clones
/// share one queue.
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
        let limits = BatchLimits { items: limits.items.max(1), ..limits };
        let queue = Mutex::new(Queue { waiting: VecDeque::new(), flushing: false });
        Self(Arc::new(Shared { queue, limits, weigh, flush }))
    }

    /// Writes `item` with whatever else is waiting, and answers its result. Must be called
    /// within a tokio runtime (the batch is written by a task of its own).
    pub(crate) async fn submit(&self, item: T) -> Result<R, Abandoned> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.0.lock();
            queue.waiting.push_back((item, reply));
            !std::mem::replace(&mut queue.flushing, true)
        };
        if start {
            tokio::spawn(drain(Arc::clone(&self.0)));
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

    /// The next batch from the head of the queue, within the limits; `None`, and nobody
    /// writing any more, when the queue is empty. Both under one lock, so an item queued just
    /// after the last batch was taken either is in it or starts a new task.
    fn next_batch(&self) -> Option<Vec<(T, oneshot::Sender<R>)>> {
        let mut queue = self.lock();
        if queue.waiting.is_empty() {
            queue.flushing = false;
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
async fn drain<T, R>(shared: Arc<Shared<T, R>>) {
    let mut writing = Writing { shared: shared.as_ref(), done: false };
    while let Some(batch) = shared.next_batch() {
        let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
        let expected = replies.len();
        let results = (shared.flush)(items).await;
        if results.len() != expected {
            // The callers left without a result get `Abandoned` when their sender drops.
            tracing::error!(expected, answered = results.len(), "a batch answered the wrong number of results");
        }
        for (reply, result) in replies.into_iter().zip(results) {
            // The caller may be gone; its item was written all the same.
            let _ = reply.send(result);
        }
    }
    writing.done = true;
}

/// Cleans up after a writing task that ends before the queue is empty (its write panicked,
/// or its runtime shut down): the waiting callers get `Abandoned` instead of waiting for good,
/// and the next submit starts a new task.
struct Writing<'a, T, R> {
    shared: &'a Shared<T, R>,
    done: bool,
}

impl<T, R> Drop for Writing<'_, T, R> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waiting = {
            let mut queue = self.shared.lock();
            queue.flushing = false;
            std::mem::take(&mut queue.waiting)
        };
        // Dropped outside the lock: each drop wakes a caller.
        drop(waiting);
    }
}

#[cfg(test)]
mod tests {
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

    const WIDE: BatchLimits = BatchLimits { items: 64, weight: usize::MAX };

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
        let mut h = harness(BatchLimits { items: 3, weight: 10 });
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
