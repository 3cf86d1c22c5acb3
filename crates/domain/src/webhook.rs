//! Webhooks: subscriptions, the outbox of events, deliveries and their attempts, the pure
//! policies that drive them (retry schedule, endpoint disabling, per-endpoint breaker), and the
//! ports that stores and the HTTP sender implement.
//!
//! The life of an event: a store writes an `OutboxEvent` in the same transaction as the state
//! change that causes it; `DeliveryQueue::fan_out` turns it into one `Delivery` per matching
//! enabled subscription; a dispatcher leases due deliveries, sends them through a
//! `WebhookSender`, and records every `Attempt` with the `NextStep` the `RetryPolicy` chose.

mod breaker;
mod events;
mod model;
mod ports;
mod retry;
mod values;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DomainError;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use events::{command_event, command_event_type, ping_event, pod_event};
pub use model::{
    truncate_snippet, Attempt, AttemptReport, Delivery, DeliveryDetail, DeliveryFilter, DeliveryStatus, Disabled,
    FanOut, LeaseRequest, LeasedDelivery, NextStep, OutboxEvent, PreviousWebhookSecret, Webhook,
};
pub use ports::{
    DeliveryQueue, SendError, SendErrorKind, SendOutcome, WebhookRepository, WebhookRequest, WebhookSender,
};
pub use retry::{classify, AttemptClass, RetryPolicy, RetrySchedule};
pub use values::{EventPayload, EventSet, EventType, WebhookSecret, WebhookUrl};

// The same shape as the ids of `crate::ids`; that macro is private to its module.
macro_rules! webhook_id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// A fresh, time-ordered (v7) id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| DomainError::invalid("id", concat!($what, " id must be a UUID")))
            }
        }
    };
}

webhook_id_type!(
    /// Identifies a webhook subscription.
    WebhookId,
    "webhook"
);
webhook_id_type!(
    /// Identifies one delivery of one event to one subscription; sent as `webhook-id`, the same
    /// on every retry.
    DeliveryId,
    "delivery"
);
webhook_id_type!(
    /// Identifies an event in the outbox.
    EventId,
    "event"
);
