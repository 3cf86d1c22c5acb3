//! `CommandRepository` on SQLite: the `commands` table as clients see it (enqueue, reads,
//! cancel, queue positions), and the row mapping the queue shares.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::command::{Command, CommandStatus, Completion, Idempotency, NewCommand, Priority};
use domain::ids::CommandId;
use domain::output::{CommandEvent, CommandOutput, EventKind};
use domain::pagination::{Page, PageRequest};
use domain::ports::{cancelled_before_start, CommandFilter, CommandRepository, Enqueued, QueueStats};
use domain::project::ProjectName;
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec::{self, micros};
use crate::events;
use crate::schema::{commands, projects};
use crate::{webhooks, SqliteStore, StoreResult};

const QUEUED: &str = CommandStatus::Queued.as_str();
const RUNNING: &str = CommandStatus::Running.as_str();

sql_rows::command_rows!(diesel::sqlite::Sqlite, crate::codec::SqliteColumns);

/// A new row of `commands`; the store assigns `seq`.
#[derive(Debug, Insertable)]
#[diesel(table_name = commands, check_for_backend(diesel::sqlite::Sqlite))]
struct NewCommandRow {
    id: String,
    project_id: String,
    project_name: String,
    spec: String,
    env: String,
    cwd: Option<String>,
    stdin: Option<String>,
    timeout_seconds: i32,
    priority: i16,
    status: String,
    created_by: Option<String>,
    queued_at: i64,
    idempotency_key: Option<String>,
    idempotency_fingerprint: Option<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl NewCommandRow {
    fn from_domain(c: &NewCommand) -> DomainResult<Self> {
        Ok(Self {
            id: c.id.to_string(),
            project_id: c.project_id.to_string(),
            project_name: c.project.as_str().to_owned(),
            spec: codec::to_json(&c.spec)?,
            env: codec::to_json(&c.env)?,
            cwd: c.cwd.as_ref().map(|d| d.as_str().to_owned()),
            stdin: c.stdin.as_ref().map(|s| s.as_str().to_owned()),
            timeout_seconds: codec::column_int("timeout_seconds", c.timeout.get())?,
            priority: c.priority.rank(),
            status: QUEUED.to_owned(),
            created_by: c.created_by.map(|k| k.to_string()),
            queued_at: micros(c.queued_at),
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
pub(crate) fn load(conn: &mut SqliteConnection, id: &str) -> StoreResult<CommandRow> {
    Ok(commands::table
        .filter(commands::id.eq(id))
        .select(CommandRow::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(not_found)?)
}

/// Whether a command with `id` exists.
/// Commands per `last_event_seqs` statement: far below SQLite's bound-parameter cap.
const LAST_SEQS_CHUNK: usize = 500;

pub(crate) fn exists(conn: &mut SqliteConnection, id: &str) -> StoreResult<bool> {
    Ok(commands::table.filter(commands::id.eq(id)).count().get_result::<i64>(conn)? > 0)
}

/// Writes a command's terminal state, drops its lease, and appends `Status(final)`, `Exit` and
/// the webhook event of the final status. Callers have checked that the transition is legal,
/// inside the same transaction.
pub(crate) fn end(conn: &mut SqliteConnection, id: &str, c: &Completion, at: Timestamp) -> StoreResult<CommandRow> {
    let row = diesel::update(commands::table.filter(commands::id.eq(id)))
        .set((
            commands::status.eq(c.status.as_str()),
            commands::exit_code.eq(c.exit_code),
            commands::termination_reason.eq(c.reason.as_str()),
            commands::error.eq(c.error.as_deref()),
            commands::finished_at.eq(micros(at)),
            commands::lease_owner.eq(None::<String>),
            commands::lease_expires_at.eq(None::<i64>),
        ))
        .returning(CommandRow::as_returning())
        .get_result(conn)?;
    events::append(conn, id, &events::ending(c), at)?;
    webhooks::record_command_event(conn, &row.clone().into_domain()?, at)?;
    Ok(row)
}

/// The earlier command of `row`'s client with the same idempotency key, if it still counts.
/// One older than `Idempotency::RETENTION` stops counting: its key is cleared for the new one.
fn earlier_use(conn: &mut SqliteConnection, row: &NewCommandRow) -> StoreResult<Option<(String, bool)>> {
    let (Some(key), Some(fingerprint)) = (&row.idempotency_key, &row.idempotency_fingerprint) else {
        return Ok(None);
    };
    let earlier: Option<(String, i64, Option<String>)> = commands::table
        .filter(commands::created_by.is(&row.created_by))
        .filter(commands::idempotency_key.eq(key))
        .select((commands::id, commands::queued_at, commands::idempotency_fingerprint))
        .first(conn)
        .optional()?;
    let Some((id, queued_at, stored)) = earlier else { return Ok(None) };
    let retention = Idempotency::RETENTION.num_microseconds().unwrap_or(i64::MAX);
    if queued_at > row.queued_at.saturating_sub(retention) {
        return Ok(Some((id, stored.as_ref() == Some(fingerprint))));
    }
    diesel::update(commands::table.filter(commands::id.eq(&id)))
        .set((commands::idempotency_key.eq(None::<String>), commands::idempotency_fingerprint.eq(None::<String>)))
        .execute(conn)?;
    Ok(None)
}

#[async_trait]
impl CommandRepository for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %command.id, project = %command.project))]
    async fn enqueue(&self, command: NewCommand) -> DomainResult<Enqueued> {
        let row = NewCommandRow::from_domain(&command)?;
        let at = command.queued_at;
        let max_queued = command.max_queued;
        let enqueued = self
            .write("enqueue command", move |conn| {
                let project = projects::table.find(&row.project_id).count().get_result::<i64>(conn)?;
                if project == 0 {
                    return Err(DomainError::NotFound("project".into()).into());
                }
                match earlier_use(conn, &row)? {
                    Some((id, true)) => return Ok((load(conn, &id)?, true)),
                    Some((_, false)) => {
                        return Err(
                            DomainError::Conflict("Idempotency-Key was used with a different request".into()).into()
                        )
                    }
                    None => {}
                }
                // The immediate transaction holds the write lock, so no other enqueue can slip
                // in between this count and the insert.
                let queued: i64 = commands::table
                    .filter(commands::project_id.eq(&row.project_id))
                    .filter(commands::status.eq(CommandStatus::Queued.as_str()))
                    .count()
                    .get_result(conn)?;
                if queued >= i64::from(max_queued) {
                    return Err(DomainError::QueueFull { limit: max_queued }.into());
                }
                let stored = diesel::insert_into(commands::table)
                    .values(&row)
                    .returning(CommandRow::as_returning())
                    .get_result(conn)?;
                events::append(conn, &row.id, &[EventKind::Status(CommandStatus::Queued)], at)?;
                webhooks::record_command_event(conn, &stored.clone().into_domain()?, at)?;
                Ok((stored, false))
            })
            .await?;
        let (row, replayed) = enqueued;
        Ok(Enqueued { command: row.into_domain()?, replayed })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn get(&self, id: CommandId) -> DomainResult<Command> {
        let id = id.to_string();
        self.read("get command", move |conn| load(conn, &id)).await?.into_domain()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn list(&self, filter: &CommandFilter, page: PageRequest) -> DomainResult<Page<Command>> {
        let project = filter.project.as_ref().map(|p| p.as_str().to_owned());
        let status = filter.status.map(CommandStatus::as_str);
        let after = page.after.map(codec::cursor_id);
        let fetch = i64::from(page.limit.get()) + 1;
        let rows = self
            .read("list commands", move |conn| {
                let mut query = commands::table.select(CommandRow::as_select()).order(commands::id.asc()).into_boxed();
                if let Some(project) = project {
                    query = query.filter(commands::project_name.eq(project));
                }
                if let Some(status) = status {
                    query = query.filter(commands::status.eq(status));
                }
                if let Some(after) = after {
                    query = query.filter(commands::id.gt(after));
                }
                Ok(query.limit(fetch).load(conn)?)
            })
            .await?;
        let items = rows.into_iter().map(CommandRow::into_domain).collect::<DomainResult<Vec<_>>>()?;
        Ok(Page::from_overfetch(items, page.limit, |c| c.id.as_uuid().as_u128()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn request_cancel(&self, id: CommandId, at: Timestamp) -> DomainResult<Command> {
        let id = id.to_string();
        let row = self
            .write("cancel command", move |conn| {
                let current = load(conn, &id)?;
                match current.status.as_str() {
                    QUEUED => end(conn, &id, &cancelled_before_start(), at),
                    // The worker learns of it at its next lease renewal and kills the process.
                    RUNNING => Ok(diesel::update(commands::table.filter(commands::id.eq(&id)))
                        .set(commands::cancel_requested.eq(true))
                        .returning(CommandRow::as_returning())
                        .get_result(conn)?),
                    _ => Err(DomainError::Conflict("the command has already ended".into()).into()),
                }
            })
            .await?;
        row.into_domain()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn queue_position(&self, id: CommandId) -> DomainResult<Option<u64>> {
        let id = id.to_string();
        let ahead = self
            .read("queue position", move |conn| {
                let (status, priority, seq): (String, i16, i64) = commands::table
                    .filter(commands::id.eq(&id))
                    .select((commands::status, commands::priority, commands::seq))
                    .first(conn)
                    .optional()?
                    .ok_or_else(not_found)?;
                if status != QUEUED {
                    return Ok(None);
                }
                let ahead: i64 = commands::table
                    .filter(commands::status.eq(QUEUED))
                    .filter(
                        commands::priority.gt(priority).or(commands::priority.eq(priority).and(commands::seq.lt(seq))),
                    )
                    .count()
                    .get_result(conn)?;
                Ok(Some(ahead))
            })
            .await?;
        ahead.map(|n| codec::int::<i64, u64>("queue position", n).map(|n| n + 1)).transpose()
    }

    async fn stats(&self, projects: Option<&[ProjectName]>) -> DomainResult<QueueStats> {
        let only: Option<Vec<String>> = projects.map(|p| p.iter().map(|n| n.as_str().to_owned()).collect());
        let (depth, running) = self
            .read("queue stats", move |conn| {
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
                let depth: Vec<(i16, i64)> = depth.load(conn)?;
                let running: i64 = running.get_result(conn)?;
                Ok((depth, running))
            })
            .await?;
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
        let id = id.to_string();
        let rows = self
            .read("command events", move |conn| {
                if !exists(conn, &id)? {
                    return Err(not_found().into());
                }
                events::after(conn, &id, after, limit)
            })
            .await?;
        rows.into_iter().map(events::EventRow::into_domain).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(commands = ids.len()))]
    async fn last_event_seqs(&self, ids: &[CommandId]) -> DomainResult<Vec<(CommandId, i64)>> {
        let mut found = Vec::with_capacity(ids.len());
        // Chunked: SQLite caps the bound parameters of one statement.
        for chunk in ids.chunks(LAST_SEQS_CHUNK) {
            let chunk: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let rows = self.read("last event seqs", move |conn| events::last_seqs(conn, &chunk)).await?;
            for (id, seq) in rows {
                found.push((CommandId::from_uuid(codec::uuid(&id)?), seq));
            }
        }
        Ok(found)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id))]
    async fn output(&self, id: CommandId) -> DomainResult<CommandOutput> {
        let id = id.to_string();
        let (stdout, stderr, stdout_truncated, stderr_truncated) = self
            .read("command output", move |conn| {
                Ok(commands::table
                    .filter(commands::id.eq(&id))
                    .select((
                        commands::stdout,
                        commands::stderr,
                        commands::stdout_truncated,
                        commands::stderr_truncated,
                    ))
                    .first::<(String, String, bool, bool)>(conn)
                    .optional()?
                    .ok_or_else(not_found)?)
            })
            .await?;
        Ok(CommandOutput { stdout, stderr, stdout_truncated, stderr_truncated })
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn purge_finished(&self, before: Timestamp, limit: u32) -> DomainResult<u64> {
        let live = [CommandStatus::Queued.as_str(), CommandStatus::Running.as_str()];
        let purged = self
            .write("purge finished commands", move |conn| {
                let ids: Vec<String> = commands::table
                    .filter(commands::finished_at.lt(micros(before)))
                    .filter(commands::status.ne_all(live))
                    .order(commands::finished_at.asc())
                    .limit(i64::from(limit))
                    .select(commands::id)
                    .load(conn)?;
                // Events go with their command (ON DELETE CASCADE); output lives in the row.
                Ok(diesel::delete(commands::table.filter(commands::id.eq_any(&ids))).execute(conn)?)
            })
            .await?;
        codec::int("purged commands", purged)
    }
}
