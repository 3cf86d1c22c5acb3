//! The in-process `SignalBus`: enough for one replica (the embedded SQLite default).

use async_trait::async_trait;
use domain::ports::SignalBus;
use domain::signal::Signal;
use domain::DomainResult;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

/// How many signals a slow subscriber may fall behind before it gets `Signal::Resync`.
const CAPACITY: usize = 1024;

/// Signals delivered inside this process only.
#[derive(Debug, Clone)]
pub struct LocalSignalBus {
    sender: broadcast::Sender<Signal>,
}

impl Default for LocalSignalBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0 }
    }
}

impl LocalSignalBus {
    /// Sends to local subscribers; having none is fine.
    pub fn send(&self, signal: Signal) {
        // An error only means nobody listens right now, which loses nothing.
        let _ = self.sender.send(signal);
    }
}

#[async_trait]
impl SignalBus for LocalSignalBus {
    async fn publish(&self, signal: Signal) -> DomainResult<()> {
        self.send(signal);
        Ok(())
    }

    fn subscribe(&self) -> BoxStream<'static, Signal> {
        broadcast_stream(self.sender.subscribe())
    }
}

/// Turns a broadcast receiver into a signal stream that reports lag as `Signal::Resync`.
pub fn broadcast_stream(receiver: broadcast::Receiver<Signal>) -> BoxStream<'static, Signal> {
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Ok(signal) => Some((signal, receiver)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Signal::Resync, receiver)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn passes_the_signal_bus_contract() {
        let bus: Arc<dyn SignalBus> = Arc::new(LocalSignalBus::default());
        domain::testing::signals::signal_bus((bus.clone(), bus)).await;
    }
}
