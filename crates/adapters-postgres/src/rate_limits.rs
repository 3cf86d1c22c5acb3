//! `RateLimitStore` on PostgreSQL: sliding-window counters in `rate_limiting`, shared by every
//! replica. One grant is one call of `rate_limit_take` (see the migration): one round trip,
//! atomic under concurrency because the current window's row is locked while deciding.

use async_trait::async_trait;
use diesel::sql_types::{BigInt, Double, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use domain::ports::RateLimitStore;
use domain::rate_limit::{RateLimitPolicy, UnusedGrant, WindowGrant, WindowPosition};
use domain::{DomainResult, Timestamp};

use crate::codec;
use crate::connection::db_error;
use crate::prepared::CachedExt;
use crate::PgStore;

const TAKE: &str = "SELECT previous, current, granted FROM rate_limit_take($1, $2, $3, $4, $5, $6, $7, $8)";

/// The counts the database decided on, and what it granted.
#[derive(Debug, QueryableByName)]
struct Taken {
    #[diesel(sql_type = BigInt)]
    previous: i64,
    #[diesel(sql_type = BigInt)]
    current: i64,
    #[diesel(sql_type = BigInt)]
    granted: i64,
}

/// How much of the previous window still weighs in: the factor `RateLimitPolicy::room`
/// applies, computed the same way so the database's float8 arithmetic decides alike.
fn overlap(policy: RateLimitPolicy, pos: WindowPosition) -> f64 {
    let w = f64::from(policy.window_seconds.max(1)) * 1000.0;
    1.0 - (pos.elapsed_ms as f64 / w).clamp(0.0, 1.0)
}

#[async_trait]
impl RateLimitStore for PgStore {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn take(
        &self,
        key: &str,
        policy: RateLimitPolicy,
        now: Timestamp,
        want: u64,
        unused: Option<UnusedGrant>,
    ) -> DomainResult<WindowGrant> {
        let pos = policy.position(now);
        let limit: i64 = codec::column_int("rate limit", policy.limit())?;
        let want: i64 = codec::column_int("rate limit block", want)?;
        let unused = unused.unwrap_or(UnusedGrant { window_start: pos.previous_start, count: 0 });
        let unused_count: i64 = codec::column_int("rate limit count", unused.count)?;
        let mut conn = self.conn().await?;
        let taken: Taken = diesel::sql_query(TAKE)
            .bind::<Text, _>(key)
            .bind::<BigInt, _>(pos.current_start)
            .bind::<BigInt, _>(pos.previous_start)
            .bind::<Double, _>(overlap(policy, pos))
            .bind::<BigInt, _>(limit)
            .bind::<BigInt, _>(want)
            .bind::<BigInt, _>(unused.window_start)
            .bind::<BigInt, _>(unused_count)
            .cached()
            .get_result(&mut conn)
            .await
            .map_err(|e| db_error(e, "rate limit"))?;
        Ok(WindowGrant {
            previous: codec::int("rate limit count", taken.previous)?,
            current: codec::int("rate limit count", taken.current)?,
            granted: codec::int("rate limit count", taken.granted)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_overlap_fades_from_one_to_zero_across_the_window() {
        let policy = RateLimitPolicy { rps: 1, window_seconds: 10 };
        let at = |ms| policy.position(chrono::Utc.timestamp_millis_opt(ms).single().expect("valid"));
        assert_eq!(overlap(policy, at(1_000_000)), 1.0);
        assert_eq!(overlap(policy, at(1_005_000)), 0.5);
        assert!(overlap(policy, at(1_009_999)) < 0.001);
    }
}
