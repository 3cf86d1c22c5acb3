//! `CommandQueue` on PostgreSQL: claims, leases and fences over `commands`, and `workers`.
//!
//! A claim takes the head of the queue with `FOR UPDATE SKIP LOCKED`, so concurrent claimers
//! on any replica never wait for each other's rows nor take the same one. Per-project caps
//! hold across replicas because a claim locks its project's row before counting the project's
//! running commands: claims for one project take turns, claims for different ones do not.
//! Workers' writes name their fence in the `WHERE` clause, so a stale worker changes nothing.

use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Integer, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use domain::command::{Command, Completion};
use domain::ids::{CommandId, WorkerId};
use domain::output::{CommandOutput, OutputStream};
use domain::ports::{Claim, CommandQueue, LeaseStatus, WorkerCapacity};
use domain::webhook::EventId;
use domain::{DomainError, DomainResult, Timestamp};

use crate::codec;
use crate::commands::{self as rows, CommandRow, RUNNING};
use crate::connection::{db_error, retry_deadlocks};
use crate::events;
use crate::finishes::FinishRequest;
use crate::prepared::CachedExt;
use crate::schema::{commands, workers};
use crate::webhooks::{self, announce_command};
use crate::{PgStore, StoreError, StoreResult};

/// The next queued command in dequeue order whose project is not known to be full, locked,
/// with its project's row locked too (waiting for a claim of the same project in flight).
/// `$1`: projects found full during this claim (their running count is re-checked under lock).
const NEXT_CANDIDATE: &str = "\
SELECT c.id, c.project_id, p.max_concurrent_commands AS cap \
FROM commands c JOIN projects p ON p.id = c.project_id \
WHERE c.status = 'queued' \
  AND NOT (c.project_id = ANY($1)) \
  AND c.project_id NOT IN ( \
      SELECT r.project_id FROM commands r JOIN projects f ON f.id = r.project_id \
      WHERE r.status = 'running' \
      GROUP BY r.project_id, f.max_concurrent_commands \
      HAVING count(*) >= f.max_concurrent_commands) \
ORDER BY c.priority DESC, c.seq \
LIMIT 1 \
FOR UPDATE OF c SKIP LOCKED \
FOR NO KEY UPDATE OF p";

/// Starts the locked candidate `$1` if its project `$5` (whose row this transaction locked)
/// runs fewer than `$6` commands, with a fresh fence, the event `Status(Running)` and the
/// webhook event `$7`. The count runs after the project lock was taken, so it sees every
/// earlier claim.
const START_IF_ROOM: &str = concat!(
    "WITH claimed AS ( \
        UPDATE commands SET status = 'running', started_at = $2, lease_owner = $3, lease_expires_at = $4, \
            fence = nextval('command_fence'), event_seq = event_seq + 1 \
        WHERE id = $1 \
          AND (SELECT count(*) FROM commands r WHERE r.project_id = $5 AND r.status = 'running') < $6 \
        RETURNING * \
    ), started AS ( \
        INSERT INTO command_events (command_id, seq, kind, stream, data, at) \
        SELECT id, event_seq, 'status', NULL, convert_to('running', 'UTF8'), $2 FROM claimed \
    ), announced AS (",
    announce_command!("claimed", "$7", "$2"),
    ") SELECT * FROM claimed"
);

/// A batch claim's candidates, locked: the first `$1` queued commands in dequeue order, not
/// locked by another claim, among those that fit their project's room (its cap minus what it
/// runs) as this statement sees it, each project's best first. Only the room is eligible: a
/// candidate locked but then not started would be skipped by concurrent claimers, who would
/// start worse commands of the same project in its place. The limit comes after the locks, so
/// rows another claim holds are passed over, not counted. Ranking looks at the head of the
/// queue only (`$2` rows, `head_for`), so a long queue costs no more; a caller that got fewer
/// than it asked for asks again.
const BATCH_CANDIDATES: &str = "\
WITH running AS ( \
    SELECT project_id, count(*) AS n FROM commands WHERE status = 'running' GROUP BY project_id \
), head AS ( \
    SELECT q.id, q.project_id, q.priority, q.seq, p.max_concurrent_commands - coalesce(r.n, 0) AS room \
    FROM commands q JOIN projects p ON p.id = q.project_id LEFT JOIN running r ON r.project_id = q.project_id \
    WHERE q.status = 'queued' AND coalesce(r.n, 0) < p.max_concurrent_commands \
    ORDER BY q.priority DESC, q.seq \
    LIMIT $2 \
), ranked AS ( \
    SELECT id, priority, seq, room, \
        row_number() OVER (PARTITION BY project_id ORDER BY priority DESC, seq) AS place \
    FROM head \
) \
SELECT c.id, c.project_id FROM commands c \
WHERE c.id IN (SELECT id FROM ranked WHERE place <= room) AND c.status = 'queued' \
ORDER BY c.priority DESC, c.seq \
LIMIT $1 \
FOR UPDATE OF c SKIP LOCKED";

/// Locks the rows of projects `$1` in id order, so batch claims that share projects wait for
/// each other instead of deadlocking; from then on their running counts cannot change under us.
const LOCK_PROJECTS: &str = "SELECT id FROM projects WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";

/// Starts those of the locked candidates `$1` that fit their project's room (its cap minus what
/// it runs, counted after the project locks were taken), best first within each project, with
/// fresh fences, the events `Status(Running)` and one webhook event each (ids from `$5`, in
/// dequeue order). Returns them in dequeue order.
const START_BATCH: &str = concat!(
    "WITH ranked AS ( \
        SELECT c.id, c.project_id, p.max_concurrent_commands AS cap, \
            row_number() OVER (PARTITION BY c.project_id ORDER BY c.priority DESC, c.seq) AS place \
        FROM commands c JOIN projects p ON p.id = c.project_id \
        WHERE c.id = ANY($1) AND c.status = 'queued' \
    ), fitting AS ( \
        SELECT id FROM ranked \
        WHERE place <= cap - (SELECT count(*) FROM commands r WHERE r.project_id = ranked.project_id AND r.status = 'running') \
    ), claimed AS ( \
        UPDATE commands SET status = 'running', started_at = $2, lease_owner = $3, lease_expires_at = $4, \
            fence = nextval('command_fence'), event_seq = event_seq + 1 \
        WHERE id IN (SELECT id FROM fitting) \
        RETURNING * \
    ), numbered AS ( \
        SELECT claimed.*, row_number() OVER (ORDER BY priority DESC, seq) AS place FROM claimed \
    ), started AS ( \
        INSERT INTO command_events (command_id, seq, kind, stream, data, at) \
        SELECT id, event_seq, 'status', NULL, convert_to('running', 'UTF8'), $2 FROM claimed \
    ), announced AS (",
    announce_command!("numbered", "($5::uuid[])[s.place]", "$2"),
    ") SELECT * FROM numbered ORDER BY place"
);

/// Appends output `$3`/`$4` to command `$1` if fence `$2` still holds it.
const APPEND_OUTPUT: &str = "\
WITH held AS ( \
    UPDATE commands SET event_seq = event_seq + 1 \
    WHERE id = $1 AND status = 'running' AND fence = $2 \
    RETURNING id, event_seq \
) \
INSERT INTO command_events (command_id, seq, kind, stream, data, at) \
SELECT id, event_seq, 'output', $3, $4, $5 FROM held";

/// Queue rows a batch claim ranks per command asked for: room for the rows concurrent claims
/// hold (passed over) and for projects with less room than queued commands.
const HEAD_PER_COMMAND: usize = 16;
/// Fewest and most queue rows a batch claim ranks. Ranking is most of a batch claim's server
/// time (256 rows cost about 1 ms, 64 about 0.15 ms), and it runs under no lock but its own.
const HEAD_ROWS: std::ops::RangeInclusive<usize> = 64..=256;

/// How many rows of the queue's head a batch claim of `max` commands ranks.
fn head_for(max: usize) -> i64 {
    let rows = max.saturating_mul(HEAD_PER_COMMAND).clamp(*HEAD_ROWS.start(), *HEAD_ROWS.end());
    // At most 256: always fits.
    i64::try_from(rows).unwrap_or(i64::MAX)
}

/// Claim attempts that may find their candidate's project full before reporting nothing claimable.
const MAX_FULL_PROJECTS: usize = 32;

#[derive(Debug, QueryableByName)]
struct Candidate {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    project_id: Uuid,
    #[diesel(sql_type = Integer)]
    cap: i32,
}

/// A batch claim's locked candidate.
#[derive(Debug, QueryableByName)]
struct BatchCandidate {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    project_id: Uuid,
}

#[derive(Debug, QueryableByName)]
struct Started {
    #[diesel(embed)]
    command: CommandRow,
    #[diesel(sql_type = BigInt)]
    fence: i64,
}

/// What one claim transaction found.
enum Attempt {
    /// Nothing is claimable.
    Empty,
    /// This command started.
    Started(Box<Started>),
    /// The candidate's project filled up since the candidate was chosen; try without it.
    Full(Uuid),
}

/// Claims the first queued command in dequeue order whose project has room, skipping the
/// projects in `full`. Holds at most one project lock, so claims cannot deadlock each other.
async fn claim_once(
    conn: &mut AsyncPgConnection,
    full: &[Uuid],
    worker: &str,
    now: Timestamp,
    until: Timestamp,
) -> StoreResult<Attempt> {
    let candidate: Option<Candidate> =
        diesel::sql_query(NEXT_CANDIDATE).bind::<Array<SqlUuid>, _>(full).cached().get_result(conn).await.optional()?;
    let Some(candidate) = candidate else { return Ok(Attempt::Empty) };
    let started: Option<Started> = diesel::sql_query(START_IF_ROOM)
        .bind::<SqlUuid, _>(candidate.id)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(worker)
        .bind::<Timestamptz, _>(until)
        .bind::<SqlUuid, _>(candidate.project_id)
        .bind::<BigInt, _>(i64::from(candidate.cap))
        .bind::<SqlUuid, _>(EventId::generate().as_uuid())
        .cached()
        .get_result(conn)
        .await
        .optional()?;
    Ok(started.map_or(Attempt::Full(candidate.project_id), |s| Attempt::Started(Box::new(s))))
}

/// Claims up to `max` commands in one transaction: candidates locked in dequeue order, their
/// projects locked in id order, then one statement starts those that fit.
async fn claim_batch_once(
    conn: &mut AsyncPgConnection,
    max: usize,
    worker: &str,
    now: Timestamp,
    until: Timestamp,
) -> StoreResult<Vec<Started>> {
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    let candidates: Vec<BatchCandidate> = diesel::sql_query(BATCH_CANDIDATES)
        .bind::<BigInt, _>(limit)
        .bind::<BigInt, _>(head_for(max))
        .cached()
        .load(conn)
        .await?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let mut projects: Vec<Uuid> = candidates.iter().map(|c| c.project_id).collect();
    projects.sort_unstable();
    projects.dedup();
    diesel::sql_query(LOCK_PROJECTS).bind::<Array<SqlUuid>, _>(&projects).cached().execute(conn).await?;
    let ids: Vec<Uuid> = candidates.iter().map(|c| c.id).collect();
    let event_ids: Vec<Uuid> = ids.iter().map(|_| EventId::generate().as_uuid()).collect();
    let started = diesel::sql_query(START_BATCH)
        .bind::<Array<SqlUuid>, _>(&ids)
        .bind::<Timestamptz, _>(now)
        .bind::<Text, _>(worker)
        .bind::<Timestamptz, _>(until)
        .bind::<Array<SqlUuid>, _>(&event_ids)
        .cached()
        .load(conn)
        .await?;
    Ok(started)
}

/// Marks every running command whose lease ended before `now` as lost.
async fn reap(conn: &mut AsyncPgConnection, now: Timestamp) -> StoreResult<Vec<CommandRow>> {
    // Rows another reaper (or the late worker's own finish) holds are theirs to settle.
    let expired: Vec<Uuid> = commands::table
        .filter(commands::status.eq(RUNNING))
        .filter(commands::lease_expires_at.lt(now))
        .select(commands::id)
        .for_update()
        .skip_locked()
        .load(conn)
        .await?;
    end_lost(conn, expired, &Completion::worker_lost(domain::command::LEASE_EXPIRED_LOST), now).await
}

/// Marks the running commands of `owner` as lost while no session holds its presence lock.
async fn reap_owner(conn: &mut AsyncPgConnection, owner: &str, now: Timestamp) -> StoreResult<Vec<CommandRow>> {
    let owned: Vec<Owned> = diesel::sql_query(OWNED_BY_ABSENT).bind::<Text, _>(owner).load(conn).await?;
    let ids = owned.into_iter().map(|o| o.id).collect();
    end_lost(conn, ids, &Completion::worker_lost(domain::command::ABSENT_OWNER_LOST), now).await
}

/// Ends the running commands `ids` (locked by the caller) with `c`, their events and webhooks.
async fn end_lost(
    conn: &mut AsyncPgConnection,
    ids: Vec<Uuid>,
    c: &Completion,
    now: Timestamp,
) -> StoreResult<Vec<CommandRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let expired = commands::table.filter(commands::id.eq_any(ids));
    let mut ended: Vec<(CommandRow, i64, i64)> = diesel::update(expired)
        .set((
            commands::status.eq(c.status.as_str()),
            commands::exit_code.eq(c.exit_code),
            commands::termination_reason.eq(c.reason.as_str()),
            commands::error.eq(c.error.as_deref()),
            commands::finished_at.eq(now),
            commands::lease_owner.eq(None::<String>),
            commands::lease_expires_at.eq(None::<Timestamp>),
            commands::event_seq.eq(commands::event_seq + events::ENDING_EVENTS),
        ))
        .returning((CommandRow::as_returning(), commands::event_seq, commands::seq))
        .get_results(conn)
        .await?;
    ended.sort_by_key(|(_, _, seq)| *seq);
    let mut rows = Vec::with_capacity(ended.len());
    for (row, last, _) in ended {
        events::insert(conn, row.id(), last, &events::ending(c), now).await?;
        webhooks::record_command_event(conn, &row.clone().into_domain()?, now).await?;
        rows.push(row);
    }
    Ok(rows)
}

/// The first key of every presence lock (`pg_try_advisory_lock(PRESENCE_LOCKS, hashtext(owner))`):
/// "rdev" in ASCII, so they are told apart from other advisory locks. Two owners whose names
/// hash alike would only make one of them look present while the other is gone; the lease
/// still settles that one.
macro_rules! presence_lock_of {
    ($owner:literal) => {
        concat!(
            "l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = 1919182198::oid \
            AND l.objid = hashtext(",
            $owner,
            ")::oid \
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    };
}

/// Takes the presence lock of owner `$1` for this session, without waiting.
const TAKE_PRESENCE: &str = "SELECT pg_try_advisory_lock(1919182198, hashtext($1)) AS held";

/// Ends the other sessions that hold owner `$1`'s presence lock. Worker ids are unique per
/// process, so such a session is this replica's own old one, lingering on a half-open
/// connection the server has not noticed is dead (it would keep the lock for hours).
const END_LINGERING_PRESENCE: &str = concat!(
    "SELECT count(pg_terminate_backend(l.pid)) AS ended FROM pg_locks l WHERE l.pid <> pg_backend_pid() AND ",
    presence_lock_of!("$1")
);

/// Owners of running commands whose presence lock no session holds.
const ABSENT_OWNERS: &str = concat!(
    "SELECT DISTINCT c.lease_owner AS owner FROM commands c \
     WHERE c.status = 'running' AND c.lease_owner IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE ",
    presence_lock_of!("c.lease_owner"),
    ")"
);

/// The running commands of owner `$1`, locked, if no session holds its presence lock; rows
/// another reaper or a late finish holds are theirs to settle.
const OWNED_BY_ABSENT: &str = concat!(
    "SELECT c.id FROM commands c \
     WHERE c.status = 'running' AND c.lease_owner = $1 \
       AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE ",
    presence_lock_of!("$1"),
    ") FOR UPDATE OF c SKIP LOCKED"
);

/// Puts command `$1` held by fence `$2` back in the queue (unless a client asked to cancel it)
/// with the event `Status(Queued)` at `$3`.
const HAND_BACK: &str = "\
WITH back AS ( \
    UPDATE commands SET status = 'queued', started_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
        event_seq = event_seq + 1 \
    WHERE id = $1 AND status = 'running' AND fence = $2 AND NOT cancel_requested \
    RETURNING id, event_seq \
) \
INSERT INTO command_events (command_id, seq, kind, stream, data, at) \
SELECT id, event_seq, 'status', NULL, convert_to('queued', 'UTF8'), $3 FROM back";

#[derive(Debug, QueryableByName)]
struct Owned {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

#[derive(Debug, QueryableByName)]
struct Owner {
    #[diesel(sql_type = Text)]
    owner: String,
}

#[derive(Debug, QueryableByName)]
struct Ended {
    #[diesel(sql_type = BigInt)]
    ended: i64,
}

#[derive(Debug, QueryableByName)]
struct Held {
    #[diesel(sql_type = Bool)]
    held: bool,
}

/// Takes `worker`'s presence lock on a connection of its own, which then holds it for as long
/// as the session lives; `None` when an old session holds it still, which is then ended so
/// that the next attempt succeeds.
async fn take_presence(url: &str, worker: &WorkerId) -> DomainResult<Option<AsyncPgConnection>> {
    let mut conn = crate::open(url).await?;
    let taken: Held = diesel::sql_query(TAKE_PRESENCE)
        .bind::<Text, _>(worker.as_str())
        .get_result(&mut conn)
        .await
        .map_err(|e| db_error(e, "take presence"))?;
    if taken.held {
        return Ok(Some(conn));
    }
    let ended: Ended = diesel::sql_query(END_LINGERING_PRESENCE)
        .bind::<Text, _>(worker.as_str())
        .get_result(&mut conn)
        .await
        .map_err(|e| db_error(e, "end a lingering presence session"))?;
    tracing::warn!(worker = %worker, sessions = ended.ended, "an old session held this replica's presence; ended it");
    Ok(None)
}

/// Whether a presence session still answers.
async fn alive(conn: &mut AsyncPgConnection) -> bool {
    let ping = diesel_async::SimpleAsyncConnection::batch_execute(conn, "SELECT 1");
    matches!(tokio::time::timeout(PRESENCE_PING_TIMEOUT, ping).await, Ok(Ok(())))
}

/// How long a presence session may take to answer before it counts as lost.
const PRESENCE_PING_TIMEOUT: Duration = Duration::from_secs(2);

fn lease_end(now: Timestamp, lease: Duration) -> DomainResult<Timestamp> {
    TimeDelta::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| DomainError::Internal(format!("lease {lease:?} is too long")))
}

#[async_trait]
impl CommandQueue for PgStore {
    #[tracing::instrument(level = "debug", skip_all, fields(worker = %worker))]
    async fn claim_next(&self, worker: &WorkerId, now: Timestamp, lease: Duration) -> DomainResult<Option<Claim>> {
        let until = lease_end(now, lease)?;
        let mut conn = self.conn().await?;
        let mut full: Vec<Uuid> = Vec::new();
        // Each attempt is its own transaction: a full project's lock is released before the
        // next candidate's project is locked. One statement can still hold two project locks:
        // a candidate that fails its re-check after a wait keeps the locks taken for it while
        // the scan moves on, so two claimers can deadlock. PostgreSQL then aborts one of them,
        // which committed nothing and simply tries again.
        while full.len() < MAX_FULL_PROJECTS {
            let attempt = retry_deadlocks!(
                "claim command",
                conn.transaction::<_, StoreError, _>(async |conn| {
                    claim_once(conn, &full, worker.as_str(), now, until).await
                })
                .await
            )
            .map_err(|e| e.into_domain("claim command"))?;
            match attempt {
                Attempt::Empty => return Ok(None),
                Attempt::Started(s) => return Ok(Some(Claim { command: s.command.into_domain()?, fence: s.fence })),
                Attempt::Full(project) => full.push(project),
            }
        }
        Ok(None)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(worker = %worker, max))]
    async fn claim_batch(
        &self,
        worker: &WorkerId,
        now: Timestamp,
        lease: Duration,
        max: usize,
    ) -> DomainResult<Vec<Claim>> {
        match max {
            0 => return Ok(Vec::new()),
            // One command: the single claim is one statement fewer than a batch.
            1 => return Ok(self.claim_next(worker, now, lease).await?.into_iter().collect()),
            _ => {}
        }
        let until = lease_end(now, lease)?;
        let mut conn = self.conn().await?;
        // A single claim (`claim_next`) takes its project lock outside the id order, so it and
        // a batch can still meet in a deadlock.
        let started = retry_deadlocks!(
            "claim commands",
            conn.transaction::<_, StoreError, _>(async |conn| {
                claim_batch_once(conn, max, worker.as_str(), now, until).await
            })
            .await
        )
        .map_err(|e| e.into_domain("claim commands"))?;
        started.into_iter().map(|s| Ok(Claim { command: s.command.into_domain()?, fence: s.fence })).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id, fence))]
    async fn renew_lease(&self, id: CommandId, fence: i64, until: Timestamp) -> DomainResult<LeaseStatus> {
        let id = id.as_uuid();
        let mut conn = self.liveness_conn().await?;
        let renewed: StoreResult<LeaseStatus> = async {
            let held = commands::table.find(id).filter(commands::status.eq(RUNNING)).filter(commands::fence.eq(fence));
            let cancel: Option<bool> = diesel::update(held)
                .set(commands::lease_expires_at.eq(until))
                .returning(commands::cancel_requested)
                .cached()
                .get_result(&mut conn)
                .await
                .optional()?;
            if let Some(cancel_requested) = cancel {
                return Ok(LeaseStatus { held: true, cancel_requested });
            }
            let cancel_requested: bool = commands::table
                .find(id)
                .select(commands::cancel_requested)
                .first(&mut conn)
                .await
                .optional()?
                .ok_or_else(rows::not_found)?;
            Ok(LeaseStatus { held: false, cancel_requested })
        }
        .await;
        renewed.map_err(|e| e.into_domain("renew lease"))
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
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let appended: StoreResult<bool> = async {
            let inserted = diesel::sql_query(APPEND_OUTPUT)
                .bind::<SqlUuid, _>(id)
                .bind::<BigInt, _>(fence)
                .bind::<Text, _>(stream.as_str())
                .bind::<Bytea, _>(data.as_bytes())
                .bind::<Timestamptz, _>(at)
                .cached()
                .execute(&mut conn)
                .await?;
            if inserted == 0 {
                rows::must_exist(&mut conn, id).await?;
            }
            Ok(inserted > 0)
        }
        .await;
        appended.map_err(|e| e.into_domain("append output"))
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
        // Owned, because the finish may wait for a batch written by a task of its own.
        let request =
            FinishRequest { id: id.as_uuid(), fence, completion: completion.clone(), output: output.clone(), at };
        self.finishes.finish(request).await?.map(CommandRow::into_domain).transpose()
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn reap_expired(&self, now: Timestamp) -> DomainResult<Vec<Command>> {
        let mut conn = self.liveness_conn().await?;
        let rows = conn
            .transaction::<_, StoreError, _>(async |conn| reap(conn, now).await)
            .await
            .map_err(|e| e.into_domain("reap expired leases"))?;
        rows.into_iter().map(CommandRow::into_domain).collect()
    }

    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %id, fence))]
    async fn hand_back(&self, id: CommandId, fence: i64, at: Timestamp) -> DomainResult<bool> {
        let id = id.as_uuid();
        let mut conn = self.conn().await?;
        let handed: StoreResult<bool> = async {
            let changed = diesel::sql_query(HAND_BACK)
                .bind::<SqlUuid, _>(id)
                .bind::<BigInt, _>(fence)
                .bind::<Timestamptz, _>(at)
                .execute(&mut conn)
                .await?;
            if changed == 0 {
                rows::must_exist(&mut conn, id).await?;
            }
            Ok(changed > 0)
        }
        .await;
        handed.map_err(|e| e.into_domain("hand back command"))
    }

    #[tracing::instrument(level = "trace", skip_all, fields(worker = %worker))]
    async fn hold_presence(&self, worker: &WorkerId, _now: Timestamp) -> DomainResult<bool> {
        let mut held = self.presence.lock().await;
        if let Some(conn) = held.get_mut(worker) {
            if alive(conn).await {
                return Ok(true);
            }
            tracing::warn!(worker = %worker, "the presence session was lost; taking it again");
            held.remove(worker);
        }
        match take_presence(&self.url, worker).await? {
            Some(conn) => {
                held.insert(worker.clone(), conn);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn release_presence(&self, worker: &WorkerId) -> DomainResult<()> {
        let conn = self.presence.lock().await.remove(worker);
        if let Some(mut conn) = conn {
            // Unlocked before the connection goes, so others see the absence at once.
            let unlock =
                diesel_async::SimpleAsyncConnection::batch_execute(&mut conn, "SELECT pg_advisory_unlock_all()");
            unlock.await.map_err(|e| db_error(e, "release presence"))?;
        }
        Ok(())
    }

    async fn absent_owners(&self, _now: Timestamp) -> DomainResult<Vec<WorkerId>> {
        let mut conn = self.liveness_conn().await?;
        let owners: Vec<Owner> =
            diesel::sql_query(ABSENT_OWNERS).load(&mut conn).await.map_err(|e| db_error(e, "absent owners"))?;
        Ok(owners.into_iter().map(|o| WorkerId::new(o.owner)).collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(owner = %owner))]
    async fn reap_absent(&self, owner: &WorkerId, now: Timestamp) -> DomainResult<Vec<Command>> {
        let mut conn = self.liveness_conn().await?;
        let rows = conn
            .transaction::<_, StoreError, _>(async |conn| reap_owner(conn, owner.as_str(), now).await)
            .await
            .map_err(|e| e.into_domain("reap absent owner"))?;
        rows.into_iter().map(CommandRow::into_domain).collect()
    }

    #[tracing::instrument(level = "trace", skip_all, fields(worker = %worker))]
    async fn heartbeat(&self, worker: &WorkerId, capacity: u32, now: Timestamp) -> DomainResult<()> {
        let capacity: i32 = codec::column_int("capacity", capacity)?;
        let mut conn = self.liveness_conn().await?;
        diesel::insert_into(workers::table)
            .values((workers::id.eq(worker.as_str()), workers::capacity.eq(capacity), workers::last_seen.eq(now)))
            .on_conflict(workers::id)
            .do_update()
            .set((workers::capacity.eq(capacity), workers::last_seen.eq(now)))
            .cached()
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "worker heartbeat"))?;
        Ok(())
    }

    async fn live_workers(&self, since: Timestamp) -> DomainResult<WorkerCapacity> {
        let mut conn = self.conn().await?;
        let capacities: Vec<i32> = workers::table
            .filter(workers::last_seen.ge(since))
            .select(workers::capacity)
            .load(&mut conn)
            .await
            .map_err(|e| db_error(e, "live workers"))?;
        let replicas = codec::int("replicas", capacities.len())?;
        let capacity =
            capacities.into_iter().map(|c| codec::int::<i32, u32>("capacity", c)).sum::<DomainResult<u32>>()?;
        Ok(WorkerCapacity { replicas, capacity })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(job))]
    async fn try_job_lease(&self, job: &str, owner: &WorkerId, now: Timestamp, until: Timestamp) -> DomainResult<bool> {
        let mut conn = self.conn().await?;
        let taken = diesel::sql_query(TAKE_JOB_LEASE)
            .bind::<Text, _>(job)
            .bind::<Text, _>(owner.to_string())
            .bind::<Timestamptz, _>(until)
            .bind::<Timestamptz, _>(now)
            .cached()
            .execute(&mut conn)
            .await
            .map_err(|e| db_error(e, "job lease"))?;
        Ok(taken == 1)
    }
}

/// Takes job `$1` for owner `$2` until `$3` unless another owner holds it past `$4`; one row
/// changes exactly when `$2` holds it afterwards. The row lock of the upsert makes concurrent
/// takers queue up, so only one of them wins.
const TAKE_JOB_LEASE: &str = "\
INSERT INTO job_leases (name, owner, expires_at) VALUES ($1, $2, $3) \
ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at \
WHERE job_leases.expires_at < $4 OR job_leases.owner = EXCLUDED.owner";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_claim_ranks_a_head_that_grows_with_the_batch_within_bounds() {
        assert_eq!((head_for(1), head_for(4), head_for(8), head_for(usize::MAX)), (64, 64, 128, 256));
    }

    #[test]
    fn leases_end_after_their_length_and_absurd_ones_are_refused() {
        let now = domain::to_micros_precision(chrono::Utc::now());
        assert_eq!(lease_end(now, Duration::from_secs(60)), Ok(now + TimeDelta::seconds(60)));
        assert!(lease_end(now, Duration::MAX).is_err());
    }
}
