//! The Kubernetes API's circuit breaker: the pure state machine of `domain::breaker` behind a
//! lock, with metrics and logs (`CircuitBreaker`), and the decorators that put it in front of
//! the ports (`BreakerPods`, `BreakerExecutor`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::breaker::{Breaker, Refusal};
pub use domain::breaker::{BreakerConfig, BreakerState};
use domain::pod::{PodSpec, PodStatus};
use domain::ports::{ExecRequest, ExecResult, Executor, OutputSink, PodManager};
use domain::project::ProjectName;
use domain::{DomainError, DomainResult};
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// How long a caller refused because every half-open probe is out should wait.
const PROBES_OUT_RETRY: Duration = Duration::from_secs(1);

/// The gauge value of a state: 0 closed, 1 half-open, 2 open.
fn gauge(state: BreakerState) -> f64 {
    match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

/// A named, shareable breaker that exports its state as metrics.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    core: Mutex<Breaker<Instant>>,
}

impl CircuitBreaker {
    /// A closed breaker called `name` in metrics, logs and `/readyz`.
    pub fn new(name: &'static str, config: BreakerConfig) -> Arc<Self> {
        metrics::gauge!(m::CIRCUIT_BREAKER_STATE, "breaker" => name).set(gauge(BreakerState::Closed));
        // Every transition series from the start, so `increase()` sees the first one.
        for to in [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open] {
            metrics::counter!(m::CIRCUIT_BREAKER_TRANSITIONS_TOTAL, "breaker" => name, "to" => to.as_str())
                .increment(0);
        }
        Arc::new(Self { name, core: Mutex::new(Breaker::new(config)) })
    }

    /// The breaker's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.with_core(|core, now| core.state_at(now))
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
        self.with_core(|core, now| core.try_acquire(now)).map_err(|r| self.rejection(retry_after(r)))?;
        let outcome = call.await;
        let failed = is_failure(&outcome);
        self.with_core(|core, now| core.record(now, !failed));
        Ok(outcome)
    }

    /// `CircuitOpen` naming the breaker while it is open; `Ok` otherwise.
    pub fn check(&self) -> DomainResult<()> {
        let (state, wait) = self.with_core(|core, now| (core.state_at(now), core.remaining_open(now)));
        match state {
            BreakerState::Open => Err(self.rejection(wait)),
            _ => Ok(()),
        }
    }

    fn rejection(&self, retry_after: Duration) -> DomainError {
        DomainError::CircuitOpen { dependency: self.name.to_owned(), retry_after_seconds: retry_after.as_secs().max(1) }
    }

    fn with_core<R>(&self, f: impl FnOnce(&mut Breaker<Instant>, Instant) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        // tokio's clock, so a test that pauses time moves the breaker's cool-down too.
        let now = tokio::time::Instant::now().into_std();
        let before = core.state();
        let result = f(&mut core, now);
        let after = core.state();
        drop(core);
        if before != after {
            self.transitioned(before, after);
        }
        result
    }

    fn transitioned(&self, from: BreakerState, to: BreakerState) {
        metrics::gauge!(m::CIRCUIT_BREAKER_STATE, "breaker" => self.name).set(gauge(to));
        metrics::counter!(m::CIRCUIT_BREAKER_TRANSITIONS_TOTAL, "breaker" => self.name, "to" => to.as_str())
            .increment(1);
        match to {
            BreakerState::Open => tracing::warn!(breaker = self.name, from = from.as_str(), "circuit breaker opened"),
            _ => tracing::info!(breaker = self.name, from = from.as_str(), to = to.as_str(), "circuit breaker moved"),
        }
    }
}

/// How long a refused caller should wait before trying again.
fn retry_after(refusal: Refusal) -> Duration {
    match refusal {
        Refusal::Open { remaining } => remaining,
        Refusal::ProbesOut => PROBES_OUT_RETRY,
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
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_open_it_and_callers_are_told_when_to_retry() {
        let breaker = CircuitBreaker::new("test", BreakerConfig { min_calls: 2, ..BreakerConfig::default() });
        for _ in 0..2 {
            let failed: DomainResult<()> = Err(DomainError::Unavailable("down".into()));
            let outcome = breaker.call(async { failed }, is_backend_failure).await;
            assert!(outcome.is_ok(), "let through: the call's own failure is inside");
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.admits_work());
        let refused = DomainError::CircuitOpen { dependency: "test".into(), retry_after_seconds: 10 };
        assert_eq!(breaker.check(), Err(refused.clone()));
        assert_eq!(breaker.call(async {}, |_| false).await, Err(refused));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen, "the paused clock moves the cool-down");
        assert!(breaker.admits_work() && breaker.check().is_ok());
    }

    #[test]
    fn a_caller_refused_for_busy_probes_waits_a_second() {
        assert_eq!(retry_after(Refusal::ProbesOut), Duration::from_secs(1));
        assert_eq!(retry_after(Refusal::Open { remaining: Duration::from_secs(3) }), Duration::from_secs(3));
    }
}
