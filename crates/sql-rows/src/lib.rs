//! What the two SQL stores (`adapters-sqlite`, `adapters-postgres`) share: how each table's row
//! is built from the domain and read back into it, written once.
//!
//! The stores differ in how they type some columns (SQLite: UUIDs as text, timestamps as
//! microseconds, JSON as text; PostgreSQL: `uuid`, `timestamptz`, `jsonb`, `bytea`). A store
//! says how in one `Columns` impl and expands the row macros (`project_rows!`, …) in the module
//! that holds the queries, next to its diesel tables: the macros declare the diesel row structs
//! (the derives resolve in the store, so this crate needs no diesel) and their mapping. What is
//! left in each store is SQL: the schema, the queries and the connections.
//!
//! This is not an adapter: it implements no port and knows no database, so both stores may
//! depend on it without depending on each other.

pub mod codec;
mod columns;
mod rows;

pub use columns::Columns;

/// The domain crate under a fixed name, so that expanded macros name its types whatever the
/// expanding crate calls it.
#[doc(hidden)]
pub use domain as __domain;
