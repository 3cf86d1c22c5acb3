//! `CommandRepository` on PostgreSQL: the `commands` table as clients see it (enqueue, reads,
//! cancel, queue positions), and the row mapping the queue shares.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Bytea, Integer, Jsonb, Nullable, SmallInt, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use domain::command::{Command, CommandStatus, Completion, Idempotency, NewCommand, Priority};
use domain::ids::CommandId;
use domain::output::{CommandEvent, CommandOutput};
use domain::pagination::{Page, PageRequest};
use domain::ports::{cancelled_before_start, CommandFilter, CommandRepository, Enqueued, QueueStats};
use domain::project::ProjectName;
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec;
use crate::connection::db_error;
use crate::events;
use crate::prepared::CachedExt;
use crate::schema::commands;
use crate::{webhooks, PgStore, StoreError, StoreResult};

pub(crate) const QUEUED: &str = CommandStatus::Queued.as_str();
pub(crate) const RUNNING: &str = CommandStatus::Running.as_str();

/// Stores a queued command (`$1`…`$15`) and its first event, numbered 1, in one statement.
const ENQUEUE: &str = "\
WITH queued AS ( \
    INSERT INTO commands (id, project_id, project_name, spec, env, cwd, stdin, timeout_seconds, priority, \
        status, created_by, queued_at, event_seq, idempotency_key, idempotency_fingerprint, traceparent, tracestate) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', $10, $11, 1, $12, $13, $14, $15) \
    RETURNING * \
), first_event AS ( \
    INSERT INTO command_events (command_id, seq, kind, stream, data, at) \
    SELECT id, 1, 'status', NULL, convert_to('queued', 'UTF8'), queued_at FROM queued \
) \
SELECT * FROM queued";

/// Retention: deletes at most `$2` commands that finished before `$1`, oldest end first, with
/// their events (ON DELETE CASCADE; output lives in the row). Queued and running commands have
/// no `finished_at`, and the status test keeps it that way even for a bad row.
const PURGE_FINISHED: &str = "\
DELETE FROM commands WHERE id IN ( \
    SELECT id FROM commands \
    WHERE finished_at < $1 AND status NOT IN ('queued', 'running') \
    ORDER BY finished_at LIMIT $2)";

/// Serializes enqueues of one project (`$1`: its id) until the transaction ends, so the count
/// of its queued commands cannot go stale before the insert. Only enqueues take it: claims and
/// cancels only shrink the queue, so they cannot push it past the cap. The two-key form keeps
/// these locks apart from the single-key advisory locks used elsewhere.
const ENQUEUE_LOCK: &str = "SELECT pg_advisory_xact_lock(1919251317, hashtext($1::text))";

/// The unique index that keeps one live use of an idempotency key per client.
const IDEMPOTENCY_INDEX: &str = "commands_idempotency";

sql_rows::command_rows!(diesel::pg::Pg, crate::codec::PgColumns);

impl CommandRow {
    /// The command's id.
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }
}

/// A new row of `commands`; the store assigns `seq`.
#[derive(Debug)]
struct NewCommandRow {
    id: Uuid,
    project_id: Uuid,
    project_name: String,
    spec: serde_json::Value,
    env: serde_json::Value,
    cwd: Option<String>,
    stdin: Option<Vec<u8>>,
    timeout_seconds: i32,
    priority: i16,
    created_by: Option<Uuid>,
    queued_at: Timestamp,
    idempotency_key: Option<String>,
    idempotency_fingerprint: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl NewCommandRow {
    fn from_domain(c: &NewCommand) -> DomainResult<Self> {
        Ok(Self {
            id: c.id.as_uuid(),
            project_id: c.project_id.as_uuid(),
            project_name: c.project.as_str().to_owned(),
            spec: codec::to_json(&c.spec)?,
            env: codec::to_json(&c.env)?,
            cwd: c.cwd.as_ref().map(|d| d.as_str().to_owned()),
            stdin: c.stdin.as_ref().map(|s| s.as_str().as_bytes().to_vec()),
            timeout_seconds: codec::column_int("timeout_seconds", c.timeout.get())?,
            priority: c.priority.rank(),
            created_by: c.created_by.map(|k| k.as_uuid()),
            queued_at: c.queued_at,
            idempotency_key: c.idempotency.as_ref().map(|i| i.key.clone()),
            idempotency_fingerprint: c.idempotency.as_ref().map(|i| i.fingerprint.clone()),
            traceparent: c.trace.as_ref().map(|t| t.traceparent().to_owned()),
            tracestate: c.trace.as_ref().and_then(|t| t.tracestate()).map(str::to_owned),
        })
    }
}

pub(crate) fn not_found() -> DomainError {
    DomainError::NotFound("command".into())
}

/// The command with `id`, or `NotFound`.
pub(crate) async fn load(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<CommandRow> {
    Ok(commands::table.find(id).select(CommandRow::as_select()).first(conn).await.optional()?.ok_or_else(not_found)?)
}

/// Whether a command with `id` exists.
pub(crate) async fn exists(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<bool> {
    Ok(diesel::select(diesel::dsl::exists(commands::table.find(id))).get_result(conn).await?)
}

/// Whether a command with `id` exists; `NotFound` otherwise (what a stale write to an unknown
/// command answers).
pub(crate) async fn must_exist(conn: &mut AsyncPgConnection, id: Uuid) -> StoreResult<()> {
    if exists(conn, id).await? {
        Ok(())
    } else {
        Err(not_found().into())
    }
}

/// Writes a command's terminal state, drops its lease, and appends `Status(final)`, `Exit` and
/// the webhook event of the final status. Callers hold the command's row lock and have checked that the transition is legal.
pub(crate) async fn end(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    c: &Completion,
    at: Timestamp,
) -> StoreResult<CommandRow> {
    let (row, last): (CommandRow, i64) = diesel::update(commands::table.find(id))
        .set((
            commands::status.eq(c.status.as_str()),
            commands::exit_code.eq(c.exit_code),
            commands::termination_reason.eq(c.reason.as_str()),
            commands::error.eq(c.error.as_deref()),
            commands::finished_at.eq(at),
            commands::lease_owner.eq(None::<String>),
            commands::lease_expires_at.eq(None::<Timestamp>),
            commands::event_seq.eq(commands::event_seq + events::ENDING_EVENTS),
        ))
        .returning((CommandRow::as_returning(), commands::event_seq))
        .get_result(conn)
        .await?;
    events::insert(conn, id, last, &events::ending(c), at).await?;
    webhooks::record_command_event(conn, &row.clone().into_domain()?, at).await?;
    Ok(row)
}

/// The earlier command of `row`'s client with the same idempotency key, if it still counts.
/// One older than `Idempotency::RETENTION` stops counting: its key is cleared for the new one.
async fn earlier_use(conn: &mut AsyncPgConnection, row: &NewCommandRow) -> StoreResult<Option<(Uuid, bool)>> {
    let (Some(key), Some(fingerprint)) = (&row.idempotency_key, &row.idempotency_fingerprint) else {
        return Ok(None);
    };
    let earlier: Option<(Uuid, Timestamp, Option<String>)> = commands::table
        .filter(commands::created_by.is_not_distinct_from(row.created_by))
        .filter(commands::idempotency_key.eq(key))
        .select((commands::id, commands::queued_at, commands::idempotency_fingerprint))
        .first(conn)
        .await
        .optional()?;
    let Some((id, queued_at, stored)) = earlier else { return Ok(None) };
    let cutoff =
        row.queued_at.checked_sub_signed(Idempotency::RETENTION).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    if queued_at > cutoff {
        return Ok(Some((id, stored.as_ref() == Some(fingerprint))));
    }
    diesel::update(commands::table.find(id))
        .set((commands::idempotency_key.eq(None::<String>), commands::idempotency_fingerprint.eq(None::<String>)))
        .execute(conn)
        .await?;
    Ok(None)
}

/// Stores `row` unless its idempotency key was used already (then replays or conflicts).
async fn insert_new(
    conn: &mut AsyncPgConnection,
    row: &NewCommandRow,
    max_queued: u32,
) -> StoreResult<(CommandRow, bool)> {
    if row.idempotency_key.is_none() {
        let stored =
            conn.transaction::<_, StoreError, _>(async |conn| insert_queued(conn, row, max_queued).await).await?;
        return Ok((stored, false));
    }
    conn.transaction::<_, StoreError, _>(async |conn| {
        match earlier_use(conn, row).await? {
            Some((id, true)) => return Ok((load(conn, id).await?, true)),
            Some((_, false)) => {
                return Err(DomainError::Conflict("Idempotency-Key was used with a different request".into()).into())
            }
            None => {}
        }
        Ok((insert_queued(conn, row, max_queued).await?, false))
    })
    .await
}

/// Stores a new command with its first event and its `command.queued` webhook event; callers
/// run it in a transaction, so a replayed enqueue (which never gets here) writes no event, and
/// a project whose queue holds `max_queued` commands already gets `QueueFull` and nothing stored.
async fn insert_queued(conn: &mut AsyncPgConnection, row: &NewCommandRow, max_queued: u32) -> StoreResult<CommandRow> {
    diesel::sql_query(ENQUEUE_LOCK).bind::<SqlUuid, _>(row.project_id).cached().execute(conn).await?;
    // A statement after the lock: under READ COMMITTED it sees every enqueue committed before.
    let queued: i64 = commands::table
        .filter(commands::project_id.eq(row.project_id))
        .filter(commands::status.eq(CommandStatus::Queued.as_str()))
        .count()
        .get_result(conn)
        .await?;
    if queued >= i64::from(max_queued) {
        return Err(DomainError::QueueFull { limit: max_queued }.into());
    }
    let stored = insert_with_event(conn, row).await?;
    webhooks::record_command_event(conn, &stored.clone().into_domain()?, row.queued_at).await?;
    Ok(stored)
}

/// Inserts the command and its first event, `Status(Queued)`, in one statement.
async fn insert_with_event(conn: &mut AsyncPgConnection, row: &NewCommandRow) -> StoreResult<CommandRow> {
    diesel::sql_query(ENQUEUE)
        .bind::<SqlUuid, _>(row.id)
        .bind::<SqlUuid, _>(row.project_id)
        .bind::<Text, _>(&row.project_name)
        .bind::<Jsonb, _>(&row.spec)
        .bind::<Jsonb, _>(&row.env)
        .bind::<Nullable<Text>, _>(row.cwd.as_deref())
        .bind::<Nullable<Bytea>, _>(row.stdin.as_deref())
        .bind::<Integer, _>(row.timeout_seconds)
        .bind::<SmallInt, _>(row.priority)
        .bind::<Nullable<SqlUuid>, _>(row.created_by)
        .bind::<Timestamptz, _>(row.queued_at)
        .bind::<Nullable<Text>, _>(row.idempotency_key.as_deref())
        .bind::<Nullable<Text>, _>(row.idempotency_fingerprint.as_deref())
        .bind::<Nullable<Text>, _>(row.traceparent.as_deref())
        .bind::<Nullable<Text>, _>(row.tracestate.as_deref())
        .cached()
        .get_result(conn)
        .await
        .map_err(|e| match e {
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
                StoreError::Domain(DomainError::NotFound("project".into()))
            }
            other => other.into(),
        })
}

/// Whether `e` is a concurrent enqueue taking the same idempotency key first.
fn lost_idempotency_race(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
        if info.constraint_name() == Some(IDEMPOTENCY_INDEX))
}

#[async_trait]
impl CommandRepository for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %command.id, project = %command.project))]
    async fn enqueue(&self, command: NewCommand) -> DomainResult<Enqueued> {
        let row = NewCommandRow::from_domain(&command)?;
        let mut conn = self.conn().await?;
        let mut stored = insert_new(&mut conn, &row, command.max_queued).await;
        if stored.as_ref().is_err_and(lost_idempotency_race) {
            // The other request committed its command; this one now finds and replays it.
            stored = insert_new(&mut conn, &row, command.max_queued).await;
        }
        let (row, replayed) = stored.map_err(|e| e.into_domain("enqueue command"))?;
        Ok(Enqueued { command: row.into_domain()?, replayed })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn get(&self, id: CommandId) -> DomainResult<Command> {
        let mut conn = self.conn().await?;
        load(&mut conn, id.as_uuid()).await.map_err(|e| e.into_domain("get command"))?.into_domain()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, filter: &CommandFilter, page: PageRequest) -> DomainResult<Page<Command>> {
        let mut query = commands::table.select(CommandRow::as_select()).order(commands::id.asc()).into_boxed();
        if let Some(project) = &filter.project {
            query = query.filter(commands::project_name.eq(project.as_str().to_owned()));
        }
        if let Some(status) = filter.status {
            query = query.filter(commands::status.eq(status.as_str()));
        }
        if let Some(after) = page.after.map(codec::cursor_id) {
            query = query.filter(commands::id.gt(after));
        }
        let mut conn = self.conn().await?;
        let rows = query
            .limit(i64::from(page.limit.get()) + 1)
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "list commands"))?;
        let items = rows.into_iter().map(CommandRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |c| c.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn request_cancel(&self, id: CommandId, at: Timestamp) -> DomainResult<Command> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let row = conn
            .transaction::<_, StoreError, _>(async |conn| {
                let status: String = commands::table
                    .find(id)
                    .select(commands::status)
                    .for_update()
                    .first(conn)
                    .await
                    .optional()?
                    .ok_or_else(not_found)?;
                match status.as_str() {
                    QUEUED => end(conn, id, &cancelled_before_start(), at).await,
                    // The worker learns of it at its next lease renewal and kills the process.
                    RUNNING => Ok(diesel::update(commands::table.find(id))
                        .set(commands::cancel_requested.eq(true))
                        .returning(CommandRow::as_returning())
                        .get_result(conn)
                        .await?),
                    _ => Err(DomainError::Conflict("the command has already ended".into()).into()),
                }
            })
            .await
            .map_err(|e| e.into_domain("cancel command"))?;
        row.into_domain()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn queue_position(&self, id: CommandId) -> DomainResult<Option<u64>> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let ahead: StoreResult<Option<i64>> = async {
            let (status, priority, seq): (String, i16, i64) = commands::table
                .find(id)
                .select((commands::status, commands::priority, commands::seq))
                .first(&mut conn)
                .await
                .optional()?
                .ok_or_else(not_found)?;
            if status != QUEUED {
                return Ok(None);
            }
            let ahead: i64 = commands::table
                .filter(commands::status.eq(QUEUED))
                .filter(commands::priority.gt(priority).or(commands::priority.eq(priority).and(commands::seq.lt(seq))))
                .count()
                .get_result(&mut conn)
                .await?;
            Ok(Some(ahead))
        }
        .await;
        let ahead = ahead.map_err(|e| e.into_domain("queue position"))?;
        ahead.map(|n| codec::int::<i64, u64>("queue position", n).map(|n| n + 1)).transpose()
    }

    async fn stats(&self, projects: Option<&[ProjectName]>) -> DomainResult<QueueStats> {
        let only: Option<Vec<String>> = projects.map(|p| p.iter().map(|n| n.as_str().to_owned()).collect());
        let mut conn = self.conn().await?;
        let mut depth = commands::table
            .filter(commands::status.eq(QUEUED))
            .group_by(commands::priority)
            .select((commands::priority, diesel::dsl::count_star()))
            .into_boxed();
        let mut running = commands::table.filter(commands::status.eq(RUNNING)).count().into_boxed();
        if let Some(only) = &only {
            depth = depth.filter(commands::project_name.eq_any(only.clone()));
            running = running.filter(commands::project_name.eq_any(only.clone()));
        }
        let depth: Vec<(i16, i64)> = depth.load(&mut conn).await.map_err(|e| db_error(e, "queue stats"))?;
        let running: i64 = running.get_result(&mut conn).await.map_err(|e| db_error(e, "queue stats"))?;
        let depth = Priority::ALL
            .iter()
            .map(|p| {
                let n = depth.iter().find(|(rank, _)| *rank == p.rank()).map_or(0, |(_, n)| *n);
                codec::int("queue depth", n).map(|n| (*p, n))
            })
            .collect::<DomainResult<_>>()?;
        Ok(QueueStats { depth, running: codec::int("running count", running)? })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn events_after(&self, id: CommandId, after: i64, limit: u32) -> DomainResult<Vec<CommandEvent>> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let rows: StoreResult<_> = async {
            let rows = events::after(&mut conn, id, after, limit).await?;
            // Every command has an event, so only an empty answer needs telling apart.
            if rows.is_empty() && !exists(&mut conn, id).await? {
                return Err(not_found().into());
            }
            Ok(rows)
        }
        .await;
        rows.map_err(|e| e.into_domain("command events"))?.into_iter().map(events::EventRow::into_domain).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(commands = ids.len()))]
    async fn last_event_seqs(&self, ids: &[CommandId]) -> DomainResult<Vec<(CommandId, i64)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.iter().map(CommandId::as_uuid).collect();
        let mut conn = self.conn().await?;
        // `event_seq` is the number of the command's last event (see `events`); one array
        // parameter, so the statement is the same whatever the number of ids.
        let rows: Vec<(Uuid, i64)> = commands::table
            .filter(commands::id.eq_any(ids))
            .select((commands::id, commands::event_seq))
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "last event seqs"))?;
        Ok(rows.into_iter().map(|(id, seq)| (CommandId::from_uuid(id), seq)).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn output(&self, id: CommandId) -> DomainResult<CommandOutput> {
        let mut conn = self.conn().await?;
        let (stdout, stderr, stdout_truncated, stderr_truncated) = commands::table
            .find(id.as_uuid())
            .select((commands::stdout, commands::stderr, commands::stdout_truncated, commands::stderr_truncated))
            .first::<(Vec<u8>, Vec<u8>, bool, bool)>(&mut conn)
            .await
            .optional()
            .map_err(|e| db_error(e, "command output"))?
            .ok_or_else(not_found)?;
        Ok(CommandOutput {
            stdout: codec::text("commands.stdout", stdout)?,
            stderr: codec::text("commands.stderr", stderr)?,
            stdout_truncated,
            stderr_truncated,
        })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn purge_finished(&self, before: Timestamp, limit: u32) -> DomainResult<u64> {
        let mut conn = self.conn().await?;
        let purged = diesel::sql_query(PURGE_FINISHED)
            .bind::<Timestamptz, _>(before)
            .bind::<diesel::sql_types::BigInt, _>(i64::from(limit))
            .cached()
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "purge finished commands"))?;
        codec::int("purged commands", purged)
    }
}
