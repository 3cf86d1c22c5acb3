//! One `domain::breaker::Breaker` per endpoint, kept by this replica's dispatcher on its clock.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::TimeDelta;
use domain::breaker::{Breaker, BreakerConfig, Refusal};
use domain::webhook::WebhookId;
use domain::Timestamp;

/// The soonest a refused send is tried again (a half-open breaker with its probes out would
/// otherwise answer `now`), so a refused delivery is not leased again at once.
const RETRY_FLOOR: TimeDelta = TimeDelta::milliseconds(100);

/// The breakers of every endpoint this dispatcher has sent to.
#[derive(Debug)]
pub(super) struct Breakers {
    config: BreakerConfig,
    by_endpoint: Mutex<HashMap<WebhookId, Breaker<Timestamp>>>,
}

impl Breakers {
    pub(super) fn new(config: BreakerConfig) -> Self {
        Self { config, by_endpoint: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WebhookId, Breaker<Timestamp>>> {
        self.by_endpoint.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Endpoints whose breaker is open at `now` (not worth leasing deliveries for).
    pub(super) fn open_at(&self, now: Timestamp) -> Vec<WebhookId> {
        self.lock().iter().filter(|(_, b)| b.is_open_at(now)).map(|(id, _)| *id).collect()
    }

    /// Asks to send to `endpoint`; `Err(retry_at)` when its breaker refuses.
    pub(super) fn acquire(&self, endpoint: WebhookId, now: Timestamp) -> Result<(), Timestamp> {
        let mut all = self.lock();
        let breaker = all.entry(endpoint).or_insert_with(|| Breaker::new(self.config));
        breaker.try_acquire(now).map_err(|refusal| {
            let wait = match refusal {
                Refusal::Open { remaining } => TimeDelta::from_std(remaining).unwrap_or(TimeDelta::MAX),
                Refusal::ProbesOut => TimeDelta::zero(),
            };
            now.checked_add_signed(wait.max(RETRY_FLOOR)).unwrap_or(Timestamp::MAX_UTC)
        })
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
