//! Webhooks: subscriptions, the outbox of events, deliveries and their attempts, the pure
//! policies that drive them (retry schedule, endpoint disabling, the settings of the per-endpoint
//! breaker, which is `crate::breaker`), and the ports that stores and the HTTP sender implement.
//!
//! The life of an event: a store writes an `OutboxEvent` in the same transaction as the state
//! change that causes it; `DeliveryQueue::fan_out` turns it into one `Delivery` per matching
//! enabled subscription; a dispatcher leases due deliveries, sends them through a
//! `WebhookSender`, and records every `Attempt` with the `NextStep` the `RetryPolicy` chose.

mod events;
mod model;
mod ports;
mod retry;
mod values;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::breaker::BreakerConfig;
use crate::DomainError;

pub use events::{command_event, command_event_type, ping_event, pod_change_event, pod_event, pod_event_type};
pub use model::{
    truncate_snippet, Attempt, AttemptRecord, AttemptReport, Delivery, DeliveryDetail, DeliveryFilter, DeliveryStatus,
    Disabled, FanOut, FannedOutAndLeased, LeaseRequest, LeasedDelivery, NextStep, OutboxEvent, PreviousWebhookSecret,
    Webhook,
};
pub use ports::{
    DeliveryQueue, SendError, SendErrorKind, SendOutcome, WebhookRepository, WebhookRequest, WebhookSender,
};
pub use retry::{classify, AttemptClass, RetryPolicy, RetrySchedule};
pub use values::{EventPayload, EventSet, EventType, WebhookSecret, WebhookUrl};

/// The settings of the breaker each dispatcher keeps per endpoint: half of at least 10 sends in a
/// minute failing opens it for 30 s, and one good probe closes it.
pub const ENDPOINT_BREAKER: BreakerConfig = BreakerConfig {
    window: Duration::from_secs(60),
    min_calls: 10,
    failure_rate: 0.5,
    open_for: Duration::from_secs(30),
    probes: 1,
};

crate::ids::id_type!(
    /// Identifies a webhook subscription.
    WebhookId,
    "webhook"
);
crate::ids::id_type!(
    /// Identifies one delivery of one event to one subscription; sent as `webhook-id`, the same
    /// on every retry.
    DeliveryId,
    "delivery"
);
crate::ids::id_type!(
    /// Identifies an event in the outbox.
    EventId,
    "event"
);
