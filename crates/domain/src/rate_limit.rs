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

/// What one `RateLimitStore::take` got: the counts it decided on and how many it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGrant {
    /// The previous window's count.
    pub previous: u64,
    /// The current window's count before this grant.
    pub current: u64,
    /// Requests taken (and counted) for the caller: at most what it asked for.
    pub granted: u64,
}

/// Requests a replica took from a window it no longer uses, handed back so the shared count
/// says what was really admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnusedGrant {
    /// Start of the window they were taken from.
    pub window_start: i64,
    /// How many were never admitted.
    pub count: u64,
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

    /// How many more requests fit now, at most `want`: the largest `k` with
    /// `previous * overlap + current + k <= limit`, the same float arithmetic as `decide`.
    pub fn room(&self, previous: u64, current: u64, pos: WindowPosition, want: u64) -> u64 {
        let estimate = self.estimate(previous, current, pos);
        let limit = self.limit() as f64;
        let mut k = (limit - estimate).floor().clamp(0.0, want as f64) as u64;
        // Rounding of the subtraction may differ from the sum `decide` checks.
        while k > 0 && estimate + k as f64 > limit {
            k -= 1;
        }
        k
    }

    /// The sliding estimate of the last window: the previous count weighted by its overlap.
    fn estimate(&self, previous: u64, current: u64, pos: WindowPosition) -> f64 {
        let overlap = 1.0 - (pos.elapsed_ms as f64 / self.window_ms() as f64).clamp(0.0, 1.0);
        previous as f64 * overlap + current as f64
    }

    /// Decides one request given the counts of the previous and current window (before it).
    pub fn decide(&self, previous: u64, current: u64, pos: WindowPosition) -> RateDecision {
        let limit = self.limit();
        let estimate = self.estimate(previous, current, pos);
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

/// A block of one key's window that this replica took from the shared count and admits from
/// locally: the shared count already includes the whole block, so no other replica can be
/// given it, and admitting from it needs no round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLease {
    /// The window the block belongs to.
    window_start: i64,
    /// The counts the grant was decided on.
    grant: WindowGrant,
    /// Requests admitted from the block so far.
    used: u64,
}

impl WindowLease {
    /// The block `grant` took in the window at `pos`.
    pub fn new(pos: WindowPosition, grant: WindowGrant) -> Self {
        Self { window_start: pos.current_start, grant, used: 0 }
    }

    /// Admits one request from the block, if it belongs to the current window and is not used
    /// up. The headers are those of a single store that had counted `current + used`.
    pub fn admit(&mut self, policy: &RateLimitPolicy, pos: WindowPosition) -> Option<RateDecision> {
        if pos.current_start != self.window_start || self.used >= self.grant.granted {
            return None;
        }
        let decision = policy.decide(self.grant.previous, self.grant.current + self.used, pos);
        self.used += 1;
        // Counted when granted: a later position only fades the previous window further, so
        // `decide` agrees except for float rounding, and the count is what holds.
        Some(RateDecision { allowed: true, retry_after_seconds: None, ..decision })
    }

    /// Whether every request of the block was admitted.
    pub fn is_used_up(&self) -> bool {
        self.used >= self.grant.granted
    }

    /// Requests granted in the block.
    pub fn granted(&self) -> u64 {
        self.grant.granted
    }

    /// Requests of the block not admitted yet.
    pub fn remaining(&self) -> u64 {
        self.grant.granted.saturating_sub(self.used)
    }

    /// Start of the window the block belongs to.
    pub fn window_start(&self) -> i64 {
        self.window_start
    }

    /// What to hand back once the window at `pos` no longer is the block's: its unadmitted
    /// requests, while their window still weighs in (it is the previous one).
    pub fn unused_at(&self, pos: WindowPosition) -> Option<UnusedGrant> {
        let count = self.remaining();
        (count > 0 && self.window_start == pos.previous_start)
            .then_some(UnusedGrant { window_start: self.window_start, count })
    }
}

impl RateDecision {
    /// The decision when a store granted nothing for counts `previous`/`current` at `pos`: a
    /// refusal even where float rounding would let `decide` allow it (the store counted).
    pub fn refused(policy: &RateLimitPolicy, previous: u64, current: u64, pos: WindowPosition) -> Self {
        let decision = policy.decide(previous, current, pos);
        if decision.allowed {
            return Self { allowed: false, remaining: 0, retry_after_seconds: Some(1), ..decision };
        }
        decision
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

    #[test]
    fn room_is_how_many_decide_would_allow_one_after_another() {
        let pos = POLICY.position(at(1_005_000));
        assert_eq!(POLICY.room(20, 0, pos, 100), 10);
        assert_eq!(POLICY.room(20, 0, pos, 4), 4);
        assert_eq!(POLICY.room(20, 10, pos, 100), 0);
    }

    #[test]
    fn a_lease_admits_its_block_with_the_headers_of_one_store_and_then_stops() {
        let pos = POLICY.position(at(1_000_000));
        let mut lease = WindowLease::new(pos, WindowGrant { previous: 0, current: 5, granted: 2 });
        let first = lease.admit(&POLICY, pos).expect("first of the block");
        assert_eq!((first.allowed, first.remaining), (true, 14));
        assert_eq!(lease.admit(&POLICY, pos).map(|d| d.remaining), Some(13));
        assert!(lease.is_used_up());
        assert_eq!(lease.admit(&POLICY, pos), None, "the block is used up");
    }

    #[test]
    fn a_lease_of_an_earlier_window_admits_nothing_and_hands_back_what_is_left() {
        let pos = POLICY.position(at(1_000_000));
        let mut lease = WindowLease::new(pos, WindowGrant { previous: 0, current: 0, granted: 8 });
        lease.admit(&POLICY, pos).expect("admitted");
        let next = POLICY.position(at(1_010_000));
        assert_eq!(lease.admit(&POLICY, next), None);
        assert_eq!(lease.unused_at(next), Some(UnusedGrant { window_start: pos.current_start, count: 7 }));
        let much_later = POLICY.position(at(1_030_000));
        assert_eq!(lease.unused_at(much_later), None, "a window that no longer weighs in needs nothing back");
    }

    #[test]
    fn a_refusal_the_arithmetic_would_allow_still_refuses() {
        let pos = POLICY.position(at(1_000_000));
        let refused = RateDecision::refused(&POLICY, 0, 0, pos);
        assert!(!refused.allowed && refused.retry_after_seconds.is_some());
    }

    proptest! {
        #[test]
        fn room_agrees_with_decide(prev in 0u64..100, cur in 0u64..100, ms in 0i64..100_000_000) {
            let pos = POLICY.position(at(ms));
            let room = POLICY.room(prev, cur, pos, u64::MAX);
            prop_assert_eq!(room > 0, POLICY.decide(prev, cur, pos).allowed);
            if room > 0 {
                prop_assert!(POLICY.decide(prev, cur + room - 1, pos).allowed);
            }
            prop_assert!(!POLICY.decide(prev, cur + room, pos).allowed);
        }

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
