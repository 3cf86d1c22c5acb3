//! How domain values are written into PostgreSQL's columns and read back: JSONB documents,
//! UTF-8 bytes (`PgColumns`); what does not depend on the backend comes from `sql_rows::codec`.
//! A value that does not read back is a corrupt row (`Internal`).

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use domain::pagination::Cursor;
use domain::{DomainResult, Timestamp};
use sql_rows::codec;
pub(crate) use sql_rows::codec::{bytes32, column_int, corrupt, cursor_seq, int};
use sql_rows::Columns;

/// The id a cursor continues after: PostgreSQL orders UUIDs by their bytes, which is the order
/// of their u128 value, so `id > this` pages in id order.
pub(crate) fn cursor_id(cursor: Cursor) -> Uuid {
    Uuid::from_u128(cursor.key())
}

/// Serialises a value into a JSONB column.
pub(crate) fn to_json<T: Serialize>(value: &T) -> DomainResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| codec::json_encoding(&e))
}

/// Reads a JSONB column.
pub(crate) fn from_json<T: DeserializeOwned>(column: &str, value: serde_json::Value) -> DomainResult<T> {
    serde_json::from_value(value).map_err(|e| codec::json_corrupt(column, &e))
}

/// Reads a BYTEA column that holds UTF-8 text.
pub(crate) fn text(column: &str, bytes: Vec<u8>) -> DomainResult<String> {
    String::from_utf8(bytes).map_err(|e| corrupt(column, &format!("{} bytes of invalid UTF-8", e.as_bytes().len())))
}

/// The column types of PostgreSQL: `uuid`, `timestamptz`, `jsonb`, and `bytea` for text that
/// may hold NUL (PostgreSQL's `text` cannot).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgColumns;

impl Columns for PgColumns {
    type Id = Uuid;
    type Time = Timestamp;
    type Json = serde_json::Value;
    type Text = Vec<u8>;

    fn id(id: Uuid) -> Uuid {
        id
    }

    fn read_id(stored: Uuid) -> DomainResult<Uuid> {
        Ok(stored)
    }

    fn time(t: Timestamp) -> Timestamp {
        t
    }

    fn read_time(stored: Timestamp) -> DomainResult<Timestamp> {
        Ok(stored)
    }

    fn json<T: Serialize>(value: &T) -> DomainResult<serde_json::Value> {
        to_json(value)
    }

    fn read_json<T: DeserializeOwned>(column: &str, stored: serde_json::Value) -> DomainResult<T> {
        from_json(column, stored)
    }

    fn text(text: String) -> Vec<u8> {
        text.into_bytes()
    }

    fn read_text(column: &str, stored: Vec<u8>) -> DomainResult<String> {
        text(column, stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_ids_round_trip() {
        let id = Uuid::now_v7();
        assert_eq!(cursor_id(Cursor::after(id.as_u128())), id);
    }

    #[test]
    fn uuid_bytes_sort_like_their_number() {
        let ids: Vec<Uuid> = [0u128, 9, 10, 0xa0, u128::MAX / 3, u128::MAX].into_iter().map(Uuid::from_u128).collect();
        for pair in ids.windows(2) {
            assert!(pair[0].as_bytes() < pair[1].as_bytes());
        }
    }

    #[test]
    fn invalid_utf8_is_a_corrupt_row() {
        assert!(matches!(text("stdout", vec![0xff, 0xfe]), Err(domain::DomainError::Internal(_))));
        assert_eq!(text("stdout", b"a\0b".to_vec()), Ok("a\0b".to_owned()));
    }
}
