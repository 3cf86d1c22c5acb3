//! A command's event log in `command_events`: what SSE streams replay, numbered per command.

use diesel::dsl::max;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::command::Completion;
use domain::output::EventKind;
use domain::Timestamp;

use crate::schema::command_events;
use crate::StoreResult;

sql_rows::command_event_rows!(diesel::sqlite::Sqlite, crate::codec::SqliteColumns);

/// Appends events after the command's last one. Callers hold the write transaction, so the
/// sequence stays gap-free and unique.
pub(crate) fn append(
    conn: &mut SqliteConnection,
    command_id: &str,
    kinds: &[EventKind],
    at: Timestamp,
) -> StoreResult<()> {
    let last: Option<i64> = command_events::table
        .filter(command_events::command_id.eq(command_id))
        .select(max(command_events::seq))
        .first(conn)?;
    let first = last.unwrap_or(0) + 1;
    let rows: Vec<EventRow> =
        kinds.iter().zip(first..).map(|(kind, seq)| EventRow::new(command_id.to_owned(), seq, kind, at)).collect();
    diesel::insert_into(command_events::table).values(&rows).execute(conn)?;
    Ok(())
}

/// The events that end a command: its final status, then `Exit`.
pub(crate) fn ending(completion: &Completion) -> [EventKind; 2] {
    [EventKind::Status(completion.status), EventKind::Exit]
}

/// Events of `command_id` with `seq > after`, in order, at most `limit`.
pub(crate) fn after(
    conn: &mut SqliteConnection,
    command_id: &str,
    after: i64,
    limit: u32,
) -> StoreResult<Vec<EventRow>> {
    Ok(command_events::table
        .filter(command_events::command_id.eq(command_id))
        .filter(command_events::seq.gt(after))
        .order(command_events::seq.asc())
        .limit(i64::from(limit))
        .select(EventRow::as_select())
        .load(conn)?)
}

/// The last `seq` of each of `command_ids` that has events (every stored command has one).
pub(crate) fn last_seqs(conn: &mut SqliteConnection, command_ids: &[String]) -> StoreResult<Vec<(String, i64)>> {
    let rows: Vec<(String, Option<i64>)> = command_events::table
        .filter(command_events::command_id.eq_any(command_ids))
        .group_by(command_events::command_id)
        .select((command_events::command_id, max(command_events::seq)))
        .load(conn)?;
    Ok(rows.into_iter().filter_map(|(id, seq)| seq.map(|seq| (id, seq))).collect())
}
