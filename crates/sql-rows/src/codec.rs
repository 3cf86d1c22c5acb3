//! Column helpers whose behaviour does not depend on the backend: integers of other widths,
//! corrupt-row errors, JSON errors, cursors, fixed-size hashes, stored names.

use domain::api_key::ProjectAccess;
use domain::pagination::Cursor;
use domain::project::ProjectName;
use domain::webhook::EventType;
use domain::{DomainError, DomainResult};

/// A cursor for a `seq` column; keys beyond `i64` come from no page of ours and match nothing.
pub fn cursor_seq(cursor: Cursor) -> i64 {
    i64::try_from(cursor.key()).unwrap_or(i64::MAX)
}

/// Converts a stored integer into a narrower or unsigned domain type.
pub fn int<A: Copy + ToString, B: TryFrom<A>>(column: &str, value: A) -> DomainResult<B> {
    B::try_from(value).map_err(|_| corrupt(column, &value.to_string()))
}

/// Converts a domain integer into a column type (always fits for values the domain validated).
pub fn column_int<A: Copy + ToString, B: TryFrom<A>>(field: &str, value: A) -> DomainResult<B> {
    B::try_from(value)
        .map_err(|_| DomainError::Internal(format!("{field} {} does not fit its column", value.to_string())))
}

/// A stored value that does not parse: the database was changed behind the service's back.
pub fn corrupt(column: &str, value: &str) -> DomainError {
    DomainError::Internal(format!("corrupt {column} value in the database: {value:?}"))
}

/// Maps a domain parse error of a stored value to a corrupt-row error.
pub fn stored<T>(column: &str, value: &str, parsed: DomainResult<T>) -> DomainResult<T> {
    parsed.map_err(|_| corrupt(column, value))
}

/// A value that would not serialise into a JSON column.
pub fn json_encoding(e: &serde_json::Error) -> DomainError {
    DomainError::Internal(format!("encoding a JSON column: {e}"))
}

/// A JSON column that does not read back.
pub fn json_corrupt(column: &str, e: &serde_json::Error) -> DomainError {
    DomainError::Internal(format!("corrupt {column} column: {e}"))
}

/// Reads a 32-byte hash or MAC column.
pub fn bytes32(column: &str, bytes: Vec<u8>) -> DomainResult<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).map_err(|b| corrupt(column, &format!("{} bytes", b.len())))
}

/// Reads a stored event type name.
pub fn event_type(name: &str) -> DomainResult<EventType> {
    stored("event_type", name, name.parse::<EventType>())
}

/// Reads a stored project name.
pub fn project_name(name: &str) -> DomainResult<ProjectName> {
    stored("project name", name, ProjectName::parse(name))
}

/// Reads a nullable list of project names (stored as JSON by the caller): NULL is every project.
pub fn project_access(names: Option<Vec<String>>) -> DomainResult<ProjectAccess> {
    match names {
        None => Ok(ProjectAccess::All),
        Some(names) => Ok(ProjectAccess::Only(names.iter().map(|n| project_name(n)).collect::<DomainResult<_>>()?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_that_do_not_fit_are_corrupt_rows() {
        assert_eq!(int::<i32, u32>("n", 7), Ok(7));
        assert!(matches!(int::<i32, u32>("n", -1), Err(DomainError::Internal(_))));
        assert!(matches!(column_int::<u64, i32>("n", u64::MAX), Err(DomainError::Internal(_))));
        assert_eq!(cursor_seq(Cursor::after(u128::MAX)), i64::MAX);
    }

    #[test]
    fn hashes_must_have_32_bytes() {
        assert_eq!(bytes32("hash", vec![7; 32]), Ok([7; 32]));
        assert!(matches!(bytes32("hash", vec![7; 31]), Err(DomainError::Internal(_))));
    }

    #[test]
    fn stored_project_lists_are_parsed() {
        assert_eq!(project_access(None), Ok(ProjectAccess::All));
        assert!(matches!(project_access(Some(vec!["web".into()])), Ok(ProjectAccess::Only(_))));
        assert!(matches!(project_access(Some(vec!["Not A Name".into()])), Err(DomainError::Internal(_))));
    }
}
