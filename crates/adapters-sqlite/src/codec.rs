//! How domain values are written into SQLite's columns and read back: microsecond timestamps,
//! UUID text, JSON text (`SqliteColumns`); what does not depend on the backend comes from
//! `sql_rows::codec`. A value that does not read back is a corrupt row, reported as `Internal`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use domain::pagination::Cursor;
use domain::{DomainResult, Timestamp};
use sql_rows::codec;
pub(crate) use sql_rows::codec::{bytes32, column_int, corrupt, cursor_seq, int};
use sql_rows::Columns;

/// A timestamp as microseconds since the epoch.
pub(crate) fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

/// An optional timestamp as microseconds.
pub(crate) fn micros_opt(t: Option<Timestamp>) -> Option<i64> {
    t.map(micros)
}

/// Reads a stored microsecond timestamp.
pub(crate) fn time(us: i64) -> DomainResult<Timestamp> {
    chrono::DateTime::from_timestamp_micros(us).ok_or_else(|| corrupt("timestamp", &us.to_string()))
}

/// Reads a stored UUID.
pub(crate) fn uuid(text: &str) -> DomainResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| corrupt("id", text))
}

/// The id column value a cursor continues after: hyphenated lowercase UUID text sorts like the
/// UUID's u128, so `id > this` pages in id order.
pub(crate) fn cursor_id(cursor: Cursor) -> String {
    Uuid::from_u128(cursor.key()).to_string()
}

/// Serialises a value into a JSON column.
pub(crate) fn to_json<T: Serialize>(value: &T) -> DomainResult<String> {
    serde_json::to_string(value).map_err(|e| codec::json_encoding(&e))
}

/// Reads a JSON column.
pub(crate) fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> DomainResult<T> {
    serde_json::from_str(text).map_err(|e| codec::json_corrupt(column, &e))
}

/// The column type of SQLite: ids as hyphenated text, timestamps as microseconds since the
/// epoch, JSON as text, and text that may hold NUL as text (SQLite's text keeps NUL).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SqliteColumns;

impl Columns for SqliteColumns {
    type Id = String;
    type Time = i64;
    type Json = String;
    type Text = String;

    fn id(id: Uuid) -> String {
        id.to_string()
    }

    fn read_id(stored: String) -> DomainResult<Uuid> {
        uuid(&stored)
    }

    fn time(t: Timestamp) -> i64 {
        micros(t)
    }

    fn read_time(stored: i64) -> DomainResult<Timestamp> {
        time(stored)
    }

    fn json<T: Serialize>(value: &T) -> DomainResult<String> {
        to_json(value)
    }

    fn read_json<T: DeserializeOwned>(column: &str, stored: String) -> DomainResult<T> {
        from_json(column, &stored)
    }

    fn text(text: String) -> String {
        text
    }

    fn read_text(_column: &str, stored: String) -> DomainResult<String> {
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_sorts_like_its_number() {
        let ids: Vec<Uuid> = [0u128, 9, 10, 0xa0, u128::MAX / 3, u128::MAX].into_iter().map(Uuid::from_u128).collect();
        for pair in ids.windows(2) {
            assert!(pair[0].to_string() < pair[1].to_string());
        }
        assert_eq!(cursor_id(Cursor::after(ids[3].as_u128())), ids[3].to_string());
    }

    #[test]
    fn timestamps_round_trip_in_microseconds() {
        let t = domain::to_micros_precision(chrono::Utc::now());
        assert_eq!(time(micros(t)), Ok(t));
    }
}
