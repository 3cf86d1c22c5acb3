//! In-process signals between the HTTP side and the queue worker: new work, "something
//! changed" for waiters and event streams, and the cancel tokens of running commands.
//! Across replicas the store is the source of truth; these only make one replica fast.

use std::collections::HashMap;
use std::sync::Mutex;

use domain::ids::CommandId;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// Signals shared by `CommandService` and `QueueWorker` in one process.
#[derive(Debug)]
pub struct QueueBus {
    new_work: Notify,
    changed: watch::Sender<u64>,
    running: Mutex<HashMap<CommandId, CancellationToken>>,
}

impl Default for QueueBus {
    fn default() -> Self {
        Self { new_work: Notify::new(), changed: watch::channel(0).0, running: Mutex::new(HashMap::new()) }
    }
}

impl QueueBus {
    /// Wakes the worker: a command was queued or a slot freed.
    pub fn wake_worker(&self) {
        self.new_work.notify_one();
    }

    /// Waits for `wake_worker`.
    pub async fn work_arrived(&self) {
        self.new_work.notified().await;
    }

    /// Tells waiters and event streams that some command changed.
    pub fn command_changed(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every `command_changed`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Registers the cancel token of a command running here.
    pub fn register(&self, id: CommandId, token: CancellationToken) {
        self.lock().insert(id, token);
    }

    /// Forgets a command that ended.
    pub fn unregister(&self, id: CommandId) {
        self.lock().remove(&id);
    }

    /// Cancels a command if it runs in this process; returns whether it did.
    pub fn cancel_local(&self, id: CommandId) -> bool {
        self.lock().get(&id).map(CancellationToken::cancel).is_some()
    }

    /// Tokens of every command running here (for shutdown).
    pub fn running_tokens(&self) -> Vec<CancellationToken> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CommandId, CancellationToken>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
