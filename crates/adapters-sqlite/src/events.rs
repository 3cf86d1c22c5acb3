//! A command's event log in `command_events`: what SSE streams replay, numbered per command.

use diesel::dsl::max;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::command::{CommandStatus, Completion};
use domain::output::{CommandEvent, EventKind, OutputStream};
use domain::{DomainResult, Timestamp};

use crate::codec::{self, micros};
use crate::schema::command_events;
use crate::StoreResult;

const STATUS: &str = "status";
const OUTPUT: &str = "output";
const EXIT: &str = "exit";

/// One row of `command_events`.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = command_events, check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct EventRow {
    command_id: String,
    seq: i64,
    kind: String,
    stream: Option<String>,
    data: Option<String>,
    at: i64,
}

impl EventRow {
    fn new(command_id: &str, seq: i64, kind: &EventKind, at: Timestamp) -> Self {
        let (kind, stream, data) = match kind {
            EventKind::Status(s) => (STATUS, None, Some(s.as_str().to_owned())),
            EventKind::Output { stream, data } => (OUTPUT, Some(stream.as_str().to_owned()), Some(data.clone())),
            EventKind::Exit => (EXIT, None, None),
        };
        Self { command_id: command_id.to_owned(), seq, kind: kind.to_owned(), stream, data, at: micros(at) }
    }

    pub(crate) fn into_domain(self) -> DomainResult<CommandEvent> {
        let kind = match (self.kind.as_str(), self.stream.as_deref(), self.data) {
            (STATUS, None, Some(status)) => {
                EventKind::Status(codec::stored("event status", &status, status.parse::<CommandStatus>())?)
            }
            (OUTPUT, Some("stdout"), Some(data)) => EventKind::Output { stream: OutputStream::Stdout, data },
            (OUTPUT, Some("stderr"), Some(data)) => EventKind::Output { stream: OutputStream::Stderr, data },
            (EXIT, None, None) => EventKind::Exit,
            _ => return Err(codec::corrupt("command event", &format!("{} #{}", self.command_id, self.seq))),
        };
        Ok(CommandEvent { seq: self.seq, kind, at: codec::time(self.at)? })
    }
}

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
        kinds.iter().zip(first..).map(|(kind, seq)| EventRow::new(command_id, seq, kind, at)).collect();
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
