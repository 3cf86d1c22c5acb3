//! `WebhookRepository` on PostgreSQL: the `webhooks` table, the row mapping of subscriptions and
//! outbox events, and the outbox write that command transitions make in their transaction.
//! `DeliveryQueue` lives in `deliveries`.

mod deliveries;
mod schema;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use domain::command::Command;
use domain::pagination::{Page, PageRequest};
use domain::webhook::{
    command_event, Disabled, OutboxEvent, PreviousWebhookSecret, Webhook, WebhookId, WebhookRepository, WebhookSecret,
};
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec;
use crate::connection::{db_error, retry_deadlocks};
use crate::prepared::CachedExt;
use crate::{PgStore, StoreError, StoreResult};
use schema::{webhook_events, webhooks};

/// Appends an event (`$1`…`$6`) only while an enabled subscription exists: command transitions
/// skip the outbox when nobody listens, decided in the same statement as the write.
const APPEND_IF_SUBSCRIBED: &str = "\
INSERT INTO webhook_events (id, event_type, project, target_webhook, payload, created_at) \
SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM webhooks WHERE enabled)";

/// What `disable` does to subscription `$1`'s pending deliveries at `$2`: those not leased end
/// `dead`; those leased stay pending so their attempt can be recorded, with no owner, which
/// tells the attempt's record that the subscription was disabled meanwhile (a `Retry` then
/// ends `dead` too, unless `enable` removed the mark first; see `deliveries::RECORD_ATTEMPTS`). Rows are locked in id order, the order
/// a batch of attempts updates them in, so the two never deadlock.
const DISABLE_DELIVERIES: &str = "\
WITH pending AS ( \
    SELECT id FROM webhook_deliveries WHERE webhook_id = $1 AND status = 'pending' ORDER BY id FOR UPDATE \
) \
UPDATE webhook_deliveries d SET \
    status = CASE WHEN d.lease_expires_at >= $2 THEN d.status ELSE 'dead' END, \
    next_attempt_at = CASE WHEN d.lease_expires_at >= $2 THEN d.next_attempt_at END, \
    lease_expires_at = CASE WHEN d.lease_expires_at >= $2 THEN d.lease_expires_at END, \
    lease_owner = NULL \
FROM pending p WHERE d.id = p.id";

/// What `enable` does to subscription `$1`'s leased pending deliveries that a `disable` marked
/// (no owner; see `DISABLE_DELIVERIES`): the mark goes, so their attempts are recorded as for
/// an enabled subscription, as they would have been without the disable. Id order, as there.
const UNMARK_DELIVERIES: &str = "\
WITH marked AS ( \
    SELECT id FROM webhook_deliveries \
    WHERE webhook_id = $1 AND status = 'pending' AND lease_owner IS NULL AND lease_expires_at IS NOT NULL \
    ORDER BY id FOR UPDATE \
) \
UPDATE webhook_deliveries d SET lease_owner = 'enabled again' FROM marked m WHERE d.id = m.id";

/// `$ts` (a `timestamptz` expression) as `domain::webhook`'s RFC 3339 text: UTC, microseconds, `Z`.
macro_rules! rfc3339 {
    ($ts:literal) => {
        concat!("to_char((", $ts, ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24\":\"MI\":\"SS.US\"Z\"')")
    };
}

/// The event type of a command row `s` that has just entered its status.
macro_rules! command_event_type {
    () => {
        "'command.' || CASE s.status WHEN 'running' THEN 'started' ELSE s.status END"
    };
}

/// The JSON payload of the event of command row `s` entering its current status at `$at`: what
/// `domain::webhook::command_event` builds, made in SQL. `tests::sql_payload_is_the_domain_payload`
/// runs this expression on stored commands in every status and priority and compares it with
/// the Rust-built payload, so the two definitions cannot drift apart.
macro_rules! command_payload {
    ($at:literal) => {
        concat!(
            "json_build_object(",
            "'type', ",
            $crate::webhooks::command_event_type!(),
            ", 'timestamp', ",
            $crate::webhooks::rfc3339!($at),
            ", ",
            "'data', json_build_object('id', s.id, 'project', s.project_name, 'status', s.status, ",
            "'exit_code', s.exit_code, 'termination_reason', s.termination_reason, ",
            "'error', left(s.error, 4096), ",
            "'priority', (ARRAY['low', 'normal', 'high', 'critical'])[s.priority + 1], ",
            "'queued_at', ",
            $crate::webhooks::rfc3339!("s.queued_at"),
            ", 'started_at', ",
            $crate::webhooks::rfc3339!("s.started_at"),
            ", ",
            "'finished_at', ",
            $crate::webhooks::rfc3339!("s.finished_at"),
            "))::text"
        )
    };
}

/// An `INSERT` announcing each command row of `$source` entering its current status at `$at`,
/// with event id `$id`, written only while an enabled subscription exists: the payload is
/// `command_payload!`, made in SQL so that a transition and its outbox row are one statement
/// (one round trip on the queue's hot path).
macro_rules! announce_command {
    ($source:literal, $id:literal, $at:literal) => {
        concat!(
            "INSERT INTO webhook_events (id, event_type, project, target_webhook, payload, created_at) ",
            "SELECT ",
            $id,
            ", ",
            $crate::webhooks::command_event_type!(),
            ", s.project_name, NULL, ",
            $crate::webhooks::command_payload!($at),
            ", ",
            $at,
            " ",
            "FROM ",
            $source,
            " s WHERE EXISTS (SELECT 1 FROM webhooks WHERE enabled)"
        )
    };
}
pub(crate) use {announce_command, command_event_type, command_payload, rfc3339};

sql_rows::webhook_rows!(diesel::pg::Pg, crate::codec::PgColumns);

/// Appends an event to the outbox inside the caller's transaction.
pub(crate) async fn append_event(conn: &mut AsyncPgConnection, event: &OutboxEvent) -> StoreResult<()> {
    diesel::insert_into(webhook_events::table).values(EventRow::from_domain(event)).execute(conn).await?;
    Ok(())
}

/// The outbox write of a command transition, in the caller's transaction (the transition's own,
/// so the event exists exactly when the transition committed). Skipped when no enabled
/// subscription exists, so stores without webhooks do not grow an outbox.
pub(crate) async fn record_command_event(
    conn: &mut AsyncPgConnection,
    command: &Command,
    at: Timestamp,
) -> StoreResult<()> {
    let row = EventRow::from_domain(&command_event(command, at));
    diesel::sql_query(APPEND_IF_SUBSCRIBED)
        .bind::<SqlUuid, _>(row.id)
        .bind::<Text, _>(&row.event_type)
        .bind::<Nullable<Text>, _>(row.project.as_deref())
        .bind::<Nullable<SqlUuid>, _>(row.target_webhook)
        .bind::<Text, _>(&row.payload)
        .bind::<Timestamptz, _>(row.created_at)
        // Runs inside every command transition: keep it prepared like the transition itself.
        .cached()
        .execute(conn)
        .await?;
    Ok(())
}

fn not_found() -> DomainError {
    DomainError::NotFound("webhook".into())
}

/// The subscription with `id`, or `NotFound`.
pub(crate) async fn load(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<WebhookRow> {
    Ok(webhooks::table.find(id).select(WebhookRow::as_select()).first(conn).await.optional()?.ok_or_else(not_found)?)
}

/// The subscription an update returned, or `NotFound` when no row matched.
fn updated(row: Option<WebhookRow>) -> DomainResult<Webhook> {
    row.ok_or_else(not_found)?.into_domain()
}

#[async_trait]
impl WebhookRepository for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %webhook.id))]
    async fn create(&self, webhook: &Webhook) -> DomainResult<()> {
        let row = WebhookRow::from_domain(webhook)?;
        let mut conn = self.conn().await?;
        diesel::insert_into(webhooks::table)
            .values(&row)
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "create webhook"))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn get(&self, id: WebhookId) -> DomainResult<Webhook> {
        let mut conn = self.conn().await?;
        load(&mut conn, id.as_uuid()).await.map_err(|e| e.into_domain("get webhook"))?.into_domain()
    }

    async fn list(&self, page: PageRequest) -> DomainResult<Page<Webhook>> {
        let mut query = webhooks::table.select(WebhookRow::as_select()).order(webhooks::id.asc()).into_boxed();
        if let Some(after) = page.after.map(codec::cursor_id) {
            query = query.filter(webhooks::id.gt(after));
        }
        let mut conn = self.conn().await?;
        let rows = query
            .limit(i64::from(page.limit.get()) + 1)
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "list webhooks"))?;
        let items = rows.into_iter().map(WebhookRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |w| w.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %webhook.id))]
    async fn update(&self, webhook: &Webhook) -> DomainResult<Webhook> {
        let row = WebhookRow::from_domain(webhook)?;
        let mut conn = self.conn().await?;
        let stored = diesel::update(webhooks::table.find(row.id))
            .set((
                webhooks::url.eq(&row.url),
                webhooks::events.eq(&row.events),
                webhooks::projects.eq(&row.projects),
                webhooks::updated_at.eq(row.updated_at),
            ))
            .returning(WebhookRow::as_returning())
            .get_result(&mut conn)
            .await
            .optional()
            .map_err(|e| db_error(e, "update webhook"))?;
        updated(stored)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn delete(&self, id: WebhookId) -> DomainResult<()> {
        let mut conn = self.conn().await?;
        // Attempts go with their deliveries (ON DELETE CASCADE); events stay for others. The
        // cascade locks deliveries after the subscription's row, the dispatcher's fan-out and
        // lease the other way round (it holds the deliveries it leases again while the ones it
        // creates check their subscription): PostgreSQL breaks such a deadlock by aborting one
        // side, and a delete it aborted changed nothing, so it is simply run again.
        let deleted = retry_deadlocks!(
            "delete webhook",
            diesel::delete(webhooks::table.find(id.as_uuid())).execute(&mut conn).await.map_err(StoreError::from)
        )
        .map_err(|e| e.into_domain("delete webhook"))?;
        if deleted == 0 {
            return Err(not_found());
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn rotate_secret(
        &self,
        id: WebhookId,
        secret: &WebhookSecret,
        previous: Option<&PreviousWebhookSecret>,
        at: Timestamp,
    ) -> DomainResult<Webhook> {
        let mut conn = self.conn().await?;
        let stored = diesel::update(webhooks::table.find(id.as_uuid()))
            .set((
                webhooks::secret.eq(secret.expose()),
                webhooks::previous_secret.eq(previous.map(|p| p.secret.expose())),
                webhooks::previous_valid_until.eq(previous.map(|p| p.valid_until)),
                webhooks::updated_at.eq(at),
            ))
            .returning(WebhookRow::as_returning())
            .get_result(&mut conn)
            .await
            .optional()
            .map_err(|e| db_error(e, "rotate webhook secret"))?;
        updated(stored)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn enable(&self, id: WebhookId, at: Timestamp) -> DomainResult<Webhook> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        // The subscription's row first, then its deliveries, as `disable` takes them.
        let stored = conn
            .transaction::<_, StoreError, _>(async |conn| {
                let stored = diesel::update(webhooks::table.find(id))
                    .set((
                        webhooks::enabled.eq(true),
                        webhooks::disabled_reason.eq(None::<String>),
                        webhooks::failing_since.eq(None::<Timestamp>),
                        webhooks::updated_at.eq(at),
                    ))
                    .returning(WebhookRow::as_returning())
                    .get_result(conn)
                    .await
                    .optional()?;
                if stored.is_some() {
                    diesel::sql_query(UNMARK_DELIVERIES).bind::<SqlUuid, _>(id).execute(conn).await?;
                }
                Ok(stored)
            })
            .await
            .map_err(|e| e.into_domain("enable webhook"))?;
        updated(stored)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn disable(&self, id: WebhookId, reason: &str, at: Timestamp) -> DomainResult<Disabled> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let (row, was_enabled) = conn
            .transaction::<_, StoreError, _>(async |conn| {
                // Waits for a `disable` or an `enable` in flight, for attempts that a replica of
                // the previous release records under a share lock on this row, and for a fan-out
                // that holds the row to lease its new deliveries (`dispatch::FAN_OUT_AND_LEASE`),
                // so `DISABLE_DELIVERIES` below sees and marks what that fan-out leased.
                let was_enabled: bool = webhooks::table
                    .find(id)
                    .select(webhooks::enabled)
                    .for_no_key_update()
                    .first(conn)
                    .await
                    .optional()?
                    .ok_or_else(not_found)?;
                if was_enabled {
                    diesel::update(webhooks::table.find(id))
                        .set((
                            webhooks::enabled.eq(false),
                            webhooks::disabled_reason.eq(reason),
                            webhooks::updated_at.eq(at),
                        ))
                        .execute(conn)
                        .await?;
                }
                diesel::sql_query(DISABLE_DELIVERIES)
                    .bind::<SqlUuid, _>(id)
                    .bind::<Timestamptz, _>(at)
                    .execute(conn)
                    .await?;
                Ok((load(conn, id).await?, was_enabled))
            })
            .await
            .map_err(|e| e.into_domain("disable webhook"))?;
        Ok(Disabled { webhook: row.into_domain()?, was_enabled })
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use diesel::sql_types::{Integer, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;

    use domain::command::{CommandStatus, Priority, TerminationReason};
    use domain::ports::{CommandRepository, ProjectRepository};
    use domain::testing::{now_micros, sample_command, sample_project};
    use domain::webhook::command_event;
    use domain::Timestamp;

    use crate::testing::TestDatabase;

    /// Sets what the payload shows of command `$1`.
    const SET: &str = "UPDATE commands SET status = $2, priority = $3, exit_code = $4, termination_reason = $5, \
                       error = $6, started_at = $7, finished_at = $8 WHERE id = $1";
    /// The SQL-built payload of command `$1` entering its status at `$2`.
    const PAYLOAD: &str = concat!("SELECT ", command_payload!("$2"), " AS payload FROM commands s WHERE s.id = $1");

    #[derive(QueryableByName)]
    struct Payload {
        #[diesel(sql_type = Text)]
        payload: String,
    }

    /// One state of a command: status, priority, exit code, reason, error, started, finished.
    type Case = (CommandStatus, Priority, Option<i32>, Option<TerminationReason>, Option<String>, bool, bool);

    fn cases() -> Vec<Case> {
        use CommandStatus::*;
        let long = "é∑\"\\\n".repeat(1500);
        let mut cases: Vec<Case> =
            Priority::ALL.into_iter().map(|p| (Queued, p, None, None, None, false, false)).collect();
        cases.extend([
            (Running, Priority::Normal, None, None, None, true, false),
            (Succeeded, Priority::Low, Some(0), Some(TerminationReason::Exited), None, true, true),
            (Failed, Priority::High, Some(3), Some(TerminationReason::Exited), Some(long), true, true),
            (Failed, Priority::Critical, None, Some(TerminationReason::StartFailed), Some("no sh".into()), true, true),
            (TimedOut, Priority::Normal, None, Some(TerminationReason::Timeout), None, true, true),
            (Cancelled, Priority::Normal, None, Some(TerminationReason::Cancelled), None, false, true),
            (Lost, Priority::High, None, Some(TerminationReason::WorkerLost), Some("gone".into()), true, true),
        ]);
        cases.extend(
            TerminationReason::ALL.into_iter().map(|r| (Failed, Priority::Normal, None, Some(r), None, true, true)),
        );
        cases
    }

    #[tokio::test]
    async fn sql_payload_is_the_domain_payload() {
        let db = TestDatabase::create().await;
        let store = db.store().await;
        let web = sample_project("web", 1);
        ProjectRepository::create(&store, &web).await.expect("project");
        let id = CommandRepository::enqueue(&store, sample_command(&web, Priority::Normal, None))
            .await
            .expect("enqueue")
            .command
            .id;
        let mut conn = store.conn().await.expect("connection");
        for (status, priority, exit_code, reason, error, started, finished) in cases() {
            let at: Timestamp = now_micros();
            diesel::sql_query(SET)
                .bind::<SqlUuid, _>(id.as_uuid())
                .bind::<Text, _>(status.as_str())
                .bind::<SmallInt, _>(priority.rank())
                .bind::<Nullable<Integer>, _>(exit_code)
                .bind::<Nullable<Text>, _>(reason.map(|r| r.as_str()))
                .bind::<Nullable<Text>, _>(error.as_deref())
                .bind::<Nullable<Timestamptz>, _>(started.then_some(at))
                .bind::<Nullable<Timestamptz>, _>(finished.then_some(at))
                .execute(&mut conn)
                .await
                .expect("set the command's state");
            let built: Payload = diesel::sql_query(PAYLOAD)
                .bind::<SqlUuid, _>(id.as_uuid())
                .bind::<Timestamptz, _>(at)
                .get_result(&mut conn)
                .await
                .expect("SQL payload");
            let command = CommandRepository::get(&store, id).await.expect("command");
            let sql: serde_json::Value = serde_json::from_str(&built.payload).expect("SQL payload is JSON");
            let rust: serde_json::Value =
                serde_json::from_str(command_event(&command, at).payload.as_str()).expect("domain payload is JSON");
            assert_eq!(sql, rust, "{status:?} {priority:?}");
        }
    }
}
