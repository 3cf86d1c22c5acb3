//! A command's event log in `command_events`: what SSE streams replay, numbered per command.
//!
//! Numbers come from the command row's `event_seq`, raised by the same statement that changes
//! the command: the row lock makes the numbering gap-free and unique across replicas.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use domain::command::Completion;
use domain::output::EventKind;
use domain::Timestamp;

use crate::prepared::CachedExt;
use crate::schema::command_events;
use crate::StoreResult;

sql_rows::command_event_rows!(diesel::pg::Pg, crate::codec::PgColumns);

/// Stores `kinds` as the command's events numbered up to `last`, the command's `event_seq`
/// after the caller raised it by `kinds.len()` in this transaction.
pub(crate) async fn insert(
    conn: &mut AsyncPgConnection,
    command_id: Uuid,
    last: i64,
    kinds: &[EventKind],
    at: Timestamp,
) -> StoreResult<()> {
    let count = i64::try_from(kinds.len()).unwrap_or(i64::MAX);
    let first = last - count + 1;
    let rows: Vec<EventRow> =
        kinds.iter().zip(first..).map(|(kind, seq)| EventRow::new(command_id, seq, kind, at)).collect();
    diesel::insert_into(command_events::table).values(&rows).cached().execute(conn).await?;
    Ok(())
}

/// The events that end a command: its final status, then `Exit`.
pub(crate) fn ending(completion: &Completion) -> [EventKind; 2] {
    [EventKind::Status(completion.status), EventKind::Exit]
}

/// How many events `ending` makes, for raising `event_seq`.
pub(crate) const ENDING_EVENTS: i64 = 2;

/// Events of `command_id` with `seq > after`, in order, at most `limit`.
pub(crate) async fn after(
    conn: &mut AsyncPgConnection,
    command_id: Uuid,
    after: i64,
    limit: u32,
) -> StoreResult<Vec<EventRow>> {
    Ok(command_events::table
        .filter(command_events::command_id.eq(command_id))
        .filter(command_events::seq.gt(after))
        .order(command_events::seq.asc())
        .limit(i64::from(limit))
        .select(EventRow::as_select())
        .cached()
        .load(conn)
        .await?)
}
