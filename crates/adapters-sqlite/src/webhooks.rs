//! `WebhookRepository` on SQLite: the `webhooks` table, the row mapping of subscriptions and
//! outbox events, and the outbox write that command transitions make in their transaction.
//! `DeliveryQueue` lives in `deliveries`.

mod deliveries;
mod schema;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::command::Command;
use domain::pagination::{Page, PageRequest};
use domain::webhook::{
    command_event, DeliveryStatus, Disabled, OutboxEvent, PreviousWebhookSecret, Webhook, WebhookId, WebhookRepository,
    WebhookSecret,
};
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec::{self, micros};
use crate::{SqliteStore, StoreResult};
use schema::{webhook_deliveries, webhook_events, webhooks};

sql_rows::webhook_rows!(diesel::sqlite::Sqlite, crate::codec::SqliteColumns);

/// Appends an event to the outbox inside the caller's transaction.
pub(crate) fn append_event(conn: &mut SqliteConnection, event: &OutboxEvent) -> StoreResult<()> {
    diesel::insert_into(webhook_events::table).values(EventRow::from_domain(event)).execute(conn)?;
    Ok(())
}

/// The outbox write of a command transition, in the caller's transaction. Skipped when no
/// enabled subscription exists, so stores without webhooks do not grow an outbox.
pub(crate) fn record_command_event(conn: &mut SqliteConnection, command: &Command, at: Timestamp) -> StoreResult<()> {
    let subscribed: i64 = webhooks::table.filter(webhooks::enabled.eq(true)).count().get_result(conn)?;
    if subscribed > 0 {
        append_event(conn, &command_event(command, at))?;
    }
    Ok(())
}

fn not_found() -> DomainError {
    DomainError::NotFound("webhook".into())
}

/// The subscription with `id`, or `NotFound`.
pub(crate) fn load(conn: &mut SqliteConnection, id: &str) -> StoreResult<WebhookRow> {
    Ok(webhooks::table.find(id).select(WebhookRow::as_select()).first(conn).optional()?.ok_or_else(not_found)?)
}

impl SqliteStore {
    async fn update_webhook<F>(&self, what: &'static str, id: WebhookId, op: F) -> DomainResult<Webhook>
    where
        F: FnOnce(&mut SqliteConnection, &str) -> StoreResult<usize> + Send + 'static,
    {
        let id = id.to_string();
        let row = self
            .write(what, move |conn| {
                if op(conn, &id)? == 0 {
                    return Err(not_found().into());
                }
                load(conn, &id)
            })
            .await?;
        row.into_domain()
    }
}

#[async_trait]
impl WebhookRepository for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %webhook.id))]
    async fn create(&self, webhook: &Webhook) -> DomainResult<()> {
        let row = WebhookRow::from_domain(webhook)?;
        self.write("create webhook", move |conn| {
            diesel::insert_into(webhooks::table).values(&row).execute(conn)?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn get(&self, id: WebhookId) -> DomainResult<Webhook> {
        let id = id.to_string();
        self.read("get webhook", move |conn| load(conn, &id)).await?.into_domain()
    }

    async fn list(&self, page: PageRequest) -> DomainResult<Page<Webhook>> {
        let after = page.after.map(codec::cursor_id);
        let fetch = i64::from(page.limit.get()) + 1;
        let rows = self
            .read("list webhooks", move |conn| {
                let mut query = webhooks::table.select(WebhookRow::as_select()).order(webhooks::id.asc()).into_boxed();
                if let Some(after) = after {
                    query = query.filter(webhooks::id.gt(after));
                }
                Ok(query.limit(fetch).load(conn)?)
            })
            .await?;
        let items = rows.into_iter().map(WebhookRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |w| w.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %webhook.id))]
    async fn update(&self, webhook: &Webhook) -> DomainResult<Webhook> {
        let row = WebhookRow::from_domain(webhook)?;
        self.update_webhook("update webhook", webhook.id, move |conn, id| {
            Ok(diesel::update(webhooks::table.find(id))
                .set((
                    webhooks::url.eq(row.url),
                    webhooks::events.eq(row.events),
                    webhooks::projects.eq(row.projects),
                    webhooks::updated_at.eq(row.updated_at),
                ))
                .execute(conn)?)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn delete(&self, id: WebhookId) -> DomainResult<()> {
        let id = id.to_string();
        self.write("delete webhook", move |conn| {
            // Attempts go with their deliveries (ON DELETE CASCADE); events stay for others.
            if diesel::delete(webhooks::table.find(&id)).execute(conn)? == 0 {
                return Err(not_found().into());
            }
            Ok(())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn rotate_secret(
        &self,
        id: WebhookId,
        secret: &WebhookSecret,
        previous: Option<&PreviousWebhookSecret>,
        at: Timestamp,
    ) -> DomainResult<Webhook> {
        let secret = secret.expose().to_owned();
        let previous_secret = previous.map(|p| p.secret.expose().to_owned());
        let previous_valid_until = previous.map(|p| micros(p.valid_until));
        self.update_webhook("rotate webhook secret", id, move |conn, id| {
            Ok(diesel::update(webhooks::table.find(id))
                .set((
                    webhooks::secret.eq(secret),
                    webhooks::previous_secret.eq(previous_secret),
                    webhooks::previous_valid_until.eq(previous_valid_until),
                    webhooks::updated_at.eq(micros(at)),
                ))
                .execute(conn)?)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn enable(&self, id: WebhookId, at: Timestamp) -> DomainResult<Webhook> {
        self.update_webhook("enable webhook", id, move |conn, id| {
            Ok(diesel::update(webhooks::table.find(id))
                .set((
                    webhooks::enabled.eq(true),
                    webhooks::disabled_reason.eq(None::<String>),
                    webhooks::failing_since.eq(None::<i64>),
                    webhooks::updated_at.eq(micros(at)),
                ))
                .execute(conn)?)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(webhook_id = %id))]
    async fn disable(&self, id: WebhookId, reason: &str, at: Timestamp) -> DomainResult<Disabled> {
        let id = id.to_string();
        let reason = reason.to_owned();
        let (row, was_enabled) = self
            .write("disable webhook", move |conn| {
                let was_enabled = load(conn, &id)?.enabled;
                if was_enabled {
                    diesel::update(webhooks::table.find(&id))
                        .set((
                            webhooks::enabled.eq(false),
                            webhooks::disabled_reason.eq(&reason),
                            webhooks::updated_at.eq(micros(at)),
                        ))
                        .execute(conn)?;
                }
                let d = webhook_deliveries::table;
                diesel::update(
                    d.filter(webhook_deliveries::webhook_id.eq(&id))
                        .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
                        .filter(
                            webhook_deliveries::lease_expires_at
                                .is_null()
                                .or(webhook_deliveries::lease_expires_at.lt(micros(at))),
                        ),
                )
                .set((
                    webhook_deliveries::status.eq(DeliveryStatus::Dead.as_str()),
                    webhook_deliveries::next_attempt_at.eq(None::<i64>),
                    webhook_deliveries::lease_owner.eq(None::<String>),
                    webhook_deliveries::lease_expires_at.eq(None::<i64>),
                ))
                .execute(conn)?;
                Ok((load(conn, &id)?, was_enabled))
            })
            .await?;
        Ok(Disabled { webhook: row.into_domain()?, was_enabled })
    }
}
