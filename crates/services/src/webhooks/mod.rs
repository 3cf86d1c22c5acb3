//! Webhooks: `WebhookService` (the use cases behind `/v1/webhooks` and
//! `/v1/webhook-deliveries`) and `WebhookDispatcher` (fans the outbox out, leases due
//! deliveries, sends them, records every attempt, retries, disables dead endpoints), with a
//! breaker per endpoint.

mod breakers;
mod dispatcher;
mod service;
#[cfg(test)]
mod tests;

use tokio::sync::Notify;

pub use dispatcher::{DispatcherConfig, DispatcherPorts, WebhookDispatcher};
pub use service::{NewWebhook, WebhookPatch, WebhookService, MAX_ROTATION_GRACE};

/// Counter: delivery attempts by `outcome` (`succeeded`, `retrying`, `failed`, `dead`), plus
/// `deferred` for deliveries an open breaker held back and `stale` for attempts whose lease was
/// lost before they could be recorded.
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "webhook_deliveries_total";
/// Histogram: time from sending a webhook to its answer (or failure).
pub const WEBHOOK_DELIVERY_DURATION_SECONDS: &str = "webhook_delivery_duration_seconds";
/// Counter: endpoints disabled by the dispatcher, by `reason` (`gone`, `failing`).
pub const WEBHOOK_ENDPOINTS_DISABLED_TOTAL: &str = "webhook_endpoints_disabled_total";

/// Wakes the dispatcher of this process at once (a ping or a redelivery was queued), instead of
/// at its next poll. Shared by `WebhookService` and `WebhookDispatcher`.
#[derive(Debug, Default)]
pub struct DispatchWake(Notify);

impl DispatchWake {
    /// Wakes the dispatcher (remembered if it is busy).
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Waits for `wake`.
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}
