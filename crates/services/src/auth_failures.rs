//! Failed authentications per client address: a token bucket that turns a flood of bad or
//! missing keys into `429`s, and the aggregation of their audit records into one record per
//! address, reason, key and window, so that a flood adds a handful of records, not one per
//! request.
//!
//! Only failures consume an address's budget, and the presented key is checked first: a valid
//! key from an address that others flood is never refused here.
//!
//! Both tables live in memory, per replica, and are bounded: buckets in a cache with a capacity
//! and an idle expiry (a bucket idle long enough to have refilled is the same as no bucket), open
//! windows in a map of at most [`MAX_OPEN_WINDOWS`] entries beyond which new addresses share one
//! overflow window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use domain::audit::{AuditEntry, AuditOutcome};
use domain::ids::ApiKeyId;
use moka::future::Cache;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditService;

/// Default `AUTH_FAILURE_RPS`: failed authentications per second and address, sustained.
pub const DEFAULT_RPS: u32 = 20;
/// Default `AUTH_FAILURE_BURST`: failed authentications an address may spend at once.
pub const DEFAULT_BURST: u32 = 40;
/// Default `AUTH_FAILURE_AUDIT_WINDOW_SECONDS`.
pub const DEFAULT_AUDIT_WINDOW: Duration = Duration::from_secs(10);
/// Open aggregation windows kept at once; beyond it new (address, reason, key) triples share
/// one window per reason, so a spray of addresses cannot grow memory or the log without bound.
pub const MAX_OPEN_WINDOWS: usize = 1024;
/// Addresses whose buckets are kept at once; an evicted bucket starts full again, which gives
/// a sprayer nothing a fresh address would not.
const MAX_BUCKETS: u64 = 100_000;
/// The action of every failed-authentication record.
pub const AUDIT_ACTION: &str = "auth.denied";

/// Why an authentication failed; also the `reason` label of `auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// No, or a malformed, `Authorization` header.
    MissingKey,
    /// A presented key that is unknown, revoked or expired.
    InvalidKey,
    /// A key used from outside its `allowed_ips`.
    IpNotAllowed,
    /// Refused without a verdict on the key's merits: the address spent its failure budget.
    RateLimited,
}

impl FailureReason {
    /// The metric label and audit detail.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MissingKey => "missing_key",
            Self::InvalidKey => "invalid_key",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::RateLimited => "rate_limited",
        }
    }

    /// The HTTP status the client got.
    pub const fn status(self) -> u16 {
        match self {
            Self::MissingKey | Self::InvalidKey => 401,
            Self::IpNotAllowed => 403,
            Self::RateLimited => 429,
        }
    }
}

/// `AUTH_FAILURE_*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailurePolicy {
    /// Sustained failures per second and address.
    pub rps: u32,
    /// Failures an address may spend at once.
    pub burst: u32,
    /// Length of an aggregation window of audit records.
    pub audit_window: Duration,
}

impl Default for AuthFailurePolicy {
    fn default() -> Self {
        Self { rps: DEFAULT_RPS, burst: DEFAULT_BURST, audit_window: DEFAULT_AUDIT_WINDOW }
    }
}

/// One failed authentication, for the audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAuth {
    /// Client address (after `TRUSTED_PROXIES`).
    pub client_ip: IpAddr,
    /// Why it failed.
    pub reason: FailureReason,
    /// The key whose secret was presented, when known (revoked, expired, wrong address).
    pub actor: Option<ApiKeyId>,
    /// The request's path.
    pub resource: String,
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// The W3C trace id.
    pub trace_id: Option<String>,
}

/// A token bucket: `burst` tokens, refilled at `rps` per second.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: u32, now: Instant) -> Self {
        Self { tokens: f64::from(burst), at: now }
    }

    /// Takes a token, or says how long until one is there. A refused take spends nothing, so a
    /// steady attacker still gets `rps` verdicts per second and the budget never goes negative.
    fn take(&mut self, now: Instant, rps: u32, burst: u32) -> Result<(), Duration> {
        let rps = f64::from(rps.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rps).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rps))
        }
    }
}

/// What one aggregation window is keyed by. `client_ip: None` is the overflow window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WindowKey {
    client_ip: Option<IpAddr>,
    reason: FailureReason,
    actor: Option<ApiKeyId>,
}

/// An open window: its first failure is already recorded; `rest` counts those after it.
#[derive(Debug)]
struct Window {
    ends: Instant,
    rest: u32,
    /// The record of the first of `rest`, whose `count` becomes `rest` when the window closes.
    pending: Option<AuditEntry>,
}

/// Limits and aggregates failed authentications (see the module documentation).
pub struct AuthFailures {
    policy: AuthFailurePolicy,
    buckets: Cache<IpAddr, Arc<Mutex<Bucket>>>,
    windows: Mutex<HashMap<WindowKey, Window>>,
    audit: AuditService,
}

impl std::fmt::Debug for AuthFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthFailures").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl AuthFailures {
    /// Limits under `policy`, writing aggregated records to `audit`.
    pub fn new(policy: AuthFailurePolicy, audit: AuditService) -> Self {
        // After `burst / rps` seconds of quiet a bucket is full again: forgetting it loses nothing.
        let refill = Duration::from_secs_f64(f64::from(policy.burst) / f64::from(policy.rps.max(1)));
        let buckets = Cache::builder().max_capacity(MAX_BUCKETS).time_to_idle(refill + Duration::from_secs(1)).build();
        Self { policy, buckets, windows: Mutex::new(HashMap::new()), audit }
    }

    /// Spends one failure of `client_ip`'s budget; `Err` carries the seconds (at least 1) until
    /// the next one may be spent: the request is then answered `429`.
    pub async fn admit(&self, client_ip: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let burst = self.policy.burst;
        let bucket =
            self.buckets.get_with(client_ip, async move { Arc::new(Mutex::new(Bucket::full(burst, now))) }).await;
        let taken = bucket.lock().unwrap_or_else(PoisonError::into_inner).take(now, self.policy.rps, burst);
        taken.map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Audits a failure: the first of its window at once (with `count` 1), the others counted
    /// and written as one record when the window closes.
    pub async fn record(&self, failure: FailedAuth) {
        let now = Instant::now();
        let (first, closed) = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let mut key =
                WindowKey { client_ip: Some(failure.client_ip), reason: failure.reason, actor: failure.actor };
            if !windows.contains_key(&key) && windows.len() >= MAX_OPEN_WINDOWS {
                key = WindowKey { client_ip: None, reason: failure.reason, actor: None };
            }
            let overflow = key.client_ip.is_none();
            let entry = || entry_of(&failure, overflow);
            match windows.get_mut(&key) {
                Some(w) if now < w.ends => {
                    w.rest = w.rest.saturating_add(1);
                    if w.pending.is_none() {
                        w.pending = Some(entry());
                    }
                    (None, None)
                }
                _ => {
                    let fresh = Window { ends: now + self.policy.audit_window, rest: 0, pending: None };
                    let closed = windows.insert(key, fresh).and_then(closing_record);
                    (Some(entry()), closed)
                }
            }
        };
        // The older window's record first, so the log stays in time order.
        for entry in closed.into_iter().chain(first) {
            self.audit.record(entry).await;
        }
    }

    /// Writes the records of every window that has ended.
    pub async fn flush_due(&self) {
        self.flush(|w| w.ends <= Instant::now()).await;
    }

    /// Writes the records of every open window (on shutdown).
    pub async fn flush_all(&self) {
        self.flush(|_| true).await;
    }

    async fn flush(&self, due: impl Fn(&Window) -> bool) {
        let closed: Vec<AuditEntry> = {
            let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
            let keys: Vec<WindowKey> = windows.iter().filter(|(_, w)| due(w)).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| windows.remove(k)).filter_map(closing_record).collect()
        };
        for entry in closed {
            self.audit.record(entry).await;
        }
    }

    /// Closes ended windows every second, and all of them when `shutdown` fires: a replica that
    /// stops cleanly loses no count; one that is killed loses at most the counts of the windows
    /// still open (one window's worth; each window's first failure is already written).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1).min(self.policy.audit_window));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush_due().await,
                () = shutdown.cancelled() => {
                    self.flush_all().await;
                    return;
                }
            }
        }
    }
}

/// The record of a failure; `overflow` when it shares the window of untracked addresses.
fn entry_of(f: &FailedAuth, overflow: bool) -> AuditEntry {
    let (status, reason) = (f.reason.status(), f.reason.as_str());
    AuditEntry {
        at: domain::to_micros_precision(chrono::Utc::now()),
        actor: f.actor,
        client_ip: (!overflow).then(|| f.client_ip.to_string()),
        action: AUDIT_ACTION.into(),
        resource: f.resource.clone(),
        project: None,
        outcome: AuditOutcome::Denied,
        detail: Some(if overflow { format!("{status} {reason} many_addresses") } else { format!("{status} {reason}") }),
        request_id: f.request_id.clone(),
        trace_id: f.trace_id.clone(),
        count: 1,
    }
}

/// The record a closing window leaves: the failures after its first, counted; the request and
/// trace ids are dropped, as the record stands for many requests.
fn closing_record(w: Window) -> Option<AuditEntry> {
    let entry = w.pending?;
    (w.rest > 0).then(|| AuditEntry {
        at: domain::to_micros_precision(chrono::Utc::now()),
        count: w.rest,
        request_id: None,
        trace_id: None,
        ..entry
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::ports::AuditLog;
    use domain::testing::MemoryStore;

    #[test]
    fn a_bucket_spends_its_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(3, t0);
        assert!((0..3).all(|_| b.take(t0, 2, 3).is_ok()));
        let wait = b.take(t0, 2, 3).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500), 2, 3).is_ok(), "one token after 1/rps");
        assert!(b.take(t0 + Duration::from_millis(500), 2, 3).is_err());
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.take(later, 2, 3).is_ok()), "refills up to the burst, not beyond");
        assert!(b.take(later, 2, 3).is_err());
    }

    fn failure(ip: &str, reason: FailureReason) -> FailedAuth {
        FailedAuth {
            client_ip: ip.parse().expect("ip"),
            reason,
            actor: None,
            resource: "/v1/me".into(),
            request_id: Some("r".into()),
            trace_id: None,
        }
    }

    async fn records(store: &MemoryStore) -> Vec<AuditEntry> {
        AuditLog::scan(store, 0, 10_000).await.expect("scan").into_iter().map(|r| r.entry).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_writes_its_first_failure_at_once_and_the_rest_as_one_counted_record() {
        let store = Arc::new(MemoryStore::new());
        let policy = AuthFailurePolicy { audit_window: Duration::from_secs(10), ..AuthFailurePolicy::default() };
        let failures = AuthFailures::new(policy, AuditService::new(store.clone()));
        for _ in 0..500 {
            failures.record(failure("192.0.2.1", FailureReason::InvalidKey)).await;
        }
        failures.record(failure("192.0.2.1", FailureReason::RateLimited)).await;
        assert_eq!(records(&store).await.len(), 2, "one record per (address, reason) so far");
        failures.flush_due().await;
        assert_eq!(records(&store).await.len(), 2, "the window is still open");
        tokio::time::advance(Duration::from_secs(10)).await;
        failures.flush_due().await;
        let all = records(&store).await;
        assert_eq!(all.iter().map(|e| e.count).collect::<Vec<_>>(), vec![1, 1, 499]);
        assert_eq!(all[2].detail.as_deref(), Some("401 invalid_key"));
        assert_eq!((all[2].action.as_str(), all[2].request_id.as_deref()), (AUDIT_ACTION, None));
        // A new window starts with a record of its own.
        failures.record(failure("192.0.2.1", FailureReason::InvalidKey)).await;
        assert_eq!(records(&store).await.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spray_of_addresses_shares_one_overflow_window_and_shutdown_flushes_it() {
        let store = Arc::new(MemoryStore::new());
        let failures = AuthFailures::new(AuthFailurePolicy::default(), AuditService::new(store.clone()));
        let n = MAX_OPEN_WINDOWS + 300;
        for i in 0..n {
            let ip = std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128);
            failures.record(failure(&ip.to_string(), FailureReason::MissingKey)).await;
        }
        assert_eq!(records(&store).await.len(), MAX_OPEN_WINDOWS + 1);
        failures.flush_all().await;
        let all = records(&store).await;
        assert_eq!(all.iter().map(|e| u64::from(e.count)).sum::<u64>(), n as u64, "no failure uncounted");
        assert_eq!(all.last().map(|e| (e.client_ip.clone(), e.count)), Some((None, 299)));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_flooding_address_is_limited() {
        let policy = AuthFailurePolicy { rps: 1, burst: 2, ..AuthFailurePolicy::default() };
        let failures = AuthFailures::new(policy, AuditService::new(Arc::new(MemoryStore::new())));
        let (a, b) = ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"));
        assert_eq!(failures.admit(a).await, Ok(()));
        assert_eq!(failures.admit(a).await, Ok(()));
        assert_eq!(failures.admit(a).await, Err(1));
        assert_eq!(failures.admit(b).await, Ok(()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(failures.admit(a).await, Ok(()));
    }
}
