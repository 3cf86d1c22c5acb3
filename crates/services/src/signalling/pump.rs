//! `SignalPump`: applies the signals other replicas publish to this replica's hub, key cache
//! and open requests.

use std::sync::Arc;

use domain::ports::ApiKeyRepository;
use domain::signal::Signal;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Signals;
use crate::cache::CachedRepository;
use crate::open_requests::OpenRequests;

/// Applies signals from other replicas: wakes the worker, tells waiters and the replica running
/// a command about changes, and clears the key cache when a key was revoked or rotated (ending
/// the key's open streams and waits here if it can no longer be used).
pub struct SignalPump {
    stream: BoxStream<'static, Signal>,
    signals: Arc<Signals>,
    key_cache: Arc<CachedRepository<Arc<dyn ApiKeyRepository>>>,
    open_requests: Arc<OpenRequests>,
}

impl std::fmt::Debug for SignalPump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalPump").finish_non_exhaustive()
    }
}

impl SignalPump {
    /// A pump of `stream` (a `SignalBus` subscription) into this replica.
    pub fn new(
        stream: BoxStream<'static, Signal>,
        signals: Arc<Signals>,
        key_cache: Arc<CachedRepository<Arc<dyn ApiKeyRepository>>>,
        open_requests: Arc<OpenRequests>,
    ) -> Self {
        Self { stream, signals, key_cache, open_requests }
    }

    /// Runs until `shutdown` fires or the signal stream ends.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = self.stream.next() => next,
            };
            let Some(signal) = next else { return };
            self.apply(signal);
        }
    }

    fn apply(&self, signal: Signal) {
        self.signals.on_signal(signal);
        match signal {
            Signal::KeyChanged(id) => {
                self.key_cache.invalidate_all();
                self.open_requests.key_changed(id);
            }
            Signal::Resync => {
                self.key_cache.invalidate_all();
                self.open_requests.resync();
            }
            Signal::WorkQueued | Signal::CommandChanged(_) | Signal::OutputAppended(_) => {}
        }
    }
}
