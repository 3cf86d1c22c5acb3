//! `DeliveryQueue` on PostgreSQL: fan-out of the outbox into `webhook_deliveries`, leases
//! fenced by the `webhook_fence` sequence (both in `dispatch`), and `webhook_attempts`.
//!
//! Dispatchers on any replica lease with `FOR UPDATE SKIP LOCKED`: they never wait for each
//! other's rows, and a row leased by a transaction that committed meanwhile is re-checked
//! against the lease condition (READ COMMITTED re-evaluates locked rows) and left out, so one
//! delivery is never handed to two callers. Fan-outs take events the same way. Writes for a
//! leased delivery name its fence in the `WHERE` clause, so a stale dispatcher changes nothing.

use std::collections::HashMap;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use domain::pagination::{Page, PageRequest};
use domain::webhook::{
    Attempt, AttemptRecord, AttemptReport, Delivery, DeliveryDetail, DeliveryFilter, DeliveryId, DeliveryQueue,
    DeliveryStatus, FanOut, FannedOutAndLeased, LeaseRequest, LeasedDelivery, NextStep, OutboxEvent,
};
use domain::{DomainError, DomainResult, Timestamp};

mod dispatch;

use super::schema::{webhook_attempts, webhook_deliveries as deliveries, webhook_events, webhooks};
use super::{self as subscriptions, EventRow};
use crate::codec;
use crate::connection::{db_error, retry_deadlocks};
use crate::prepared::CachedExt;
use crate::{PgStore, StoreError, StoreResult};

const PENDING: &str = DeliveryStatus::Pending.as_str();

/// Deletes dispatched events created before `$1` that no delivery refers to any more.
const PURGE_EVENTS: &str = "\
DELETE FROM webhook_events e \
WHERE e.dispatched_at IS NOT NULL AND e.created_at < $1 \
  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)";

/// Records a batch of attempts (one array per field, item `i` at index `i` of each) in one
/// statement, so one round trip whatever the batch's size:
/// - `recorded` applies each attempt's next step where its fence still holds the pending
///   delivery, bumps the attempt count and drops the lease. A `Retry` becomes `dead` when the
///   subscription is disabled: `disable` clears the owner of the deliveries it finds leased
///   (`lease_owner` NULL on a held lease), and when it commits between this statement's start
///   and its update of a row, the update waits for it and re-reads the row (READ COMMITTED),
///   owner included. So no lock on the subscription is needed; `enabled` as of the statement's
///   start also counts (a `disable` of the previous release sets no mark);
/// - `attempts` inserts each recorded attempt, numbered by the new count.
///
/// Returns the recorded deliveries with their subscription's `failing_since`.
const RECORD_ATTEMPTS: &str = "\
WITH input AS ( \
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::timestamptz[], $5::timestamptz[], \
                         $6::int4[], $7::int8[], $8::text[], $9::text[]) \
        AS i(id, fence, status, next_at, at, status_code, latency_ms, snippet, error) \
), recorded AS ( \
    UPDATE webhook_deliveries d SET attempts = d.attempts + 1, last_attempt_at = i.at, \
        status = CASE WHEN i.status = 'pending' AND NOT (w.enabled AND d.lease_owner IS NOT NULL) \
            THEN 'dead' ELSE i.status END, \
        next_attempt_at = CASE WHEN w.enabled AND d.lease_owner IS NOT NULL THEN i.next_at END, \
        lease_owner = NULL, lease_expires_at = NULL \
    FROM input i, webhooks w \
    WHERE d.id = i.id AND w.id = d.webhook_id \
      AND d.status = 'pending' AND d.fence = i.fence AND d.lease_expires_at IS NOT NULL \
    RETURNING d.*, w.failing_since AS subscription_failing_since \
), attempts AS ( \
    INSERT INTO webhook_attempts (delivery_id, number, at, status_code, latency_ms, response_snippet, error) \
    SELECT r.id, r.attempts, i.at, i.status_code, i.latency_ms, i.snippet, i.error \
    FROM recorded r JOIN input i ON i.id = r.id \
) \
SELECT * FROM recorded";

sql_rows::delivery_rows!(diesel::pg::Pg, crate::codec::PgColumns);

/// One row of `webhook_attempts`.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_attempts, check_for_backend(diesel::pg::Pg))]
struct AttemptRow {
    delivery_id: Uuid,
    number: i32,
    at: Timestamp,
    status_code: Option<i32>,
    latency_ms: i64,
    response_snippet: Option<String>,
    error: Option<String>,
}

/// PostgreSQL text cannot hold NUL, which an answer's body may contain; the snippet is a lossy
/// excerpt for people to read, so NUL becomes the replacement character.
fn without_nul(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

impl AttemptRow {
    fn from_domain(delivery: Uuid, a: &Attempt) -> DomainResult<Self> {
        Ok(Self {
            delivery_id: delivery,
            number: codec::column_int("attempt number", a.number)?,
            at: a.at,
            status_code: a.status_code.map(i32::from),
            latency_ms: i64::from(a.latency_ms),
            response_snippet: a.response_snippet.as_deref().map(without_nul),
            error: a.error.as_deref().map(without_nul),
        })
    }

    fn into_domain(self) -> DomainResult<Attempt> {
        Ok(Attempt {
            number: codec::int("attempt number", self.number)?,
            at: self.at,
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

async fn load(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<DeliveryRow> {
    Ok(deliveries::table
        .find(id)
        .select(DeliveryRow::as_select())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(not_found)?)
}

async fn load_event(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<EventRow> {
    Ok(webhook_events::table.filter(webhook_events::id.eq(id)).select(EventRow::as_select()).first(conn).await?)
}

/// Whether a delivery with `id` exists; `NotFound` otherwise.
async fn must_exist(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<()> {
    let exists: bool = diesel::select(diesel::dsl::exists(deliveries::table.find(id))).get_result(conn).await?;
    if exists {
        Ok(())
    } else {
        Err(not_found().into())
    }
}

/// The delivery `$id` if `$fence` holds it: pending and leased under that fence (a macro: the
/// query's type differs between `SELECT … FOR UPDATE` and `UPDATE`, which both need it).
macro_rules! held {
    ($id:expr, $fence:expr) => {
        deliveries::table
            .filter(deliveries::id.eq($id))
            .filter(deliveries::status.eq(PENDING))
            .filter(deliveries::fence.eq($fence))
            .filter(deliveries::lease_expires_at.is_not_null())
    };
}

/// A delivery `RECORD_ATTEMPTS` recorded, with its subscription's `failing_since` before.
#[derive(Debug, QueryableByName)]
struct Recorded {
    #[diesel(embed)]
    delivery: DeliveryRow,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    subscription_failing_since: Option<Timestamp>,
}

/// What a batch of attempts changes in one subscription's `failing_since`, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailingSince {
    /// A success after failures: the run of failures is over.
    Clear(Uuid),
    /// The first failure after a success: a run of failures starts at this time (unless one
    /// was started meanwhile).
    Start(Uuid, Timestamp),
    /// Failures that began after a success of the same batch, while an older run was recorded:
    /// that run ended with the success and this one starts at this time.
    Restart(Uuid, Timestamp),
}

/// The `failing_since` changes of `recorded` attempts, in batch order: `(subscription, its
/// failing_since before the batch, succeeded, at)`. The same result as recording them one after
/// the other (a success clears, a failure starts a run unless one runs), one change per
/// subscription at most.
fn failing_since_changes(recorded: &[(Uuid, Option<Timestamp>, bool, Timestamp)]) -> Vec<FailingSince> {
    let mut order: Vec<Uuid> = Vec::new();
    let mut state: HashMap<Uuid, (Option<Timestamp>, Option<Timestamp>)> = HashMap::new();
    for &(hook, before, succeeded, at) in recorded {
        let (_, now) = state.entry(hook).or_insert_with(|| {
            order.push(hook);
            (before, before)
        });
        *now = if succeeded { None } else { now.or(Some(at)) };
    }
    order
        .into_iter()
        .filter_map(|hook| {
            let (before, after) = state[&hook];
            match (before, after) {
                (b, a) if b == a => None,
                (_, None) => Some(FailingSince::Clear(hook)),
                (None, Some(at)) => Some(FailingSince::Start(hook, at)),
                (Some(_), Some(at)) => Some(FailingSince::Restart(hook, at)),
            }
        })
        .collect()
}

/// `RECORD_ATTEMPTS`'s binds: one array per field, item `i` at index `i` of each.
#[derive(Debug, Default)]
struct AttemptColumns {
    ids: Vec<Uuid>,
    fences: Vec<i64>,
    statuses: Vec<&'static str>,
    next_at: Vec<Option<Timestamp>>,
    at: Vec<Timestamp>,
    codes: Vec<Option<i32>>,
    latencies: Vec<i64>,
    snippets: Vec<Option<String>>,
    errors: Vec<Option<String>>,
}

impl AttemptColumns {
    fn of(attempts: &[AttemptRecord]) -> DomainResult<Self> {
        let mut c = Self::default();
        // In id order, the order `disable` locks a subscription's deliveries in: with the plan
        // the statement gets (a nested loop over the input) a batch and a `disable` then never
        // wait for each other both ways; `record_attempts` runs a deadlock victim again for
        // when a plan does otherwise.
        let mut sorted: Vec<&AttemptRecord> = attempts.iter().collect();
        sorted.sort_by_key(|a| a.id.as_uuid());
        for a in sorted {
            // Numbered here only to cut the snippet as `record_attempt` stores it; the statement
            // numbers the attempt.
            let attempt = AttemptRow::from_domain(a.id.as_uuid(), &a.report.clone().numbered(1))?;
            c.ids.push(a.id.as_uuid());
            c.fences.push(a.fence);
            c.statuses.push(a.next.status().as_str());
            c.next_at.push(match a.next {
                NextStep::Retry { at } => Some(at),
                _ => None,
            });
            c.at.push(attempt.at);
            c.codes.push(attempt.status_code);
            c.latencies.push(attempt.latency_ms);
            c.snippets.push(attempt.response_snippet);
            c.errors.push(attempt.error);
        }
        Ok(c)
    }
}

/// Records `attempts` in one statement. Returns each item's result in order and the
/// `failing_since` changes to make after the commit, so that the statement locks no
/// subscription row (which every attempt to that endpoint would then wait for).
async fn record(
    conn: &mut AsyncPgConnection,
    attempts: &[AttemptRecord],
) -> StoreResult<(Vec<DomainResult<Option<Delivery>>>, Vec<FailingSince>)> {
    let c = AttemptColumns::of(attempts)?;
    let rows: Vec<Recorded> = diesel::sql_query(RECORD_ATTEMPTS)
        .bind::<Array<SqlUuid>, _>(&c.ids)
        .bind::<Array<BigInt>, _>(&c.fences)
        .bind::<Array<Text>, _>(&c.statuses)
        .bind::<Array<Nullable<Timestamptz>>, _>(&c.next_at)
        .bind::<Array<Timestamptz>, _>(&c.at)
        .bind::<Array<Nullable<Integer>>, _>(&c.codes)
        .bind::<Array<BigInt>, _>(&c.latencies)
        .bind::<Array<Nullable<Text>>, _>(&c.snippets)
        .bind::<Array<Nullable<Text>>, _>(&c.errors)
        .cached()
        .load(conn)
        .await?;
    let mut recorded: HashMap<Uuid, Recorded> = rows.into_iter().map(|r| (r.delivery.id, r)).collect();
    // Not recorded: a stale fence or a settled delivery (`None`), or no such delivery.
    let missing: Vec<Uuid> = c.ids.iter().filter(|id| !recorded.contains_key(id)).copied().collect();
    let existing: Vec<Uuid> = if missing.is_empty() {
        Vec::new()
    } else {
        deliveries::table.filter(deliveries::id.eq_any(&missing)).select(deliveries::id).load(conn).await?
    };
    let mut changes = Vec::new();
    let mut results = Vec::with_capacity(attempts.len());
    for a in attempts {
        let id = a.id.as_uuid();
        results.push(match recorded.remove(&id) {
            Some(r) => {
                let hook = r.delivery.webhook_id;
                changes.push((hook, r.subscription_failing_since, a.next == NextStep::Succeeded, a.report.at));
                r.delivery.into_domain().map(Some)
            }
            None if existing.contains(&id) => Ok(None),
            None => Err(not_found()),
        });
    }
    Ok((results, failing_since_changes(&changes)))
}

/// Applies a batch's `failing_since` change (a start never moves an earlier one).
async fn apply(conn: &mut AsyncPgConnection, change: FailingSince) -> StoreResult<()> {
    match change {
        FailingSince::Clear(webhook) => {
            diesel::update(webhooks::table.find(webhook).filter(webhooks::failing_since.is_not_null()))
                .set(webhooks::failing_since.eq(None::<Timestamp>))
                .execute(conn)
                .await?
        }
        FailingSince::Start(webhook, at) => {
            diesel::update(webhooks::table.find(webhook).filter(webhooks::failing_since.is_null()))
                .set(webhooks::failing_since.eq(at))
                .execute(conn)
                .await?
        }
        FailingSince::Restart(webhook, at) => {
            diesel::update(webhooks::table.find(webhook)).set(webhooks::failing_since.eq(at)).execute(conn).await?
        }
    };
    Ok(())
}

fn lease_end(now: Timestamp, lease: std::time::Duration) -> DomainResult<Timestamp> {
    chrono::TimeDelta::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| DomainError::Internal(format!("lease {lease:?} is too long")))
}

#[async_trait]
impl DeliveryQueue for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(event_id = %event.id, event_type = %event.event_type))]
    async fn append_event(&self, event: &OutboxEvent) -> DomainResult<()> {
        let mut conn = self.conn().await?;
        subscriptions::append_event(&mut conn, event).await.map_err(|e| e.into_domain("append webhook event"))
    }

    #[tracing::instrument(level = "trace", skip_all)]
    async fn fan_out(&self, now: Timestamp, limit: u32) -> DomainResult<FanOut> {
        let mut conn = self.conn().await?;
        dispatch::fan_out(&mut conn, now, limit).await.map_err(|e| e.into_domain("fan out webhook events"))
    }

    #[tracing::instrument(level = "trace", skip_all, fields(owner = %request.owner))]
    async fn lease_due(&self, request: &LeaseRequest) -> DomainResult<Vec<LeasedDelivery>> {
        let until = lease_end(request.now, request.lease)?;
        let mut conn = self.conn().await?;
        dispatch::lease(&mut conn, request, until).await.map_err(|e| e.into_domain("lease webhook deliveries"))
    }

    #[tracing::instrument(level = "trace", skip_all, fields(owner = %request.owner))]
    async fn fan_out_and_lease(&self, fan_out_limit: u32, request: &LeaseRequest) -> DomainResult<FannedOutAndLeased> {
        let until = lease_end(request.now, request.lease)?;
        let mut conn = self.conn().await?;
        // The one statement meets a webhook DELETE in the other lock order (see `delete`): when
        // PostgreSQL aborts this side, or the delete commits while the statement's new
        // deliveries still refer to the subscription, it changed nothing and is run again.
        retry_deadlocks!(
            "fan out and lease webhook deliveries",
            dispatch::fan_out_and_lease(&mut conn, fan_out_limit, request, until).await,
            StoreError::is_deadlock_or_lost_reference
        )
        .map_err(|e| e.into_domain("fan out and lease webhook deliveries"))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id, fence))]
    async fn record_attempt(
        &self,
        id: DeliveryId,
        fence: i64,
        report: &AttemptReport,
        next: NextStep,
    ) -> DomainResult<Option<Delivery>> {
        let one = [AttemptRecord { id, fence, report: report.clone(), next }];
        let mut results = self.record_attempts(&one).await?;
        results.pop().unwrap_or_else(|| Err(DomainError::Internal("a batch of one recorded nothing".into())))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(attempts = attempts.len()))]
    async fn record_attempts(&self, attempts: &[AttemptRecord]) -> DomainResult<Vec<DomainResult<Option<Delivery>>>> {
        if attempts.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        // The rows go in id order (see `AttemptColumns::of`), but the plan decides the order
        // the statement locks them in: a deadlock victim changed nothing and is run again.
        let (results, changes) = retry_deadlocks!("record webhook attempts", record(&mut conn, attempts).await)
            .map_err(|e| e.into_domain("record webhook attempts"))?;
        for change in changes {
            // Lost only if this process dies right here; the next attempt makes the same change.
            apply(&mut conn, change).await.map_err(|e| e.into_domain("record webhook failing_since"))?;
        }
        Ok(results)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id, fence))]
    async fn release(&self, id: DeliveryId, fence: i64, next_attempt_at: Timestamp) -> DomainResult<bool> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let released: StoreResult<bool> = async {
            let changed = diesel::update(held!(id, fence))
                .set((
                    deliveries::next_attempt_at.eq(next_attempt_at),
                    deliveries::lease_owner.eq(None::<String>),
                    deliveries::lease_expires_at.eq(None::<Timestamp>),
                ))
                .execute(&mut conn)
                .await?;
            if changed == 0 {
                must_exist(&mut conn, id).await?;
            }
            Ok(changed > 0)
        }
        .await;
        released.map_err(|e| e.into_domain("release webhook delivery"))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id))]
    async fn redeliver(&self, id: DeliveryId, new_id: DeliveryId, now: Timestamp) -> DomainResult<Delivery> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let row = conn
            .transaction::<_, StoreError, _>(async |conn| {
                let original = load(conn, id).await?;
                // SHARE keeps the subscription from being disabled or deleted until this commits.
                let enabled: bool = webhooks::table
                    .find(original.webhook_id)
                    .select(webhooks::enabled)
                    .for_share()
                    .first(conn)
                    .await
                    .optional()?
                    .ok_or_else(not_found)?;
                if !enabled {
                    return Err(
                        DomainError::Conflict("the webhook is disabled; enable it before redelivering".into()).into()
                    );
                }
                let event = load_event(conn, original.event_id).await?.into_domain()?;
                let mut row = DeliveryRow::new(new_id, original.webhook_id, &event, now);
                row.redelivery_of = Some(id);
                diesel::insert_into(deliveries::table).values(&row).execute(conn).await?;
                Ok(row)
            })
            .await
            .map_err(|e| e.into_domain("redeliver webhook delivery"))?;
        row.into_domain()
    }

    async fn list_deliveries(&self, filter: &DeliveryFilter, page: PageRequest) -> DomainResult<Page<Delivery>> {
        let mut query = deliveries::table
            .filter(deliveries::webhook_id.eq(filter.webhook.as_uuid()))
            .select(DeliveryRow::as_select())
            .order(deliveries::id.asc())
            .into_boxed();
        if let Some(status) = filter.status {
            query = query.filter(deliveries::status.eq(status.as_str()));
        }
        if let Some(after) = page.after.map(codec::cursor_id) {
            query = query.filter(deliveries::id.gt(after));
        }
        let mut conn = self.conn().await?;
        let rows = query
            .limit(i64::from(page.limit.get()) + 1)
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "list webhook deliveries"))?;
        let items = rows.into_iter().map(DeliveryRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |d| d.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn last_attempts(&self, ids: &[DeliveryId]) -> DomainResult<Vec<(DeliveryId, Attempt)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
        let mut conn = self.conn().await?;
        let rows: Vec<AttemptRow> = webhook_attempts::table
            .filter(webhook_attempts::delivery_id.eq_any(&ids))
            .distinct_on(webhook_attempts::delivery_id)
            .order((webhook_attempts::delivery_id.asc(), webhook_attempts::number.desc()))
            .select(AttemptRow::as_select())
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "last webhook attempts"))?;
        rows.into_iter().map(|row| Ok((DeliveryId::from_uuid(row.delivery_id), row.into_domain()?))).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(delivery_id = %id))]
    async fn get_delivery(&self, id: DeliveryId) -> DomainResult<DeliveryDetail> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let found: StoreResult<_> = async {
            let row = load(&mut conn, id).await?;
            let attempts: Vec<AttemptRow> = webhook_attempts::table
                .filter(webhook_attempts::delivery_id.eq(id))
                .order(webhook_attempts::number.asc())
                .select(AttemptRow::as_select())
                .load(&mut conn)
                .await?;
            let event = load_event(&mut conn, row.event_id).await?;
            Ok((row, attempts, event))
        }
        .await;
        let (row, attempts, event) = found.map_err(|e| e.into_domain("get webhook delivery"))?;
        Ok(DeliveryDetail {
            delivery: row.into_domain()?,
            attempts: attempts.into_iter().map(AttemptRow::into_domain).collect::<DomainResult<_>>()?,
            event: event.into_domain()?,
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn purge(&self, before: Timestamp) -> DomainResult<u64> {
        let mut conn = self.conn().await?;
        let purged = conn
            .transaction::<_, StoreError, _>(async |conn| {
                let purged = diesel::delete(
                    deliveries::table.filter(deliveries::status.ne(PENDING)).filter(deliveries::created_at.lt(before)),
                )
                .execute(conn)
                .await?;
                diesel::sql_query(PURGE_EVENTS).bind::<Timestamptz, _>(before).execute(conn).await?;
                Ok(purged)
            })
            .await
            .map_err(|e| e.into_domain("purge webhook deliveries"))?;
        codec::int("purged deliveries", purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(s, 0).expect("valid time")
    }

    #[test]
    fn a_batch_changes_failing_since_as_its_attempts_one_after_the_other_would() {
        let (a, b, c, d) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4));
        let changes = failing_since_changes(&[
            // a: failing since 10, then a success and a new failure: the run restarts at 12.
            (a, Some(at(10)), true, at(11)),
            (a, Some(at(10)), false, at(12)),
            (a, Some(at(10)), false, at(13)),
            // b: healthy, then two failures: the run starts at the first.
            (b, None, false, at(20)),
            (b, None, false, at(21)),
            // c: failing, then failures: nothing changes.
            (c, Some(at(5)), false, at(30)),
            // d: failing, ends with a success: cleared.
            (d, Some(at(5)), false, at(40)),
            (d, Some(at(5)), true, at(41)),
        ]);
        assert_eq!(
            changes,
            vec![FailingSince::Restart(a, at(12)), FailingSince::Start(b, at(20)), FailingSince::Clear(d)]
        );
        assert_eq!(failing_since_changes(&[(a, None, true, at(1))]), vec![], "healthy and succeeding: no write");
    }
}
