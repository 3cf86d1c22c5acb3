//! `CommandQueue` on SQLite: claims, leases and fences over `commands`, and `workers`.
//!
//! Every state change runs in a `BEGIN IMMEDIATE` transaction, so two claimers never see the
//! same queued row: the second one's transaction starts only after the first committed.

use std::time::Duration;

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel::SqliteConnection;

use domain::audit::{AuditEntry, AuditRecord};
use domain::command::{Command, CommandStatus, Completion};
use domain::ids::{CommandId, WorkerId};
use domain::output::{CommandOutput, EventKind, OutputStream};
use domain::ports::{Claim, CommandQueue, LeaseStatus, WorkerCapacity, PRESENCE_TTL};
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec::{self, micros};
use crate::commands::{self as rows, CommandRow};
use crate::events;
use crate::schema::{commands, counters, projects, workers};
use crate::{webhooks, SqliteStore, StoreResult};

const QUEUED: &str = CommandStatus::Queued.as_str();
const RUNNING: &str = CommandStatus::Running.as_str();
const FENCE_COUNTER: &str = "fence";

/// Projects already running as many commands as their `max_concurrent_commands` allows.
fn full_projects(conn: &mut SqliteConnection) -> StoreResult<Vec<String>> {
    let running: Vec<(String, i32, i64)> = commands::table
        .inner_join(projects::table)
        .filter(commands::status.eq(RUNNING))
        .group_by(projects::id)
        .select((projects::id, projects::max_concurrent_commands, diesel::dsl::count_star()))
        .load(conn)?;
    Ok(running.into_iter().filter(|(_, cap, n)| *n >= i64::from(*cap)).map(|(id, _, _)| id).collect())
}

/// The next value of the store-wide fence; it only ever rises.
fn next_fence(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(diesel::update(counters::table.find(FENCE_COUNTER))
        .set(counters::value.eq(counters::value + 1))
        .returning(counters::value)
        .get_result(conn)?)
}

/// Claims the first queued command in dequeue order whose project has room.
fn claim(conn: &mut SqliteConnection, worker: &str, now: Timestamp, lease_us: i64) -> StoreResult<Option<Claim>> {
    let full = full_projects(conn)?;
    let next: Option<String> = commands::table
        .filter(commands::status.eq(QUEUED))
        .filter(commands::project_id.ne_all(full))
        .order((commands::priority.desc(), commands::seq.asc()))
        .select(commands::id)
        .first(conn)
        .optional()?;
    let Some(id) = next else { return Ok(None) };
    let fence = next_fence(conn)?;
    let row: CommandRow = diesel::update(commands::table.filter(commands::id.eq(&id)))
        .set((
            commands::status.eq(RUNNING),
            commands::started_at.eq(micros(now)),
            commands::lease_owner.eq(worker),
            commands::lease_expires_at.eq(micros(now).saturating_add(lease_us)),
            commands::fence.eq(fence),
        ))
        .returning(CommandRow::as_returning())
        .get_result(conn)?;
    events::append(conn, &id, &[EventKind::Status(CommandStatus::Running)], now)?;
    let command = row.into_domain()?;
    webhooks::record_command_event(conn, &command, now)?;
    Ok(Some(Claim { command, fence }))
}

/// The `(status, fence, cancel_requested)` of a command, or `NotFound`.
fn lease_state(conn: &mut SqliteConnection, id: &str) -> StoreResult<(String, i64, bool)> {
    Ok(commands::table
        .filter(commands::id.eq(id))
        .select((commands::status, commands::fence, commands::cancel_requested))
        .first(conn)
        .optional()?
        .ok_or_else(rows::not_found)?)
}

/// Whether `fence` still holds the command: it is running under that very claim.
fn holds(conn: &mut SqliteConnection, id: &str, fence: i64) -> StoreResult<bool> {
    let (status, current, _) = lease_state(conn, id)?;
    Ok(status == RUNNING && current == fence)
}

/// Ends a running command held by `fence` with its output; `None` when the fence is stale.
fn finish_held(
    conn: &mut SqliteConnection,
    id: &str,
    fence: i64,
    completion: &Completion,
    output: &CommandOutput,
    at: Timestamp,
) -> StoreResult<Option<CommandRow>> {
    if !holds(conn, id, fence)? {
        return Ok(None);
    }
    diesel::update(commands::table.filter(commands::id.eq(id)))
        .set((
            commands::stdout.eq(&output.stdout),
            commands::stderr.eq(&output.stderr),
            commands::stdout_truncated.eq(output.stdout_truncated),
            commands::stderr_truncated.eq(output.stderr_truncated),
        ))
        .execute(conn)?;
    rows::end(conn, id, completion, at).map(Some)
}

/// Puts a running command held by `fence` back in the queue unless a client asked to cancel it.
fn hand_back_held(conn: &mut SqliteConnection, id: &str, fence: i64, at: Timestamp) -> StoreResult<bool> {
    let (status, current, cancel_requested) = lease_state(conn, id)?;
    if status != RUNNING || current != fence || cancel_requested {
        return Ok(false);
    }
    diesel::update(commands::table.filter(commands::id.eq(id)))
        .set((
            commands::status.eq(QUEUED),
            commands::started_at.eq(None::<i64>),
            commands::lease_owner.eq(None::<String>),
            commands::lease_expires_at.eq(None::<i64>),
        ))
        .execute(conn)?;
    events::append(conn, id, &[EventKind::Status(CommandStatus::Queued)], at)?;
    Ok(true)
}

/// The oldest confirmation that still counts as present at `now`: SQLite has no sessions, so a
/// replica is present while it keeps confirming (its worker does every half second).
fn present_since(now: Timestamp) -> i64 {
    micros(now).saturating_sub(i64::try_from(PRESENCE_TTL.as_micros()).unwrap_or(i64::MAX))
}

/// Owners of running commands that have not confirmed their presence since `since`.
fn absent(conn: &mut SqliteConnection, since: i64) -> StoreResult<Vec<String>> {
    let present = workers::table.filter(workers::last_seen.ge(since)).select(workers::id);
    Ok(commands::table
        .filter(commands::status.eq(RUNNING))
        .filter(commands::lease_owner.is_not_null())
        .filter(commands::lease_owner.assume_not_null().ne_all(present))
        .select(commands::lease_owner.assume_not_null())
        .distinct()
        .load(conn)?)
}

/// Ends the running commands of `owner` as lost unless it confirmed its presence since `since`.
fn reap_owner(conn: &mut SqliteConnection, owner: &str, since: i64, now: Timestamp) -> StoreResult<Vec<CommandRow>> {
    let present: i64 =
        workers::table.filter(workers::id.eq(owner)).filter(workers::last_seen.ge(since)).count().get_result(conn)?;
    if present > 0 {
        return Ok(Vec::new());
    }
    let owned: Vec<String> = commands::table
        .filter(commands::status.eq(RUNNING))
        .filter(commands::lease_owner.eq(owner))
        .order(commands::seq.asc())
        .select(commands::id)
        .load(conn)?;
    let lost = Completion::worker_lost(domain::command::ABSENT_OWNER_LOST);
    owned.iter().map(|id| rows::end(conn, id, &lost, now)).collect()
}

fn lease_micros(lease: Duration) -> DomainResult<i64> {
    i64::try_from(lease.as_micros()).map_err(|_| DomainError::Internal(format!("lease {lease:?} is too long")))
}

#[async_trait]
impl CommandQueue for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(worker = %worker))]
    async fn claim_next(&self, worker: &WorkerId, now: Timestamp, lease: Duration) -> DomainResult<Option<Claim>> {
        let lease_us = lease_micros(lease)?;
        let worker = worker.as_str().to_owned();
        self.write("claim command", move |conn| claim(conn, &worker, now, lease_us)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id, fence))]
    async fn renew_lease(&self, id: CommandId, fence: i64, until: Timestamp) -> DomainResult<LeaseStatus> {
        let id = id.to_string();
        self.write("renew lease", move |conn| {
            let (status, current, cancel_requested) = lease_state(conn, &id)?;
            let held = status == RUNNING && current == fence;
            if held {
                diesel::update(commands::table.filter(commands::id.eq(&id)))
                    .set(commands::lease_expires_at.eq(micros(until)))
                    .execute(conn)?;
            }
            Ok(LeaseStatus { held, cancel_requested })
        })
        .await
    }

    #[tracing::instrument(level = "trace", skip_all, fields(command_id = %id, fence))]
    async fn append_output(
        &self,
        id: CommandId,
        fence: i64,
        stream: OutputStream,
        data: &str,
        at: Timestamp,
    ) -> DomainResult<bool> {
        let id = id.to_string();
        let event = EventKind::Output { stream, data: data.to_owned() };
        self.write("append output", move |conn| {
            if !holds(conn, &id, fence)? {
                return Ok(false);
            }
            events::append(conn, &id, &[event], at)?;
            Ok(true)
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id, fence, status = %completion.status))]
    async fn finish(
        &self,
        id: CommandId,
        fence: i64,
        completion: &Completion,
        output: &CommandOutput,
        at: Timestamp,
    ) -> DomainResult<Option<Command>> {
        let id = id.to_string();
        let (completion, output) = (completion.clone(), output.clone());
        let row =
            self.write("finish command", move |conn| finish_held(conn, &id, fence, &completion, &output, at)).await?;
        row.map(CommandRow::into_domain).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id, fence))]
    async fn finish_audited(
        &self,
        id: CommandId,
        fence: i64,
        completion: &Completion,
        output: &CommandOutput,
        at: Timestamp,
        end: AuditEntry,
    ) -> DomainResult<(Option<Command>, Option<AuditRecord>)> {
        let id = id.to_string();
        let (completion, output) = (completion.clone(), output.clone());
        // One immediate transaction: SQLite has one writer, and on a short command's path
        // the end's own transaction cost as much as the finish.
        let (row, record) = self
            .write("finish command and record its end", move |conn| {
                let Some(row) = finish_held(conn, &id, fence, &completion, &output, at)? else {
                    return Ok((None, None));
                };
                let record = crate::audit::append_sealed(conn, end)?;
                Ok((Some(row), Some(record)))
            })
            .await?;
        Ok((row.map(CommandRow::into_domain).transpose()?, record))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn reap_expired(&self, now: Timestamp) -> DomainResult<Vec<Command>> {
        let rows = self
            .write("reap expired leases", move |conn| {
                let expired: Vec<String> = commands::table
                    .filter(commands::status.eq(RUNNING))
                    .filter(commands::lease_expires_at.lt(micros(now)))
                    .order(commands::seq.asc())
                    .select(commands::id)
                    .load(conn)?;
                let lost = Completion::worker_lost(domain::command::LEASE_EXPIRED_LOST);
                expired.iter().map(|id| rows::end(conn, id, &lost, now)).collect::<StoreResult<Vec<_>>>()
            })
            .await?;
        rows.into_iter().map(CommandRow::into_domain).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id, fence))]
    async fn hand_back(&self, id: CommandId, fence: i64, at: Timestamp) -> DomainResult<bool> {
        let id = id.to_string();
        self.write("hand back command", move |conn| hand_back_held(conn, &id, fence, at)).await
    }

    #[tracing::instrument(level = "trace", skip_all, fields(worker = %worker))]
    async fn hold_presence(&self, worker: &WorkerId, now: Timestamp) -> DomainResult<bool> {
        let id = worker.as_str().to_owned();
        self.write("hold presence", move |conn| {
            diesel::insert_into(workers::table)
                .values((workers::id.eq(&id), workers::capacity.eq(0), workers::last_seen.eq(micros(now))))
                .on_conflict(workers::id)
                .do_update()
                .set(workers::last_seen.eq(micros(now)))
                .execute(conn)?;
            Ok(true)
        })
        .await
    }

    async fn release_presence(&self, worker: &WorkerId) -> DomainResult<()> {
        let id = worker.as_str().to_owned();
        self.write("release presence", move |conn| {
            diesel::delete(workers::table.filter(workers::id.eq(&id))).execute(conn)?;
            Ok(())
        })
        .await
    }

    async fn absent_owners(&self, now: Timestamp) -> DomainResult<Vec<WorkerId>> {
        let owners = self.read("absent owners", move |conn| absent(conn, present_since(now))).await?;
        Ok(owners.into_iter().map(WorkerId::new).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(owner = %owner))]
    async fn reap_absent(&self, owner: &WorkerId, now: Timestamp) -> DomainResult<Vec<Command>> {
        let owner = owner.as_str().to_owned();
        let rows =
            self.write("reap absent owner", move |conn| reap_owner(conn, &owner, present_since(now), now)).await?;
        rows.into_iter().map(CommandRow::into_domain).collect()
    }

    #[tracing::instrument(level = "trace", skip_all, fields(worker = %worker))]
    async fn heartbeat(&self, worker: &WorkerId, capacity: u32, now: Timestamp) -> DomainResult<()> {
        let id = worker.as_str().to_owned();
        let capacity: i32 = codec::column_int("capacity", capacity)?;
        self.read("worker heartbeat", move |conn| {
            diesel::insert_into(workers::table)
                .values((workers::id.eq(&id), workers::capacity.eq(capacity), workers::last_seen.eq(micros(now))))
                .on_conflict(workers::id)
                .do_update()
                .set((workers::capacity.eq(capacity), workers::last_seen.eq(micros(now))))
                .execute(conn)?;
            Ok(())
        })
        .await
    }

    async fn live_workers(&self, since: Timestamp) -> DomainResult<WorkerCapacity> {
        let capacities: Vec<i32> = self
            .read("live workers", move |conn| {
                Ok(workers::table.filter(workers::last_seen.ge(micros(since))).select(workers::capacity).load(conn)?)
            })
            .await?;
        let replicas = codec::int("replicas", capacities.len())?;
        let capacity =
            capacities.into_iter().map(|c| codec::int::<i32, u32>("capacity", c)).sum::<DomainResult<u32>>()?;
        Ok(WorkerCapacity { replicas, capacity })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job))]
    async fn try_job_lease(&self, job: &str, owner: &WorkerId, now: Timestamp, until: Timestamp) -> DomainResult<bool> {
        let (job, owner) = (job.to_owned(), owner.to_string());
        let taken = self
            .write("job lease", move |conn| {
                Ok(diesel::sql_query(TAKE_JOB_LEASE)
                    .bind::<Text, _>(&job)
                    .bind::<Text, _>(&owner)
                    .bind::<BigInt, _>(micros(until))
                    .bind::<BigInt, _>(micros(now))
                    .execute(conn)?)
            })
            .await?;
        Ok(taken == 1)
    }
}

/// Takes job `$1` for owner `$2` until `$3` unless another owner holds it past `$4`; one row
/// changes exactly when `$2` holds it afterwards.
const TAKE_JOB_LEASE: &str = "\
INSERT INTO job_leases (name, owner, expires_at) VALUES ($1, $2, $3) \
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at \
WHERE job_leases.expires_at < $4 OR job_leases.owner = excluded.owner";
