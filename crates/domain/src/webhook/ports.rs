//! The webhook ports: subscriptions, the outbox and delivery queue, and the HTTP sender.
//! `crate::testing::webhooks::webhook_store_contract` checks every MUST below.

use std::time::Duration;

use async_trait::async_trait;

use super::model::{
    Attempt, AttemptRecord, AttemptReport, Delivery, DeliveryDetail, DeliveryFilter, Disabled, FanOut,
    FannedOutAndLeased, LeaseRequest, LeasedDelivery, NextStep, OutboxEvent, PreviousWebhookSecret, Webhook,
};
use super::values::{WebhookSecret, WebhookUrl};
use super::{DeliveryId, WebhookId};
use crate::pagination::{Page, PageRequest};
use crate::{DomainError, DomainResult, Timestamp};

/// Webhook subscriptions.
#[async_trait]
pub trait WebhookRepository: Send + Sync {
    /// Stores a new subscription. MUST return `Conflict` when the id is taken.
    async fn create(&self, webhook: &Webhook) -> DomainResult<()>;
    /// MUST return `NotFound` for an unknown id.
    async fn get(&self, id: WebhookId) -> DomainResult<Webhook>;
    /// Subscriptions ordered by id (creation order), paged by id.
    async fn list(&self, page: PageRequest) -> DomainResult<Page<Webhook>>;
    /// Replaces `url`, `events`, `projects` and `updated_at` (nothing else) and returns the
    /// stored subscription. MUST return `NotFound` for an unknown id.
    async fn update(&self, webhook: &Webhook) -> DomainResult<Webhook>;
    /// Deletes a subscription with its deliveries and their attempts (events stay).
    /// MUST return `NotFound` for an unknown id.
    async fn delete(&self, id: WebhookId) -> DomainResult<()>;
    /// Makes `secret` current and keeps `previous` (or none) for signing during a grace period.
    /// MUST return `NotFound` for an unknown id.
    async fn rotate_secret(
        &self,
        id: WebhookId,
        secret: &WebhookSecret,
        previous: Option<&PreviousWebhookSecret>,
        at: Timestamp,
    ) -> DomainResult<Webhook>;
    /// Enables a subscription: `enabled`, no `disabled_reason`, no `failing_since`.
    /// MUST return `NotFound` for an unknown id.
    async fn enable(&self, id: WebhookId, at: Timestamp) -> DomainResult<Webhook>;
    /// Disables a subscription with `reason` (kept from the first disable when already
    /// disabled) and turns its pending deliveries `Dead`, atomically; a delivery leased at `at`
    /// stays pending so its attempt can be recorded (and then ends `Dead`, see
    /// `DeliveryQueue::record_attempt`). MUST return `NotFound` for an unknown id.
    async fn disable(&self, id: WebhookId, reason: &str, at: Timestamp) -> DomainResult<Disabled>;
}

/// The outbox and the deliveries made from it. Stores also write outbox events themselves, in
/// the same transaction as each command transition: enqueue → `command.queued`, claim →
/// `command.started`, finish → `command.<final status>`, reap → `command.lost`, cancel of a
/// queued command → `command.cancelled`. They MUST write them whenever an enabled subscription
/// exists, and MAY skip them when none does. A change that does not happen (a replayed
/// enqueue, a finish with a stale fence) MUST write no event.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Appends an event written outside a command transition (pod events, pings). MUST return
    /// `Conflict`, and store nothing, when an event with the same id is already in the outbox.
    async fn append_event(&self, event: &OutboxEvent) -> DomainResult<()>;
    /// Takes up to `limit` events not yet dispatched, oldest first, and creates one pending
    /// delivery, due at `now`, for every subscription that `Webhook::wants` each; the events
    /// count as dispatched in the same transaction. MUST dispatch each event exactly once,
    /// even with concurrent callers.
    async fn fan_out(&self, now: Timestamp, limit: u32) -> DomainResult<FanOut>;
    /// Leases up to `limit` pending deliveries of enabled subscriptions not in `exclude`, due at
    /// or before `now` and not leased (or whose lease ended before `now`), earliest due first,
    /// until `now + lease`, each with a fence higher than any it had. MUST never hand one delivery
    /// to two callers while its lease runs, even when they call concurrently.
    async fn lease_due(&self, request: &LeaseRequest) -> DomainResult<Vec<LeasedDelivery>>;
    /// Fans out up to `fan_out_limit` events at `request.now` and leases due deliveries as
    /// `request` asks, those just created included: what `fan_out` then `lease_due` do, except
    /// that the deliveries this call creates rank after every delivery that was due before it
    /// (they are due at `now`, the others at or before it), in outbox order. The dispatcher's
    /// path from an event to its first attempt: a store SHOULD do it in one round trip. MUST
    /// keep every guarantee of both (each event dispatched once, no delivery leased twice). An
    /// `Err` MAY leave the fan-out done (its deliveries then wait for the next lease). The
    /// default calls the two in turn.
    async fn fan_out_and_lease(&self, fan_out_limit: u32, request: &LeaseRequest) -> DomainResult<FannedOutAndLeased> {
        let fan_out = self.fan_out(request.now, fan_out_limit).await?;
        let leased = self.lease_due(request).await?;
        // The lease came after the fan-out: what it did not take was excluded or beyond its room.
        Ok(FannedOutAndLeased { fan_out, leased, left_unleased: false })
    }
    /// Records the next attempt of a leased delivery (numbered after the last), applies `next`
    /// (a `Retry` of a disabled subscription's delivery becomes `Dead`), drops the lease, and sets
    /// the subscription's `failing_since` (cleared by a success, else kept or set to the
    /// attempt's time). MUST change nothing and return `None` when `fence` no longer holds the
    /// delivery or it is not pending. MUST return `NotFound` for an unknown id.
    async fn record_attempt(
        &self,
        id: DeliveryId,
        fence: i64,
        report: &AttemptReport,
        next: NextStep,
    ) -> DomainResult<Option<Delivery>>;
    /// Records several attempts, each as `record_attempt` would, and returns each one's result in
    /// order (an unknown id is that item's `NotFound`; the others are recorded all the same).
    /// The items MUST name distinct deliveries. A store SHOULD record them in one round trip
    /// (the dispatcher batches the attempts that finish together); an `Err` of the whole call
    /// MAY leave some recorded, whose leases then simply run out. The default records them one
    /// after the other.
    async fn record_attempts(&self, attempts: &[AttemptRecord]) -> DomainResult<Vec<DomainResult<Option<Delivery>>>> {
        let mut results = Vec::with_capacity(attempts.len());
        for a in attempts {
            results.push(match self.record_attempt(a.id, a.fence, &a.report, a.next).await {
                Err(DomainError::NotFound(what)) => Err(DomainError::NotFound(what)),
                Err(e) => return Err(e),
                Ok(done) => Ok(done),
            });
        }
        Ok(results)
    }
    /// Hands a leased delivery back unattempted, due again at `next_attempt_at` (a breaker
    /// refused it). Returns whether `fence` still held it.
    async fn release(&self, id: DeliveryId, fence: i64, next_attempt_at: Timestamp) -> DomainResult<bool>;
    /// Creates a new pending delivery, due at `now`, of the same event to the same subscription,
    /// with `redelivery_of` set. MUST return `NotFound` for an unknown delivery and `Conflict`
    /// when the subscription is disabled.
    async fn redeliver(&self, id: DeliveryId, new_id: DeliveryId, now: Timestamp) -> DomainResult<Delivery>;
    /// Deliveries of one subscription, ordered by id (creation order), paged by id.
    async fn list_deliveries(&self, filter: &DeliveryFilter, page: PageRequest) -> DomainResult<Page<Delivery>>;
    /// One delivery with its attempts in order and its event. MUST return `NotFound` for an
    /// unknown id.
    async fn get_delivery(&self, id: DeliveryId) -> DomainResult<DeliveryDetail>;
    /// The latest attempt of each of `ids` that has one (any order; unknown ids and deliveries
    /// without attempts are left out). One round trip, for listings.
    async fn last_attempts(&self, ids: &[DeliveryId]) -> DomainResult<Vec<(DeliveryId, Attempt)>>;
    /// Deletes finished deliveries (with attempts) created before `before`, and dispatched
    /// events created before `before` that no delivery refers to any more. Returns how many
    /// deliveries went.
    async fn purge(&self, before: Timestamp) -> DomainResult<u64>;
}

/// One signed POST to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// The target.
    pub url: WebhookUrl,
    /// `webhook-id`: the delivery's id, the same on every retry.
    pub message_id: String,
    /// `webhook-timestamp` (whole seconds are sent).
    pub timestamp: Timestamp,
    /// The body.
    pub payload: String,
    /// Secrets to sign with, current first (two during a rotation grace period).
    pub secrets: Vec<WebhookSecret>,
    /// A W3C `traceparent` to propagate.
    pub traceparent: Option<String>,
}

/// Why a send got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendErrorKind {
    /// No answer within the timeout.
    Timeout,
    /// The connection could not be made or broke (DNS, TCP, TLS).
    Connect,
    /// The target resolves to an address that may not be reached (SSRF guard).
    RefusedTarget,
    /// Anything else (an unreadable answer, a request that could not be built).
    Other,
}

impl SendErrorKind {
    /// A short name for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::RefusedTarget => "refused_target",
            Self::Other => "other",
        }
    }
}

/// A send that got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// Why.
    pub kind: SendErrorKind,
    /// Detail for the attempt record (no secrets).
    pub message: String,
}

/// What one send found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOutcome {
    /// The HTTP status, when an answer arrived.
    pub status: Option<u16>,
    /// Time from sending to the answer (or the failure).
    pub latency: Duration,
    /// The start of the answer's body (at most `Attempt::MAX_SNIPPET_BYTES`, lossy UTF-8).
    pub snippet: Option<String>,
    /// The answer's `Retry-After`, when it had one.
    pub retry_after: Option<Duration>,
    /// Set when no answer arrived.
    pub error: Option<SendError>,
}

/// Sends signed webhook requests over HTTP.
#[async_trait]
pub trait WebhookSender: Send + Sync {
    /// Checks that `url` may be a target: its host resolves, and (unless private targets are
    /// allowed) only to public addresses. MUST return `Invalid` on the `url` field otherwise.
    async fn check_target(&self, url: &WebhookUrl) -> DomainResult<()>;
    /// Signs and POSTs `request` once. Never fails: every outcome is a `SendOutcome`.
    async fn send(&self, request: &WebhookRequest) -> SendOutcome;
}
