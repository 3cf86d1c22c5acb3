//! `RateLimitStore` on SQLite: sliding-window counters in `rate_limiting`, one row per key
//! and fixed window. Every replica sharing the database file shares the counts.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::ports::RateLimitStore;
use domain::rate_limit::{RateDecision, RateLimitPolicy};
use domain::{DomainResult, Timestamp};

use crate::codec;
use crate::schema::rate_limiting;
use crate::{SqliteStore, StoreResult};

/// The count of `key` in the window starting at `start` (0 when there is none).
fn count(conn: &mut SqliteConnection, key: &str, start: i64) -> StoreResult<u64> {
    let n: Option<i64> = rate_limiting::table.find((key, start)).select(rate_limiting::count).first(conn).optional()?;
    Ok(codec::int("rate limit count", n.unwrap_or(0))?)
}

/// Decides and counts one request; the caller holds the write transaction.
fn acquire(
    conn: &mut SqliteConnection,
    key: &str,
    policy: RateLimitPolicy,
    now: Timestamp,
) -> StoreResult<RateDecision> {
    let pos = policy.position(now);
    let previous = count(conn, key, pos.previous_start)?;
    let current = count(conn, key, pos.current_start)?;
    let decision = policy.decide(previous, current, pos);
    if decision.allowed {
        diesel::insert_into(rate_limiting::table)
            .values((
                rate_limiting::key.eq(key),
                rate_limiting::window_start.eq(pos.current_start),
                rate_limiting::count.eq(1_i64),
            ))
            .on_conflict((rate_limiting::key, rate_limiting::window_start))
            .do_update()
            .set(rate_limiting::count.eq(rate_limiting::count + 1))
            .execute(conn)?;
    }
    // Windows before the previous one no longer weigh in on any decision.
    diesel::delete(
        rate_limiting::table
            .filter(rate_limiting::key.eq(key))
            .filter(rate_limiting::window_start.lt(pos.previous_start)),
    )
    .execute(conn)?;
    Ok(decision)
}

#[async_trait]
impl RateLimitStore for SqliteStore {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn acquire(&self, key: &str, policy: RateLimitPolicy, now: Timestamp) -> DomainResult<RateDecision> {
        let key = key.to_owned();
        self.write("rate limit", move |conn| acquire(conn, &key, policy, now)).await
    }
}
