//! `RateLimitStore` on PostgreSQL: sliding-window counters in `rate_limiting`, shared by every
//! replica. One decision is one call of `rate_limit_acquire` (see the migration): one round
//! trip, atomic under concurrency because the current window's row is locked while deciding.

use async_trait::async_trait;
use diesel::sql_types::{BigInt, Bool, Double, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use domain::ports::RateLimitStore;
use domain::rate_limit::{RateDecision, RateLimitPolicy, WindowPosition};
use domain::{DomainResult, Timestamp};

use crate::codec;
use crate::connection::db_error;
use crate::prepared::CachedExt;
use crate::PgStore;

const ACQUIRE: &str = "SELECT previous, current, allowed FROM rate_limit_acquire($1, $2, $3, $4, $5)";

/// The counts the database decided on, before this request was counted.
#[derive(Debug, QueryableByName)]
struct Counted {
    #[diesel(sql_type = BigInt)]
    previous: i64,
    #[diesel(sql_type = BigInt)]
    current: i64,
    #[diesel(sql_type = Bool)]
    allowed: bool,
}

/// How much of the previous window still weighs in: the factor `RateLimitPolicy::decide`
/// applies, computed the same way so the database's float8 arithmetic decides alike.
fn overlap(policy: RateLimitPolicy, pos: WindowPosition) -> f64 {
    let w = f64::from(policy.window_seconds.max(1)) * 1000.0;
    1.0 - (pos.elapsed_ms as f64 / w).clamp(0.0, 1.0)
}

#[async_trait]
impl RateLimitStore for PgStore {
    #[tracing::instrument(level = "trace", skip_all)]
    async fn acquire(&self, key: &str, policy: RateLimitPolicy, now: Timestamp) -> DomainResult<RateDecision> {
        let pos = policy.position(now);
        let limit: i64 = codec::column_int("rate limit", policy.limit())?;
        let mut conn = self.conn().await?;
        let counted: Counted = diesel::sql_query(ACQUIRE)
            .bind::<Text, _>(key)
            .bind::<BigInt, _>(pos.current_start)
            .bind::<BigInt, _>(pos.previous_start)
            .bind::<Double, _>(overlap(policy, pos))
            .bind::<BigInt, _>(limit)
            .cached()
            .get_result(&mut conn)
            .await
            .map_err(|e| db_error(e, "rate limit"))?;
        let decision = policy.decide(
            codec::int("rate limit count", counted.previous)?,
            codec::int("rate limit count", counted.current)?,
            pos,
        );
        if decision.allowed != counted.allowed {
            // Only a different float rounding could get here; what was counted is the truth.
            tracing::warn!(database = counted.allowed, local = decision.allowed, "rate limit decisions differ");
            return Ok(RateDecision { allowed: counted.allowed, ..decision });
        }
        Ok(decision)
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
