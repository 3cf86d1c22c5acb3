//! Signals replicas send each other so that they react at once instead of at the next poll.
//! The store stays the source of truth: a lost signal only delays, it never loses data.

use serde::{Deserialize, Serialize};

use crate::ids::{ApiKeyId, CommandId};

/// One change other replicas should hear about now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Signal {
    /// A command was queued or a slot freed: idle workers should try to claim.
    WorkQueued,
    /// A command's state changed (queued, started, ended, cancel request): waiters, event
    /// streams and the replica running it re-read it.
    CommandChanged(CommandId),
    /// A command has new output: its event streams re-read it (nothing else needs to wake).
    OutputAppended(CommandId),
    /// An API key was revoked or rotated: caches drop it.
    KeyChanged(ApiKeyId),
    /// The subscriber may have missed signals (lagged, reconnected): re-read everything it watches.
    Resync,
}
