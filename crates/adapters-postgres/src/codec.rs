//! How domain values are written into columns and read back: JSONB documents, UTF-8 bytes,
//! integers of other widths. A value that does not read back is a corrupt row (`Internal`).

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use domain::pagination::Cursor;
use domain::{DomainError, DomainResult};

/// The id a cursor continues after: PostgreSQL orders UUIDs by their bytes, which is the order
/// of their u128 value, so `id > this` pages in id order.
pub(crate) fn cursor_id(cursor: Cursor) -> Uuid {
    Uuid::from_u128(cursor.key())
}

/// A cursor for a `seq` column; keys beyond `i64` come from no page of ours and match nothing.
pub(crate) fn cursor_seq(cursor: Cursor) -> i64 {
    i64::try_from(cursor.key()).unwrap_or(i64::MAX)
}

/// Serialises a value into a JSONB column.
pub(crate) fn to_json<T: Serialize>(value: &T) -> DomainResult<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| DomainError::Internal(format!("encoding a JSON column: {e}")))
}

/// Reads a JSONB column.
pub(crate) fn from_json<T: DeserializeOwned>(column: &str, value: serde_json::Value) -> DomainResult<T> {
    serde_json::from_value(value).map_err(|e| DomainError::Internal(format!("corrupt {column} column: {e}")))
}

/// Reads a BYTEA column that holds UTF-8 text.
pub(crate) fn text(column: &str, bytes: Vec<u8>) -> DomainResult<String> {
    String::from_utf8(bytes).map_err(|e| corrupt(column, &format!("{} bytes of invalid UTF-8", e.as_bytes().len())))
}

/// Converts a stored integer into a narrower or unsigned domain type.
pub(crate) fn int<A: Copy + ToString, B: TryFrom<A>>(column: &str, value: A) -> DomainResult<B> {
    B::try_from(value).map_err(|_| corrupt(column, &value.to_string()))
}

/// Converts a domain integer into a column type (always fits for values the domain validated).
pub(crate) fn column_int<A: Copy + ToString, B: TryFrom<A>>(field: &str, value: A) -> DomainResult<B> {
    B::try_from(value)
        .map_err(|_| DomainError::Internal(format!("{field} {} does not fit its column", value.to_string())))
}

/// A stored value that does not parse: the database was changed behind the service's back.
pub(crate) fn corrupt(column: &str, value: &str) -> DomainError {
    DomainError::Internal(format!("corrupt {column} value in the database: {value:?}"))
}

/// Maps a domain parse error of a stored value to a corrupt-row error.
pub(crate) fn stored<T>(column: &str, value: &str, parsed: DomainResult<T>) -> DomainResult<T> {
    parsed.map_err(|_| corrupt(column, value))
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
        assert!(matches!(text("stdout", vec![0xff, 0xfe]), Err(DomainError::Internal(_))));
        assert_eq!(text("stdout", b"a\0b".to_vec()), Ok("a\0b".to_owned()));
    }
}
