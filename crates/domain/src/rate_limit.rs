//! Sliding-window counter rate limiting: the arithmetic, independent of where counts live.
//!
//! Counts are kept per fixed window; the estimate for "the last W seconds" weights the previous
//! window by how much of it still overlaps: `prev * (1 - elapsed/W) + current`.

use crate::Timestamp;

/// A limit: `rps` requests per second averaged over `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Requests per second.
    pub rps: u32,
    /// Window length in seconds (≥ 1).
    pub window_seconds: u32,
}

/// Which fixed window a moment falls in, and how far into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPosition {
    /// Start of the current window, in whole seconds since the epoch.
    pub current_start: i64,
    /// Start of the previous window.
    pub previous_start: i64,
    /// Milliseconds elapsed in the current window.
    pub elapsed_ms: i64,
}

/// The outcome of one request against the limit; also the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may proceed (and was counted).
    pub allowed: bool,
    /// Requests allowed per window (`RateLimit-Limit`).
    pub limit: u64,
    /// Requests left in the window (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Seconds until the current window ends (`RateLimit-Reset`).
    pub reset_seconds: u64,
    /// When refused: seconds after which a retry will be allowed (`Retry-After`).
    pub retry_after_seconds: Option<u64>,
}

impl RateLimitPolicy {
    /// Requests allowed per window.
    pub fn limit(&self) -> u64 {
        u64::from(self.rps) * u64::from(self.window_seconds.max(1))
    }

    fn window_ms(&self) -> i64 {
        i64::from(self.window_seconds.max(1)) * 1000
    }

    /// Where `now` sits in the fixed windows.
    pub fn position(&self, now: Timestamp) -> WindowPosition {
        let w = self.window_ms();
        let ms = now.timestamp_millis();
        let start_ms = ms.div_euclid(w) * w;
        WindowPosition {
            current_start: start_ms / 1000,
            previous_start: (start_ms - w) / 1000,
            elapsed_ms: ms - start_ms,
        }
    }

    /// Decides one request given the counts of the previous and current window (before it).
    pub fn decide(&self, previous: u64, current: u64, pos: WindowPosition) -> RateDecision {
        let w = self.window_ms() as f64;
        let limit = self.limit();
        let overlap = 1.0 - (pos.elapsed_ms as f64 / w).clamp(0.0, 1.0);
        let estimate = previous as f64 * overlap + current as f64;
        let allowed = estimate + 1.0 <= limit as f64;
        let used = if allowed { estimate + 1.0 } else { estimate };
        let remaining = (limit as f64 - used).floor().max(0.0) as u64;
        let reset_ms = (self.window_ms() - pos.elapsed_ms).max(0);
        let reset_seconds = (reset_ms as u64).div_ceil(1000).max(1);
        let retry_after_seconds = (!allowed)
            .then(|| self.retry_after_ms(previous, current, estimate, reset_ms))
            .map(|ms| ms.div_ceil(1000).max(1));
        RateDecision { allowed, limit, remaining, reset_seconds, retry_after_seconds }
    }

    /// How long until `estimate + 1 <= limit`: the previous window's weight fades linearly,
    /// and at the window's end the current count becomes the fading previous one.
    fn retry_after_ms(&self, previous: u64, current: u64, estimate: f64, reset_ms: i64) -> u64 {
        let w = self.window_ms() as f64;
        let limit = self.limit() as f64;
        let excess = estimate + 1.0 - limit;
        if previous > 0 && (current as f64) + 1.0 <= limit {
            let ms = excess * w / previous as f64;
            if ms <= reset_ms as f64 {
                return ms.ceil() as u64;
            }
        }
        // Past this window, `current` fades the same way from the next window's start.
        let after_reset =
            if current == 0 { 0.0 } else { ((current as f64 + 1.0 - limit).max(0.0) * w / current as f64).ceil() };
        reset_ms as u64 + after_reset as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(ms: i64) -> Timestamp {
        chrono::Utc.timestamp_millis_opt(ms).single().expect("valid time")
    }

    const POLICY: RateLimitPolicy = RateLimitPolicy { rps: 2, window_seconds: 10 };

    #[test]
    fn allows_up_to_the_limit_in_a_fresh_window() {
        let pos = POLICY.position(at(1_000_000));
        assert!(POLICY.decide(0, 19, pos).allowed);
        let refused = POLICY.decide(0, 20, pos);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert!(refused.retry_after_seconds.is_some());
    }

    #[test]
    fn the_previous_window_fades_linearly() {
        // Halfway through: 20 previous count as 10, so 9 more fit.
        let pos = POLICY.position(at(1_005_000));
        assert_eq!(pos.elapsed_ms, 5_000);
        assert!(POLICY.decide(20, 9, pos).allowed);
        assert!(!POLICY.decide(20, 10, pos).allowed);
    }

    proptest! {
        #[test]
        fn never_allows_more_than_the_limit_per_window(prev in 0u64..100, cur in 0u64..100, ms in 0i64..100_000_000) {
            let d = POLICY.decide(prev, cur, POLICY.position(at(ms)));
            if cur >= POLICY.limit() { prop_assert!(!d.allowed); }
            prop_assert!(d.remaining <= d.limit);
            prop_assert!(d.reset_seconds >= 1 && d.reset_seconds <= 10);
        }

        #[test]
        fn retry_after_is_enough(prev in 0u64..60, cur in 0u64..60, elapsed in 0i64..10_000) {
            let t0 = 1_000_000_000 + elapsed;
            let pos = POLICY.position(at(t0));
            let d = POLICY.decide(prev, cur, pos);
            if let Some(wait) = d.retry_after_seconds {
                let later = POLICY.position(at(t0 + wait as i64 * 1000));
                let (p, c) = match later.current_start - pos.current_start {
                    0 => (prev, cur),
                    10 => (cur, 0),
                    _ => (0, 0),
                };
                prop_assert!(POLICY.decide(p, c, later).allowed, "wait {wait} s was not enough");
            }
        }
    }
}
