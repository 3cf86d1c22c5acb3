//! Per-key rate limiting over a `RateLimitStore`: the shared store's windows when several
//! replicas share it, or `LocalWindows` in memory when one process is all there is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use domain::api_key::ApiKey;
use domain::ports::{Clock, RateLimitStore};
use domain::rate_limit::{RateDecision, RateLimitPolicy};
use domain::{DomainResult, Timestamp};

/// Applies `RATE_LIMIT_RPS` over `RATE_LIMIT_WINDOW_SECONDS`, or a key's own override.
pub struct RateLimiter {
    store: Arc<dyn RateLimitStore>,
    clock: Arc<dyn Clock>,
    default: RateLimitPolicy,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("default", &self.default).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter with the service-wide default.
    pub fn new(store: Arc<dyn RateLimitStore>, clock: Arc<dyn Clock>, default: RateLimitPolicy) -> Self {
        Self { store, clock, default }
    }

    /// The policy that applies to `key`.
    pub fn policy_for(&self, key: &ApiKey) -> RateLimitPolicy {
        RateLimitPolicy { rps: key.rate_limit_rps.unwrap_or(self.default.rps), ..self.default }
    }

    /// Decides and counts one request of `key`.
    pub async fn check(&self, key: &ApiKey) -> DomainResult<RateDecision> {
        let decision = self.store.acquire(&format!("key:{}", key.id), self.policy_for(key), self.clock.now()).await?;
        if !decision.allowed {
            metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL).increment(1);
        }
        Ok(decision)
    }
}

/// The sliding windows held in this process: for a store only one process uses (SQLite), where
/// a window in the database would cost a write transaction per request on its one writer.
/// Same arithmetic (`RateLimitPolicy::decide`), same answers and headers as a shared store.
#[derive(Debug, Default)]
pub struct LocalWindows {
    windows: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    /// Per key, the counts of its two latest fixed windows, by window start.
    by_key: HashMap<String, [(i64, u64); 2]>,
    /// Keys are swept of windows that stopped counting once the map reaches this size.
    sweep_at: usize,
}

impl Windows {
    fn sweep(&mut self, oldest_counting: i64) {
        self.by_key.retain(|_, windows| windows.iter().any(|(start, _)| *start >= oldest_counting));
        // Amortized: the next sweep waits until the map has doubled (or reaches 1024 keys).
        self.sweep_at = (self.by_key.len() * 2).max(1024);
    }
}

#[async_trait]
impl RateLimitStore for LocalWindows {
    async fn acquire(&self, key: &str, policy: RateLimitPolicy, now: Timestamp) -> DomainResult<RateDecision> {
        let pos = policy.position(now);
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.by_key.len() >= windows.sweep_at {
            windows.sweep(pos.previous_start);
        }
        let slots = windows.by_key.entry(key.to_owned()).or_insert([(i64::MIN, 0); 2]);
        let count_at = |start: i64| slots.iter().find(|(s, _)| *s == start).map_or(0, |(_, n)| *n);
        let decision = policy.decide(count_at(pos.previous_start), count_at(pos.current_start), pos);
        if decision.allowed {
            match slots.iter_mut().find(|(s, _)| *s == pos.current_start) {
                Some((_, n)) => *n += 1,
                None => {
                    // The older slot is the one to replace: the other may be the previous window.
                    let oldest = if slots[0].0 <= slots[1].0 { 0 } else { 1 };
                    slots[oldest] = (pos.current_start, 1);
                }
            }
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_windows_pass_the_rate_limit_store_contract() {
        domain::testing::contracts::rate_limit_store(|| async { LocalWindows::default() }).await;
    }

    #[tokio::test]
    async fn keys_whose_windows_stopped_counting_are_swept() {
        let windows = LocalWindows::default();
        let policy = RateLimitPolicy { rps: 10, window_seconds: 1 };
        let t0 = domain::testing::fixed_start();
        for n in 0..1500 {
            windows.acquire(&format!("early:{n}"), policy, t0).await.expect("acquire");
        }
        // Growing past the next sweep point drops the keys whose windows stopped counting.
        let later = t0 + chrono::TimeDelta::seconds(10);
        for n in 0..600 {
            windows.acquire(&format!("late:{n}"), policy, later).await.expect("acquire");
        }
        let kept = windows.windows.lock().expect("lock").by_key.len();
        assert!(kept <= 600, "{kept} keys kept: the 1500 early ones should be gone");
    }
}
