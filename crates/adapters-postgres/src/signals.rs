//! `SignalBus` over LISTEN/NOTIFY: every replica on the database hears every signal.
//!
//! Publishing is `SELECT pg_notify('rdev_signals', <signal as JSON>)` on a small pool. One
//! dedicated connection LISTENs and feeds a broadcast channel that local subscribers read. When
//! that connection is lost the listener reconnects with backoff and sends `Signal::Resync`
//! (signals published meanwhile are gone; subscribers re-read what they watch). A subscriber
//! that falls behind the channel also gets `Resync` instead of what it missed.

use std::time::Duration;

use async_trait::async_trait;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::{CancellationToken, DropGuard};

use domain::ports::SignalBus;
use domain::signal::Signal;
use domain::{DomainError, DomainResult};

use crate::connection::{self, Connections, Target};

/// The NOTIFY channel every replica listens on.
pub const CHANNEL: &str = "rdev_signals";
/// How many signals a slow subscriber may fall behind before it gets `Signal::Resync`.
const CAPACITY: usize = 1024;
/// Publishing needs a connection only for a moment; two let one publish wait on a slow one.
const PUBLISH_POOL_SIZE: u32 = 2;
/// Waits between reconnection attempts of the listener: doubling from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Notifications and other messages of the listening connection, which this stream drives.
type Messages = BoxStream<'static, Result<AsyncMessage, tokio_postgres::Error>>;

/// Signals shared by every replica connected to the same database.
pub struct PgSignalBus {
    sender: broadcast::Sender<Signal>,
    publisher: Connections,
    /// Stops the listener when the bus is dropped; its sender goes with it, ending streams.
    _listener: DropGuard,
}

impl std::fmt::Debug for PgSignalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSignalBus").field("subscribers", &self.sender.receiver_count()).finish_non_exhaustive()
    }
}

impl PgSignalBus {
    /// Connects to `url`, LISTENs, and keeps listening (reconnecting as needed) until dropped.
    /// Signals published after this returns reach this bus's subscribers.
    ///
    /// # Errors
    /// `Unavailable` when the server cannot be reached, `Invalid` for a malformed URL.
    pub async fn connect(url: &str) -> DomainResult<PgSignalBus> {
        let target = connection::target(url).map_err(|e| DomainError::invalid("DATABASE_URL", e))?;
        let (sender, _) = broadcast::channel(CAPACITY);
        let session = listen(&target, &sender)
            .await
            .map_err(|e| DomainError::Unavailable(format!("cannot LISTEN on PostgreSQL: {e}")))?;
        let cancel = CancellationToken::new();
        tokio::spawn(run_listener(target, sender.clone(), cancel.clone(), session));
        let publisher = Connections::new(url, PUBLISH_POOL_SIZE, None);
        Ok(PgSignalBus { sender, publisher, _listener: cancel.drop_guard() })
    }
}

#[async_trait]
impl SignalBus for PgSignalBus {
    async fn publish(&self, signal: Signal) -> DomainResult<()> {
        let payload = serde_json::to_string(&signal)
            .map_err(|e| DomainError::Internal(format!("encoding signal {signal:?}: {e}")))?;
        let mut conn = self.publisher.get().await?;
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(CHANNEL)
            .bind::<Text, _>(payload)
            .execute(&mut conn)
            .await
            .map_err(|e| connection::db_error(e, "publish signal"))?;
        Ok(())
    }

    fn subscribe(&self) -> BoxStream<'static, Signal> {
        broadcast_stream(self.sender.subscribe())
    }
}

/// Turns a broadcast receiver into a signal stream that reports lag as `Signal::Resync`.
fn broadcast_stream(receiver: broadcast::Receiver<Signal>) -> BoxStream<'static, Signal> {
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
        match receiver.recv().await {
            Ok(signal) => Some((signal, receiver)),
            Err(broadcast::error::RecvError::Lagged(_)) => Some((Signal::Resync, receiver)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }))
}

/// Hands a message of the listening connection to local subscribers.
fn deliver(sender: &broadcast::Sender<Signal>, message: AsyncMessage) {
    let AsyncMessage::Notification(n) = message else { return };
    match serde_json::from_str::<Signal>(n.payload()) {
        Ok(signal) => {
            // No subscriber right now is fine: nothing is waiting for the signal.
            let _ = sender.send(signal);
        }
        Err(e) => tracing::debug!(payload = n.payload(), error = %e, "ignoring a foreign notification"),
    }
}

/// Opens the listening connection and LISTENs on it.
async fn listen(target: &Target, sender: &broadcast::Sender<Signal>) -> Result<(Client, Messages), String> {
    let (client, mut connection) =
        target.config.connect(target.tls.clone()).await.map_err(|e| connection::describe_postgres_error(&e))?;
    let mut messages: Messages = Box::pin(futures::stream::poll_fn(move |cx| connection.poll_message(cx)));
    let query = format!("LISTEN {CHANNEL}");
    {
        let listening = client.batch_execute(&query);
        tokio::pin!(listening);
        // The connection only makes progress while its messages are polled.
        loop {
            tokio::select! {
                done = &mut listening => {
                    done.map_err(|e| connection::describe_postgres_error(&e))?;
                    break;
                }
                message = messages.next() => match message {
                    Some(Ok(message)) => deliver(sender, message),
                    Some(Err(e)) => return Err(connection::describe_postgres_error(&e)),
                    None => return Err("the connection closed".into()),
                },
            }
        }
    }
    Ok((client, messages))
}

/// Delivers notifications until cancelled; reconnects when the connection is lost.
async fn run_listener(
    target: Target,
    sender: broadcast::Sender<Signal>,
    cancel: CancellationToken,
    first: (Client, Messages),
) {
    let mut session = Some(first);
    let mut wait = RECONNECT_FIRST;
    loop {
        if let Some((_client, mut messages)) = session.take() {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    message = messages.next() => match message {
                        Some(Ok(message)) => deliver(&sender, message),
                        Some(Err(e)) => {
                            tracing::warn!(error = %connection::describe_postgres_error(&e), "lost the LISTEN connection");
                            break;
                        }
                        None => {
                            tracing::warn!("the LISTEN connection closed");
                            break;
                        }
                    },
                }
            }
            wait = RECONNECT_FIRST;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match listen(&target, &sender).await {
            Ok(listening) => {
                tracing::info!("listening for signals again");
                session = Some(listening);
                // Whatever was published while we were away is lost: subscribers re-read.
                let _ = sender.send(Signal::Resync);
            }
            Err(e) => {
                tracing::debug!(error = %e, retry_in = ?wait, "cannot LISTEN yet");
                wait = (wait * 2).min(RECONNECT_MAX);
            }
        }
    }
}
