//! A circuit breaker for a backend that can go away (the Kubernetes API): closed while calls
//! succeed, open when the failure rate over a sliding window crosses a threshold, half-open
//! after a cool-down, where a few probe calls decide whether to close again.
//!
//! `BreakerCore` is the pure state machine (time is passed in, so it is property-tested);
//! `CircuitBreaker` adds a lock, metrics and logs; `BreakerPods` and `BreakerExecutor` wrap the
//! ports.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use domain::pod::{PodSpec, PodStatus};
use domain::ports::{ExecRequest, ExecResult, Executor, OutputSink, PodManager};
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// When the breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Outcomes older than this are forgotten.
    pub window: Duration,
    /// Fewer calls than this in the window never open the breaker.
    pub min_calls: u32,
    /// Opens when failures / calls in the window reach this (0..=1).
    pub failure_rate: f64,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probes allowed at once when half-open; this many successes in a row close it.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_calls: 5,
            failure_rate: 0.5,
            open_for: Duration::from_secs(10),
            probes: 2,
        }
    }
}

/// The breaker's state, as `/readyz` and the metric show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// A few probe calls pass; their outcome decides.
    HalfOpen,
}

impl BreakerState {
    /// The wire and metric name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 half-open, 2 open.
    fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// Why a call was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When the next probe may go through.
    pub retry_after: Duration,
}

/// The pure state machine.
#[derive(Debug, Clone)]
pub struct BreakerCore {
    config: BreakerConfig,
    state: BreakerState,
    outcomes: VecDeque<(Instant, bool)>,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    probe_successes: u32,
}

impl BreakerCore {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            outcomes: VecDeque::new(),
            opened_at: None,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    /// The state at `now` (an open breaker whose cool-down ended reads as half-open).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        self.state
    }

    /// Asks to make a call at `now`; `Ok` means go ahead and report the outcome with `record`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Rejected> {
        self.advance(now);
        match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => Err(Rejected { retry_after: self.remaining_open(now) }),
            BreakerState::HalfOpen if self.probes_in_flight < self.config.probes => {
                self.probes_in_flight += 1;
                Ok(())
            }
            BreakerState::HalfOpen => Err(Rejected { retry_after: Duration::from_secs(1) }),
        }
    }

    /// Reports the outcome of a call that `try_acquire` allowed.
    pub fn record(&mut self, now: Instant, success: bool) {
        self.advance(now);
        match self.state {
            BreakerState::Closed => {
                self.outcomes.push_back((now, success));
                self.forget_old(now);
                if self.should_open() {
                    self.open(now);
                }
            }
            BreakerState::HalfOpen => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
                if !success {
                    self.open(now);
                } else {
                    self.probe_successes += 1;
                    if self.probe_successes >= self.config.probes {
                        self.close();
                    }
                }
            }
            // A call that started before the breaker opened: its outcome changes nothing.
            BreakerState::Open => {}
        }
    }

    /// How long until probes may pass (zero unless open).
    pub fn remaining_open(&self, now: Instant) -> Duration {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) => (at + self.config.open_for).saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    fn advance(&mut self, now: Instant) {
        if self.state == BreakerState::Open && self.remaining_open(now).is_zero() {
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
        }
    }

    fn forget_old(&mut self, now: Instant) {
        while self.outcomes.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > self.config.window) {
            self.outcomes.pop_front();
        }
    }

    fn should_open(&self) -> bool {
        let calls = self.outcomes.len() as u32;
        let failures = self.outcomes.iter().filter(|(_, ok)| !ok).count() as f64;
        calls >= self.config.min_calls.max(1) && failures / f64::from(calls) >= self.config.failure_rate
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.outcomes.clear();
        self.probes_in_flight = 0;
        self.probe_successes = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
        self.outcomes.clear();
    }
}

/// A named, shareable breaker that exports its state as metrics.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    core: Mutex<BreakerCore>,
}

impl CircuitBreaker {
    /// A closed breaker called `name` in metrics, logs and `/readyz`.
    pub fn new(name: &'static str, config: BreakerConfig) -> Arc<Self> {
        metrics::gauge!(m::CIRCUIT_BREAKER_STATE, "breaker" => name).set(BreakerState::Closed.gauge());
        // Every transition series from the start, so `increase()` sees the first one.
        for to in [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open] {
            metrics::counter!(m::CIRCUIT_BREAKER_TRANSITIONS_TOTAL, "breaker" => name, "to" => to.as_str())
                .increment(0);
        }
        Arc::new(Self { name, core: Mutex::new(BreakerCore::new(config)) })
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.with_core(|core, now| core.state(now))
    }

    /// Whether new work should start now (closed, or half-open with probes to spare).
    pub fn admits_work(&self) -> bool {
        self.state() != BreakerState::Open
    }

    /// Runs `call` through the breaker: refused with `Unavailable` while open; a result that
    /// `is_failure` calls a failure counts against the backend.
    pub async fn call<T, F>(&self, call: F, is_failure: impl Fn(&T) -> bool) -> DomainResult<T>
    where
        F: std::future::Future<Output = T>,
    {
        self.with_core(|core, now| core.try_acquire(now)).map_err(|r| self.rejection(r))?;
        let outcome = call.await;
        let failed = is_failure(&outcome);
        self.with_core(|core, now| core.record(now, !failed));
        Ok(outcome)
    }

    /// `CircuitOpen` naming the breaker while it is open; `Ok` otherwise.
    pub fn check(&self) -> DomainResult<()> {
        let (state, wait) = self.with_core(|core, now| (core.state(now), core.remaining_open(now)));
        match state {
            BreakerState::Open => Err(self.rejection(Rejected { retry_after: wait })),
            _ => Ok(()),
        }
    }

    fn rejection(&self, rejected: Rejected) -> DomainError {
        DomainError::CircuitOpen {
            dependency: self.name.to_owned(),
            retry_after_seconds: rejected.retry_after.as_secs().max(1),
        }
    }

    fn with_core<R>(&self, f: impl FnOnce(&mut BreakerCore, Instant) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let before = core.state;
        let result = f(&mut core, now);
        let after = core.state;
        drop(core);
        if before != after {
            self.transitioned(before, after);
        }
        result
    }

    fn transitioned(&self, from: BreakerState, to: BreakerState) {
        metrics::gauge!(m::CIRCUIT_BREAKER_STATE, "breaker" => self.name).set(to.gauge());
        metrics::counter!(m::CIRCUIT_BREAKER_TRANSITIONS_TOTAL, "breaker" => self.name, "to" => to.as_str())
            .increment(1);
        match to {
            BreakerState::Open => tracing::warn!(breaker = self.name, from = from.as_str(), "circuit breaker opened"),
            _ => tracing::info!(breaker = self.name, from = from.as_str(), to = to.as_str(), "circuit breaker moved"),
        }
    }
}

/// Backend failures (not the caller's mistakes) count against the breaker.
fn is_backend_failure<T>(result: &DomainResult<T>) -> bool {
    matches!(result, Err(DomainError::Unavailable(_) | DomainError::Internal(_)))
}

/// A `PodManager` behind a breaker.
#[derive(Debug)]
pub struct BreakerPods<P> {
    inner: P,
    breaker: Arc<CircuitBreaker>,
}

impl<P> BreakerPods<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, breaker: Arc<CircuitBreaker>) -> Self {
        Self { inner, breaker }
    }
}

#[async_trait]
impl<P: PodManager> PodManager for BreakerPods<P> {
    async fn status(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        self.breaker.call(self.inner.status(project), is_backend_failure).await?
    }

    async fn start(&self, spec: &PodSpec) -> DomainResult<PodStatus> {
        self.breaker.call(self.inner.start(spec), is_backend_failure).await?
    }

    async fn wait_ready(&self, project: &ProjectName, timeout: Duration) -> DomainResult<PodStatus> {
        self.breaker.call(self.inner.wait_ready(project, timeout), is_backend_failure).await?
    }

    async fn stop(&self, project: &ProjectName) -> DomainResult<PodStatus> {
        self.breaker.call(self.inner.stop(project), is_backend_failure).await?
    }

    async fn logs(&self, project: &ProjectName, tail: u32) -> DomainResult<Vec<String>> {
        self.breaker.call(self.inner.logs(project, tail), is_backend_failure).await?
    }
}

/// An `Executor` whose readiness includes the breaker; runs are not refused once claimed (the
/// worker stops claiming while the breaker is open, so commands stay queued).
#[derive(Debug)]
pub struct BreakerExecutor<E> {
    inner: E,
    breaker: Arc<CircuitBreaker>,
}

impl<E> BreakerExecutor<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, breaker: Arc<CircuitBreaker>) -> Self {
        Self { inner, breaker }
    }
}

#[async_trait]
impl<E: Executor> Executor for BreakerExecutor<E> {
    async fn run(&self, request: ExecRequest, sink: &dyn OutputSink, cancel: CancellationToken) -> ExecResult {
        self.inner.run(request, sink, cancel).await
    }

    async fn check(&self) -> DomainResult<()> {
        self.breaker.check()?;
        self.breaker.call(self.inner.check(), is_backend_failure).await?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 4,
            failure_rate: 0.5,
            open_for: Duration::from_secs(5),
            probes: 2,
        }
    }

    fn call(core: &mut BreakerCore, now: Instant, ok: bool) -> bool {
        let allowed = core.try_acquire(now).is_ok();
        if allowed {
            core.record(now, ok);
        }
        allowed
    }

    #[test]
    fn opens_on_failure_rate_then_probes_and_closes() {
        let t0 = Instant::now();
        let mut core = BreakerCore::new(config());
        for ok in [true, false, true] {
            assert!(call(&mut core, t0, ok));
        }
        assert_eq!(core.state(t0), BreakerState::Closed, "under min_calls");
        assert!(call(&mut core, t0, false));
        assert_eq!(core.state(t0), BreakerState::Open, "2 of 4 failed");
        let rejected = core.try_acquire(t0 + Duration::from_secs(1)).unwrap_err();
        assert_eq!(rejected.retry_after, Duration::from_secs(4));
        let later = t0 + Duration::from_secs(5);
        assert_eq!(core.state(later), BreakerState::HalfOpen);
        assert!(core.try_acquire(later).is_ok());
        assert!(core.try_acquire(later).is_ok());
        assert!(core.try_acquire(later).is_err(), "only `probes` at once");
        core.record(later, true);
        assert_eq!(core.state(later), BreakerState::HalfOpen, "one success is not enough");
        core.record(later, true);
        assert_eq!(core.state(later), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let t0 = Instant::now();
        let mut core = BreakerCore::new(config());
        for _ in 0..4 {
            call(&mut core, t0, false);
        }
        let later = t0 + Duration::from_secs(6);
        assert!(call(&mut core, later, false));
        assert_eq!(core.state(later), BreakerState::Open);
        assert_eq!(core.remaining_open(later), Duration::from_secs(5));
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut core = BreakerCore::new(config());
        for _ in 0..3 {
            call(&mut core, t0, false);
        }
        let later = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            call(&mut core, later, true);
        }
        call(&mut core, later, false);
        assert_eq!(core.state(later), BreakerState::Closed, "1 of 4 in the window failed");
    }

    proptest! {
        #[test]
        fn never_opens_without_failures(steps in proptest::collection::vec(0u64..3000, 1..200)) {
            let t0 = Instant::now();
            let mut core = BreakerCore::new(config());
            let mut at = t0;
            for step in steps {
                at += Duration::from_millis(step);
                prop_assert!(call(&mut core, at, true));
                prop_assert_eq!(core.state(at), BreakerState::Closed);
            }
        }

        #[test]
        fn open_refuses_every_call_until_the_cool_down_ends(
            outcomes in proptest::collection::vec(any::<bool>(), 1..100),
            probe_at in 0u64..5000,
        ) {
            let t0 = Instant::now();
            let mut core = BreakerCore::new(config());
            for ok in outcomes {
                call(&mut core, t0, ok);
            }
            if core.state(t0) == BreakerState::Open {
                let at = t0 + Duration::from_millis(probe_at);
                prop_assert!(core.try_acquire(at).is_err());
                prop_assert!(core.try_acquire(t0 + Duration::from_secs(5)).is_ok());
            }
        }

        #[test]
        fn closed_breaker_opens_exactly_when_the_rate_is_reached(outcomes in proptest::collection::vec(any::<bool>(), 1..12)) {
            let t0 = Instant::now();
            let mut core = BreakerCore::new(config());
            let mut seen = Vec::new();
            for ok in outcomes {
                if core.state(t0) != BreakerState::Closed { break; }
                call(&mut core, t0, ok);
                seen.push(ok);
                let failures = seen.iter().filter(|ok| !**ok).count();
                let expect_open = seen.len() >= 4 && failures * 2 >= seen.len();
                prop_assert_eq!(core.state(t0) == BreakerState::Open, expect_open);
            }
        }
    }
}
