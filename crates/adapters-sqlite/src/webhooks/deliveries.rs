//! `DeliveryQueue` on SQLite: fan-out of the outbox into `webhook_deliveries`, leases fenced by
//! the `webhook_fence` counter, and `webhook_attempts`.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction, so two dispatchers never lease the same
//! row and two fan-outs never take the same event: the second starts after the first committed.

use std::collections::HashMap;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::pagination::{Page, PageRequest};
use domain::webhook::{
    Attempt, AttemptRecord, AttemptReport, Delivery, DeliveryDetail, DeliveryFilter, DeliveryId, DeliveryQueue,
    DeliveryStatus, FanOut, LeaseRequest, LeasedDelivery, NextStep, OutboxEvent, Webhook,
};
use domain::{DomainError, DomainResult, Timestamp};

use super::schema::{webhook_attempts, webhook_deliveries as deliveries, webhook_events, webhooks};
use super::{self as subscriptions, EventRow, WebhookRow};
use crate::codec::{self, micros};
use crate::schema::counters;
use crate::{SqliteStore, StoreResult};
use sql_rows::Columns as _;

const PENDING: &str = DeliveryStatus::Pending.as_str();
const FENCE_COUNTER: &str = "webhook_fence";

sql_rows::delivery_rows!(diesel::sqlite::Sqlite, crate::codec::SqliteColumns);

impl DeliveryRow {
    /// Whether `fence` holds this delivery: pending, leased, and leased with that fence.
    fn held_by(&self, fence: i64) -> bool {
        self.status == PENDING && self.fence == fence && self.lease_expires_at.is_some()
    }
}

/// One row of `webhook_attempts`.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::sqlite::Sqlite))]
struct AttemptRow {
    delivery_id: String,
    number: i32,
    at: i64,
    status_code: Option<i32>,
    latency_ms: i32,
    response_snippet: Option<String>,
    error: Option<String>,
}

impl AttemptRow {
    fn from_domain(delivery: &str, a: &Attempt) -> DomainResult<Self> {
        Ok(Self {
            delivery_id: delivery.to_owned(),
            number: codec::column_int("attempt number", a.number)?,
            at: micros(a.at),
            status_code: a.status_code.map(i32::from),
            latency_ms: i32::try_from(a.latency_ms).unwrap_or(i32::MAX),
            response_snippet: a.response_snippet.clone(),
            error: a.error.clone(),
        })
    }

    fn into_domain(self) -> DomainResult<Attempt> {
        Ok(Attempt {
            number: codec::int("attempt number", self.number)?,
            at: codec::time(self.at)?,
            status_code: self.status_code.map(|c| codec::int("status_code", c)).transpose()?,
            latency_ms: codec::int("latency_ms", self.latency_ms)?,
            response_snippet: self.response_snippet,
            error: self.error,
        })
    }
}

fn not_found() -> DomainError {
    DomainError::NotFound("webhook delivery".into())
}

fn load(conn: &mut SqliteConnection, id: &str) -> StoreResult<DeliveryRow> {
    Ok(deliveries::table.find(id).select(DeliveryRow::as_select()).first(conn).optional()?.ok_or_else(not_found)?)
}

fn load_event(conn: &mut SqliteConnection, id: &str) -> StoreResult<EventRow> {
    Ok(webhook_events::table.filter(webhook_events::id.eq(id)).select(EventRow::as_select()).first(conn)?)
}

fn next_fence(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(diesel::update(counters::table.find(FENCE_COUNTER))
        .set(counters::value.eq(counters::value + 1))
        .returning(counters::value)
        .get_result(conn)?)
}

/// A fan-out's new deliveries: one per subscription in `hooks` that wants each of `events`
/// (outbox seq and event), and the seqs of the events, now dispatched.
fn new_deliveries(events: Vec<(i64, OutboxEvent)>, hooks: &[Webhook], now: Timestamp) -> (Vec<DeliveryRow>, Vec<i64>) {
    let mut rows = Vec::new();
    let mut seqs = Vec::with_capacity(events.len());
    for (seq, event) in events {
        for hook in hooks.iter().filter(|h| h.wants(&event)) {
            rows.push(DeliveryRow::new(DeliveryId::generate(), Cols::id(hook.id.as_uuid()), &event, now));
        }
        seqs.push(seq);
    }
    (rows, seqs)
}

fn fan_out(conn: &mut SqliteConnection, now: Timestamp, limit: u32) -> StoreResult<FanOut> {
    let events: Vec<(i64, EventRow)> = webhook_events::table
        .filter(webhook_events::dispatched_at.is_null())
        .order(webhook_events::seq.asc())
        .limit(i64::from(limit))
        .select((webhook_events::seq, EventRow::as_select()))
        .load(conn)?;
    if events.is_empty() {
        return Ok(FanOut::default());
    }
    let hooks: Vec<Webhook> = webhooks::table
        .filter(webhooks::enabled.eq(true))
        .order(webhooks::id.asc())
        .select(WebhookRow::as_select())
        .load(conn)?
        .into_iter()
        .map(WebhookRow::into_domain)
        .collect::<DomainResult<_>>()?;
    let events = events.into_iter().map(|(seq, row)| Ok((seq, row.into_domain()?))).collect::<DomainResult<_>>()?;
    let (rows, seqs) = new_deliveries(events, &hooks, now);
    diesel::insert_into(deliveries::table).values(&rows).execute(conn)?;
    diesel::update(webhook_events::table.filter(webhook_events::seq.eq_any(&seqs)))
        .set(webhook_events::dispatched_at.eq(micros(now)))
        .execute(conn)?;
    Ok(FanOut { events: codec::int("events", seqs.len())?, deliveries: codec::int("deliveries", rows.len())? })
}

fn lease(conn: &mut SqliteConnection, request: &LeaseRequest, lease_us: i64) -> StoreResult<Vec<LeasedDelivery>> {
    let now = micros(request.now);
    let exclude: Vec<String> = request.exclude.iter().map(ToString::to_string).collect();
    let due: Vec<String> = deliveries::table
        .inner_join(webhooks::table)
        .filter(deliveries::status.eq(PENDING))
        .filter(deliveries::next_attempt_at.le(now))
        .filter(deliveries::lease_expires_at.is_null().or(deliveries::lease_expires_at.lt(now)))
        .filter(webhooks::enabled.eq(true))
        .filter(deliveries::webhook_id.ne_all(exclude))
        .order((deliveries::next_attempt_at.asc(), deliveries::id.asc()))
        .limit(i64::from(request.limit))
        .select(deliveries::id)
        .load(conn)?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let fence = next_fence(conn)?;
    let until = now.saturating_add(lease_us);
    let rows: Vec<DeliveryRow> = diesel::update(deliveries::table.filter(deliveries::id.eq_any(&due)))
        .set((
            deliveries::lease_owner.eq(&request.owner),
            deliveries::lease_expires_at.eq(until),
            deliveries::fence.eq(fence),
        ))
        .returning(DeliveryRow::as_returning())
        .get_results(conn)?;
    let mut hooks: HashMap<String, Webhook> = HashMap::new();
    let mut leased = Vec::with_capacity(rows.len());
    for row in rows {
        if !hooks.contains_key(&row.webhook_id) {
            let hook = subscriptions::load(conn, &row.webhook_id)?.into_domain()?;
            hooks.insert(row.webhook_id.clone(), hook);
        }
        let webhook = hooks.get(&row.webhook_id).cloned().ok_or_else(not_found)?;
        let event = load_event(conn, &row.event_id)?.into_domain()?;
        let delivery = row.into_domain()?;
        leased.push(LeasedDelivery { delivery, webhook, event, fence, lease_until: codec::time(until)? });
    }
    leased.sort_by_key(|l| (l.delivery.next_attempt_at, l.delivery.id));
    Ok(leased)
}

fn record(
    conn: &mut SqliteConnection,
    id: &str,
    fence: i64,
    report: &AttemptReport,
    next: NextStep,
) -> StoreResult<Option<DeliveryRow>> {
    let row = load(conn, id)?;
    if !row.held_by(fence) {
        return Ok(None);
    }
    let webhook = subscriptions::load(conn, &row.webhook_id)?.into_domain()?;
    let next = match next {
        NextStep::Retry { .. } if !webhook.enabled => NextStep::Dead,
        other => other,
    };
    let number = codec::int::<i32, u32>("attempts", row.attempts)? + 1;
    let attempt = report.clone().numbered(number);
    diesel::insert_into(webhook_attempts::table).values(AttemptRow::from_domain(id, &attempt)?).execute(conn)?;
    let next_attempt_at = match next {
        NextStep::Retry { at } => Some(micros(at)),
        _ => None,
    };
    let updated = diesel::update(deliveries::table.find(id))
        .set((
            deliveries::attempts.eq(codec::column_int::<u32, i32>("attempts", number)?),
            deliveries::last_attempt_at.eq(micros(report.at)),
            deliveries::status.eq(next.status().as_str()),
            deliveries::next_attempt_at.eq(next_attempt_at),
            deliveries::lease_owner.eq(None::<String>),
            deliveries::lease_expires_at.eq(None::<i64>),
        ))
        .returning(DeliveryRow::as_returning())
        .get_result(conn)?;
    let failing_since =
        if next == NextStep::Succeeded { None } else { Some(webhook.failing_since.unwrap_or(report.at)) };
    diesel::update(webhooks::table.find(&row.webhook_id))
        .set(webhooks::failing_since.eq(codec::micros_opt(failing_since)))
        .execute(conn)?;
    Ok(Some(updated))
}

fn lease_micros(lease: std::time::Duration) -> DomainResult<i64> {
    i64::try_from(lease.as_micros()).map_err(|_| DomainError::Internal(format!("lease {lease:?} is too long")))
}

#[async_trait]
impl DeliveryQueue for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(event_id = %event.id, event_type = %event.event_type))]
    async fn append_event(&self, event: &OutboxEvent) -> DomainResult<()> {
        let event = event.clone();
        self.write("append webhook event", move |conn| subscriptions::append_event(conn, &event)).await
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn fan_out(&self, now: Timestamp, limit: u32) -> DomainResult<FanOut> {
        self.write("fan out webhook events", move |conn| fan_out(conn, now, limit)).await
    }

    #[tracing::instrument(level = "trace", skip_all, fields(owner = %request.owner))]
    async fn lease_due(&self, request: &LeaseRequest) -> DomainResult<Vec<LeasedDelivery>> {
        let lease_us = lease_micros(request.lease)?;
        let request = request.clone();
        self.write("lease webhook deliveries", move |conn| lease(conn, &request, lease_us)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id, fence))]
    async fn record_attempt(
        &self,
        id: DeliveryId,
        fence: i64,
        report: &AttemptReport,
        next: NextStep,
    ) -> DomainResult<Option<Delivery>> {
        let (id, report) = (id.to_string(), report.clone());
        let row = self.write("record webhook attempt", move |conn| record(conn, &id, fence, &report, next)).await?;
        row.map(DeliveryRow::into_domain).transpose()
    }

    /// One immediate transaction for the whole batch: SQLite has one writer, so a transaction per
    /// attempt would make every attempt queue for the write lock on its own.
    #[tracing::instrument(level = "debug", skip_all, fields(attempts = attempts.len()))]
    async fn record_attempts(&self, attempts: &[AttemptRecord]) -> DomainResult<Vec<DomainResult<Option<Delivery>>>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        let attempts = attempts.to_vec();
        let rows = self
            .write("record webhook attempts", move |conn| {
                let mut rows = Vec::with_capacity(attempts.len());
                for a in &attempts {
                    let id = a.id.to_string();
                    let exists: bool =
                        diesel::select(diesel::dsl::exists(deliveries::table.find(&id))).get_result(conn)?;
                    rows.push(if exists { Some(record(conn, &id, a.fence, &a.report, a.next)?) } else { None });
                }
                Ok(rows)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| match row {
                None => Err(not_found()),
                Some(recorded) => recorded.map(DeliveryRow::into_domain).transpose(),
            })
            .collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id, fence))]
    async fn release(&self, id: DeliveryId, fence: i64, next_attempt_at: Timestamp) -> DomainResult<bool> {
        let id = id.to_string();
        self.write("release webhook delivery", move |conn| {
            if !load(conn, &id)?.held_by(fence) {
                return Ok(false);
            }
            diesel::update(deliveries::table.find(&id))
                .set((
                    deliveries::next_attempt_at.eq(micros(next_attempt_at)),
                    deliveries::lease_owner.eq(None::<String>),
                    deliveries::lease_expires_at.eq(None::<i64>),
                ))
                .execute(conn)?;
            Ok(true)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id))]
    async fn redeliver(&self, id: DeliveryId, new_id: DeliveryId, now: Timestamp) -> DomainResult<Delivery> {
        let id = id.to_string();
        let row = self
            .write("redeliver webhook delivery", move |conn| {
                let original = load(conn, &id)?;
                if !subscriptions::load(conn, &original.webhook_id)?.into_domain()?.enabled {
                    return Err(
                        DomainError::Conflict("the webhook is disabled; enable it before redelivering".into()).into()
                    );
                }
                let event = load_event(conn, &original.event_id)?.into_domain()?;
                let mut row = DeliveryRow::new(new_id, original.webhook_id.clone(), &event, now);
                row.redelivery_of = Some(id);
                diesel::insert_into(deliveries::table).values(&row).execute(conn)?;
                Ok(row)
            })
            .await?;
        row.into_domain()
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter, page: PageRequest) -> DomainResult<Page<Delivery>> {
        let webhook = filter.webhook.to_string();
        let status = filter.status.map(DeliveryStatus::as_str);
        let after = page.after.map(codec::cursor_id);
        let fetch = i64::from(page.limit.get()) + 1;
        let rows = self
            .read("list webhook deliveries", move |conn| {
                let mut query = deliveries::table
                    .filter(deliveries::webhook_id.eq(webhook))
                    .select(DeliveryRow::as_select())
                    .order(deliveries::id.asc())
                    .into_boxed();
                if let Some(status) = status {
                    query = query.filter(deliveries::status.eq(status));
                }
                if let Some(after) = after {
                    query = query.filter(deliveries::id.gt(after));
                }
                Ok(query.limit(fetch).load(conn)?)
            })
            .await?;
        let items = rows.into_iter().map(DeliveryRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |d| d.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn last_attempts(&self, ids: &[DeliveryId]) -> DomainResult<Vec<(DeliveryId, Attempt)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows: Vec<AttemptRow> = self
            .read("last webhook attempts", move |conn| {
                Ok(webhook_attempts::table
                    .filter(webhook_attempts::delivery_id.eq_any(&ids))
                    .order((webhook_attempts::delivery_id.asc(), webhook_attempts::number.desc()))
                    .select(AttemptRow::as_select())
                    .load(conn)?)
            })
            .await?;
        let mut last = Vec::new();
        for row in rows {
            let id = DeliveryId::from_uuid(codec::uuid(&row.delivery_id)?);
            // Rows come newest first within each delivery: the first one seen is the latest.
            if last.last().is_none_or(|(seen, _): &(DeliveryId, Attempt)| *seen != id) {
                last.push((id, row.into_domain()?));
            }
        }
        Ok(last)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id))]
    async fn get_delivery(&self, id: DeliveryId) -> DomainResult<DeliveryDetail> {
        let id = id.to_string();
        let (row, attempts, event) = self
            .read("get webhook delivery", move |conn| {
                let row = load(conn, &id)?;
                let attempts: Vec<AttemptRow> = webhook_attempts::table
                    .filter(webhook_attempts::delivery_id.eq(&id))
                    .order(webhook_attempts::number.asc())
                    .select(AttemptRow::as_select())
                    .load(conn)?;
                let event = load_event(conn, &row.event_id)?;
                Ok((row, attempts, event))
            })
            .await?;
        Ok(DeliveryDetail {
            delivery: row.into_domain()?,
            attempts: attempts.into_iter().map(AttemptRow::into_domain).collect::<DomainResult<_>>()?,
            event: event.into_domain()?,
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn purge(&self, before: Timestamp) -> DomainResult<u64> {
        let before = micros(before);
        let purged = self
            .write("purge webhook deliveries", move |conn| {
                let purged = diesel::delete(
                    deliveries::table.filter(deliveries::status.ne(PENDING)).filter(deliveries::created_at.lt(before)),
                )
                .execute(conn)?;
                diesel::delete(
                    webhook_events::table
                        .filter(webhook_events::dispatched_at.is_not_null())
                        .filter(webhook_events::created_at.lt(before))
                        .filter(webhook_events::id.ne_all(deliveries::table.select(deliveries::event_id))),
                )
                .execute(conn)?;
                Ok(purged)
            })
            .await?;
        codec::int("purged deliveries", purged)
    }
}
