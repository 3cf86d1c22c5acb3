//! Per-key rate limiting over a `RateLimitStore`: the shared store's windows, taken in blocks
//! (`LeasedWindows`), when several replicas share it, or `LocalWindows` in memory when one
//! process is all there is.

mod leased;
mod local;

use std::sync::Arc;

use domain::api_key::ApiKey;
use domain::ports::{Clock, RateLimitStore};
use domain::rate_limit::{RateDecision, RateLimitPolicy};
use domain::DomainResult;

pub use leased::LeasedWindows;
pub use local::LocalWindows;

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
