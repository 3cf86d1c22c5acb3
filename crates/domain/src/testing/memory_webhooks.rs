//! The webhook tables of `MemoryStore`: subscriptions, the outbox, deliveries and attempts,
//! behind the store's one mutex (so command transitions write their events atomically).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::TimeDelta;

use super::memory::page_after;
use super::MemoryStore;
use crate::command::Command;
use crate::pagination::{Page, PageRequest};
use crate::webhook::{
    command_event, Attempt, AttemptReport, Delivery, DeliveryDetail, DeliveryFilter, DeliveryId, DeliveryQueue,
    DeliveryStatus, Disabled, FanOut, LeaseRequest, LeasedDelivery, NextStep, OutboxEvent, PreviousWebhookSecret,
    Webhook, WebhookId, WebhookRepository, WebhookSecret,
};
use crate::{DomainError, DomainResult, Timestamp};

#[derive(Debug, Clone)]
struct EventRow {
    event: OutboxEvent,
    dispatched: bool,
}

#[derive(Debug, Clone)]
struct DeliveryRow {
    delivery: Delivery,
    attempts: Vec<Attempt>,
    fence: i64,
    lease_until: Option<Timestamp>,
}

/// Webhook state inside `MemoryStore`'s state.
#[derive(Debug, Default)]
pub(super) struct WebhookTables {
    webhooks: BTreeMap<WebhookId, Webhook>,
    events: Vec<EventRow>,
    deliveries: BTreeMap<DeliveryId, DeliveryRow>,
    next_fence: i64,
}

impl WebhookTables {
    /// The outbox write of a command transition; skipped when no subscription could want it.
    pub(super) fn record_command(&mut self, command: &Command, at: Timestamp) {
        if self.webhooks.values().any(|w| w.enabled) {
            self.events.push(EventRow { event: command_event(command, at), dispatched: false });
        }
    }

    fn webhook_mut(&mut self, id: WebhookId) -> DomainResult<&mut Webhook> {
        self.webhooks.get_mut(&id).ok_or_else(|| DomainError::NotFound("webhook".into()))
    }

    fn event(&self, id: crate::webhook::EventId) -> DomainResult<OutboxEvent> {
        self.events
            .iter()
            .find(|e| e.event.id == id)
            .map(|e| e.event.clone())
            .ok_or_else(|| DomainError::Internal(format!("delivery refers to missing event {id}")))
    }

    fn new_delivery(webhook: &Webhook, event: &OutboxEvent, id: DeliveryId, now: Timestamp) -> DeliveryRow {
        DeliveryRow {
            delivery: Delivery {
                id,
                webhook_id: webhook.id,
                event_id: event.id,
                event_type: event.event_type,
                status: DeliveryStatus::Pending,
                attempts: 0,
                next_attempt_at: Some(now),
                last_attempt_at: None,
                redelivery_of: None,
                created_at: now,
            },
            attempts: Vec::new(),
            fence: 0,
            lease_until: None,
        }
    }
}

fn delivery_not_found() -> DomainError {
    DomainError::NotFound("webhook delivery".into())
}

#[async_trait]
impl WebhookRepository for MemoryStore {
    async fn create(&self, webhook: &Webhook) -> DomainResult<()> {
        self.with_webhooks(|t| {
            if t.webhooks.contains_key(&webhook.id) {
                return Err(DomainError::Conflict("webhook id already exists".into()));
            }
            t.webhooks.insert(webhook.id, webhook.clone());
            Ok(())
        })
    }

    async fn get(&self, id: WebhookId) -> DomainResult<Webhook> {
        self.with_webhooks(|t| t.webhook_mut(id).map(|w| w.clone()))
    }

    async fn list(&self, page: PageRequest) -> DomainResult<Page<Webhook>> {
        self.with_webhooks(|t| Ok(page_after(t.webhooks.values().cloned(), page, |w| w.id.as_uuid().as_u128())))
    }

    async fn update(&self, webhook: &Webhook) -> DomainResult<Webhook> {
        self.with_webhooks(|t| {
            let stored = t.webhook_mut(webhook.id)?;
            stored.url = webhook.url.clone();
            stored.events = webhook.events.clone();
            stored.projects = webhook.projects.clone();
            stored.updated_at = webhook.updated_at;
            Ok(stored.clone())
        })
    }

    async fn delete(&self, id: WebhookId) -> DomainResult<()> {
        self.with_webhooks(|t| {
            t.webhooks.remove(&id).ok_or_else(|| DomainError::NotFound("webhook".into()))?;
            t.deliveries.retain(|_, d| d.delivery.webhook_id != id);
            Ok(())
        })
    }

    async fn rotate_secret(
        &self,
        id: WebhookId,
        secret: &WebhookSecret,
        previous: Option<&PreviousWebhookSecret>,
        at: Timestamp,
    ) -> DomainResult<Webhook> {
        self.with_webhooks(|t| {
            let w = t.webhook_mut(id)?;
            w.secret = secret.clone();
            w.previous_secret = previous.cloned();
            w.updated_at = at;
            Ok(w.clone())
        })
    }

    async fn enable(&self, id: WebhookId, at: Timestamp) -> DomainResult<Webhook> {
        self.with_webhooks(|t| {
            let w = t.webhook_mut(id)?;
            w.enabled = true;
            w.disabled_reason = None;
            w.failing_since = None;
            w.updated_at = at;
            Ok(w.clone())
        })
    }

    async fn disable(&self, id: WebhookId, reason: &str, at: Timestamp) -> DomainResult<Disabled> {
        self.with_webhooks(|t| {
            let w = t.webhook_mut(id)?;
            let was_enabled = w.enabled;
            if was_enabled {
                w.enabled = false;
                w.disabled_reason = Some(reason.to_owned());
                w.updated_at = at;
            }
            let webhook = w.clone();
            for row in t.deliveries.values_mut() {
                let leased = row.lease_until.is_some_and(|l| l >= at);
                if row.delivery.webhook_id == id && row.delivery.status == DeliveryStatus::Pending && !leased {
                    row.delivery.status = DeliveryStatus::Dead;
                    row.delivery.next_attempt_at = None;
                    row.lease_until = None;
                }
            }
            Ok(Disabled { webhook, was_enabled })
        })
    }
}

#[async_trait]
impl DeliveryQueue for MemoryStore {
    async fn append_event(&self, event: &OutboxEvent) -> DomainResult<()> {
        self.with_webhooks(|t| {
            if t.events.iter().any(|e| e.event.id == event.id) {
                return Err(DomainError::Conflict(format!("webhook event {} exists", event.id)));
            }
            t.events.push(EventRow { event: event.clone(), dispatched: false });
            Ok(())
        })
    }

    async fn fan_out(&self, now: Timestamp, limit: u32) -> DomainResult<FanOut> {
        self.with_webhooks(|t| {
            let mut done = FanOut::default();
            let pending: Vec<usize> = t
                .events
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.dispatched)
                .map(|(i, _)| i)
                .take(limit as usize)
                .collect();
            for i in pending {
                let event = t.events[i].event.clone();
                let targets: Vec<Webhook> = t.webhooks.values().filter(|w| w.wants(&event)).cloned().collect();
                for w in targets {
                    let row = WebhookTables::new_delivery(&w, &event, DeliveryId::generate(), now);
                    t.deliveries.insert(row.delivery.id, row);
                    done.deliveries += 1;
                }
                t.events[i].dispatched = true;
                done.events += 1;
            }
            Ok(done)
        })
    }

    async fn lease_due(&self, request: &LeaseRequest) -> DomainResult<Vec<LeasedDelivery>> {
        let lease = TimeDelta::from_std(request.lease).map_err(|e| DomainError::Internal(e.to_string()))?;
        self.with_webhooks(|t| {
            let now = request.now;
            let mut due: Vec<(Timestamp, DeliveryId)> = t
                .deliveries
                .values()
                .filter(|r| {
                    let d = &r.delivery;
                    d.status == DeliveryStatus::Pending
                        && d.next_attempt_at.is_some_and(|n| n <= now)
                        && r.lease_until.is_none_or(|l| l < now)
                        && !request.exclude.contains(&d.webhook_id)
                        && t.webhooks.get(&d.webhook_id).is_some_and(|w| w.enabled)
                })
                .map(|r| (r.delivery.next_attempt_at.unwrap_or(now), r.delivery.id))
                .collect();
            due.sort();
            due.truncate(request.limit as usize);
            if due.is_empty() {
                return Ok(Vec::new());
            }
            t.next_fence += 1;
            let fence = t.next_fence;
            let mut leased = Vec::with_capacity(due.len());
            for (_, id) in due {
                let row = t.deliveries.get_mut(&id).ok_or_else(delivery_not_found)?;
                row.fence = fence;
                row.lease_until = Some(now + lease);
                let delivery = row.delivery.clone();
                let webhook = t.webhooks.get(&delivery.webhook_id).cloned().ok_or_else(delivery_not_found)?;
                let event = t.event(delivery.event_id)?;
                leased.push(LeasedDelivery { delivery, webhook, event, fence, lease_until: now + lease });
            }
            Ok(leased)
        })
    }

    async fn record_attempt(
        &self,
        id: DeliveryId,
        fence: i64,
        report: &AttemptReport,
        next: NextStep,
    ) -> DomainResult<Option<Delivery>> {
        self.with_webhooks(|t| {
            let row = t.deliveries.get_mut(&id).ok_or_else(delivery_not_found)?;
            if row.delivery.status != DeliveryStatus::Pending || row.fence != fence || row.lease_until.is_none() {
                return Ok(None);
            }
            let webhook = t.webhooks.get_mut(&row.delivery.webhook_id).ok_or_else(delivery_not_found)?;
            let next = match next {
                NextStep::Retry { .. } if !webhook.enabled => NextStep::Dead,
                other => other,
            };
            if next == NextStep::Succeeded {
                webhook.failing_since = None;
            } else {
                webhook.failing_since.get_or_insert(report.at);
            }
            let number = row.delivery.attempts + 1;
            row.attempts.push(report.clone().numbered(number));
            row.lease_until = None;
            let d = &mut row.delivery;
            d.attempts = number;
            d.last_attempt_at = Some(report.at);
            d.status = next.status();
            d.next_attempt_at = match next {
                NextStep::Retry { at } => Some(at),
                _ => None,
            };
            Ok(Some(d.clone()))
        })
    }

    async fn release(&self, id: DeliveryId, fence: i64, next_attempt_at: Timestamp) -> DomainResult<bool> {
        self.with_webhooks(|t| {
            let row = t.deliveries.get_mut(&id).ok_or_else(delivery_not_found)?;
            let held =
                row.delivery.status == DeliveryStatus::Pending && row.fence == fence && row.lease_until.is_some();
            if held {
                row.lease_until = None;
                row.delivery.next_attempt_at = Some(next_attempt_at);
            }
            Ok(held)
        })
    }

    async fn redeliver(&self, id: DeliveryId, new_id: DeliveryId, now: Timestamp) -> DomainResult<Delivery> {
        self.with_webhooks(|t| {
            let original = t.deliveries.get(&id).ok_or_else(delivery_not_found)?.delivery.clone();
            let webhook = t.webhooks.get(&original.webhook_id).cloned().ok_or_else(delivery_not_found)?;
            if !webhook.enabled {
                return Err(DomainError::Conflict("the webhook is disabled; enable it before redelivering".into()));
            }
            let event = t.event(original.event_id)?;
            let mut row = WebhookTables::new_delivery(&webhook, &event, new_id, now);
            row.delivery.redelivery_of = Some(id);
            let delivery = row.delivery.clone();
            t.deliveries.insert(new_id, row);
            Ok(delivery)
        })
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter, page: PageRequest) -> DomainResult<Page<Delivery>> {
        self.with_webhooks(|t| {
            let matching = t
                .deliveries
                .values()
                .map(|r| r.delivery.clone())
                .filter(|d| d.webhook_id == filter.webhook && filter.status.is_none_or(|s| d.status == s));
            Ok(page_after(matching, page, |d| d.id.as_uuid().as_u128()))
        })
    }

    async fn last_attempts(&self, ids: &[DeliveryId]) -> DomainResult<Vec<(DeliveryId, Attempt)>> {
        self.with_webhooks(|t| {
            Ok(ids
                .iter()
                .filter_map(|id| t.deliveries.get(id).and_then(|r| r.attempts.last()).map(|a| (*id, a.clone())))
                .collect())
        })
    }

    async fn get_delivery(&self, id: DeliveryId) -> DomainResult<DeliveryDetail> {
        self.with_webhooks(|t| {
            let row = t.deliveries.get(&id).ok_or_else(delivery_not_found)?;
            Ok(DeliveryDetail {
                delivery: row.delivery.clone(),
                attempts: row.attempts.clone(),
                event: t.event(row.delivery.event_id)?,
            })
        })
    }

    async fn purge(&self, before: Timestamp) -> DomainResult<u64> {
        self.with_webhooks(|t| {
            let count = t.deliveries.len();
            t.deliveries.retain(|_, r| r.delivery.status == DeliveryStatus::Pending || r.delivery.created_at >= before);
            let purged = (count - t.deliveries.len()) as u64;
            let referenced: std::collections::HashSet<_> = t.deliveries.values().map(|r| r.delivery.event_id).collect();
            t.events.retain(|e| !e.dispatched || e.event.created_at >= before || referenced.contains(&e.event.id));
            Ok(purged)
        })
    }
}
