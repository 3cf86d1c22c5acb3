//! Every wake-up in the service passes through here. The store is the source of truth; a
//! signal only says "look now" and a lost one delays something until the next poll.
//!
//! | signal | raised by | wakes |
//! |---|---|---|
//! | work queued, slot freed | `CommandService::submit`, the worker | the workers of every replica |
//! | output appended | the worker's output sink | the command's event streams, on every replica |
//! | command state changed | submit, cancel, start, end, lost | waiters of every replica, the dispatcher, the lease keeper of the replica running it |
//! | cancel | `CommandService::cancel` | the command's token when it runs here; else via state changed |
//! | delivery due | `WebhookService` (ping, redelivery) | this replica's dispatcher |
//! | key changed | `ApiKeyService` (revoke, rotate) | every replica's key cache and open requests (`SignalPump`) |
//! | resync | a lagging or reconnected signal stream | all of the above |
//!
//! `Signals` is the hub of one replica; with a `SignalBus` (Postgres LISTEN/NOTIFY) it also
//! publishes to the others, and `SignalPump` applies what they publish.

mod local;
mod pump;
mod safety;

pub use local::{broadcast_stream, LocalSignalBus};

/// How often the replica's `SafetyPoll` looks for event logs that grew without a signal: only
/// a safety net, since every change of a command is signalled here and (NOTIFY) across
/// replicas, and a lost NOTIFY connection is followed by `Resync`. One store read a tick for
/// all watched commands, whatever the number of streams.
pub const SAFETY_POLL: std::time::Duration = std::time::Duration::from_secs(5);
pub use pump::SignalPump;
pub use safety::SafetyPoll;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use domain::ids::{ApiKeyId, CommandId};
use domain::ports::SignalBus;
use domain::signal::Signal;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// A command running in this process.
#[derive(Debug)]
struct Running {
    cancel: CancellationToken,
    /// Tells the command's lease keeper to look at the store now (e.g. a cancel request).
    poke: Arc<Notify>,
}

/// The wake-ups of one replica, shared by the services, the worker and the dispatcher, and
/// across replicas when built with `with_remote`.
pub struct Signals {
    new_work: Notify,
    delivery_due: Notify,
    state_changed: watch::Sender<u64>,
    running: Mutex<HashMap<CommandId, Running>>,
    /// One channel per command somebody here waits on or streams (see `watch_command`).
    watched: Mutex<Watched>,
    /// Commands whose `OutputAppended` is being published; `true` when more output came since,
    /// so one more is due. At most one publish per command is in flight.
    publishing_output: Arc<Mutex<HashMap<CommandId, bool>>>,
    remote: Option<Arc<dyn SignalBus>>,
}

/// The per-command channels, pruned of unwatched commands as the map grows.
#[derive(Debug, Default)]
struct Watched {
    channels: HashMap<CommandId, watch::Sender<u64>>,
    prune_at: usize,
}

impl Watched {
    fn subscribe(&mut self, id: CommandId) -> watch::Receiver<u64> {
        if self.channels.len() >= self.prune_at {
            self.channels.retain(|_, sender| sender.receiver_count() > 0);
            // Amortized: the next prune waits until the map has doubled (or reaches 64).
            self.prune_at = (self.channels.len() * 2).max(64);
        }
        self.channels.entry(id).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    fn tick(&self, id: CommandId) {
        if let Some(sender) = self.channels.get(&id) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn tick_all(&self) {
        self.channels.values().for_each(|sender| sender.send_modify(|n| *n = n.wrapping_add(1)));
    }
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").field("cross_replica", &self.remote.is_some()).finish_non_exhaustive()
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            new_work: Notify::new(),
            delivery_due: Notify::new(),
            state_changed: watch::channel(0).0,
            running: Mutex::new(HashMap::new()),
            watched: Mutex::new(Watched::default()),
            publishing_output: Arc::new(Mutex::new(HashMap::new())),
            remote: None,
        }
    }
}

impl Signals {
    /// A hub that also publishes to, and (through `SignalPump`) hears from, other replicas.
    pub fn with_remote(remote: Arc<dyn SignalBus>) -> Self {
        Self { remote: Some(remote), ..Self::default() }
    }

    /// Wakes the workers of every replica: a command was queued or a slot freed.
    pub fn wake_worker(&self) {
        self.new_work.notify_one();
        self.publish(Signal::WorkQueued);
    }

    /// Waits for `wake_worker`.
    pub async fn work_arrived(&self) {
        self.new_work.notified().await;
    }

    /// A receiver that ticks whenever command `id` changes (state or output), here or, through
    /// the signal bus, on another replica: what waiters and event streams sleep on. Subscribe
    /// before reading the store, and no change can slip between the read and the wait.
    pub fn watch_command(&self, id: CommandId) -> watch::Receiver<u64> {
        lock(&self.watched).subscribe(id)
    }

    /// The commands somebody here waits on or streams (at least one receiver is alive).
    pub fn watched_commands(&self) -> Vec<CommandId> {
        let watched = lock(&self.watched);
        watched.channels.iter().filter(|(_, sender)| sender.receiver_count() > 0).map(|(id, _)| *id).collect()
    }

    /// Wakes this replica's waiters and streams of command `id` (and nobody else): the safety
    /// poll found its log grew without a signal.
    pub fn wake_watchers(&self, id: CommandId) {
        lock(&self.watched).tick(id);
    }

    /// Command `id` has new output: its waiters and streams here wake at once, and the other
    /// replicas' through one `OutputAppended` in flight at a time (a burst of chunks is one or
    /// two signals, not one per chunk).
    pub fn output_appended(&self, id: CommandId) {
        lock(&self.watched).tick(id);
        let Some(remote) = self.remote.clone() else { return };
        {
            let mut publishing = lock(&self.publishing_output);
            if let Some(more) = publishing.get_mut(&id) {
                *more = true;
                return;
            }
            publishing.insert(id, false);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            lock(&self.publishing_output).remove(&id);
            return;
        };
        let publishing = Arc::clone(&self.publishing_output);
        runtime.spawn(async move {
            loop {
                if let Err(e) = remote.publish(Signal::OutputAppended(id)).await {
                    tracing::debug!(error = %e, command_id = %id, "could not publish new output; other replicas will poll");
                }
                let mut publishing = lock(&publishing);
                match publishing.get_mut(&id) {
                    Some(more) if *more => *more = false,
                    _ => {
                        publishing.remove(&id);
                        return;
                    }
                }
            }
        });
    }

    /// A command's state changed (queued, started, ended, cancel requested): every replica's
    /// waiters re-read it, and the replica running it checks for a cancel request.
    pub fn command_state_changed(&self, id: CommandId) {
        self.state_ticked(id);
        self.publish(Signal::CommandChanged(id));
    }

    /// A receiver that sees state changes only (not output): for the webhook dispatcher, which
    /// would otherwise wake for every chunk of output.
    pub fn subscribe_state(&self) -> watch::Receiver<u64> {
        self.state_changed.subscribe()
    }

    fn state_ticked(&self, id: CommandId) {
        lock(&self.watched).tick(id);
        self.state_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes this replica's webhook dispatcher at once (a ping or a redelivery was queued),
    /// instead of at its next poll; remembered if it is busy.
    pub fn delivery_due(&self) {
        self.delivery_due.notify_one();
    }

    /// Waits for `delivery_due`.
    pub async fn deliveries_due(&self) {
        self.delivery_due.notified().await;
    }

    /// Tells every replica that a key was revoked or rotated, so each drops it from its cache
    /// now instead of at the TTL. Awaited, unlike the other signals: the change is announced
    /// before the request that made it is answered.
    pub async fn key_changed(&self, id: ApiKeyId) {
        let Some(remote) = &self.remote else { return };
        if let Err(e) = remote.publish(Signal::KeyChanged(id)).await {
            tracing::warn!(api_key_id = %id, error = %e, "could not announce a key change; other replicas see it at the cache TTL");
        }
    }

    /// Applies a signal from another replica (or this one, echoed by the signal bus).
    pub fn on_signal(&self, signal: Signal) {
        match signal {
            Signal::WorkQueued => self.new_work.notify_one(),
            Signal::CommandChanged(id) => {
                self.state_ticked(id);
                if let Some(running) = self.lock().get(&id) {
                    running.poke.notify_one();
                }
            }
            Signal::OutputAppended(id) => lock(&self.watched).tick(id),
            Signal::Resync => {
                lock(&self.watched).tick_all();
                self.state_changed.send_modify(|n| *n = n.wrapping_add(1));
                self.new_work.notify_one();
                self.lock().values().for_each(|r| r.poke.notify_one());
            }
            Signal::KeyChanged(_) => {}
        }
    }

    /// Registers the cancel token of a command running here; the returned `Notify` fires when
    /// the store should be checked for a cancel request at once.
    pub fn register(&self, id: CommandId, token: CancellationToken) -> Arc<Notify> {
        let poke = Arc::new(Notify::new());
        self.lock().insert(id, Running { cancel: token, poke: Arc::clone(&poke) });
        poke
    }

    /// Forgets a command that ended.
    pub fn unregister(&self, id: CommandId) {
        self.lock().remove(&id);
    }

    /// Cancels a command if it runs in this process; returns whether it did.
    pub fn cancel_local(&self, id: CommandId) -> bool {
        self.lock().get(&id).map(|r| r.cancel.cancel()).is_some()
    }

    /// Tokens of every command running here (for shutdown).
    pub fn running_tokens(&self) -> Vec<CancellationToken> {
        self.lock().values().map(|r| r.cancel.clone()).collect()
    }

    fn publish(&self, signal: Signal) {
        let Some(remote) = self.remote.clone() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        // Fire and forget: the caller's work is done and stored; a lost signal only delays.
        runtime.spawn(async move {
            if let Err(e) = remote.publish(signal).await {
                tracing::debug!(error = %e, ?signal, "could not publish a signal; other replicas will poll");
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CommandId, Running>> {
        lock(&self.running)
    }
}

/// A poisoned lock still holds consistent data here (every critical section is one map update).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn state_changes_are_published_and_pokes_reach_the_running_command() {
        let remote = Arc::new(LocalSignalBus::default());
        let mut heard = remote.subscribe();
        let bus = Signals::with_remote(remote.clone());
        let id = CommandId::generate();
        let poke = bus.register(id, CancellationToken::new());
        bus.command_state_changed(id);
        let signal = tokio::time::timeout(Duration::from_secs(1), heard.next()).await.expect("published");
        assert_eq!(signal, Some(Signal::CommandChanged(id)));
        bus.on_signal(Signal::CommandChanged(id));
        tokio::time::timeout(Duration::from_secs(1), poke.notified()).await.expect("poked");
        bus.on_signal(Signal::WorkQueued);
        tokio::time::timeout(Duration::from_secs(1), bus.work_arrived()).await.expect("woken");
    }

    #[tokio::test]
    async fn a_command_watch_wakes_for_that_command_only_and_across_replicas() {
        let remote = Arc::new(LocalSignalBus::default());
        let here = Signals::with_remote(remote.clone());
        let (watched, other) = (CommandId::generate(), CommandId::generate());
        let mut watch = here.watch_command(watched);
        here.output_appended(other);
        here.command_state_changed(other);
        assert!(!watch.has_changed().expect("open"), "another command's changes do not wake it");
        here.output_appended(watched);
        assert!(watch.has_changed().expect("open"), "its own output wakes it at once");
        watch.borrow_and_update();
        here.on_signal(Signal::OutputAppended(watched));
        assert!(watch.has_changed().expect("open"), "output on another replica wakes it");
        watch.borrow_and_update();
        here.on_signal(Signal::CommandChanged(watched));
        assert!(watch.has_changed().expect("open"), "a state change on another replica wakes it");
        watch.borrow_and_update();
        here.on_signal(Signal::Resync);
        assert!(watch.has_changed().expect("open"), "a resync wakes every watch");
    }

    #[tokio::test]
    async fn a_burst_of_output_is_published_as_few_signals() {
        let remote = Arc::new(LocalSignalBus::default());
        let mut heard = remote.subscribe();
        let here = Signals::with_remote(remote.clone());
        let id = CommandId::generate();
        for _ in 0..1000 {
            here.output_appended(id);
        }
        let first = tokio::time::timeout(Duration::from_secs(1), heard.next()).await.expect("published");
        assert_eq!(first, Some(Signal::OutputAppended(id)));
        // One publish in flight, then at most one more for everything that came meanwhile.
        let mut more = 0;
        while let Ok(Some(signal)) = tokio::time::timeout(Duration::from_millis(200), heard.next()).await {
            assert_eq!(signal, Signal::OutputAppended(id));
            more += 1;
        }
        assert!(more <= 1, "{more} more signals for one burst");
        // Once idle, the next chunk is published again.
        here.output_appended(id);
        let next = tokio::time::timeout(Duration::from_secs(1), heard.next()).await.expect("published again");
        assert_eq!(next, Some(Signal::OutputAppended(id)));
    }

    #[test]
    fn unwatched_commands_are_pruned_as_the_map_grows() {
        let here = Signals::default();
        for _ in 0..1000 {
            drop(here.watch_command(CommandId::generate()));
        }
        let kept = here.watch_command(CommandId::generate());
        assert!(lock(&here.watched).channels.len() < 200, "dropped watches are pruned");
        drop(kept);
    }

    /// A signal bus whose database is gone: every publish fails.
    #[derive(Debug, Default)]
    struct DeadBus {
        attempts: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SignalBus for DeadBus {
        async fn publish(&self, _: Signal) -> domain::DomainResult<()> {
            self.attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(domain::DomainError::Unavailable("no database".into()))
        }

        fn subscribe(&self) -> futures::stream::BoxStream<'static, Signal> {
            Box::pin(futures::stream::empty())
        }
    }

    #[tokio::test]
    async fn a_failed_publish_still_wakes_local_watchers_and_the_next_output_tries_again() {
        let dead = Arc::new(DeadBus::default());
        let here = Signals::with_remote(dead.clone());
        let id = CommandId::generate();
        let watch = here.watch_command(id);
        here.output_appended(id);
        assert!(watch.has_changed().expect("open"), "local streams wake whatever the bus does");
        let attempts = || dead.attempts.load(std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(1), async {
            while attempts() == 0 || !lock(&here.publishing_output).is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the failed publish is given up, not retried forever");
        here.output_appended(id);
        tokio::time::timeout(Duration::from_secs(1), async {
            while attempts() < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the next output is published again");
    }
}
