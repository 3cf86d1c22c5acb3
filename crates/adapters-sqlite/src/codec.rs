//! How domain values are written into columns and read back: microsecond timestamps, UUID
//! text, JSON text. A value that does not read back is a corrupt row, reported as `Internal`.

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use domain::pagination::Cursor;
use domain::{DomainError, DomainResult, Timestamp};

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

/// Reads an optional stored timestamp.
pub(crate) fn time_opt(us: Option<i64>) -> DomainResult<Option<Timestamp>> {
    us.map(time).transpose()
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

/// A cursor for a `seq` column; keys beyond `i64` come from no page of ours and match nothing.
pub(crate) fn cursor_seq(cursor: Cursor) -> i64 {
    i64::try_from(cursor.key()).unwrap_or(i64::MAX)
}

/// Serialises a value into a JSON column.
pub(crate) fn to_json<T: Serialize>(value: &T) -> DomainResult<String> {
    serde_json::to_string(value).map_err(|e| DomainError::Internal(format!("encoding a JSON column: {e}")))
}

/// Reads a JSON column.
pub(crate) fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> DomainResult<T> {
    serde_json::from_str(text).map_err(|e| DomainError::Internal(format!("corrupt {column} column: {e}")))
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
