//! A command's event log in `command_events`: what SSE streams replay, numbered per command.
//!
//! Numbers come from the command row's `event_seq`, raised by the same statement that changes
//! the command: the row lock makes the numbering gap-free and unique across replicas.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use domain::command::{CommandStatus, Completion};
use domain::output::{CommandEvent, EventKind, OutputStream};
use domain::{DomainResult, Timestamp};

use crate::codec;
use crate::prepared::CachedExt;
use crate::schema::command_events;
use crate::StoreResult;

const STATUS: &str = "status";
const OUTPUT: &str = "output";
const EXIT: &str = "exit";

/// One row of `command_events`.
#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = command_events, check_for_backend(diesel::pg::Pg))]
pub(crate) struct EventRow {
    command_id: Uuid,
    seq: i64,
    kind: String,
    stream: Option<String>,
    data: Option<Vec<u8>>,
    at: Timestamp,
}

impl EventRow {
    fn new(command_id: Uuid, seq: i64, kind: &EventKind, at: Timestamp) -> Self {
        let (kind, stream, data) = match kind {
            EventKind::Status(s) => (STATUS, None, Some(s.as_str().as_bytes().to_vec())),
            EventKind::Output { stream, data } => {
                (OUTPUT, Some(stream.as_str().to_owned()), Some(data.as_bytes().to_vec()))
            }
            EventKind::Exit => (EXIT, None, None),
        };
        Self { command_id, seq, kind: kind.to_owned(), stream, data, at }
    }

    pub(crate) fn into_domain(self) -> DomainResult<CommandEvent> {
        let data = self.data.map(|d| codec::text("command_events.data", d)).transpose()?;
        let kind = match (self.kind.as_str(), self.stream.as_deref(), data) {
            (STATUS, None, Some(status)) => {
                EventKind::Status(codec::stored("event status", &status, status.parse::<CommandStatus>())?)
            }
            (OUTPUT, Some("stdout"), Some(data)) => EventKind::Output { stream: OutputStream::Stdout, data },
            (OUTPUT, Some("stderr"), Some(data)) => EventKind::Output { stream: OutputStream::Stderr, data },
            (EXIT, None, None) => EventKind::Exit,
            _ => return Err(codec::corrupt("command event", &format!("{} #{}", self.command_id, self.seq))),
        };
        Ok(CommandEvent { seq: self.seq, kind, at: self.at })
    }
}

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
