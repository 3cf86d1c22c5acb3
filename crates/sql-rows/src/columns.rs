//! How a store types the columns whose types differ between the backends.

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use domain::{DomainResult, Timestamp};

/// How one backend stores ids, timestamps, JSON documents and text that may hold NUL; reading
/// back a value that does not parse is a corrupt row (`DomainError::Internal`).
pub trait Columns {
    /// An id column (a UUID).
    type Id: std::fmt::Display;
    /// A timestamp column.
    type Time;
    /// A JSON document column.
    type Json;
    /// A column of UTF-8 text that may hold NUL bytes (command stdin and output).
    type Text;

    /// Stores an id.
    fn id(id: Uuid) -> Self::Id;
    /// Reads a stored id.
    fn read_id(stored: Self::Id) -> DomainResult<Uuid>;
    /// Stores a timestamp.
    fn time(t: Timestamp) -> Self::Time;
    /// Reads a stored timestamp.
    fn read_time(stored: Self::Time) -> DomainResult<Timestamp>;
    /// Serialises a value into a JSON column.
    fn json<T: Serialize>(value: &T) -> DomainResult<Self::Json>;
    /// Reads a JSON column; `column` names it in the error.
    fn read_json<T: DeserializeOwned>(column: &str, stored: Self::Json) -> DomainResult<T>;
    /// Stores text that may hold NUL.
    fn text(text: String) -> Self::Text;
    /// Reads stored text that may hold NUL; `column` names it in the error.
    fn read_text(column: &str, stored: Self::Text) -> DomainResult<String>;

    /// Stores an optional timestamp.
    fn time_opt(t: Option<Timestamp>) -> Option<Self::Time> {
        t.map(Self::time)
    }

    /// Reads an optional stored timestamp.
    fn read_time_opt(stored: Option<Self::Time>) -> DomainResult<Option<Timestamp>> {
        stored.map(Self::read_time).transpose()
    }

    /// Reads an optional stored id.
    fn read_id_opt(stored: Option<Self::Id>) -> DomainResult<Option<Uuid>> {
        stored.map(Self::read_id).transpose()
    }
}
