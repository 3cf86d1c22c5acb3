//! `RateLimitStore` on SQLite: sliding-window counters in `rate_limiting`, one row per key
//! and fixed window. Every replica sharing the database file shares the counts.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::SqliteConnection;

use domain::ports::RateLimitStore;
use domain::rate_limit::{RateLimitPolicy, UnusedGrant, WindowGrant};
use domain::{DomainResult, Timestamp};

use crate::codec;
use crate::schema::rate_limiting;
use crate::{SqliteStore, StoreResult};

/// The count of `key` in the window starting at `start` (0 when there is none).
fn count(conn: &mut SqliteConnection, key: &str, start: i64) -> StoreResult<u64> {
    let n: Option<i64> = rate_limiting::table.find((key, start)).select(rate_limiting::count).first(conn).optional()?;
    Ok(codec::int("rate limit count", n.unwrap_or(0))?)
}

/// Hands back `unused`, then takes up to `want` requests; the caller holds the write transaction.
fn take(
    conn: &mut SqliteConnection,
    key: &str,
    policy: RateLimitPolicy,
    now: Timestamp,
    want: u64,
    unused: Option<UnusedGrant>,
) -> StoreResult<WindowGrant> {
    if let Some(unused) = unused {
        let left = count(conn, key, unused.window_start)?.saturating_sub(unused.count);
        diesel::update(rate_limiting::table.find((key, unused.window_start)))
            .set(rate_limiting::count.eq(codec::column_int::<u64, i64>("rate limit count", left)?))
            .execute(conn)?;
    }
    let pos = policy.position(now);
    let previous = count(conn, key, pos.previous_start)?;
    let current = count(conn, key, pos.current_start)?;
    let granted = policy.room(previous, current, pos, want);
    if granted > 0 {
        let n: i64 = codec::column_int("rate limit count", granted)?;
        diesel::insert_into(rate_limiting::table)
            .values((
                rate_limiting::key.eq(key),
                rate_limiting::window_start.eq(pos.current_start),
                rate_limiting::count.eq(n),
            ))
            .on_conflict((rate_limiting::key, rate_limiting::window_start))
            .do_update()
            .set(rate_limiting::count.eq(rate_limiting::count + n))
            .execute(conn)?;
    }
    // Windows before the previous one no longer weigh in on any decision.
    diesel::delete(
        rate_limiting::table
            .filter(rate_limiting::key.eq(key))
            .filter(rate_limiting::window_start.lt(pos.previous_start)),
    )
    .execute(conn)?;
    Ok(WindowGrant { previous, current, granted })
}

#[async_trait]
impl RateLimitStore for SqliteStore {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn take(
        &self,
        key: &str,
        policy: RateLimitPolicy,
        now: Timestamp,
        want: u64,
        unused: Option<UnusedGrant>,
    ) -> DomainResult<WindowGrant> {
        let key = key.to_owned();
        self.write("rate limit", move |conn| take(conn, &key, policy, now, want, unused)).await
    }
}
