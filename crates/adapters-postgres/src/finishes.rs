//! Ending commands on PostgreSQL (`CommandQueue::finish`), with group commit: finishes that
//! arrive while batches are being written share the next statement, so a worker whose slots
//! end together pays one round trip for all of them, and a lone finish is written at once.
//!
//! Each finish in a batch keeps its own fence check (the `WHERE` of its row), its two events
//! and its webhook event, exactly as when it is written alone: the batch statement is the single
//! one applied to every row of an input table. Finishes of one command never share a batch
//! (the second goes in a statement of its own after the first), so which of them wins is never
//! left to the planner. Batches of different writers run side by side; two finishes of one
//! command in flight at once in two of them (only when a caller gave up and finished again
//! before its first finish was written) are ordered by the command's row lock, and the one
//! committed second finds the command no longer running and changes nothing, as it would alone.
//! A batch statement that fails (a deadlock, a bad row) wrote nothing and is written again one
//! finish at a time, so every finish gets the answer it would have got alone; once it
//! committed, nothing of it is written again.

use std::collections::HashSet;
use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use futures::FutureExt;
use tracing::Instrument;
use uuid::Uuid;

use domain::command::Completion;
use domain::output::CommandOutput;
use domain::webhook::EventId;
use domain::{DomainError, DomainResult, Timestamp};

use crate::commands::{self as rows, CommandRow};
use crate::connection::{retry_deadlocks, Connections};
use crate::group_commit::{Abandoned, BatchLimits, Flush, GroupCommit};
use crate::prepared::CachedExt;
use crate::schema::commands;
use crate::webhooks::announce_command;
use crate::StoreResult;

/// The columns of `CommandRow`, which is what a finish answers (a finished command's output
/// stays on the server: it can be megabytes per command). A test checks it against the row type.
macro_rules! command_row_columns {
    () => {
        "id, project_id, project_name, spec, env, cwd, stdin, timeout_seconds, priority, status, exit_code, \
         termination_reason, error, created_by, cancel_requested, queued_at, started_at, finished_at, \
         traceparent, tracestate"
    };
}

/// The CTE `ended`: the events `Status(final)` then `Exit` (what `events::ending` makes) of every
/// command in the CTE `done`.
macro_rules! end_events {
    () => {
        "ended AS ( \
            INSERT INTO command_events (command_id, seq, kind, stream, data, at) \
            SELECT id, event_seq - 1, 'status', NULL, convert_to(status, 'UTF8'), finished_at FROM done \
            UNION ALL \
            SELECT id, event_seq, 'exit', NULL, NULL, finished_at FROM done \
        )"
    };
}

/// Ends command `$1` if fence `$2` still holds it, with its output, and appends the events
/// `Status(final)` then `Exit` (what `events::ending` makes) and the webhook event `$12`, all
/// in one statement.
const FINISH: &str = concat!(
    "WITH done AS ( \
        UPDATE commands SET status = $3, exit_code = $4, termination_reason = $5, error = $6, finished_at = $7, \
            lease_owner = NULL, lease_expires_at = NULL, event_seq = event_seq + 2, \
            stdout = $8, stderr = $9, stdout_truncated = $10, stderr_truncated = $11 \
        WHERE id = $1 AND status = 'running' AND fence = $2 \
        RETURNING * \
    ), ",
    end_events!(),
    ", announced AS (",
    announce_command!("done", "$12", "$7"),
    ") SELECT ",
    command_row_columns!(),
    " FROM done"
);

/// `FINISH` for a batch of distinct commands given as one array per field (item `i` at index
/// `i` of each; fixed SQL for any batch size, so it stays prepared): every row whose fence still
/// holds ends with its own values, its two events and its webhook event (ids from `$12`).
/// Returns the ended commands with their item's 1-based `place`.
const FINISH_BATCH: &str = concat!(
    "WITH input AS ( \
        SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int4[], $5::text[], $6::text[], \
                             $7::timestamptz[], $8::bytea[], $9::bytea[], $10::bool[], $11::bool[], $12::uuid[]) \
            WITH ORDINALITY AS i(id, fence, status, exit_code, reason, error, at, stdout, stderr, \
                                 stdout_truncated, stderr_truncated, event_id, place) \
    ), done AS ( \
        UPDATE commands c SET status = i.status, exit_code = i.exit_code, termination_reason = i.reason, \
            error = i.error, finished_at = i.at, lease_owner = NULL, lease_expires_at = NULL, \
            event_seq = c.event_seq + 2, stdout = i.stdout, stderr = i.stderr, \
            stdout_truncated = i.stdout_truncated, stderr_truncated = i.stderr_truncated \
        FROM input i \
        WHERE c.id = i.id AND c.status = 'running' AND c.fence = i.fence \
        RETURNING c.*, i.event_id, i.place \
    ), ",
    end_events!(),
    ", announced AS (",
    announce_command!("done", "s.event_id", "s.finished_at"),
    ") SELECT ",
    command_row_columns!(),
    ", place FROM done"
);

/// Finishes per batch: enough for every slot of a busy replica.
const MAX_BATCH: usize = 64;
/// Output bytes per batch, so that a batch of large outputs does not become one huge statement;
/// a finish with more output than this is written alone.
const MAX_BATCH_OUTPUT_BYTES: usize = 8 * 1024 * 1024;
/// Batches in flight at once, each on a connection of its own. One would make every finish that
/// arrives during a batch wait for it to end before its own starts: claimers waiting for their
/// slots' finishes then take turns on one connection (0.81 of pgbench where finishes written
/// alone gave 0.95 in the same run). More than 4 measured no better in the queue bench, and each
/// writer holds a pool connection: 4 are at most a quarter of the default pool of 16
/// (`docs/architecture.md`, `docs/performance.md`).
const WRITERS: usize = 4;

/// One command's end, as `CommandQueue::finish` was given it.
#[derive(Debug, Clone)]
pub(crate) struct FinishRequest {
    pub(crate) id: Uuid,
    pub(crate) fence: i64,
    pub(crate) completion: Completion,
    pub(crate) output: CommandOutput,
    pub(crate) at: Timestamp,
}

impl FinishRequest {
    /// How much this finish adds to its batch's statement.
    fn output_bytes(&self) -> usize {
        self.output.stdout.len() + self.output.stderr.len()
    }
}

/// What a finish answers: the ended command, `None` when its fence no longer holds, or the
/// error it met.
type Answer = DomainResult<Option<CommandRow>>;

/// How `PgStore` ends commands: grouped, or one statement each.
#[derive(Debug, Clone)]
pub(crate) struct Finishes {
    connections: Connections,
    /// `None`: every finish is its own statement (batches of one).
    group: Option<GroupCommit<FinishRequest, Answer>>,
}

impl Finishes {
    /// Finishes over `connections`, at most `max_batch` per statement (1: no grouping).
    pub(crate) fn new(connections: Connections, max_batch: usize) -> Self {
        let group = (max_batch > 1).then(|| {
            let pool = connections.clone();
            let flush: Flush<FinishRequest, Answer> =
                Arc::new(move |batch: Vec<FinishRequest>| write(pool.clone(), batch).boxed());
            let limits = BatchLimits { items: max_batch, weight: MAX_BATCH_OUTPUT_BYTES, writers: WRITERS };
            GroupCommit::new(limits, FinishRequest::output_bytes, flush)
        });
        Self { connections, group }
    }

    /// Grouped finishes, as many per statement as the default allows.
    pub(crate) fn grouped(connections: Connections) -> Self {
        Self::new(connections, MAX_BATCH)
    }

    /// Ends the command of `request` if its fence still holds it.
    pub(crate) async fn finish(&self, request: FinishRequest) -> Answer {
        match &self.group {
            Some(group) => group.submit(request).await.unwrap_or_else(|Abandoned| {
                Err(DomainError::Unavailable("finishing the command: its batch was abandoned".into()))
            }),
            None => {
                let mut conn = self.connections.get().await?;
                finish_one(&mut conn, &request).await.map_err(|e| e.into_domain("finish command"))
            }
        }
    }
}

/// Writes a batch: distinct commands together, a command's later finishes in later statements.
async fn write(connections: Connections, batch: Vec<FinishRequest>) -> Vec<Answer> {
    let span = tracing::debug_span!("finish_batch", finishes = batch.len());
    async move {
        let mut conn = match connections.get().await {
            Ok(conn) => conn,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut answers: Vec<Answer> =
            batch.iter().map(|_| Err(DomainError::Internal("a finish was left out of its batch".into()))).collect();
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        while !pending.is_empty() {
            let mut ids = HashSet::new();
            let (round, later): (Vec<usize>, Vec<usize>) = pending.into_iter().partition(|&i| ids.insert(batch[i].id));
            let requests: Vec<&FinishRequest> = round.iter().map(|&i| &batch[i]).collect();
            for (i, answer) in round.into_iter().zip(write_distinct(&mut conn, &requests).await) {
                answers[i] = answer;
            }
            pending = later;
        }
        answers
    }
    .instrument(span)
    .await
}

/// Writes finishes of distinct commands: one statement for all, or each alone if the server
/// refused that.
async fn write_distinct(conn: &mut AsyncPgConnection, requests: &[&FinishRequest]) -> Vec<Answer> {
    if let [single] = requests {
        return vec![finish_one(conn, single).await.map_err(|e| e.into_domain("finish command"))];
    }
    let finished = match retry_deadlocks!("finish commands", finish_batch(conn, requests).await) {
        Ok(finished) => finished,
        Err(e) if !e.refused_by_server() => {
            // Lost with the connection, or an answer that could not be read: the statement may
            // have committed, so nothing is written again (a finish it ended would be told its
            // fence no longer holds); the worker retries each.
            let e = e.into_domain("finish commands");
            return requests.iter().map(|_| Err(e.clone())).collect();
        }
        Err(e) => {
            // Refused, so nothing of it was written. Alone, each finish gets the answer it
            // would have had without company (one that cannot be written fails by itself).
            tracing::warn!(error = %e, finishes = requests.len(), "a batch of finishes failed; writing each alone");
            let mut answers = Vec::with_capacity(requests.len());
            for request in requests {
                answers.push(finish_one(conn, request).await.map_err(|e| e.into_domain("finish command")));
            }
            return answers;
        }
    };
    // The statement committed: from here on nothing is written again, whatever fails, or the
    // finishes it ended would be told their fence no longer holds.
    let ended = match by_place(requests.len(), finished) {
        Ok(ended) => ended,
        Err(e) => return requests.iter().map(|_| Err(e.clone())).collect(),
    };
    let missed: Vec<Uuid> = requests.iter().zip(&ended).filter(|(_, e)| e.is_none()).map(|(r, _)| r.id).collect();
    let known = if missed.is_empty() {
        Ok(HashSet::new())
    } else {
        existing(conn, missed).await.map_err(|e| e.into_domain("finish command"))
    };
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    answer_each(&ids, ended, known)
}

/// Each finish's answer once its batch committed: its command when the batch ended it; for
/// the others, `None` when the command exists (its fence no longer holds), `NotFound` when it
/// does not, or the error that kept the store from telling.
fn answer_each<T>(
    ids: &[Uuid],
    ended: Vec<Option<T>>,
    known: DomainResult<HashSet<Uuid>>,
) -> Vec<DomainResult<Option<T>>> {
    ids.iter()
        .zip(ended)
        .map(|(id, row)| match (row, &known) {
            (Some(row), _) => Ok(Some(row)),
            (None, Ok(known)) if known.contains(id) => Ok(None),
            (None, Ok(_)) => Err(rows::not_found()),
            (None, Err(e)) => Err(e.clone()),
        })
        .collect()
}

/// The rows a batch ended, at their item's index (`place` is 1-based).
fn by_place(items: usize, finished: Vec<Finished>) -> DomainResult<Vec<Option<CommandRow>>> {
    let mut ended: Vec<Option<CommandRow>> = (0..items).map(|_| None).collect();
    for f in finished {
        let slot = usize::try_from(f.place).ok().and_then(|p| p.checked_sub(1)).and_then(|i| ended.get_mut(i));
        match slot {
            Some(slot) => *slot = Some(f.command),
            None => return Err(DomainError::Internal(format!("a batch of finishes answered place {}", f.place))),
        }
    }
    Ok(ended)
}

/// Which of `ids` are commands.
async fn existing(conn: &mut AsyncPgConnection, ids: Vec<Uuid>) -> StoreResult<HashSet<Uuid>> {
    let found = commands::table.filter(commands::id.eq_any(ids)).select(commands::id).load::<Uuid>(conn).await?;
    Ok(found.into_iter().collect())
}

/// Ends a running command held by `fence` with its output and its webhook event, in one
/// statement; `None` (and no event) when the fence is stale, `NotFound` for an unknown command.
async fn finish_one(conn: &mut AsyncPgConnection, r: &FinishRequest) -> StoreResult<Option<CommandRow>> {
    let c = &r.completion;
    let ended: Option<CommandRow> = diesel::sql_query(FINISH)
        .bind::<SqlUuid, _>(r.id)
        .bind::<BigInt, _>(r.fence)
        .bind::<Text, _>(c.status.as_str())
        .bind::<Nullable<Integer>, _>(c.exit_code)
        .bind::<Text, _>(c.reason.as_str())
        .bind::<Nullable<Text>, _>(c.error.as_deref())
        .bind::<Timestamptz, _>(r.at)
        .bind::<Bytea, _>(r.output.stdout.as_bytes())
        .bind::<Bytea, _>(r.output.stderr.as_bytes())
        .bind::<Bool, _>(r.output.stdout_truncated)
        .bind::<Bool, _>(r.output.stderr_truncated)
        .bind::<SqlUuid, _>(EventId::generate().as_uuid())
        .cached()
        .get_result(conn)
        .await
        .optional()?;
    if ended.is_none() {
        rows::must_exist(conn, r.id).await?;
    }
    Ok(ended)
}

/// A command ended by `FINISH_BATCH`, and which item ended it.
#[derive(Debug, QueryableByName)]
struct Finished {
    #[diesel(embed)]
    command: CommandRow,
    #[diesel(sql_type = BigInt)]
    place: i64,
}

/// `FINISH_BATCH`'s binds: one array per field.
#[derive(Debug, Default)]
struct FinishColumns<'a> {
    ids: Vec<Uuid>,
    fences: Vec<i64>,
    statuses: Vec<&'static str>,
    exit_codes: Vec<Option<i32>>,
    reasons: Vec<&'static str>,
    errors: Vec<Option<&'a str>>,
    at: Vec<Timestamp>,
    stdouts: Vec<&'a [u8]>,
    stderrs: Vec<&'a [u8]>,
    stdout_truncated: Vec<bool>,
    stderr_truncated: Vec<bool>,
    event_ids: Vec<Uuid>,
}

impl<'a> FinishColumns<'a> {
    fn of(requests: &[&'a FinishRequest]) -> Self {
        let mut c = Self::default();
        for r in requests {
            c.ids.push(r.id);
            c.fences.push(r.fence);
            c.statuses.push(r.completion.status.as_str());
            c.exit_codes.push(r.completion.exit_code);
            c.reasons.push(r.completion.reason.as_str());
            c.errors.push(r.completion.error.as_deref());
            c.at.push(r.at);
            c.stdouts.push(r.output.stdout.as_bytes());
            c.stderrs.push(r.output.stderr.as_bytes());
            c.stdout_truncated.push(r.output.stdout_truncated);
            c.stderr_truncated.push(r.output.stderr_truncated);
            c.event_ids.push(EventId::generate().as_uuid());
        }
        c
    }
}

/// Ends the held ones among `requests` (distinct commands) in one statement; returns the rows
/// it ended, each with its item's place.
async fn finish_batch(conn: &mut AsyncPgConnection, requests: &[&FinishRequest]) -> StoreResult<Vec<Finished>> {
    let c = FinishColumns::of(requests);
    let finished = diesel::sql_query(FINISH_BATCH)
        .bind::<Array<SqlUuid>, _>(&c.ids)
        .bind::<Array<BigInt>, _>(&c.fences)
        .bind::<Array<Text>, _>(&c.statuses)
        .bind::<Array<Nullable<Integer>>, _>(&c.exit_codes)
        .bind::<Array<Text>, _>(&c.reasons)
        .bind::<Array<Nullable<Text>>, _>(&c.errors)
        .bind::<Array<Timestamptz>, _>(&c.at)
        .bind::<Array<Bytea>, _>(&c.stdouts)
        .bind::<Array<Bytea>, _>(&c.stderrs)
        .bind::<Array<Bool>, _>(&c.stdout_truncated)
        .bind::<Array<Bool>, _>(&c.stderr_truncated)
        .bind::<Array<SqlUuid>, _>(&c.event_ids)
        .cached()
        .load(conn)
        .await?;
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use diesel::pg::Pg;

    use super::*;

    #[test]
    fn once_a_batch_committed_a_failed_lookup_only_reaches_the_finishes_it_did_not_end() {
        let (ended, stale, unknown) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let ids = [ended, stale, unknown];
        let rows = || vec![Some("row"), None, None];
        let down = answer_each(&ids, rows(), Err(DomainError::Unavailable("connection lost".into())));
        assert!(matches!(down[0], Ok(Some("row"))), "an ended command is answered as ended: {down:?}");
        assert!(down[1..].iter().all(|a| matches!(a, Err(DomainError::Unavailable(_)))), "{down:?}");
        let told = answer_each(&ids, rows(), Ok(HashSet::from([ended, stale])));
        assert!(matches!(told[..], [Ok(Some("row")), Ok(None), Err(DomainError::NotFound(_))]), "{told:?}");
    }

    #[test]
    fn a_batch_answers_every_column_of_a_command_row() {
        let select = commands::table.select(CommandRow::as_select());
        let sql = diesel::debug_query::<Pg, _>(&select).to_string();
        let listed: HashSet<&str> = command_row_columns!().split(',').map(str::trim).collect();
        let wanted: HashSet<String> = sql
            .split("FROM")
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|c| c.rsplit('.').next())
            .map(|c| c.trim().trim_matches('"').to_owned())
            .collect();
        assert_eq!(wanted.len(), listed.len(), "{sql}");
        for column in &wanted {
            assert!(listed.contains(column.as_str()), "{column} is missing from the batch's answer");
        }
    }
}
