//! Prepared statements kept per connection for queries diesel would prepare anew every time.
//!
//! Diesel caches a statement only when its SQL cannot vary, and it counts every `UPDATE` and
//! every raw `sql_query` as possibly varying. Preparing anew costs a round trip and a plan per
//! query, which on the queue's hot path costs more than the work itself. The statements wrapped
//! here have fixed SQL for fixed bind types, so diesel-async's cache may key them by their SQL
//! text (and bind types): each is parsed and planned once per connection.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A query whose prepared statement is cached by its SQL text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cached<Q>(Q);

/// Marks a query as safe to cache by its SQL text: its text is the same for the same bind types.
pub(crate) trait CachedExt: Sized {
    /// Wraps the query (see the module documentation for when that is right).
    fn cached(self) -> Cached<Self> {
        Cached(self)
    }
}

impl<T: QueryFragment<Pg>> CachedExt for T {}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Cached<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    // Overridable because diesel-async turns on diesel's third-party-backend feature, which
    // this crate names too; the key then is the statement's SQL text plus its bind types.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Cached<Q> {
    type QueryId = ();
    // No static id: the cache keys such statements by their SQL text instead of their type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Cached<Q> {
    type SqlType = Q::SqlType;
}
