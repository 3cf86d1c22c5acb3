//! One `Breaker` per endpoint, kept by this replica's dispatcher.

use std::collections::HashMap;
use std::sync::Mutex;

use domain::webhook::{Breaker, BreakerConfig, BreakerState, WebhookId};
use domain::Timestamp;

/// The breakers of every endpoint this dispatcher has sent to.
#[derive(Debug)]
pub(super) struct Breakers {
    config: BreakerConfig,
    by_endpoint: Mutex<HashMap<WebhookId, Breaker>>,
}

impl Breakers {
    pub(super) fn new(config: BreakerConfig) -> Self {
        Self { config, by_endpoint: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WebhookId, Breaker>> {
        self.by_endpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Endpoints whose breaker is open at `now` (not worth leasing deliveries for).
    pub(super) fn open_at(&self, now: Timestamp) -> Vec<WebhookId> {
        self.lock()
            .iter()
            .filter(|(_, b)| matches!(b.state(), BreakerState::Open { until } if now < until))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Asks to send to `endpoint`; `Err(retry_at)` when its breaker refuses.
    pub(super) fn acquire(&self, endpoint: WebhookId, now: Timestamp) -> Result<(), Timestamp> {
        let mut all = self.lock();
        let breaker = all.entry(endpoint).or_insert_with(|| Breaker::new(self.config.clone()));
        if breaker.try_acquire(now) {
            Ok(())
        } else {
            // A half-open breaker with its probes out answers `now`: come back a little later.
            Err(breaker.retry_at(now).max(now + chrono::TimeDelta::milliseconds(100)))
        }
    }

    /// Records the outcome of a send `acquire` allowed.
    pub(super) fn record(&self, endpoint: WebhookId, now: Timestamp, success: bool) {
        if let Some(b) = self.lock().get_mut(&endpoint) {
            b.record(now, success);
        }
    }

    /// Forgets an endpoint (disabled or deleted).
    pub(super) fn forget(&self, endpoint: WebhookId) {
        self.lock().remove(&endpoint);
    }
}
