//! `AttemptRecorder`: group commit for attempts. Sends that finish while an earlier batch is
//! being recorded queue up and are recorded together in the next `record_attempts` call, so a
//! store that does a batch in one round trip pays one round trip per batch, not per attempt,
//! and nobody waits for a timer: a lone attempt is recorded at once.

use std::sync::{Mutex, MutexGuard, PoisonError};

use domain::webhook::{AttemptRecord, Delivery, DeliveryQueue};
use domain::{DomainError, DomainResult};
use tokio::sync::oneshot;

type Reply = oneshot::Sender<DomainResult<Option<Delivery>>>;

#[derive(Default)]
struct Queue {
    waiting: Vec<(AttemptRecord, Reply)>,
    /// Whether some caller is recording a batch now (it records what queues meanwhile next).
    flushing: bool,
}

/// Records attempts in batches of at most `max_batch`, one batch in flight at a time.
pub(super) struct AttemptRecorder {
    queue: Mutex<Queue>,
    max_batch: usize,
}

impl AttemptRecorder {
    /// A recorder that puts at most `max_batch` attempts into one call.
    pub(super) fn new(max_batch: usize) -> Self {
        Self { queue: Mutex::new(Queue::default()), max_batch: max_batch.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue stays consistent at every await-free step, so a panic elsewhere leaves it usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `attempt` with whatever else is queued and returns its result. The first caller
    /// to find nobody recording records batches until the queue is empty; the others wait for
    /// their answer.
    pub(super) async fn record(
        &self,
        store: &dyn DeliveryQueue,
        attempt: AttemptRecord,
    ) -> DomainResult<Option<Delivery>> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut queue = self.lock();
            queue.waiting.push((attempt, reply));
            !std::mem::replace(&mut queue.flushing, true)
        };
        if lead {
            let guard = Flushing(self);
            loop {
                let batch: Vec<(AttemptRecord, Reply)> = {
                    let mut queue = self.lock();
                    if queue.waiting.is_empty() {
                        queue.flushing = false;
                        break;
                    }
                    let n = queue.waiting.len().min(self.max_batch);
                    queue.waiting.drain(..n).collect()
                };
                let (attempts, replies): (Vec<AttemptRecord>, Vec<Reply>) = batch.into_iter().unzip();
                tracing::trace!(attempts = attempts.len(), "recording a batch of webhook attempts");
                match store.record_attempts(&attempts).await {
                    Ok(results) if results.len() == replies.len() => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            // The caller may be gone (shut down); its attempt is recorded all the same.
                            let _ = reply.send(result);
                        }
                    }
                    Ok(results) => {
                        let e = DomainError::Internal(format!(
                            "recording {} attempts returned {} results",
                            replies.len(),
                            results.len()
                        ));
                        fail(replies, &e);
                    }
                    Err(e) => fail(replies, &e),
                }
            }
            std::mem::forget(guard);
        }
        answer.await.unwrap_or_else(|_| Err(DomainError::Unavailable("the attempt's batch was abandoned".into())))
    }
}

/// Answers every caller of a batch that could not be recorded with `e`.
fn fail(replies: Vec<Reply>, e: &DomainError) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

/// Hands the recording on if the caller that records is dropped mid-batch (a send task
/// abandoned at shutdown): the next caller records what is left.
struct Flushing<'a>(&'a AttemptRecorder);

impl Drop for Flushing<'_> {
    fn drop(&mut self) {
        self.0.lock().flushing = false;
    }
}
