//! The dispatcher's statements on PostgreSQL: fan-out, lease, and the two together, each one
//! statement (one round trip, no transaction around it) that also returns what sending the
//! leased deliveries needs, their events and subscriptions.
//!
//! - Fan-out takes undispatched events `FOR UPDATE SKIP LOCKED` (concurrent fan-outs skip each
//!   other's; an event dispatched by one that committed meanwhile fails the re-checked
//!   `dispatched_at IS NULL`), matches them against the enabled subscriptions in SQL (what
//!   `Webhook::wants` says; `tests::sql_matching_is_webhook_wants` holds the two together),
//!   inserts the deliveries and marks the events dispatched.
//! - Leasing takes due deliveries `FOR UPDATE OF d SKIP LOCKED`, as before, under one fresh
//!   fence from `webhook_fence`.
//! - Together, the deliveries the fan-out creates are inserted already leased, as many as the
//!   lease has room for after the deliveries that were due before: a new delivery costs no
//!   lease `UPDATE` of its own. Their ids come from `webhook_delivery_id` (migration
//!   `2026-12-04-000018_webhook_dispatch`), UUID v7 in the statement's order.

use std::collections::HashMap;

use diesel::deserialize::{self, QueryableByName};
use diesel::pg::Pg;
use diesel::row::NamedRow;
use diesel::sql_types::{Array, BigInt, Bool, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use domain::webhook::{FanOut, FannedOutAndLeased, LeaseRequest, LeasedDelivery, Webhook, WebhookId};
use domain::{DomainResult, Timestamp};

use super::DeliveryRow;
use crate::codec;
use crate::prepared::CachedExt;
use crate::webhooks::{EventRow, WebhookRow};
use crate::StoreResult;

/// The due deliveries a lease takes (`$1`: now, `$2`: excluded subscriptions, `$3`: at most
/// this many, earliest due first), the fence, and `relet`: those deliveries leased to `$4`
/// until `$5`. Rows another leaser holds locked are skipped rather than waited for.
macro_rules! lease_ctes {
    () => {
        "due AS ( \
            SELECT d.id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
            WHERE d.status = 'pending' AND d.next_attempt_at <= $1 \
              AND (d.lease_expires_at IS NULL OR d.lease_expires_at < $1) \
              AND w.enabled AND NOT (d.webhook_id = ANY($2)) \
            ORDER BY d.next_attempt_at, d.id \
            LIMIT $3 \
            FOR UPDATE OF d SKIP LOCKED \
        ), fence AS ( \
            SELECT nextval('webhook_fence') AS value \
        ), relet AS ( \
            UPDATE webhook_deliveries d SET lease_owner = $4, lease_expires_at = $5, \
                fence = (SELECT value FROM fence) \
            FROM due WHERE d.id = due.id \
            RETURNING d.* \
        )"
    };
}

/// The result of every statement here: the fan-out's counts (`$events`, `$deliveries`) and
/// whether it left new deliveries unleased that were not excluded (`$left_unleased`), then one
/// row per leased delivery of `leased` with its event and subscription, or one row with
/// `leased` false when nothing was leased (so the counts always arrive).
macro_rules! leased_rows {
    ($events:literal, $deliveries:literal, $left_unleased:literal) => {
        concat!(
            "SELECT ",
            $events,
            " AS fanned_events, ",
            $deliveries,
            " AS fanned_deliveries, ",
            $left_unleased,
            " AS left_unleased, l.id IS NOT NULL AS leased, \
            l.id, l.webhook_id, l.event_id, l.event_type, l.status, l.attempts, l.next_attempt_at, \
            l.last_attempt_at, l.redelivery_of, l.lease_owner, l.lease_expires_at, l.fence, l.created_at, \
            e.project AS event_project, e.target_webhook AS event_target_webhook, \
            e.payload AS event_payload, e.created_at AS event_created_at, \
            w.url AS webhook_url, w.events AS webhook_events, w.projects AS webhook_projects, \
            w.secret AS webhook_secret, w.previous_secret AS webhook_previous_secret, \
            w.previous_valid_until AS webhook_previous_valid_until, w.enabled AS webhook_enabled, \
            w.disabled_reason AS webhook_disabled_reason, w.failing_since AS webhook_failing_since, \
            w.created_at AS webhook_created_at, w.updated_at AS webhook_updated_at \
            FROM (SELECT 1) AS one LEFT JOIN ( \
                leased l JOIN webhook_events e ON e.id = l.event_id JOIN webhooks w ON w.id = l.webhook_id \
            ) ON true \
            ORDER BY l.next_attempt_at, l.id"
        )
    };
}

/// Leases due deliveries (see `lease_ctes!`) and returns them with their events and
/// subscriptions.
const LEASE_DUE: &str =
    concat!("WITH ", lease_ctes!(), ", leased AS (SELECT * FROM relet) ", leased_rows!("0::int8", "0::int8", "false"));

/// Fans out up to `$6` events at `$1`, then leases as `LEASE_DUE` does, filling the room the
/// due deliveries leave (`$3` minus those) with the new deliveries, in outbox order, that are
/// not for an excluded subscription. `matched` is `Webhook::wants` in SQL: enabled, and either
/// aimed at this subscription (pings) or of a wanted type from a wanted project (an event
/// without a project only for subscriptions to every project, `projects` NULL).
///
/// `held` is what keeps a new delivery from going to a subscription being disabled. `matched`
/// reads `enabled` as of the statement's start, and the deliveries it creates are invisible to
/// a `disable` that commits before this statement does, so that `disable` could neither kill
/// nor mark them. New deliveries are therefore leased only for subscriptions this statement
/// holds `FOR SHARE`: a `disable` (which takes the row `FOR NO KEY UPDATE` first) then waits for
/// this statement and sees, and marks, what it leased; one that got there first, in flight or
/// committed, makes the row skipped (`SKIP LOCKED`) or fail the re-checked `w.enabled`, and that
/// subscription's new deliveries are created unleased, which no lease takes while it is
/// disabled. Never waiting here is also why this cannot deadlock with a `disable` waiting for a
/// delivery `relet` holds. The lock costs no extra write: inserting the deliveries locks the
/// same rows `FOR KEY SHARE` for their foreign key anyway.
const FAN_OUT_AND_LEASE: &str = concat!(
    "WITH taken AS ( \
        SELECT e.seq, e.id, e.event_type, e.project, e.target_webhook FROM webhook_events e \
        WHERE e.dispatched_at IS NULL ORDER BY e.seq LIMIT $6 \
        FOR UPDATE SKIP LOCKED \
    ), dispatched AS ( \
        UPDATE webhook_events e SET dispatched_at = $1 FROM taken t WHERE e.seq = t.seq \
    ), matched AS ( \
        SELECT t.id AS event_id, t.event_type, w.id AS webhook_id, w.id = ANY($2) AS excluded, \
            row_number() OVER (ORDER BY t.seq, w.id) AS n \
        FROM taken t JOIN webhooks w ON w.enabled AND CASE \
            WHEN t.target_webhook IS NOT NULL THEN w.id = t.target_webhook \
            ELSE w.events ? t.event_type \
                AND (w.projects IS NULL OR (t.project IS NOT NULL AND w.projects ? t.project)) \
        END \
    ), ",
    lease_ctes!(),
    ", held AS ( \
        SELECT w.id FROM webhooks w \
        WHERE w.enabled AND w.id IN (SELECT m.webhook_id FROM matched m WHERE NOT m.excluded) \
          AND $3 > (SELECT count(*) FROM relet) \
        FOR SHARE SKIP LOCKED \
    ), ready AS ( \
        SELECT m.*, m.webhook_id IN (SELECT h.id FROM held h) AS leasable FROM matched m \
    ), room AS ( \
        SELECT r.*, r.leasable \
            AND row_number() OVER (PARTITION BY r.leasable ORDER BY r.n) <= $3 - (SELECT count(*) FROM relet) \
            AS leased \
        FROM ready r \
    ), stamp AS ( \
        SELECT clock_timestamp() AS at \
    ), created AS ( \
        INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, attempts, \
            next_attempt_at, created_at, lease_owner, lease_expires_at, fence) \
        SELECT webhook_delivery_id(s.at, r.n), r.webhook_id, r.event_id, r.event_type, 'pending', 0, $1, $1, \
            CASE WHEN r.leased THEN $4 END, CASE WHEN r.leased THEN $5 END, \
            CASE WHEN r.leased THEN (SELECT value FROM fence) ELSE 0 END \
        FROM room r, stamp s \
        RETURNING * \
    ), leased AS ( \
        SELECT * FROM relet UNION ALL SELECT * FROM created WHERE lease_expires_at IS NOT NULL \
    ) ",
    leased_rows!(
        "(SELECT count(*) FROM taken)",
        "(SELECT count(*) FROM created)",
        "EXISTS (SELECT 1 FROM room r WHERE NOT r.leasable AND NOT r.excluded)"
    )
);

/// A leased delivery as the statements return it: the delivery's own columns, then its
/// event's and its subscription's under prefixed names.
#[derive(Debug, QueryableByName)]
struct LeasedRow {
    #[diesel(embed)]
    delivery: DeliveryRow,
    #[diesel(sql_type = Nullable<Text>)]
    event_project: Option<String>,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    event_target_webhook: Option<Uuid>,
    #[diesel(sql_type = Text)]
    event_payload: String,
    #[diesel(sql_type = Timestamptz)]
    event_created_at: Timestamp,
    #[diesel(sql_type = Text)]
    webhook_url: String,
    #[diesel(sql_type = Jsonb)]
    webhook_events: serde_json::Value,
    #[diesel(sql_type = Nullable<Jsonb>)]
    webhook_projects: Option<serde_json::Value>,
    #[diesel(sql_type = Text)]
    webhook_secret: String,
    #[diesel(sql_type = Nullable<Text>)]
    webhook_previous_secret: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    webhook_previous_valid_until: Option<Timestamp>,
    #[diesel(sql_type = Bool)]
    webhook_enabled: bool,
    #[diesel(sql_type = Nullable<Text>)]
    webhook_disabled_reason: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    webhook_failing_since: Option<Timestamp>,
    #[diesel(sql_type = Timestamptz)]
    webhook_created_at: Timestamp,
    #[diesel(sql_type = Timestamptz)]
    webhook_updated_at: Timestamp,
}

impl LeasedRow {
    /// The leased delivery; its subscription is decoded once per statement (`subscriptions`),
    /// however many of its deliveries the statement leased.
    fn into_domain(
        self,
        lease_until: Timestamp,
        subscriptions: &mut HashMap<Uuid, Webhook>,
    ) -> DomainResult<LeasedDelivery> {
        let webhook = match subscriptions.get(&self.delivery.webhook_id) {
            Some(webhook) => webhook.clone(),
            None => {
                let webhook = self.webhook_row().into_domain()?;
                subscriptions.insert(self.delivery.webhook_id, webhook.clone());
                webhook
            }
        };
        let event = EventRow {
            id: self.delivery.event_id,
            event_type: self.delivery.event_type.clone(),
            project: self.event_project,
            target_webhook: self.event_target_webhook,
            payload: self.event_payload,
            created_at: self.event_created_at,
        };
        let fence = self.delivery.fence;
        Ok(LeasedDelivery {
            delivery: self.delivery.into_domain()?,
            webhook,
            event: event.into_domain()?,
            fence,
            lease_until,
        })
    }

    /// The subscription's columns as its own row.
    fn webhook_row(&self) -> WebhookRow {
        WebhookRow {
            id: self.delivery.webhook_id,
            url: self.webhook_url.clone(),
            events: self.webhook_events.clone(),
            projects: self.webhook_projects.clone(),
            secret: self.webhook_secret.clone(),
            previous_secret: self.webhook_previous_secret.clone(),
            previous_valid_until: self.webhook_previous_valid_until,
            enabled: self.webhook_enabled,
            disabled_reason: self.webhook_disabled_reason.clone(),
            failing_since: self.webhook_failing_since,
            created_at: self.webhook_created_at,
            updated_at: self.webhook_updated_at,
        }
    }
}

/// One row of a statement here: the fan-out's counts, and a leased delivery unless the
/// statement leased none.
#[derive(Debug)]
struct DispatchRow {
    fanned_events: i64,
    fanned_deliveries: i64,
    left_unleased: bool,
    leased: Option<LeasedRow>,
}

// By hand: diesel reads no `Option` of a struct by name, and the row of a statement that leased
// nothing has NULL in every column of the delivery.
impl QueryableByName<Pg> for DispatchRow {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        let leased = if NamedRow::get::<Bool, bool>(row, "leased")? { Some(LeasedRow::build(row)?) } else { None };
        Ok(Self {
            fanned_events: NamedRow::get::<BigInt, i64>(row, "fanned_events")?,
            fanned_deliveries: NamedRow::get::<BigInt, i64>(row, "fanned_deliveries")?,
            left_unleased: NamedRow::get::<Bool, bool>(row, "left_unleased")?,
            leased,
        })
    }
}

/// The rows of one statement as the port's answer.
fn answer(rows: Vec<DispatchRow>, lease_until: Timestamp) -> DomainResult<FannedOutAndLeased> {
    let (events, deliveries, left_unleased) =
        <[_]>::first(&rows).map_or((0, 0, false), |r| (r.fanned_events, r.fanned_deliveries, r.left_unleased));
    let mut subscriptions = HashMap::new();
    let leased = rows
        .into_iter()
        .filter_map(|r| r.leased)
        .map(|r| r.into_domain(lease_until, &mut subscriptions))
        .collect::<DomainResult<Vec<_>>>()?;
    Ok(FannedOutAndLeased {
        fan_out: FanOut { events: codec::int("events", events)?, deliveries: codec::int("deliveries", deliveries)? },
        leased,
        left_unleased,
    })
}

/// The binds `$1`…`$5` of every statement here.
struct LeaseBinds<'a> {
    now: Timestamp,
    exclude: Vec<Uuid>,
    limit: i64,
    owner: &'a str,
    until: Timestamp,
}

impl<'a> LeaseBinds<'a> {
    fn of(request: &'a LeaseRequest, until: Timestamp) -> Self {
        Self {
            now: request.now,
            exclude: request.exclude.iter().map(WebhookId::as_uuid).collect(),
            limit: i64::from(request.limit),
            owner: &request.owner,
            until,
        }
    }

    /// Binds of a fan-out that leases nothing.
    fn none(now: Timestamp) -> Self {
        Self { now, exclude: Vec::new(), limit: 0, owner: "", until: now }
    }
}

/// Runs `sql` (one of the statements here) with `binds` and, for `FAN_OUT_AND_LEASE`, the
/// fan-out limit.
async fn run(
    conn: &mut AsyncPgConnection,
    sql: &'static str,
    binds: &LeaseBinds<'_>,
    fan_out_limit: Option<u32>,
) -> StoreResult<Vec<DispatchRow>> {
    let query = diesel::sql_query(sql)
        .bind::<Timestamptz, _>(binds.now)
        .bind::<Array<SqlUuid>, _>(&binds.exclude)
        .bind::<BigInt, _>(binds.limit)
        .bind::<Text, _>(binds.owner)
        .bind::<Timestamptz, _>(binds.until);
    Ok(match fan_out_limit {
        Some(limit) => query.bind::<BigInt, _>(i64::from(limit)).cached().load(conn).await?,
        None => query.cached().load(conn).await?,
    })
}

/// Fans out up to `limit` events at `now`, leasing nothing.
pub(super) async fn fan_out(conn: &mut AsyncPgConnection, now: Timestamp, limit: u32) -> StoreResult<FanOut> {
    let rows = run(conn, FAN_OUT_AND_LEASE, &LeaseBinds::none(now), Some(limit)).await?;
    Ok(answer(rows, now)?.fan_out)
}

/// Leases what `request` asks for, until `until`.
pub(super) async fn lease(
    conn: &mut AsyncPgConnection,
    request: &LeaseRequest,
    until: Timestamp,
) -> StoreResult<Vec<LeasedDelivery>> {
    let rows = run(conn, LEASE_DUE, &LeaseBinds::of(request, until), None).await?;
    Ok(answer(rows, until)?.leased)
}

/// Fans out up to `fan_out_limit` events and leases what `request` asks for, until `until`.
pub(super) async fn fan_out_and_lease(
    conn: &mut AsyncPgConnection,
    fan_out_limit: u32,
    request: &LeaseRequest,
    until: Timestamp,
) -> StoreResult<FannedOutAndLeased> {
    let rows = run(conn, FAN_OUT_AND_LEASE, &LeaseBinds::of(request, until), Some(fan_out_limit)).await?;
    Ok(answer(rows, until)?)
}

// Two attributes rather than `all(test, …)`: clippy only sees a module as test code (where
// `expect` is allowed) under a plain `cfg(test)`.
#[cfg(test)]
#[cfg(feature = "testing")]
mod tests {
    use std::collections::BTreeSet;

    use domain::api_key::ProjectAccess;
    use domain::pagination::{Limit, PageRequest};
    use domain::testing::webhooks::{sample_event, sample_webhook};
    use domain::testing::{now_micros, project_name};
    use domain::webhook::{
        DeliveryFilter, DeliveryQueue, EventSet, EventType, OutboxEvent, Webhook, WebhookId, WebhookRepository,
    };

    use crate::testing::TestDatabase;
    use crate::PgStore;

    async fn deliveries(store: &PgStore, webhook: WebhookId) -> Vec<domain::webhook::Delivery> {
        let filter = DeliveryFilter { webhook, status: None };
        let page = PageRequest { after: None, limit: Limit::new(200).expect("limit") };
        store.list_deliveries(&filter, page).await.expect("list").items
    }

    fn subscriptions() -> Vec<Webhook> {
        let only = |names: &[&str]| ProjectAccess::Only(names.iter().map(|n| project_name(n)).collect());
        let types = [
            EventSet::all(),
            EventSet::new([EventType::CommandSucceeded]).expect("events"),
            EventSet::new([EventType::Ping, EventType::PodReady]).expect("events"),
        ];
        let mut hooks = Vec::new();
        for events in types {
            for projects in [ProjectAccess::All, only(&["web"]), only(&["web", "api"])] {
                for enabled in [true, false] {
                    let mut w = sample_webhook(events.clone(), projects.clone());
                    w.enabled = enabled;
                    w.disabled_reason = (!enabled).then(|| "off".to_owned());
                    hooks.push(w);
                }
            }
        }
        hooks
    }

    /// Every event type from every kind of project, and pings aimed at each subscription and
    /// at none that exists.
    fn events(hooks: &[Webhook]) -> Vec<OutboxEvent> {
        let mut events = Vec::new();
        for t in EventType::ALL {
            for project in [None, Some("web"), Some("api"), Some("other")] {
                events.push(sample_event(t, project, None));
            }
        }
        events.extend(hooks.iter().map(|h| sample_event(EventType::Ping, None, Some(h.id))));
        events.push(sample_event(EventType::Ping, None, Some(WebhookId::generate())));
        events
    }

    #[tokio::test]
    async fn sql_matching_is_webhook_wants() {
        let db = TestDatabase::create().await;
        let store = db.store().await;
        let hooks = subscriptions();
        for h in &hooks {
            WebhookRepository::create(&store, h).await.expect("create");
        }
        let events = events(&hooks);
        for e in &events {
            store.append_event(e).await.expect("append");
        }
        let done = store.fan_out(now_micros(), 10_000).await.expect("fan out");
        let mut expected = BTreeSet::new();
        for e in &events {
            expected.extend(hooks.iter().filter(|h| h.wants(e)).map(|h| (e.id, h.id)));
        }
        let mut got = BTreeSet::new();
        for h in &hooks {
            got.extend(deliveries(&store, h.id).await.into_iter().map(|d| (d.event_id, h.id)));
        }
        assert_eq!(done.events as usize, events.len());
        assert_eq!(done.deliveries as usize, expected.len());
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn delivery_ids_are_uuid_v7_in_outbox_order() {
        let db = TestDatabase::create().await;
        let store = db.store().await;
        let hooks =
            [sample_webhook(EventSet::all(), ProjectAccess::All), sample_webhook(EventSet::all(), ProjectAccess::All)];
        for h in &hooks {
            WebhookRepository::create(&store, h).await.expect("create");
        }
        let events: Vec<_> = (0..50).map(|_| sample_event(EventType::PodReady, Some("web"), None)).collect();
        for e in &events {
            store.append_event(e).await.expect("append");
        }
        let before = chrono::Utc::now().timestamp_millis();
        store.fan_out(now_micros(), 20).await.expect("fan out");
        store.fan_out(now_micros(), 100).await.expect("fan out");
        let after = chrono::Utc::now().timestamp_millis();
        for h in &hooks {
            let ds = deliveries(&store, h.id).await;
            let order: Vec<_> = ds.iter().map(|d| d.event_id).collect();
            assert_eq!(order, events.iter().map(|e| e.id).collect::<Vec<_>>(), "ids sort in outbox order");
            for d in &ds {
                let id = d.id.as_uuid();
                assert_eq!(id.get_version_num(), 7, "{id}");
                assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
                let (secs, nanos) = id.get_timestamp().expect("v7 has a time").to_unix();
                let ms = i64::try_from(secs).expect("secs") * 1000 + i64::from(nanos / 1_000_000);
                assert!((before..=after).contains(&ms), "{ms} within {before}..={after}");
            }
        }
    }
}
