//! Webhooks: `WebhookService` (the use cases behind `/v1/webhooks` and
//! `/v1/webhook-deliveries`) and `WebhookDispatcher` (fans the outbox out, leases due
//! deliveries, sends them, records every attempt, retries, disables dead endpoints), with a
//! breaker per endpoint.

mod breakers;
mod dispatcher;
mod recorder;
mod service;
#[cfg(test)]
mod tests;

pub use dispatcher::{DispatcherConfig, DispatcherPorts, WebhookDispatcher};
pub use service::{NewWebhook, WebhookPatch, WebhookService, MAX_ROTATION_GRACE};
