//! Subscriptions, outbox events, deliveries and attempts as every store keeps them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{EventPayload, EventSet, EventType, WebhookSecret, WebhookUrl};
use super::{DeliveryId, EventId, WebhookId};
use crate::api_key::ProjectAccess;
use crate::project::ProjectName;
use crate::{DomainError, DomainResult, Timestamp};

/// The secret a subscription had before a rotation, still used to sign until `valid_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousWebhookSecret {
    /// The old secret.
    pub secret: WebhookSecret,
    /// End of the grace period.
    pub valid_until: Timestamp,
}

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Stable id.
    pub id: WebhookId,
    /// Where events are POSTed.
    pub url: WebhookUrl,
    /// Event types it wants.
    pub events: EventSet,
    /// Projects whose events it wants (`All`, or a non-empty list).
    pub projects: ProjectAccess,
    /// The current signing secret.
    pub secret: WebhookSecret,
    /// The secret before the last rotation, during its grace period.
    pub previous_secret: Option<PreviousWebhookSecret>,
    /// Disabled subscriptions get no deliveries.
    pub enabled: bool,
    /// Why it was disabled (410 Gone, days of failure, a client's request).
    pub disabled_reason: Option<String>,
    /// Start of the current run of failed attempts (none since the last success); the store
    /// maintains it in `DeliveryQueue::record_attempt`.
    pub failing_since: Option<Timestamp>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last change of its settings or state.
    pub updated_at: Timestamp,
}

impl Webhook {
    /// Whether `event` goes to this subscription: it is enabled, and the event is either aimed
    /// at it (`target`, as pings are) or is of a wanted type from a wanted project. An event
    /// without a project only goes to subscriptions for every project.
    pub fn wants(&self, event: &OutboxEvent) -> bool {
        if !self.enabled {
            return false;
        }
        if let Some(target) = event.target {
            return target == self.id;
        }
        self.events.contains(event.event_type)
            && match &event.project {
                Some(p) => self.projects.allows(p),
                None => self.projects == ProjectAccess::All,
            }
    }

    /// The secrets to sign with at `now`: the current one, then the previous one in its grace.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<WebhookSecret> {
        let mut secrets = vec![self.secret.clone()];
        if let Some(p) = self.previous_secret.as_ref().filter(|p| now < p.valid_until) {
            secrets.push(p.secret.clone());
        }
        secrets
    }
}

/// What `WebhookRepository::disable` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// The subscription, now disabled.
    pub webhook: Webhook,
    /// False when it was disabled already (so a disable is counted once).
    pub was_enabled: bool,
}

/// An event in the outbox, written by the store together with the change that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Stable id.
    pub id: EventId,
    /// What happened.
    pub event_type: EventType,
    /// The project it concerns (none for pings).
    pub project: Option<ProjectName>,
    /// The only subscription it goes to, bypassing filters (pings); `None`: every match.
    pub target: Option<WebhookId>,
    /// When it happened.
    pub created_at: Timestamp,
    /// The exact body sent.
    pub payload: EventPayload,
}

/// How many events one `fan_out` dispatched and how many deliveries it created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Events taken from the outbox.
    pub events: u32,
    /// Deliveries created for them.
    pub deliveries: u32,
}

/// What one `DeliveryQueue::fan_out_and_lease` did: the fan-out, and the deliveries leased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FannedOutAndLeased {
    /// The fan-out's counts, as `fan_out` reports them.
    pub fan_out: FanOut,
    /// The leased deliveries, as `lease_due` returns them.
    pub leased: Vec<LeasedDelivery>,
    /// Whether the fan-out made deliveries it did not lease though they were not excluded (a
    /// store that leases them in the same step may skip a subscription a change holds at that
    /// moment): a lease may find them due even when this one came back short.
    pub left_unleased: bool,
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Will be attempted at `next_attempt_at`.
    Pending,
    /// A 2xx answer arrived.
    Succeeded,
    /// Every attempt of the retry schedule failed.
    Failed,
    /// Abandoned: the endpoint answered 410 Gone or was disabled.
    Dead,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 4] = [Self::Pending, Self::Succeeded, Self::Failed, Self::Dead];

    /// Name on the wire and in stores.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryStatus {
    type Err = DomainError;
    fn from_str(s: &str) -> DomainResult<Self> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| DomainError::invalid("status", "must be one of pending, succeeded, failed, dead"))
    }
}

/// One event on its way to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stable id; the `webhook-id` header of every attempt.
    pub id: DeliveryId,
    /// The subscription.
    pub webhook_id: WebhookId,
    /// The event.
    pub event_id: EventId,
    /// The event's type (denormalised for listings).
    pub event_type: EventType,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<Timestamp>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
    /// The delivery this one redelivers, if any.
    pub redelivery_of: Option<DeliveryId>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// What one attempt found, as the dispatcher reports it; the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// When the request was sent.
    pub at: Timestamp,
    /// The HTTP status, when an answer arrived.
    pub status_code: Option<u16>,
    /// Time to the answer (or to the failure).
    pub latency_ms: u32,
    /// The start of the answer's body, at most `Attempt::MAX_SNIPPET_BYTES`.
    pub response_snippet: Option<String>,
    /// What went wrong without an answer (timeout, refused connection, refused target).
    pub error: Option<String>,
}

impl AttemptReport {
    /// The stored attempt with its number.
    pub fn numbered(self, number: u32) -> Attempt {
        Attempt {
            number,
            at: self.at,
            status_code: self.status_code,
            latency_ms: self.latency_ms,
            response_snippet: self.response_snippet.map(|s| truncate_snippet(&s).to_owned()),
            error: self.error,
        }
    }
}

/// One attempt to record in a batch (`DeliveryQueue::record_attempts`): what
/// `record_attempt` takes, as one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The leased delivery.
    pub id: DeliveryId,
    /// The fence its lease was handed out with.
    pub fence: i64,
    /// What the attempt found.
    pub report: AttemptReport,
    /// What happens to the delivery next.
    pub next: NextStep,
}

/// One recorded attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt, then in order.
    pub number: u32,
    /// When the request was sent.
    pub at: Timestamp,
    /// The HTTP status, when an answer arrived.
    pub status_code: Option<u16>,
    /// Time to the answer (or to the failure).
    pub latency_ms: u32,
    /// The start of the answer's body.
    pub response_snippet: Option<String>,
    /// What went wrong without an answer.
    pub error: Option<String>,
}

impl Attempt {
    /// How much of an answer's body is kept.
    pub const MAX_SNIPPET_BYTES: usize = 20 * 1024;
}

/// The longest prefix of `s` within `Attempt::MAX_SNIPPET_BYTES` that ends on a char boundary.
pub fn truncate_snippet(s: &str) -> &str {
    if s.len() <= Attempt::MAX_SNIPPET_BYTES {
        return s;
    }
    let mut end = Attempt::MAX_SNIPPET_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A delivery with its attempts in order and the event it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryDetail {
    /// The delivery.
    pub delivery: Delivery,
    /// Every attempt, first first.
    pub attempts: Vec<Attempt>,
    /// The event.
    pub event: OutboxEvent,
}

/// Which deliveries to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Only this subscription's.
    pub webhook: WebhookId,
    /// Only in this status.
    pub status: Option<DeliveryStatus>,
}

/// What a dispatcher asks `lease_due` for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Who leases (a replica's dispatcher), for operators reading the table.
    pub owner: String,
    /// Now: deliveries due at or before it, whose lease (if any) ended before it.
    pub now: Timestamp,
    /// How long the lease lasts; longer than a send can take.
    pub lease: Duration,
    /// At most this many.
    pub limit: u32,
    /// Skip these subscriptions' deliveries (their breaker is open here).
    pub exclude: Vec<WebhookId>,
}

/// A leased delivery with everything needed to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedDelivery {
    /// The delivery.
    pub delivery: Delivery,
    /// Its subscription (URL and secrets).
    pub webhook: Webhook,
    /// Its event (the body).
    pub event: OutboxEvent,
    /// Proves the lease; a write with an older fence changes nothing.
    pub fence: i64,
    /// When the lease ends.
    pub lease_until: Timestamp,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Try again at this time.
    Retry {
        /// When the next attempt is due.
        at: Timestamp,
    },
    /// Delivered.
    Succeeded,
    /// The schedule ran out.
    Failed,
    /// Abandoned (410 Gone).
    Dead,
}

impl NextStep {
    /// The status this step leaves the delivery in.
    pub const fn status(self) -> DeliveryStatus {
        match self {
            Self::Retry { .. } => DeliveryStatus::Pending,
            Self::Succeeded => DeliveryStatus::Succeeded,
            Self::Failed => DeliveryStatus::Failed,
            Self::Dead => DeliveryStatus::Dead,
        }
    }
}
